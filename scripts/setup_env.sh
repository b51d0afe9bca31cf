#!/usr/bin/env bash
# One idempotent setup step for lambda_det on a fresh machine (no GPU needed).
#
#   scripts/setup_env.sh            # creates .venv in the checkout and installs everything
#
# Environment knobs:
#   PYTHON=python3.11               interpreter used to create the virtual environment
#   LAMBDA_DET_VENV=.venv           where the virtual environment lives
#   LAMBDA_DET_VENV_ARGS=--system-site-packages
#                                   reuse a torch / detectron2 you built yourself (with CUDA ops)
#   LAMBDA_DET_EXTRAS=test,export   pip extras of lambda_det to install (e.g. "test,export,bench")
#
# Every step that can fail ends the script with one line "setup failed: <what>: <what to do>".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${LAMBDA_DET_VENV:-.venv}"
EXTRAS="${LAMBDA_DET_EXTRAS:-test,export}"
TORCH_PIN="torch==2.13.0"
TORCHVISION_PIN="torchvision==0.28.0"
DETECTRON2_DIST="sal-detectron2==0.7.2"
LOG="$(cd "$(dirname "$VENV")" 2>/dev/null && pwd || pwd)/$(basename "$VENV").setup.log"

fail() {
  echo "setup failed: $1" >&2
  echo "  (full pip output: $LOG)" >&2
  exit 1
}
step() { echo "[setup] $*"; }

# The index's torchvision wheels link against the index's torch build; the machine-wide
# pip config points find-links at a CPU-only torch wheel that would be preferred and break
# torchvision's C++ ops. So every pip call here ignores the user/site config files.
pip_clean() {
  PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_EXTRA_INDEX_URL= "$VENV/bin/python" -m pip "$@" >>"$LOG" 2>&1
}

# 1. Python version ---------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || fail "python interpreter '$PYTHON' not found: install Python 3.10-3.12 or set PYTHON=/path/to/python3"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)'; then
  fail "wrong Python: $("$PYTHON" --version 2>&1) at $(command -v "$PYTHON"); torch 2.13 + detectron2 need Python 3.10-3.12: set PYTHON=python3.11"
fi

# 2. Virtual environment ----------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtual environment $VENV ($("$PYTHON" --version 2>&1))"
  # shellcheck disable=SC2086
  "$PYTHON" -m venv ${LAMBDA_DET_VENV_ARGS:-} "$VENV" || fail "could not create $VENV: install the venv module (Debian: apt-get install python3-venv)"
fi
: >"$LOG"
pip_clean install --quiet --upgrade "pip>=24" "setuptools<81" wheel \
  || fail "pip could not reach the package index (no network?): check your connection or proxy, then rerun"

# 3. torch + torchvision as a matched pair -------------------------------------------------------
if "$VENV/bin/python" "$ROOT/lambda_det/collect_env.py" --check-torch >>"$LOG" 2>&1; then
  step "torch + torchvision already installed and working: keeping them"
else
  step "installing $TORCH_PIN + $TORCHVISION_PIN from the package index (~4.8 GB on first run, cached after)"
  pip_clean install "$TORCH_PIN" "$TORCHVISION_PIN" \
    || fail "pip could not install $TORCH_PIN $TORCHVISION_PIN (no network, or disk full?): see the log, fix, rerun"
  "$VENV/bin/python" "$ROOT/lambda_det/collect_env.py" --check-torch \
    || fail "torch/torchvision mismatch after install (see the message above): remove $VENV and rerun"
fi

# 4. Detectron2 ---------------------------------------------------------------------------------
if "$VENV/bin/python" -c 'import detectron2' >/dev/null 2>&1; then
  step "detectron2 already importable: keeping it ($("$VENV/bin/python" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))'))"
else
  step "installing detectron2 (pure-Python part of $DETECTRON2_DIST, retagged for this Python)"
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  # Its only wheel is cp310 with a compiled _C for cp310; the Python sources run on 3.10-3.12
  # and the ops we need have Python fallbacks, so drop _C and retag the wheel as pure Python.
  pip_clean download --no-deps --only-binary=:all: --python-version 3.10 -d "$WORK/dl" "$DETECTRON2_DIST" \
    || fail "could not download $DETECTRON2_DIST from the package index (no network?), or install detectron2 yourself and rerun"
  whl="$(ls "$WORK"/dl/*.whl)"
  "$VENV/bin/python" -m wheel unpack -d "$WORK/unpacked" "$whl" >>"$LOG" 2>&1 || fail "could not unpack $whl"
  pkg="$(ls -d "$WORK"/unpacked/*/)"
  rm -f "$pkg"/detectron2/_C*.so
  sed -i -e 's/^Tag: .*/Tag: py3-none-any/' -e 's/^Root-Is-Purelib: .*/Root-Is-Purelib: true/' "$pkg"/*.dist-info/WHEEL
  sed -i '/detectron2\/_C.*\.so/d' "$pkg"/*.dist-info/RECORD
  mkdir -p "$WORK/packed"
  "$VENV/bin/python" -m wheel pack -d "$WORK/packed" "$pkg" >>"$LOG" 2>&1 || fail "could not repack the detectron2 wheel"
  pip_clean install "$WORK"/packed/*.whl \
    || fail "could not install the retagged detectron2 wheel: see the log"
fi

# 5. lambda_det itself (editable), its runtime dependencies and the test dependencies ----------------
step "installing lambda_det (editable) with extras [$EXTRAS]"
pip_clean install -e ".[$EXTRAS]" "setuptools<81" \
  || fail "pip could not install lambda_det's dependencies (no network?): see the log, fix, rerun"

# 6. Verify --------------------------------------------------------------------------------------
"$VENV/bin/python" "$ROOT/lambda_det/collect_env.py" --check || fail "the installed environment does not work (see above)"
step "done: $VENV is ready"
