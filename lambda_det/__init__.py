"""lambda_det: LambdaNetworks (Bello, ICLR 2021) backbones for Detectron2.

``import lambda_det`` registers the LambdaResNet backbones in Detectron2's ``BACKBONE_REGISTRY``,
the toy datasets in its ``DatasetCatalog`` and the lambda layer's FLOP handle in fvcore; importing
it again is harmless. ``lambda_det.model_zoo`` finds the configs that ship with the package.
"""
__version__ = "0.1.0"

try:
    import detectron2  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by tests/test_environment.py
    raise ImportError(
        f"lambda_det needs detectron2, which is not importable ({exc}). Run scripts/setup_env.sh "
        "(or `make setup`), or install detectron2 into this environment; "
        "`python lambda_det/collect_env.py` reports what is missing."
    ) from exc

from .config import add_lambda_config, load_config  # noqa: E402
from .layers import LambdaLayer  # noqa: E402
from . import data, model_zoo, modeling  # noqa: E402,F401  (registers the backbones and datasets)

__all__ = ["add_lambda_config", "load_config", "LambdaLayer", "model_zoo", "modeling", "__version__"]
