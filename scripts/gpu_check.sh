#!/usr/bin/env bash
# The GPU check: one command for a lent GPU machine (docs/gpu.md), at most 8 minutes on one GPU.
#
#   scripts/gpu_check.sh              # `make gpu-check`: on a machine with CUDA
#   scripts/gpu_check.sh --dry-run    # the same steps end to end on this CPU at toy sizes (no timing runs)
#   scripts/gpu_check.sh --steps "install tests"   # a subset, in this order
#
# Steps, each under its own time limit (seconds, GPU / dry run):
#   install         wheels from .gpu_wheels (make gpu-wheels) that this Python lacks, pip --no-index --no-deps
#   tests           pytest -m cuda tests/test_triton_lambda.py: the Triton operator and every position-term
#                   form against the float64 reference, AMP, dR determinism, torch.compile, one LambdaResNet-101
#                   Mask R-CNN training step under AMP (batch 2 at 1024)
#   train           the main job (tools/quickstart.py) on the GPU, 150 iterations, its evaluation and demo
#   bench_layer     tools/benchmark_lambda.py --vs-conv: the layer and its block vs the 3x3 conv, Table 6 shapes,
#                   every form, float32 (PyTorch's defaults) / IEEE / AMP
#   bench_kernels   tools/benchmark_lambda.py --kernels: the Triton operator kernel by kernel, its tile variants
#   bench_detector  tools/benchmark_detector.py: LambdaResNet-101, its conv twin, Detectron2's R-101, AMP, batch 8
# (the last step gets what is left of the budget when the others ran long)
#
# Environment: PYTHON (default python3: the machine's own interpreter, not a venv), OUT (if set, the
# results go there as gpu_check.tar.gz + summary.md: the device runner returns files under $OUT only),
# GPU_WHEELS (default .gpu_wheels). lambda_det itself runs from this checkout (PYTHONPATH).
# Without --dry-run and without CUDA it stops with one line saying so.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
WHEELS="${GPU_WHEELS:-$ROOT/.gpu_wheels}"
DRY=0
STEPS="install tests train bench_layer bench_kernels bench_detector"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --steps) shift; STEPS="${1:-}" ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (use --dry-run, --steps \"...\")" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "gpu_check: $*" >&2; exit 1; }

"$PYTHON" -c 'import torch' 2>/dev/null || die "'$PYTHON' cannot import torch: set PYTHON to the interpreter that has PyTorch"
if [ "$DRY" = 0 ] && ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  die "no CUDA device visible to $PYTHON (torch.cuda.is_available() is False): run this on a GPU machine, or pass --dry-run for the CPU rehearsal"
fi

if [ "$DRY" = 1 ]; then
  RESULTS="${GPU_CHECK_RESULTS:-$ROOT/output/gpu_check_dry}"
  DEVICE=cpu
else
  RESULTS="${GPU_CHECK_RESULTS:-$ROOT/output/gpu_check}"
  DEVICE=cuda
fi
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
SUMMARY="$RESULTS/summary.md"
touch "$RESULTS/.start"
FAILED=0
START=$(date +%s)
# the whole check ends within BUDGET seconds: each step gets its own limit or what is left, if less
BUDGET="${GPU_CHECK_BUDGET:-$([ "$DRY" = 1 ] && echo 900 || echo 470)}"
{
  echo "# GPU check $(date -u '+%Y-%m-%d %H:%M UTC')$([ "$DRY" = 1 ] && echo ' (dry run on the CPU)')"
  echo
  "$PYTHON" -c 'import sys, torch; dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}, device: {dev}")' 2>&1
  "$PYTHON" -c 'import triton; print(f"triton {triton.__version__}")' 2>&1 | tail -1
  git -C "$ROOT" log -1 --format='commit %h %s' 2>/dev/null
  echo
  echo "| step | result | seconds | limit |"
  echo "|---|---|---|---|"
} >"$SUMMARY"

# step NAME LIMIT COMMAND...: runs COMMAND under `timeout`, its output in RESULTS/NAME.log
step() {
  local name="$1" limit="$2"
  shift 2
  local t0 rc result left
  t0=$(date +%s)
  left=$(( START + BUDGET - t0 ))
  if [ "$left" -lt 20 ]; then skip "$name" "out of time (budget ${BUDGET}s)"; FAILED=1; return; fi
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  echo "[gpu_check] $name (limit ${limit}s): $*"
  # through bash -c, so that a step can be one of this script's functions (exported below)
  timeout --kill-after=15 "$limit" bash -c '"$@"' step "$@" >"$RESULTS/$name.log" 2>&1
  rc=$?
  case $rc in
    0) result=ok ;;
    124|137) result="TIMEOUT"; FAILED=1 ;;
    *) result="FAILED (exit $rc)"; FAILED=1 ;;
  esac
  echo "| $name | $result | $(( $(date +%s) - t0 )) | $limit |" >>"$SUMMARY"
  echo "[gpu_check] $name: $result after $(( $(date +%s) - t0 ))s"
  if [ $rc != 0 ]; then tail -n 25 "$RESULTS/$name.log" | sed 's/^/    /'; fi
}

skip() {
  echo "| $1 | skipped: $2 | 0 | - |" >>"$SUMMARY"
  echo "[gpu_check] $1: skipped ($2)"
}

# the flags this script passes to a tool, checked against the tool's --help (the dry run's stand-in
# for the timing runs, which take minutes on a CPU)
check_flags() {
  local tool="$1"
  shift
  local help
  help="$("$PYTHON" "tools/$tool" --help)" || return 1
  for flag in "$@"; do
    grep -q -- "$flag" <<<"$help" || { echo "tools/$tool has no $flag"; return 1; }
  done
  echo "tools/$tool takes $*"
}

install_wheels() {
  if [ ! -d "$WHEELS" ]; then
    if "$PYTHON" -c 'import detectron2, fvcore, pycocotools' 2>/dev/null; then
      echo "no $WHEELS, and none needed: detectron2, fvcore, pycocotools import"; return 0
    fi
    echo "no $WHEELS and detectron2 is missing: run 'make gpu-wheels' where there is network and carry .gpu_wheels"; return 1
  fi
  "$PYTHON" scripts/gpu_wheels.py verify "$WHEELS" || return 1
  local wheels
  wheels="$("$PYTHON" scripts/gpu_wheels.py missing "$WHEELS")" || return 1
  if [ -z "$wheels" ]; then echo "every wheel's distribution is installed already"; return 0; fi
  echo "installing: $wheels"
  if [ "$DRY" = 1 ]; then echo "(dry run: nothing installed here)"; return 0; fi
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install --no-index --find-links "$WHEELS" --no-deps --no-cache-dir $wheels
}

export -f install_wheels check_flags
export PYTHON WHEELS DRY
pytest_args=(-m pytest tests/test_triton_lambda.py -m cuda -q -p no:cacheprovider -rs --junitxml="$RESULTS/tests.xml")

for s in $STEPS; do
  case "$s" in
    install) step install 30 install_wheels ;;
    tests)
      if [ "$DRY" = 1 ]; then
        step tests 300 env LAMBDA_DET_TEST_DEVICE=cpu TRITON_INTERPRET=1 "$PYTHON" "${pytest_args[@]}"
      else
        step tests 240 "$PYTHON" "${pytest_args[@]}"
      fi ;;
    bench_layer)
      if [ "$DRY" = 1 ]; then
        step bench_layer 60 check_flags benchmark_lambda.py --vs-conv --device --output --overwrite --batches --repeats
      else
        step bench_layer 120 "$PYTHON" tools/benchmark_lambda.py --vs-conv --device cuda --batches 8 --repeats 3 \
          --output docs/benchmarks --overwrite
      fi ;;
    bench_kernels)
      if [ "$DRY" = 1 ]; then
        # the real benchmark in Triton's interpreter at toy sizes (its times mean nothing)
        step bench_kernels 120 env TRITON_INTERPRET=1 "$PYTHON" tools/benchmark_lambda.py --kernels --device cpu --repeats 1 \
          --output "$RESULTS/bench_kernels"
      else
        step bench_kernels 150 "$PYTHON" tools/benchmark_lambda.py --kernels --device cuda --repeats 3 --output docs/benchmarks --overwrite
      fi ;;
    bench_detector)
      if [ "$DRY" = 1 ]; then
        step bench_detector 60 check_flags benchmark_detector.py --device --amp --batch --sizes --models --output \
          --overwrite --tag --repeats --no-flops
      else
        step bench_detector 100 "$PYTHON" tools/benchmark_detector.py --device cuda --amp --batch 8 --sizes 1024 \
          --models "LambdaResNet-101" "LambdaResNet-101 conv twin" "Detectron2 R-101-FPN" --repeats 3 --no-flops \
          --output docs/benchmarks --overwrite --tag gpu_check
      fi ;;
    train)
      # the main job (tools/quickstart.py: it picks the GPU where there is one and says so), shortened;
      # the test-time augmented evaluation is left out to stay in the step's time
      if [ "$DRY" = 1 ]; then
        # the tests' tiny toy model (tests/conftest.py TINY), two iterations and its evaluation
        step train 240 "$PYTHON" tools/quickstart.py --output "$RESULTS/train" --max-iter 2 --demo-images 1 \
          MODEL.DEVICE cpu TEST.AUG.ENABLED False SOLVER.IMS_PER_BATCH 2 DATALOADER.NUM_WORKERS 0 \
          MODEL.LAMBDA_RESNET.STAGE_BLOCKS "[1,1,1,1]" MODEL.LAMBDA_RESNET.DIM_K 8 MODEL.FPN.OUT_CHANNELS 32 \
          MODEL.ROI_BOX_HEAD.FC_DIM 64 MODEL.ROI_MASK_HEAD.CONV_DIM 32 INPUT.MIN_SIZE_TRAIN "(128,)" \
          INPUT.MAX_SIZE_TRAIN 128 INPUT.MIN_SIZE_TEST 128 INPUT.MAX_SIZE_TEST 128
      else
        step train 75 "$PYTHON" tools/quickstart.py --output "$RESULTS/train" --max-iter 150 --demo-images 2 \
          TEST.AUG.ENABLED False DATALOADER.NUM_WORKERS 4 SOLVER.CHECKPOINT_PERIOD 150
      fi ;;
    *) die "unknown step '$s' (install tests train bench_layer bench_kernels bench_detector)" ;;
  esac
done

{
  echo
  echo "total: $(( $(date +%s) - START )) s; $([ $FAILED = 0 ] && echo 'every step passed' || echo 'SOME STEPS FAILED')"
  # the kernel benchmark's verdict on the tiles, where the runner's output shows it at once
  kernels="$([ "$DRY" = 1 ] && echo "$RESULTS/bench_kernels/lambda_kernels_cpu.md" || echo docs/benchmarks/lambda_kernels_cuda.md)"
  if [ -f "$kernels" ] && [ "$kernels" -nt "$RESULTS/.start" ]; then
    echo
    sed -n '/^\*\*Fastest tiles per kernel/,$p' "$kernels"
  fi
} >>"$SUMMARY"
cat "$SUMMARY"

# results: the logs, the test report, the benchmark files this run wrote, the training's metrics and
# evaluation (not its checkpoints) as one tarball, and the summary beside it
if [ "$DRY" = 0 ]; then
  mkdir -p "$RESULTS/benchmarks"
  find docs/benchmarks -newer "$RESULTS/.start" -type f ! -name .lambda_det.lock -exec cp {} "$RESULTS/benchmarks/" \; 2>/dev/null || true
fi
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  tar -czf "$OUT/gpu_check.tar.gz" -C "$RESULTS" --exclude='*.pth' --exclude='last_checkpoint' .
  cp "$SUMMARY" "$OUT/summary.md"
  echo "[gpu_check] results in $OUT/gpu_check.tar.gz ($(du -h "$OUT/gpu_check.tar.gz" | cut -f1)) and $OUT/summary.md"
fi
exit $FAILED
