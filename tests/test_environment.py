"""The ground: imports, the environment report, and setup's failure messages."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COLLECT_ENV = REPO / "lambda_det" / "collect_env.py"


def test_detectron2_and_lambda_det_import():
    import detectron2
    from detectron2.modeling import BACKBONE_REGISTRY

    import lambda_det

    assert detectron2.__version__ and lambda_det.__version__
    assert "build_lambda_resnet_fpn_backbone" in BACKBONE_REGISTRY


def test_collect_env_reports_a_working_environment():
    done = subprocess.run([sys.executable, "-m", "lambda_det.collect_env", "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("torch", "torchvision", "detectron2", "detectron2._C", "CUDA available", "lambda_det"):
        assert name in done.stdout
    assert "torchvision ops (nms, roi_align)  OK" in done.stdout


def _run_with_fake_module(tmp_path, module: str, body: str, *args):
    fake = tmp_path / module
    fake.mkdir()
    (fake / "__init__.py").write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=tmp_path)


def test_broken_torchvision_is_reported_as_broken(tmp_path):
    # what a CPU-only torch with the index's CUDA torchvision does at import
    done = _run_with_fake_module(
        tmp_path, "torchvision", 'raise RuntimeError("operator torchvision::nms does not exist")', str(COLLECT_ENV), "--check-torch"
    )
    assert done.returncode == 1
    assert "torchvision is broken" in done.stdout and "torchvision::nms does not exist" in done.stdout
    assert "setup_env.sh" in done.stdout  # says what to do


def test_missing_detectron2_is_reported(tmp_path):
    done = _run_with_fake_module(
        tmp_path, "detectron2", 'raise ImportError("No module named detectron2")', str(COLLECT_ENV), "--check"
    )
    assert done.returncode == 1
    assert "detectron2 is not importable" in done.stderr


def test_import_lambda_det_without_detectron2_says_what_to_do(tmp_path):
    done = _run_with_fake_module(tmp_path, "detectron2", 'raise ImportError("No module named detectron2")', "-c", "import lambda_det")
    assert done.returncode == 1
    assert "lambda_det needs detectron2" in done.stderr and "setup_env.sh" in done.stderr


def _setup(tmp_path, **env):
    full_env = dict(os.environ, LAMBDA_DET_VENV=str(tmp_path / "venv"), **env)
    return subprocess.run(["bash", str(REPO / "scripts" / "setup_env.sh")], capture_output=True, text=True, env=full_env, timeout=300)


def test_setup_refuses_a_wrong_python(tmp_path):
    fake = tmp_path / "python3.8"
    fake.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "Python 3.8.10"; exit 0; fi\nexit 1\n')
    fake.chmod(0o755)
    done = _setup(tmp_path, PYTHON=str(fake))
    assert done.returncode != 0
    assert "setup failed: wrong Python: Python 3.8.10" in done.stderr and "PYTHON=python3.11" in done.stderr
    assert not (tmp_path / "venv").exists()


def test_setup_names_a_missing_interpreter(tmp_path):
    done = _setup(tmp_path, PYTHON="python3-that-does-not-exist")
    assert done.returncode != 0 and "python interpreter 'python3-that-does-not-exist' not found" in done.stderr


@pytest.mark.skipif(sys.version_info[:2] not in ((3, 10), (3, 11), (3, 12)), reason="needs a supported Python")
def test_setup_without_network_says_so(tmp_path):
    # a closed local port stands for "no network"; pip fails at once instead of retrying
    done = _setup(
        tmp_path, PYTHON=sys.executable if "venv" not in sys.executable else _base_python(),
        PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0", PIP_TIMEOUT="2",
    )
    assert done.returncode != 0
    assert "setup failed: pip could not reach the package index (no network?)" in done.stderr
    assert done.stderr.count("setup failed") == 1


def _base_python() -> str:
    return str(Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}")


def test_the_fused_operators_build_folder_is_the_one_it_was_built_in():
    """torch's extension loader appends to the flag lists it is given: the folder collect_env reports
    must not change once the operator is built."""
    from lambda_det.layers import fused

    before = fused.build_directory()
    if fused.extension() is None:
        pytest.skip(f"the fused operator cannot be built here: {fused.unavailable_reason()}")
    assert fused.build_directory() == before and before.is_dir()


def test_checkouts_of_one_version_share_the_fused_operators_build(tmp_path, monkeypatch):
    """ninja rebuilds when the compile command changes, and it named each checkout's own source path:
    two checkouts sharing the cache rebuilt the operator every time the other one had run."""
    import torch.utils.cpp_extension

    from lambda_det.layers import fused

    compiled = []
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **kw: compiled.append(kw["sources"]) or object())
    monkeypatch.setenv("LAMBDA_DET_CACHE", str(tmp_path / "cache"))
    for checkout in ("a", "b"):
        source = tmp_path / checkout / "fused_lambda.cpp"
        source.parent.mkdir()
        source.write_bytes(fused.SOURCE.read_bytes())
        monkeypatch.setattr(fused, "SOURCE", source)
        monkeypatch.setattr(fused, "_module", None)
        monkeypatch.setattr(fused, "_failure", None)
        assert fused.extension() is not None
    assert compiled[0] == compiled[1] == [str(fused.build_directory() / "fused_lambda.cpp")]
    assert Path(compiled[0][0]).read_bytes() == source.read_bytes()
