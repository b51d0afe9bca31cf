"""Config keys of lambda_det: one function that adds new nodes and never changes Detectron2's defaults."""
import difflib
import re
from pathlib import Path
from typing import Sequence

import yaml

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

from .errors import ConfigError
from .lazy_config import is_lazy_config
from .utils.file_safety import normalized, not_a_file


def add_lambda_config(cfg: CN) -> CN:
    """Add MODEL.LAMBDA_RESNET and INPUT.LSJ to a Detectron2 config (idempotent).

    Usage:
        cfg = get_cfg(); add_lambda_config(cfg); cfg.merge_from_file("configs/...yaml")
    """
    if "LAMBDA_RESNET" in cfg.MODEL:
        return cfg
    # Set MODEL.BACKBONE.NAME to "build_lambda_resnet_fpn_backbone" (or "build_lambda_resnet_backbone")
    # to use these; MODEL.BACKBONE.FREEZE_AT keeps Detectron2's meaning (0 = train everything, which
    # training from scratch needs; 2 = freeze stem and res2).
    cfg.MODEL.LAMBDA_RESNET = CN()
    c = cfg.MODEL.LAMBDA_RESNET
    # Depth of the paper's family: 50, 101, 152, 200, 270, 350 or 420 (blocks per stage from App. D).
    c.DEPTH = 50
    # Blocks per stage [res2, res3, res4, res5], overriding DEPTH for a custom (e.g. small) network.
    c.STAGE_BLOCKS = []
    # Which 3x3s are lambda layers: "lambda" (the paper's LambdaResNet-DEPTH placement), "lambda-c4"
    # (LambdaResNet-DEPTH-C4: all of c4 and c5), "conv" (the ResNet-RS-style baseline), "all-lambda"
    # (every 3x3), or "custom" (LAYOUT below).
    c.VARIANT = "lambda"
    # With VARIANT "custom": 4 entries, each one letter for a whole stage or one per block,
    # C = conv, L = lambda. ["C", "C", "L", "L"] is the paper's C-C-L-L hybrid.
    c.LAYOUT = []
    # Bottleneck width of res2; stages double it; block output = 4 x width.
    c.WIDTH_PER_GROUP = 64
    # Norm of the whole backbone, lambda layers' query/value norms included: a name of Detectron2's
    # get_norm (BN, SyncBN, FrozenBN, GN, ...).
    c.NORM = "BN"
    # Squeeze-excite on the conv blocks of SE_STAGES; hidden = SE_RATIO x block output channels.
    c.SE_RATIO = 0.25
    # Stages whose conv blocks carry SE. The paper's counts imply ["res2", "res3"] for its
    # LambdaResNets and all four stages for "ResNet + SE" (see tests/test_parameter_counts.py).
    c.SE_STAGES = []
    # Start the gamma of every block's last norm at zero (ResNet-RS; the paper trains this way).
    c.ZERO_INIT_RESIDUAL = True
    # Lambda layer query/key depth k (Sec. 3, App. E.1).
    c.DIM_K = 16
    # Number of queries h ("heads"); they share one lambda. Bottleneck width must divide by it.
    c.HEADS = 4
    # Intra-depth u (App. B); the paper pairs u = 4 with a 7x7 scope.
    c.DIM_U = 1
    # Local scope r of the position lambdas (odd; the paper's 23), or 0 for global position lambdas.
    c.SCOPE = 23
    # Largest side of a map a global-scope (SCOPE 0) lambda layer accepts; sizes its embedding table.
    c.GLOBAL_MAX_SIZE = 64
    # Position-term implementation, one of lambda_det.layers.position_lambdas.IMPL_CHOICES (auto, conv, conv2d,
    # conv3d, einsum, fft, fused, triton): all the same function; "auto" picks the fastest for the shape and
    # device (fused on CPUs, triton on CUDA).
    c.IMPL = "auto"
    # Features the backbone returns (the FPN reads MODEL.FPN.IN_FEATURES out of these).
    c.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # The rest reproduce timm's ImageNet-trained lambda ResNets (lambda_resnet26t / 50ts, see
    # lambda_det/modeling/timm_lambda.py); the defaults are the paper's network.
    # Stem: "deep" (ResNet-RS: 3x3 convs of STEM_WIDTH/2, STEM_WIDTH/2, STEM_WIDTH and a stride-2 3x3 conv)
    # or "tiered" (timm: 3x3 convs of 3/8, 1/2 and all of STEM_WIDTH, then a 3x3 max-pool).
    c.STEM = "deep"
    # Output channels of the stem; its convs are the fractions of it that STEM names.
    c.STEM_WIDTH = 64
    # Downsampling shortcut: "avg" (ResNet-D: 2x2 average pool, then 1x1 conv) or "conv" (strided 1x1 conv).
    c.SHORTCUT = "avg"
    # Non-linearity of the stem and blocks: "relu" or "silu".
    c.ACTIVATION = "relu"
    # Pooling after a stride-2 lambda layer: "avg3x3" (the paper, App. D) or "avg2x2" (timm).
    c.LAMBDA_POOL = "avg3x3"
    # A learned bias on the position lambdas (timm's conv_lambda has one; the paper does not).
    c.POSITION_BIAS = False

    # Large-scale jitter (Ghiasi et al. 2021), the paper's COCO augmentation, read by
    # lambda_det.data.build_train_mapper: resize so the image fits IMAGE_SIZE x IMAGE_SIZE times a scale
    # drawn from [MIN_SCALE, MAX_SCALE], then a random IMAGE_SIZE x IMAGE_SIZE crop padded to that size
    # (Detectron2's ResizeScale + FixedSizeCrop). Test images follow INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST.
    cfg.INPUT.LSJ = CN()
    # On in the paper's configs (Base-Paper-LSJ.yaml); off keeps Detectron2's INPUT.MIN_SIZE_TRAIN resizing.
    cfg.INPUT.LSJ.ENABLED = False
    # Side of the square training crop (the paper's 1024).
    cfg.INPUT.LSJ.IMAGE_SIZE = 1024
    # Smallest random scale (the paper's 0.1).
    cfg.INPUT.LSJ.MIN_SCALE = 0.1
    # Largest random scale (the paper's 2.0).
    cfg.INPUT.LSJ.MAX_SCALE = 2.0
    return cfg


def load_config(config_file: str, opts: Sequence[str] = ()) -> CN:
    """Detectron2's defaults + lambda_det's keys, then the YAML file, then KEY VALUE overrides.

    Raises ConfigError naming the file, key or override that is wrong.
    """
    cfg = add_lambda_config(get_cfg())
    path = Path(normalized(config_file))
    if not path.is_file():
        raise ConfigError(f"config file {config_file} {not_a_file(path)}")
    if is_lazy_config(str(path)):
        kind = "Python" if path.suffix == ".py" else "YAML with a LazyConfig's keys: model, dataloader, train"
        raise ConfigError(f"config file {config_file} is a LazyConfig ({kind}), and this tool reads yacs configs "
                          "(MODEL, SOLVER, ...): train and evaluate it with tools/lazyconfig_train_net.py (the demo and "
                          "analyze_model read both kinds; export_model and benchmark_detector, as Detectron2's export, yacs only)")
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {config_file} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {config_file} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(content, dict):
        kind = "empty" if content is None else f"a {type(content).__name__}"
        raise ConfigError(f"config file {config_file} is {kind}, not a mapping of config keys (e.g. MODEL: ...)")
    try:
        cfg.merge_from_file(str(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {config_file} is not valid YAML: {' '.join(str(exc).split())}") from None
    except FileNotFoundError as exc:  # a _BASE_ it names
        raise ConfigError(f"config file {config_file}: {exc.strerror}: {exc.filename}") from None
    except (KeyError, AssertionError, ValueError) as exc:
        raise ConfigError(f"config file {config_file}: {_explain(cfg, exc)}") from None
    except (TypeError, AttributeError) as exc:  # a _BASE_ that is not a mapping
        raise ConfigError(f"config file {config_file} (or a _BASE_ it names) is not a mapping of config keys: {exc}") from None
    except RecursionError:  # yacs follows _BASE_ without remembering where it has been
        raise ConfigError(f"config file {config_file}: its _BASE_ chain comes back to a file it already named "
                          "(a file that is its own base, directly or through others)") from None
    opts = list(opts)
    joined = next((o for o in opts[::2] if isinstance(o, str) and re.match(r"[A-Za-z_][\w.]*=", o)), None)
    if joined is not None:
        raise ConfigError(f"config overrides of a yacs config are KEY VALUE pairs (MODEL.WEIGHTS path/to/model.pth), "
                          f"not KEY=VALUE as a LazyConfig's: {joined!r}")
    if len(opts) % 2:
        raise ConfigError(f"config overrides must be KEY VALUE pairs; {opts[-1]!r} has no value (overrides: {opts})")
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError) as exc:
        raise ConfigError(f"config override: {_explain(cfg, exc)}") from None
    for key in ("OUTPUT_DIR", "MODEL.WEIGHTS"):  # paths the checks must see as the tools will use them
        node, _, leaf = key.rpartition(".")
        owner = cfg.get(node) if node else cfg
        if owner.get(leaf):
            owner[leaf] = normalized(owner[leaf])
    return cfg


def set_checked(cfg: CN, key: str, value) -> None:
    """``cfg[key] = value`` with the type check of a KEY VALUE override (yacs' own); ConfigError
    "KEY takes an integer (its default is 50), not text" when the value has another type."""
    parent, _, leaf = key.rpartition(".")
    owner = cfg
    for part in parent.split(".") if parent else []:
        owner = owner[part]
    if isinstance(value, str) and isinstance(owner.get(leaf), str):
        owner[leaf] = value  # text stays text (a KEY VALUE override's parsing would make "None" None, "101" 101)
        return
    try:
        cfg.merge_from_list([key, value])
    except ValueError as exc:
        mismatch = _type_mismatch(str(exc.args[0]) if exc.args else str(exc))
        raise ConfigError(f"{key} {mismatch[1]}" if mismatch else _explain(cfg, exc)) from None


def _type_mismatch(text: str):
    """(key, "takes ... (its default is ...), not ...", value) from yacs' type-mismatch message, or None."""
    mismatch = re.search(r"Type mismatch \(<class '([\w.]+)'> vs\. <class '([\w.]+)'>\) with values \((.*) vs\. (.*)\) for config key: ([\w.]+)", text)
    if not mismatch:
        return None
    wanted, given, default, value, key = mismatch.groups()
    if (wanted, given) == ("float", "int"):
        return key, f"takes a number with a decimal point, e.g. {value}.0 (its default is {default})", value
    kinds = {"int": "an integer", "float": "a number", "str": "text", "bool": "True or False", "tuple": "a tuple",
             "list": "a list"}
    return key, f"takes {kinds.get(wanted, wanted)} (its default is {default}), not {kinds.get(given, given)}", value


def _explain(cfg: CN, exc: Exception) -> str:
    """yacs' messages, with the closest existing key for a misspelt one."""
    text = str(exc.args[0]) if exc.args else str(exc)
    mismatch = _type_mismatch(text)
    if mismatch:
        key, takes, value = mismatch
        return f"{key} {value}: {key} {takes}"
    match = re.search(r"Non-existent (?:config )?key: ([\w.]+)", text)
    if not match:
        return text
    key = match.group(1)
    parent, _, leaf = key.rpartition(".")
    node = cfg
    for part in parent.split(".") if parent else []:
        node = node.get(part) if isinstance(node, CN) else None
    close = difflib.get_close_matches(leaf, list(node.keys()), n=1) if isinstance(node, CN) else []
    hint = f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
    return f"{key} is not a config key{hint}"
