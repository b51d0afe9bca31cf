#!/usr/bin/env python3
"""Wheels for running lambda_det on a GPU machine that has no network (docs/gpu.md).

    python scripts/gpu_wheels.py gather [DEST]    # on a machine with network: `make gpu-wheels`
    python scripts/gpu_wheels.py verify [DEST]    # every wheel is cp312 / manylinux x86_64 or pure Python,
                                                  # and every requirement they need is here or on the GPU machine
    python scripts/gpu_wheels.py missing [DEST]   # on the GPU machine: the wheels whose distribution this
                                                  # Python lacks (scripts/gpu_check.sh installs those)

DEST defaults to .gpu_wheels (git-ignored). The set is what lambda_det's GPU check imports (training,
evaluation, tests, benchmarks) minus what the lent machine's Python 3.12 image already holds
(scripts/gpu_machine_packages.txt): Detectron2 and its config/IO stack and pycocotools. Detectron2 is
the pure-Python part of sal-detectron2 retagged py3-none-any, as scripts/setup_env.sh builds it (its
only wheel is cp310 with a compiled _C that the ops we use do not need).
"""
from __future__ import annotations

import email.parser
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / ".gpu_wheels"
MACHINE_PACKAGES = ROOT / "scripts" / "gpu_machine_packages.txt"
DETECTRON2_DIST = "sal-detectron2==0.7.2"
# pure Python (some only as sdists on the index: built into py3-none-any wheels here)
# (the versions this project's CPU environment runs; tabulate and portalocker are on the machine's
# list too, but are carried in case an image lacks them: scripts/gpu_check.sh installs only what is missing)
PURE = ["fvcore==0.1.5.post20221221", "iopath==0.1.10", "yacs==0.1.8", "omegaconf==2.3.1",
        "antlr4-python3-runtime==4.9.3", "hydra-core==1.3.8", "termcolor==3.3.0", "tabulate==0.10.0",
        "portalocker==4.4.2", "platformdirs==4.14.9"]
# compiled: the cp312 manylinux x86_64 wheel from the index
BINARY = ["pycocotools==2.0.11"]
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]
# requirements of these wheels that the GPU check never imports (detectron2's formatter for saving lazy configs)
NOT_NEEDED = {"black"}


def pip(*args: str) -> None:
    # straight to the package index, as scripts/setup_env.sh does: the machine's pip config may
    # point find-links at local wheels built for this machine's Python
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="", PIP_EXTRA_INDEX_URL="")
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, env=env)


def retag_detectron2(dest: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.10", "-d", str(tmp / "dl"), DETECTRON2_DIST)
        (wheel,) = (tmp / "dl").glob("*.whl")
        subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", str(tmp / "unpacked"), str(wheel)], check=True)
        (pkg,) = (tmp / "unpacked").iterdir()
        for so in (pkg / "detectron2").glob("_C*.so"):
            so.unlink()
        (info,) = pkg.glob("*.dist-info")
        text = (info / "WHEEL").read_text()
        text = re.sub(r"(?m)^Tag: .*$", "Tag: py3-none-any", text)
        text = re.sub(r"(?m)^Root-Is-Purelib: .*$", "Root-Is-Purelib: true", text)
        (info / "WHEEL").write_text(text)
        record = info / "RECORD"
        record.write_text("".join(line for line in record.read_text().splitlines(True) if not re.match(r"detectron2/_C.*\.so", line)))
        subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", str(dest), str(pkg)], check=True)
    (out,) = dest.glob("sal_detectron2-*.whl")
    return out


def gather(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    pip("wheel", "--no-deps", "-w", str(dest), *PURE)
    pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
        *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest), *BINARY)
    retag_detectron2(dest)
    verify(dest)
    size = sum(f.stat().st_size for f in dest.glob("*.whl"))
    print(f"{len(list(dest.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in {dest}")


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(name).decode())


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _tags(wheel: Path):
    python, abi, platform = wheel.name[:-4].split("-")[-3:]
    return python, abi, platform


def verify(dest: Path) -> None:
    """Each wheel installs on CPython 3.12 / Linux x86_64, one version per distribution, and every
    requirement (markers evaluated for that machine) is a wheel here or a package of the machine."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement

    machine = {_canonical(line.split()[0]) for line in MACHINE_PACKAGES.read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"no wheels in {dest}: run `make gpu-wheels`")
    env = dict(default_environment(), python_version="3.12", python_full_version="3.12.3", sys_platform="linux",
               platform_machine="x86_64", implementation_name="cpython", platform_system="Linux", extra="")
    here, problems = {}, []
    for wheel in wheels:
        python, abi, platform = _tags(wheel)
        pure = platform == "any" and abi == "none" and python.startswith("py3")
        cp312 = "cp312" in python.split(".") and abi in ("cp312", "abi3") and "x86_64" in platform and "manylinux" in platform
        if not (pure or cp312):
            problems.append(f"{wheel.name}: not for CPython 3.12 on manylinux x86_64")
        name = _canonical(_metadata(wheel)["Name"])
        if name in here:
            problems.append(f"two wheels of {name}: {here[name]} and {wheel.name}")
        here[name] = wheel.name
    for wheel in wheels:
        for spec in _metadata(wheel).get_all("Requires-Dist") or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = _canonical(req.name)
            if name not in here and name not in machine and name not in NOT_NEEDED:
                problems.append(f"{wheel.name} needs {spec}: neither in {dest.name} nor on the GPU machine")
    if problems:
        raise SystemExit("gpu wheels incomplete:\n  " + "\n  ".join(problems))
    # and pip itself resolves them for that interpreter, from this folder alone
    with tempfile.TemporaryDirectory() as target:
        pip("install", "--dry-run", "--ignore-installed", "--no-index", "--find-links", str(dest), "--python-version", "3.12",
            "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "--only-binary=:all:",
            "--target", target, "--no-deps", "--quiet", *sorted(here))
    print(f"verified {len(wheels)} wheels in {dest}: CPython 3.12 / manylinux x86_64, requirements covered")


def missing(dest: Path) -> None:
    """Print the wheels whose distribution this Python does not have (installed ones stay as they are:
    the machine's own numpy, torch, ... are never replaced)."""
    import importlib.metadata as md

    for wheel in sorted(dest.glob("*.whl")):
        try:
            md.version(_metadata(wheel)["Name"])
        except md.PackageNotFoundError:
            print(wheel)


def main(argv) -> int:
    if not argv or argv[0] not in ("gather", "verify", "missing"):
        print(__doc__, file=sys.stderr)
        return 2
    dest = Path(argv[1]) if len(argv) > 1 else DEFAULT_DEST
    {"gather": gather, "verify": verify, "missing": missing}[argv[0]](dest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
