"""Report and check the software environment lambda_det runs in.

    python -m lambda_det.collect_env            # print versions, CUDA, detectron2's _C
    python -m lambda_det.collect_env --check    # also exit 1 with the reason when something is broken
    python lambda_det/collect_env.py --check    # the same without importing lambda_det first, so
                                                # it still reports when detectron2 is missing
    python lambda_det/collect_env.py --check-torch   # torch/torchvision only (setup runs this
                                                     # before detectron2 is installed)

This module must stay runnable without detectron2 or lambda_det installed: setup runs it by path.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import platform
import sys
from typing import List, Optional, Tuple

TORCH_HINT = (
    "torch and torchvision must come from the same build: rerun scripts/setup_env.sh after "
    "removing .venv (it installs torch 2.13.0 + torchvision 0.28.0 from the package index)"
)


def check_torch_pair() -> Optional[str]:
    """Return None when torch and torchvision import and their C++ ops run, else the reason."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable"
        return f"torch is not importable ({exc}); {TORCH_HINT}"
    try:
        import torchvision  # noqa: F401
        from torchvision.ops import nms, roi_align

        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
        nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
        roi_align(torch.zeros(1, 1, 8, 8), [boxes], output_size=2)
    except Exception as exc:  # noqa: BLE001
        return f"torchvision is broken against torch {torch.__version__} ({exc}); {TORCH_HINT}"
    return None


def _version(module: str) -> Tuple[str, Optional[object]]:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001
        return f"not importable ({type(exc).__name__}: {exc})", None
    version = getattr(mod, "__version__", None)
    if version is None:  # e.g. pycocotools: ask the installed distribution
        try:
            version = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
    return str(version), mod


def collect_env() -> Tuple[List[Tuple[str, str]], List[str]]:
    """Return (rows of name/value, list of problems)."""
    rows: List[Tuple[str, str]] = [("python", f"{platform.python_version()} ({sys.executable})")]
    problems: List[str] = []
    torch_version, torch = _version("torch")
    rows.append(("torch", torch_version))
    tv_version, _ = _version("torchvision")
    rows.append(("torchvision", tv_version))
    torch_problem = check_torch_pair()
    rows.append(("torchvision ops (nms, roi_align)", "OK" if torch_problem is None else "BROKEN"))
    if torch_problem:
        problems.append(torch_problem)
    if torch is not None:
        cuda = torch.cuda.is_available()
        detail = f"yes ({torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda})" if cuda else "no"
        rows.append(("CUDA available", detail))
    d2_version, d2 = _version("detectron2")
    rows.append(("detectron2", d2_version + (f" ({d2.__path__[0]})" if d2 is not None else "")))
    if d2 is None:
        problems.append(
            "detectron2 is not importable: run scripts/setup_env.sh (it installs the registry "
            "distribution sal-detectron2), or build detectron2 from source into this environment"
        )
    else:
        try:
            importlib.import_module("detectron2._C")
            rows.append(("detectron2._C (compiled ops)", "present"))
        except Exception:  # noqa: BLE001
            rows.append(
                ("detectron2._C (compiled ops)", "absent: pure-Python fallbacks; no rotated boxes, "
                 "deformable conv or fast COCO eval")
            )
    for name in ("fvcore", "pycocotools", "shapely", "cv2", "numpy", "onnx", "onnxruntime"):
        rows.append((name, _version(name)[0]))
    ld_version, ld = _version("lambda_det")
    rows.append(("lambda_det", ld_version))
    if ld is None:
        problems.append(f"lambda_det is not importable ({ld_version}): run `pip install -e .` in the checkout")
    else:
        # builds the operator on first use (half a minute), cached after; not a problem when missing
        fused = importlib.import_module("lambda_det.layers.fused")
        built = fused.extension() is not None
        rows.append(("fused CPU lambda operator", f"built ({fused.build_directory()})" if built
                     else f"unavailable ({fused.unavailable_reason()}): impl='auto' uses the FFT / convolution forms"))
        triton = importlib.import_module("lambda_det.layers.triton_lambda")
        reason = triton.unavailable_reason("cuda")
        if reason is not None:
            state = f"unavailable ({reason}): impl='auto' uses the FFT / convolution forms on GPUs"
        else:
            state = "impl='auto' uses it on the CUDA devices" if torch is not None and torch.cuda.is_available() else \
                "ready for CUDA devices (none here)"
            state += (f"; float32 on {'TF32' if triton.float32_on_tf32() else 'IEEE float32'} (by torch.backends.cudnn's "
                      "TF32 switch, unless exact float32 matmuls were asked for)")
        rows.append(("Triton GPU lambda operator", state))
    return rows, problems


def format_rows(rows: List[Tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 with the reason when anything is broken")
    parser.add_argument("--check-torch", action="store_true", help="only check the torch/torchvision pair")
    args = parser.parse_args(argv)
    if args.check_torch:
        problem = check_torch_pair()
        print(problem or "torch + torchvision: ops run")
        return 1 if problem else 0
    rows, problems = collect_env()
    print(format_rows(rows))
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if (args.check and problems) else 0


if __name__ == "__main__":
    sys.exit(main())
