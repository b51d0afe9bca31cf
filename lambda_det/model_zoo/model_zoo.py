"""Shipped configs by their path under ``configs/`` (see the package docstring): yacs .yaml files
and Detectron2 LazyConfigs (.py, configs/new_baselines/), as Detectron2's own model zoo has both."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from detectron2.config import instantiate
from detectron2.modeling import build_model

from ..config import load_config
from ..errors import ConfigError
from ..lazy_config import load_lazy_config

CONFIG_ROOT = Path(__file__).resolve().parent / "configs"


def list_configs() -> List[str]:
    """Every shipped config, as the relative path ``get_config_file`` takes."""
    return sorted(str(p.relative_to(CONFIG_ROOT)) for pattern in ("*.yaml", "*.py") for p in CONFIG_ROOT.rglob(pattern))


def get_config_file(config_path: str) -> str:
    """The absolute path of a shipped config, e.g. "COCO-InstanceSegmentation/mask_rcnn_LambdaR_101_FPN_paper.yaml"."""
    path = (CONFIG_ROOT / config_path).resolve()
    if not path.is_file() or not path.is_relative_to(CONFIG_ROOT):  # "/etc/x.yaml", "../../../setup.py" ship not
        close = difflib.get_close_matches(config_path, list_configs(), n=3)
        hint = f"; did you mean {close}?" if close else f"; shipped: {list_configs()}"
        raise ConfigError(f"{config_path!r} is not a config that ships with lambda_det{hint}")
    return str(path)


def get_config(config_path: str, opts: Sequence[str] = (), *, trained: bool = False):
    """A .yaml: the yacs config (Detectron2's defaults + lambda_det's keys + the file + KEY VALUE
    ``opts``), not frozen. A .py: the LazyConfig (``LazyConfig.load``) with ``key=value`` ``opts``.

    ``trained`` is Detectron2's argument (also taken in its place, ``get_config(path, True)``): True
    raises, as in ``get``, since no trained weights are published."""
    if isinstance(opts, bool):  # Detectron2's get_config(config_path, trained)
        trained, opts = trained or opts, ()
    path = get_config_file(config_path)
    if trained:
        raise ConfigError(no_trained_weights(config_path))
    if config_path.endswith(".py"):
        return load_lazy_config(path, opts)
    return load_config(path, opts)


def no_trained_weights(config_path: str) -> str:
    return (f"no trained weights are published for {config_path}: train one (tools/train_net.py) and load it with "
            "MODEL.WEIGHTS, or ask with trained=False for the config (get_config) or a randomly initialized model (get)")


def get(config_path: str, trained: bool = False, device: Optional[str] = None) -> torch.nn.Module:
    """The model a shipped config builds, randomly initialized, on ``device`` (None: CUDA where
    there is one, else the CPU), in training mode: Detectron2's ``model_zoo.get``, less the weights.

    ``trained=True`` would load trained weights, which lambda_det does not publish (the paper's
    COCO models were never released): it raises, rather than returning a random model as trained.
    The initial weights a config names (``MODEL.WEIGHTS``: timm's converted ImageNet weights, a
    file made on your machine) are left to the training tools, which check them.
    """
    if trained:
        get_config_file(config_path)  # a path that is no shipped config is named as such first
        raise ConfigError(no_trained_weights(config_path))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if config_path.endswith(".py"):
        return instantiate(get_config(config_path).model).to(device)
    return build_model(get_config(config_path, ["MODEL.DEVICE", device]))
