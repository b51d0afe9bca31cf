"""Detectron2's LazyConfigs (Python config files, ``LazyConfig.load``) read with errors that name the
file, the override or the key that is wrong, and written out as text that is the same for the same
config (configs/new_baselines/ and tools/lazyconfig_train_net.py use them).

Detectron2's ``LazyConfig.apply_overrides`` creates any key it is given, so a misspelt override
(``train.max_iters=10``) is silently ignored by the run; here a key must exist, or be an argument
that the callable of its ``L(...)`` node accepts.
"""
from __future__ import annotations

import difflib
import inspect
import re
from pathlib import Path
from typing import Sequence

import yaml
from detectron2.config import LazyConfig
from detectron2.utils.registry import locate
from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError
from .utils.file_safety import normalized, not_a_file

_MISSING = object()


def is_lazy_config(config_file: str) -> bool:
    """Whether a config file is a LazyConfig: Python, or the YAML that LazyConfig.save writes (its keys
    are a LazyConfig's: model, dataloader, train, ...; a yacs config's are MODEL, SOLVER, ...)."""
    path = Path(normalized(config_file))
    if path.suffix == ".py":
        return True
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):  # the yacs reader names what is wrong with it
        return False
    return isinstance(content, dict) and "model" in content


# how ``config_text`` writes a function it cannot name for import: a lambda, or one defined in the config file
_WRITTEN_FUNCTION = re.compile(r"^<.+ at [^<>]+:\d+>$")  # the name may hold <locals> (a function defined in one)
# what inference reads of ``train`` (Detectron2's common/train.py defaults), for a config of only a model
INFERENCE_TRAIN_KEYS = {"device": "cuda", "init_checkpoint": ""}


def load_lazy_config(config_file: str, overrides: Sequence[str] = (), *, for_inference: bool = False) -> DictConfig:
    """``LazyConfig.load`` of a .py (or saved .yaml) LazyConfig, then ``key=value`` overrides.
    ``for_inference``: the ``train`` keys that building and loading the model read (INFERENCE_TRAIN_KEYS)
    are added where the config has none (a config of only a model: Detectron2's common/models/*.py), so
    that they have Detectron2's defaults and can be overridden.

    Raises ConfigError naming the file (missing, not a LazyConfig, failing while it runs), the override,
    or the functions of the model that a saved config.yaml cannot hold.
    """
    path = Path(normalized(config_file))
    if not path.is_file():
        raise ConfigError(f"config file {config_file} {not_a_file(path)}")
    if path.suffix not in (".py", ".yaml", ".yml"):
        raise ConfigError(f"config file {config_file} is not a LazyConfig: give a .py file (or a .yaml one LazyConfig.save wrote)")
    try:
        cfg = LazyConfig.load(str(path))
    except SyntaxError as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"config file {config_file} is not valid Python: {cause.msg} (line {cause.lineno})") from None
    except Exception as exc:  # what the file's own code raised while it ran: named, with where
        raise ConfigError(f"config file {config_file} failed while it was loaded: {type(exc).__name__}: {exc}") from None
    if "model" not in cfg:
        hint = (" It is a yacs config (MODEL, SOLVER, ...): use tools/train_net.py for it."
                if any(str(k).isupper() for k in cfg) else "")
        raise ConfigError(f"config file {config_file} defines no `model`, which a LazyConfig of a detector needs "
                          f"(it defines {sorted(map(str, cfg))}).{hint}")
    if for_inference:
        if "train" not in cfg:
            cfg.train = {}
        for key, value in INFERENCE_TRAIN_KEYS.items():
            if isinstance(cfg.train, DictConfig) and key not in cfg.train:
                cfg.train[key] = value
    apply_overrides(cfg, overrides)
    if not isinstance(cfg.model, DictConfig):
        raise ConfigError(f"model={cfg.model!r} in {config_file} (with the overrides): a LazyConfig's model is a node, "
                          "L(SomeModel)(...)")
    written = [f"{key} = {value}" for key, value in leaves(OmegaConf.to_container(cfg.model, resolve=False), "model")
               if isinstance(value, str) and _WRITTEN_FUNCTION.match(value)]
    if written:
        raise ConfigError(
            f"config file {config_file} holds {', '.join(written)}: a function written in a config file (Detectron2's LSJ "
            "heads' norm is a lambda), which YAML cannot hold, so the saved text only names where it was written. Give "
            "the .py config the run was made from, with the run's overrides (or override these keys)")
    return cfg


def leaves(value, prefix: str = ""):
    """(dotted key, value) of every leaf of nested dicts and lists (a list's entries by index)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        yield prefix, value
        return
    for key, child in items:
        yield from leaves(child, f"{prefix}.{key}" if prefix else str(key))


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Detectron2's ``LazyConfig.apply_overrides``, one ``key=value`` at a time, for keys that exist
    (or arguments that their ``L(...)`` callable takes)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"config override {override!r} is not key=value (LazyConfig overrides are written "
                              "model.backbone.bottom_up.depth=152)")
        try:
            key = parser.parse_overrides([override])[0].key_or_group
        except HydraException as exc:
            key_part, value = (part.strip() for part in override.split("=", 1))
            if re.search(r"\[\d+\]", key_part):  # Python's indexing, where the key takes the index as a part
                dotted = re.sub(r"\[(\d+)\]", r".\1", key_part)
                hint = f"; an entry of a list is a key part by its index: {dotted}={value}"
            elif value[:1] in "[{'\"":
                hint = ""
            else:
                hint = ("; a value with characters such as ( ) or ~, a path for one, needs quotes, in quotes for the "
                        "shell: \"key='value'\"")
            raise ConfigError(f"config override {override!r} cannot be parsed: {_parse_error(str(exc), override)}{hint}") from None
        problem = unknown_key(cfg, key)
        if problem:
            raise ConfigError(f"config override {override!r}: {problem}")
        try:
            LazyConfig.apply_overrides(cfg, [override])
        except (KeyError, ValueError, TypeError) as exc:  # OmegaConf's: e.g. a list value for a dict node
            raise ConfigError(f"config override {override!r}: {exc}") from None
    return cfg


def _parse_error(message: str, override: str) -> str:
    """Hydra's reason, without its link to the grammar; its lexer marks the offending character with a
    caret under the override on the line before, which becomes the character and its position."""
    lines = [line for line in message.splitlines() if line.strip() and not line.startswith("See https://hydra.cc")]
    if len(lines) == 2 and lines[1].strip() == "^" and lines[0].endswith(override):
        at = lines[1].index("^") - (len(lines[0]) - len(override))
        if 0 <= at < len(override):
            return f"{override[at]!r} at position {at + 1} is not allowed there"
    return " ".join(lines) or message


def unknown_key(cfg: DictConfig, key: str):
    """Why ``key`` is no key of ``cfg`` (with the closest ones), or None when it is one or may be
    added: an argument of the callable its parent ``L(...)`` node constructs."""
    if OmegaConf.select(cfg, key, default=_MISSING, throw_on_resolution_failure=False) is not _MISSING:
        return None
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=_MISSING, throw_on_resolution_failure=False) if parent_key else cfg
    if parent is _MISSING:
        return f"{key} is not a config key: {_first_missing(cfg, parent_key)}"
    if isinstance(parent, DictConfig):
        target = callable_target(parent)
        if callable(target) and accepts_argument(target, leaf):
            return None
        takes = f" (and {_name(target)} takes no argument {leaf!r})" if callable(target) else ""
        close = difflib.get_close_matches(leaf, [str(k) for k in parent.keys() if k != "_target_"], n=1)
        hint = f"; did you mean {parent_key + '.' if parent_key else ''}{close[0]}?" if close else ""
        return f"{key} is not a config key{takes}{hint}"
    if isinstance(parent, ListConfig):
        return f"{key}: {parent_key} is a list of {len(parent)} entries"
    return f"{key} is not a config key: {parent_key} is a {type(parent).__name__}, not a node with keys"


def _first_missing(cfg: DictConfig, key: str) -> str:
    """The first part of a dotted key that does not exist, with the closest existing name as a hint."""
    node, done = cfg, []
    for part in key.split("."):
        if isinstance(node, DictConfig) and part in node:
            node, done = node[part], done + [part]
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node, done = node[int(part)], done + [part]
        else:
            choices = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
            close = difflib.get_close_matches(part, choices, n=1)
            return f"{'.'.join(done + [part])} does not exist" + (f"; did you mean {'.'.join(done + close)}?" if close else "")
    return f"{key} cannot be read"


def callable_target(node: DictConfig):
    """The callable of an L(...) node: its _target_, which a saved config (config.yaml) names as text;
    None where there is none or the name cannot be imported here."""
    target = node.get("_target_")
    if isinstance(target, str):
        try:
            return locate(target)
        except Exception:  # ImportError, ValueError for a malformed name, pydoc's error of a module failing on import
            return None
    return target


def accepts_argument(target, name: str) -> bool:
    """Whether the callable of an L(...) node takes the argument ``name``. One that takes any keyword
    (``**kwargs``) takes it too, unless it is a near miss of an argument named where the keywords are
    handed on (a class's to its bases' __init__: Detectron2's StandardROIHeads to ROIHeads), which is
    taken for a misspelling (``num_clases``); a keyword it keeps for itself (Detectron2's Conv2d's
    ``norm``) is no near miss of its base's."""
    named, inits = [], _inits(target)
    for init in inits:
        try:
            parameters = inspect.signature(init).parameters
        except (TypeError, ValueError):  # a builtin without a signature: let it say so when called
            return True
        if name in parameters:
            return True
        named += [n for n, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            if init is inits[0]:  # takes no keyword of any name
                return False
            break
    return not difflib.get_close_matches(name, named, n=1, cutoff=0.8)


def _inits(target) -> list:
    """What a call of ``target`` runs, in the order its keywords are handed on: a function itself; for
    a class, the __init__ of each class along its MRO that defines one (up to object's, which takes none)."""
    if not inspect.isclass(target):
        return [target]
    inits = [vars(cls)["__init__"] for cls in target.__mro__ if "__init__" in vars(cls) and cls is not object]
    return inits or [target]


def _name(obj) -> str:
    """A callable as a dotted name; a lambda, or a function written in the config file itself (no module
    to import it from), by where it is written: its repr would carry an address that changes every run."""
    code = getattr(obj, "__code__", None)
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if code is not None and (getattr(obj, "__name__", "") == "<lambda>" or not module):
        what = "lambda" if getattr(obj, "__name__", "") == "<lambda>" else qualname
        return f"<{what} at {Path(code.co_filename).name}:{code.co_firstlineno}>"
    return f"{module}.{qualname}" if module and qualname else repr(obj)


def _plain(value):
    """Plain YAML data: nodes as dicts and lists, callables by name, other objects by repr."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return _name(value) if callable(value) else repr(value)


def config_text(cfg: DictConfig) -> str:
    """The whole LazyConfig as YAML, interpolations unresolved (``${..num_classes}``): the same text
    for the same config, so that its hash tells runs apart (callables are written by their names,
    as ``LazyConfig.save`` writes ``_target_``)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    return yaml.safe_dump(_plain(container), sort_keys=False, width=120)


__all__ = ["accepts_argument", "apply_overrides", "callable_target", "config_text", "is_lazy_config", "leaves", "load_lazy_config",
           "unknown_key"]
