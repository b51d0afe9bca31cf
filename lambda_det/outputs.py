"""Where the tools write.

* An output location that is an existing file, or that would overwrite an input, is refused
  before any work starts.
* Files of an earlier run are never replaced unless the user asks (``--overwrite``; training
  continues a run only with ``--resume``).
* Every write is checked; a failed one is an error naming the path.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from .checks import UserError

# Detectron2's setup_logger treats an output path ending like this as the log file itself.
LOG_FILE_SUFFIXES = (".txt", ".log")


class OutputError(UserError):
    """An output location that would lose or hide data, or a write that failed."""


def refuse_file(path: Path, flag: str) -> None:
    """An output directory must not be an existing file (or lie under one)."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is an existing file" if candidate == path else f"lies under {candidate}, an existing file"
                raise OutputError(f"{flag} {path} {where}; it must be a directory (nothing was written)")
            return


def ensure_writable_dir(path: Path, flag: str) -> Path:
    """Create the directory if needed and prove that a file can be written into it."""
    path = Path(path)
    refuse_file(path, flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def refuse_overwrite(existing: Sequence[Path], flag: str, what: str = "from an earlier run") -> None:
    """Stop when files would be replaced and the user did not ask for it."""
    if not existing:
        return
    names = ", ".join(str(p) for p in existing[:4]) + (f", ... ({len(existing)} in all)" if len(existing) > 4 else "")
    raise OutputError(
        f"{flag}: {len(existing)} file(s) {what} would be overwritten: {names}. Nothing was written: "
        "pass --overwrite to replace them, or choose another location"
    )


def is_within(path: Path, folder: Path) -> bool:
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def write_text(path: Path, text: str) -> Path:
    """Write through a temporary file and rename, so a failed write leaves no half file behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"could not write {path}: {exc.strerror or exc}") from None
    return path


def check_written(path: Path, what: str = "file") -> Path:
    """After a library call that reports failure only by its return value (OpenCV) or not at all."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise OutputError(f"could not write {what} {path} (nothing, or an empty file, is there)")
    return path


def imwrite(path: Path, image) -> Path:
    """cv2.imwrite, checked: it returns False (or raises for an unknown extension) instead of failing."""
    import cv2

    try:
        ok = cv2.imwrite(str(path), image)
    except cv2.error as exc:
        raise OutputError(f"could not write image {path}: {str(exc).strip().splitlines()[-1]}") from None
    if not ok:
        reason = "the folder is not writable" if not os.access(Path(path).parent, os.W_OK) else "OpenCV could not encode or write it"
        raise OutputError(f"could not write image {path}: {reason}")
    return check_written(path, "image")


def existing(paths: Iterable[Path]) -> list:
    return [p for p in paths if Path(p).exists()]


__all__ = [
    "LOG_FILE_SUFFIXES",
    "OutputError",
    "check_written",
    "ensure_writable_dir",
    "existing",
    "imwrite",
    "is_within",
    "refuse_file",
    "refuse_overwrite",
    "write_text",
]
