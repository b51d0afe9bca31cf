"""lambda_det: LambdaNetworks (Bello, ICLR 2021) backbones for Detectron2.

torch, torchvision and detectron2 are not listed in install_requires on purpose: they must be a
matched build (see scripts/setup_env.sh and README), and pip would otherwise pull whatever the
index serves over a working CUDA build of the user's.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path("lambda_det/__init__.py").read_text()).group(1)

setup(
    name="lambda_det",
    version=VERSION,
    description="LambdaResNet backbones (LambdaNetworks, Bello 2021) for Detectron2 Mask R-CNN",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lambda_det", "lambda_det.*"]),
    # the configs (lambda_det.model_zoo: yacs .yaml, LazyConfig .py) and the fused operator's C++ source, built on first use
    package_data={"lambda_det.model_zoo": ["configs/*.yaml", "configs/*/*.yaml", "configs/*/*.py"],
                  "lambda_det.layers": ["csrc/*.cpp"]},
    install_requires=[
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "pycocotools>=2.0.2",
        "shapely>=2",  # Detectron2's FixedSizeCrop (LSJ) clips polygon masks with it, importing it only then
        "opencv-python-headless>=4.6",
        "matplotlib>=3.5",
        "numpy<2",  # detectron2 0.7's pin
        "Pillow>=9",
        "tensorboard",
        "setuptools<81",  # detectron2.model_zoo imports pkg_resources, removed in setuptools 81
        "ninja",  # builds the fused CPU position-term operator (lambda_det/layers/fused.py) on first use
    ],
    extras_require={
        # timm: the tests compare the timm lambda models rebuilt here with timm's own
        "test": ["pytest>=7", "pytest-timeout", "timm>=1.0"],
        # tools/export_model.py --format onnx, and its tests (setup installs it with "test")
        "export": ["onnx>=1.14", "onnxruntime>=1.16"],
        # competitors measured side by side by tools/benchmark_lambda.py
        "bench": ["timm>=1.0", "lambda-networks>=0.4"],
        # tools/convert_timm_to_d2.py (--pretrained downloads through timm; .safetensors files)
        "timm": ["timm>=1.0", "safetensors"],
    },
)
