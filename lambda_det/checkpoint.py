"""Reading weights: errors that name the file and what is wrong with it, weights that must fit the
model they are loaded into, the intact checkpoints of a run whose last one is damaged, and timm's
weight files in, converted Detectron2 checkpoints out."""
from __future__ import annotations

import argparse
import errno
import filecmp
import io
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from omegaconf import DictConfig

from .errors import ConversionError, OutputError, WeightsError, raised_while_handling
from .lazy_config import config_text
from .utils.file_safety import no_hard_links, temporary_path, write_bytes, write_text

logger = logging.getLogger("lambda_det")


def is_local(path: str) -> bool:
    return "://" not in str(path)


def weights_file(path: str) -> str:
    """The file a local MODEL.WEIGHTS names: Detectron2 reads options after a "?"
    (weights.pth?matching_heuristics=True)."""
    return urlparse(str(path))._replace(query="").geturl()


def weights_problem(path: str) -> Optional[str]:
    """What is wrong with a local weights file, or None when it opens as a checkpoint.

    Cheap: PyTorch zip checkpoints are memory-mapped, so a large file is not read.
    """
    path = weights_file(path)
    problem = file_problem(path)
    if problem:
        return problem
    file = Path(path)
    try:
        if file.suffix == ".pkl":
            with open(file, "rb") as f:
                loaded = pickle.load(f, encoding="latin1")
        elif zipfile.is_zipfile(file):
            loaded = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
        else:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # every failure is reported as a fact about the file
        return describe_load_error(file, exc)
    if not isinstance(loaded, dict):
        return f"is not a checkpoint: it holds a {type(loaded).__name__}, not a dict of tensors"
    return None


def file_problem(path: str) -> Optional[str]:
    """Missing, not a file, or empty: what can be told without reading the file."""
    file = Path(path)
    if not file.exists():
        return "no such file"
    if not file.is_file():
        return "is a directory, not a checkpoint file" if file.is_dir() else "is not a regular file"
    if file.stat().st_size == 0:
        return "is empty (0 bytes)"
    return None


MAGIC = [
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x93NUMPY", "a NumPy array file (.npy)"),
]


def describe_load_error(file: Path, exc: BaseException) -> str:
    """torch's / pickle's failure in words about the file (never the advice to unpickle unsafely)."""
    text = str(exc)
    with open(file, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK"):
        if "central directory" in text or "zip archive" in text or isinstance(exc, EOFError) or _zip_damaged(file):
            return "is truncated or corrupt (a zip archive whose end is missing: a save that was cut off, or a partial copy)"
        return f"is a zip archive that torch cannot read as a checkpoint ({text.splitlines()[0][:160] if text else type(exc).__name__})"
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return f"is not a checkpoint: it is {kind}"
    if head[:1] == b"\x80":  # a pickle (PyTorch's legacy format, Detectron2's .pkl)
        if isinstance(exc, EOFError) or "Ran out of input" in text or "truncated" in text:
            return "is truncated (it ends in the middle of its data)"
        if "Weights only load failed" in text:
            return ("holds Python objects other than tensors and plain containers, which torch does not load safely; "
                    "it is not a checkpoint this project wrote")
        return f"is a pickle that is not a checkpoint ({type(exc).__name__})"
    try:
        head.decode("utf-8")
        return "is not a checkpoint: it is a text file"
    except UnicodeDecodeError:
        return "is not a checkpoint (neither a PyTorch archive nor a pickle)"


def _zip_damaged(file: Path) -> bool:
    """A zip archive whose directory or members do not fit in the file (cut off, or corrupt)."""
    try:
        size = file.stat().st_size
        with zipfile.ZipFile(file) as archive:
            return any(info.header_offset + info.compress_size > size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return True


class Checkpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose errors name the file, and which can refuse weights that do not fit.

    ``strict=True``: missing, unexpected or differently shaped tensors raise WeightsError with a
    short summary (evaluation, the demo, --resume). ``strict=False`` keeps Detectron2's warnings,
    which fine-tuning with new heads relies on.
    """

    def __init__(self, model, save_dir: str = "", *, strict: bool = False, cfg=None, **checkpointables) -> None:
        super().__init__(model, save_dir, **checkpointables)
        self.strict = strict
        self.cfg = cfg
        self._path: Optional[str] = None

    def save(self, name: str, **kwargs) -> None:
        """fvcore's save, written under a temporary name and renamed when complete: a full disk (or a
        kill) leaves the earlier checkpoints and last_checkpoint as they were, and no partial file
        (after a kill -9, the next run in the folder removes it: ``run_folder_lock``).
        A failed write is an OSError naming the checkpoint."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict(), **{k: obj.state_dict() for k, obj in self.checkpointables.items()}, **kwargs}
        target = Path(self.save_dir) / f"{name}.pth"
        self.logger.info("Saving checkpoint to %s", target)
        partial = temporary_path(target)
        try:
            with open(partial, "wb") as f:
                torch.save(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, target)
        except BaseException as exc:
            partial.unlink(missing_ok=True)
            # torch's zip writer fails in its cleanup after a Ctrl-C or a full disk mid-save: its RuntimeError
            # ("unexpected pos") would hide the interrupt, or the OSError that says what happened
            if raised_while_handling(exc, KeyboardInterrupt):
                raise KeyboardInterrupt from None
            failed = raised_while_handling(exc, OSError)
            if failed is not None:
                raise OSError(failed.errno, failed.strerror or str(failed), str(target)) from None
            raise
        self.tag_last_checkpoint(target.name)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        try:
            write_text(Path(self.save_dir) / "last_checkpoint", last_filename_basename)
        except OutputError as exc:
            raise OSError(errno.EIO, str(exc), str(Path(self.save_dir) / "last_checkpoint")) from None

    def load(self, path, *args, **kwargs):
        problem = file_problem(weights_file(path)) if path and is_local(path) else None
        if problem:
            raise WeightsError(f"weights {path} {problem}")
        self._path = path
        try:
            return super().load(path, *args, **kwargs)
        except (OSError, RuntimeError) as exc:
            if path and not is_local(path):  # Detectron2 downloads URLs on first use
                raise WeightsError(f"weights {path} could not be fetched: {exc}") from None
            raise
        finally:
            self._path = None

    def _torch_load(self, f):
        loaded = super()._torch_load(f)
        if not isinstance(loaded, dict):
            raise WeightsError(f"weights {f} is not a checkpoint: it holds a {type(loaded).__name__}, not a dict of tensors")
        return loaded

    def _load_file(self, filename):
        try:
            checkpoint = super()._load_file(filename)
        except WeightsError:
            raise
        except Exception as exc:
            raise WeightsError(f"weights {filename} {describe_load_error(Path(filename), exc)}") from None
        if not isinstance(checkpoint.get("model"), dict):
            raise WeightsError(f"weights {filename} is not a checkpoint: it holds no state dict of tensors")
        return checkpoint

    def _load_model(self, checkpoint):
        bad = [k for k, v in checkpoint["model"].items() if not hasattr(v, "shape")]
        if bad:
            raise WeightsError(f"weights {self._path} is not a state dict of tensors (e.g. {bad[0]!r} is a {type(checkpoint['model'][bad[0]]).__name__})")
        names = list(checkpoint["model"])
        incompatible = super()._load_model(checkpoint)
        # every tensor of the model missing (after Detectron2's renaming and shape checks; it takes
        # pixel_mean/std from the config): the run would start from random weights behind a wall of
        # warnings, whatever it was asked to load
        expected = set(self.model.state_dict()) - {"pixel_mean", "pixel_std"}
        if expected and expected <= set(incompatible.missing_keys):
            if incompatible.incorrect_shapes:  # the names fit, the shapes do not: the report lists them
                raise WeightsError(fit_report(self._path, incompatible, self.cfg) + "\n  (nothing of it would be loaded)")
            raise WeightsError(nothing_fits(self._path, names))
        return incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        if self.strict and (incompatible.missing_keys or incompatible.unexpected_keys or incompatible.incorrect_shapes):
            raise WeightsError(fit_report(self._path, incompatible, self.cfg))
        super()._log_incompatible_keys(incompatible)


def nothing_fits(path: str, names: Sequence[str]) -> str:
    """The message for weights of which no tensor fits the model."""
    if not names:
        return f"weights {path} hold no tensors, so nothing would be loaded"
    text = (f"weights {path}: none of its {len(names)} tensors fits the model this config builds (its names start "
            f"like {', '.join(repr(n) for n in names[:3])}), so nothing would be loaded")
    # timm's LambdaResNets (ByobNet) keep their blocks under stages.N; converted files under backbone.
    if any(n.startswith("stages.") for n in names) and not any(n.startswith("backbone.") for n in names):
        text += (f"; it looks like a timm state dict: convert it first with "
                 f"python tools/convert_timm_to_d2.py {path} --output <new file>.pth, and load that")
    return text


def fit_report(path: str, incompatible, cfg=None, limit: int = 4) -> str:
    """A few lines on what of a checkpoint does not fit the model (not a line per tensor)."""
    lines = [f"weights {path} do not fit the model this config builds:"]
    if incompatible.incorrect_shapes:
        shown = [f"{k} {tuple(a)} in the file, {tuple(b)} in the model" for k, a, b in incompatible.incorrect_shapes[:limit]]
        more = len(incompatible.incorrect_shapes) - limit
        lines.append(f"  other shapes ({len(incompatible.incorrect_shapes)}): " + "; ".join(shown) + (f"; ... {more} more" if more > 0 else ""))
    # fvcore counts a tensor of another shape as missing too (it is left out of the load): said once, above
    other_shape = {k for k, _, _ in incompatible.incorrect_shapes}
    missing = [k for k in incompatible.missing_keys if k not in other_shape]
    for keys, what in ((missing, "in the model but not in the file"),
                       (incompatible.unexpected_keys, "in the file but not in the model")):
        if keys:
            lines.append(f"  {what} ({len(keys)} tensors): {_group(keys, limit)}")
    saved_cfg = Path(path).parent / "config.yaml"
    if saved_cfg.is_file():
        differences = config_differences(saved_cfg, cfg) if cfg is not None else []
        if differences:
            lines.append(f"  the run that saved it used {saved_cfg}, which differs in: " + "; ".join(differences))
        else:
            lines.append(f"  the run that saved it left its config in {saved_cfg}")
    lines.append("  (pass the config the weights were trained with, or weights trained with this config)")
    return "\n".join(lines)


def _group(keys: Sequence[str], limit: int) -> str:
    modules: Dict[str, int] = {}
    for key in keys:
        module = ".".join(key.split(".")[:-1][:5]) or key
        modules[module] = modules.get(module, 0) + 1
    names = sorted(modules)
    shown = ", ".join(f"{m} ({modules[m]})" for m in names[:limit])
    return shown + (f", ... {len(names) - limit} more modules" if len(names) > limit else "")


def config_differences(saved_config: Path, cfg, limit: int = 6) -> List[str]:
    """The model's values in a saved config.yaml that differ from ``cfg``: MODEL.* of a yacs config,
    model.* of a LazyConfig (weights, device and test-time values aside: they do not shape the weights)."""
    try:
        saved = yaml.safe_load(saved_config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    lazy = isinstance(cfg, DictConfig)
    root = "model" if lazy else "MODEL"
    if not isinstance(saved, dict) or not isinstance(saved.get(root), dict):
        return []
    ours = _flatten(yaml.safe_load(config_text(cfg) if lazy else cfg.dump())[root], root)
    theirs = _flatten(saved[root], root)
    skip = {"MODEL.WEIGHTS", "MODEL.DEVICE"}

    def test_time(key: str) -> bool:
        leaf = key.rpartition(".")[2]
        return leaf.endswith("_TEST") or leaf.startswith("test_")

    keys = [k for k in sorted(set(ours) | set(theirs)) if k not in skip and not test_time(k) and ours.get(k) != theirs.get(k)]
    def value(side: Dict[str, object], key: str) -> str:  # a key one side leaves out is at its callable's default
        return repr(side[key]) if key in side else "its default"

    shown = [f"{k} = {value(theirs, k)} there, {value(ours, k)} here" for k in keys[:limit]]
    return shown + ([f"... {len(keys) - limit} more"] if len(keys) > limit else [])


def _flatten(node, prefix: str) -> Dict[str, object]:
    """{dotted key: value}; a list of nodes (a cascade's box predictors) by index, a list of values whole."""
    if isinstance(node, list) and any(isinstance(item, dict) for item in node):
        node = {str(i): item for i, item in enumerate(node)}
    if not isinstance(node, dict):
        return {prefix: node}
    out: Dict[str, object] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}"))
    return out


def read_timm_weights(path) -> Dict[str, torch.Tensor]:
    """The state dict in a timm checkpoint file (.pth / .pt / .bin / .safetensors), unwrapped from
    {"state_dict": ...}, {"model": ...} or {"state_dict_ema": ...}. Raises ConversionError naming why not."""
    path = Path(path)
    if path.suffix == ".safetensors":
        problem = file_problem(str(path))
        if problem:
            raise ConversionError(problem)
        try:
            from safetensors.torch import load_file  # optional: only the hub's files need it

            return load_file(str(path))
        except ImportError:
            raise ConversionError("is a .safetensors file, which needs the 'safetensors' package (pip install safetensors)") from None
        except Exception as exc:  # safetensors' own errors: a header or size that does not fit
            raise ConversionError(f"is not a readable safetensors file ({str(exc).splitlines()[0][:160]})") from None
    # timm's training checkpoints (CheckpointSaver: model_best.pth.tar) also hold its argparse.Namespace
    with torch.serialization.safe_globals([argparse.Namespace]):
        problem = weights_problem(str(path))
        if problem:
            raise ConversionError(problem)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    return loaded


def save_detectron2_weights(path, converted: Dict[str, torch.Tensor], report: dict, source: str, replace: bool = True) -> None:
    """A checkpoint MODEL.WEIGHTS loads into a LambdaResNet-FPN Mask R-CNN (keys under backbone.bottom_up);
    ``replace=False`` leaves a file at ``path`` as it is, one written since the caller's check included."""
    payload = {
        "model": {f"backbone.bottom_up.{k}": v for k, v in converted.items()},
        "__author__": "lambda_det tools/convert_timm_to_d2.py",
        "matching_heuristics": False,
        "timm_model": report["model"],
        "source": source,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_bytes(Path(path), buffer.getvalue(), replace)


def checkpoint_iteration(name: str) -> Optional[int]:
    match = re.fullmatch(r"model_(\d+)\.pth", name)
    return int(match.group(1)) if match else None


def intact_checkpoints(output_dir: Path, exclude: Sequence[Path] = ()) -> List[Tuple[Path, Optional[int]]]:
    """(file, iteration) of the checkpoints in a run directory that open, newest first."""
    excluded = {Path(p).resolve() for p in exclude}
    found = []
    for path in Path(output_dir).glob("model_*.pth"):
        if path.resolve() in excluded:
            continue
        iteration = checkpoint_iteration(path.name)
        found.append((path, iteration if iteration is not None else float("inf")))
    found.sort(key=lambda item: (item[1], item[0].stat().st_mtime), reverse=True)
    return [(p, None if it == float("inf") else it) for p, it in found if weights_problem(str(p)) is None]


def check_resume(output_dir: str) -> Optional[Path]:
    """The checkpoint --resume will load (None: the run starts at iteration 0, there is none);
    WeightsError, changing nothing, when it is damaged or when checkpoints exist that no
    last_checkpoint names (Detectron2 would then start from scratch and overwrite them)."""
    out = Path(output_dir)
    marker = out / "last_checkpoint"
    if not marker.is_file():
        intact = intact_checkpoints(out) if out.is_dir() else []
        if not intact:
            weights = sorted(out.glob("model_*.pth")) if out.is_dir() else []
            if weights:  # files of the user's, or damaged ones: a run from scratch would write over them
                raise WeightsError(
                    f"--resume: {out} holds {', '.join(p.name for p in weights[:3])}, but no checkpoint a run can "
                    "continue from (none records its iteration and opens); a run from scratch would replace them, "
                    "so nothing was changed: train into another OUTPUT_DIR (MODEL.WEIGHTS to fine-tune from one)")
            return None
        lines = [f"--resume: {out} holds checkpoints but no last_checkpoint file naming the one to continue from "
                 "(Detectron2 would start from scratch and overwrite them); nothing was changed."]
        lines.append(_how_to_resume(intact, marker))
        raise WeightsError("\n".join(lines))
    name = marker.read_text().strip()
    if not name:
        problem, last = "is empty", None
    else:
        last = out / name
        problem = weights_problem(str(last))
        if problem is None and saved_iteration(last) is None:
            raise WeightsError(
                f"--resume: {last} (named in {marker}) records no training iteration: it holds weights, not a run "
                "to continue, and resuming would train over it; nothing was changed. Fine-tune from it instead: "
                f"MODEL.WEIGHTS {last} with another OUTPUT_DIR")
        if problem is None:
            final = out / "model_final.pth"
            final_problem = weights_problem(str(final)) if final.exists() and final.name != name else None
            if final_problem:  # killed while writing it: training would end at once and leave it damaged
                raise WeightsError(
                    f"--resume: {final} {final_problem}; nothing was changed. The run's last intact checkpoint is "
                    f"{last}: move the damaged file away (mv {final} {final}.damaged) and run the same command "
                    "again with --resume to write it anew")
            return last
    intact = intact_checkpoints(out, exclude=[last] if last else [])
    what = f"{marker} is empty" if last is None else f"the last checkpoint {last} (named in {marker}) {problem}"
    lines = [f"--resume: {what}; nothing was changed."]
    if intact:
        lines.append(_how_to_resume(intact, marker))
    else:
        lines.append(f"  No intact checkpoint is left in {output_dir}: start a new run in another OUTPUT_DIR.")
    raise WeightsError("\n".join(lines))


def kept_final_name(final: Path, iteration: int) -> Path:
    """The name a finished run's model_final.pth keeps when the run trains on: the periodic
    checkpoints' name for its iteration (Detectron2's ``model_{iteration:07d}.pth``), which often holds
    the same weights already; if a file of other content has it, ``model_{iteration:07d}.N.pth``."""
    final = Path(final)
    name, n = final.with_name(f"model_{iteration:07d}.pth"), 0
    while name.exists() and not filecmp.cmp(name, final, shallow=False):
        n += 1
        name = final.with_name(f"model_{iteration:07d}.{n}.pth")
    return name


def keep_final_weights(output_dir: str, max_iter: int) -> Optional[Path]:
    """Before --resume trains a finished run on to a longer ``max_iter``: its model_final.pth, which the
    longer run's end replaces, also under ``kept_final_name`` (a hard link, no copy: checkpoints are
    saved by renaming a new file over the old name, so the link keeps the old weights), unless a file
    has that name. Returns the kept file, or None when there is nothing to keep."""
    last = check_resume(output_dir)
    if last is None or last.name != "model_final.pth":
        return None
    iteration = saved_iteration(last)
    if iteration is None or iteration + 1 >= max_iter:
        return None
    kept = kept_final_name(last, iteration)
    if kept.exists():  # the same weights under that name already (a periodic checkpoint at the last iteration)
        return None
    try:
        os.link(last, kept)
    except OSError as exc:
        if not no_hard_links(exc):
            raise OSError(exc.errno, exc.strerror, str(kept)) from None
        write_bytes(kept, last.read_bytes(), replace=False)  # a copy, written whole or not at all
    return kept


def saved_iteration(path: Path) -> Optional[int]:
    """The iteration a checkpoint was saved at (Detectron2 stores it beside the weights), or None."""
    try:
        loaded = torch.load(path, map_location="cpu", mmap=zipfile.is_zipfile(path), weights_only=True)
    except Exception:  # not a checkpoint Detectron2 wrote: its iteration is unknown
        return None
    iteration = loaded.get("iteration") if isinstance(loaded, dict) else None
    return iteration if isinstance(iteration, int) else None


def _how_to_resume(intact: List[Tuple[Path, Optional[int]]], marker: Path) -> str:
    path, iteration = intact[0]
    at = f" (iteration {iteration})" if iteration is not None else ""
    return (f"  The newest intact checkpoint is {path}{at}. To resume from it, point last_checkpoint at it:\n"
            f"    echo {path.name} > {marker}\n  and run the same command again with --resume.")


__all__ = [
    "Checkpointer",
    "WeightsError",
    "check_resume",
    "config_differences",
    "describe_load_error",
    "fit_report",
    "intact_checkpoints",
    "keep_final_weights",
    "kept_final_name",
    "read_timm_weights",
    "save_detectron2_weights",
    "saved_iteration",
    "weights_problem",
]
