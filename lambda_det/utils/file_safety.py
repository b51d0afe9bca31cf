"""Where the tools write.

* An output location that is an existing file, or that would overwrite an input, is refused
  before any work starts.
* Files of an earlier run are never replaced unless the user asks (``--overwrite``; training
  continues a run only with ``--resume``).
* Every write is checked; a failed one is an error naming the path. Files are written under a
  temporary name and renamed when complete, so a failed write leaves no half file behind, and a
  set of files that belong together (a report's JSON, markdown and chart) appears all or not at all.
* Where the user did not ask to replace files, the finished file is linked to its name, which fails
  if a file appeared there meanwhile (another run writing the same output since the check at start):
  a rename would have replaced it.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import os
import re
import secrets
import socket
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

from ..errors import OutputError


def normalized(path: str) -> str:
    """A path as the checks must see it: "~/x" (quoted on a command line, or in a config, where no
    shell expands it) is the home's x, not a folder named "~"; "new/../x" is x once new/ exists.
    URLs (detectron2://, https://) are left as they are."""
    path = str(path)
    if "://" in path:
        return path
    return os.path.normpath(os.path.expanduser(path))


def not_a_file(path: Path) -> str:
    """Why ``path``, which is not a regular file, cannot be read as one: missing, a folder, or a pipe,
    socket or device (reading a pipe would wait for a writer)."""
    path = Path(path)
    if not path.exists():
        return "does not exist"
    return "is a directory" if path.is_dir() else "is not a regular file (a pipe, socket or device)"


def path_argument(text: str) -> Path:
    """argparse type for --output / --input paths: an empty string would mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path is not allowed (it would mean the current folder)")
    return Path(normalized(text))


def file_path_argument(text: str) -> Path:
    """argparse type for a file to write (--json FILE): a path ending in a separator names a folder."""
    if text.rstrip().endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text!r} ends in {text.rstrip()[-1]!r}, which names a folder: name a file")
    return path_argument(text)


def refuse_file(path: Path, flag: str) -> None:
    """An output directory must be a directory or not exist yet (nor lie under a file, nor be a dangling link)."""
    path = Path(path)
    if not str(path).strip():
        raise OutputError(f"{flag} is empty; name a directory")
    package = Path(__file__).resolve().parents[1]
    if package == path.resolve() or package in path.resolve().parents:  # e.g. beside a config of its model zoo
        raise OutputError(f"{flag} {path} lies inside the lambda_det package ({package}), whose files a reinstall or "
                          "an update replaces; choose a folder outside it (nothing was written)")
    if path.is_symlink() and not path.exists():
        raise OutputError(f"{flag} {path} is a symbolic link to {os.readlink(path)}, which does not exist")
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
        raise OutputError(f"{flag} {path}: cannot write there ({_reason(exc)})") from None
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


def same_file(a: Path, b: Path) -> bool:
    """The same file on disk (also through hard or symbolic links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def file_sha256(path: Path, prefix: int = 16) -> str:
    """The first ``prefix`` hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:prefix]


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or str(exc)


def _writer_scope() -> str:
    """Where a process id means one process: this kernel boot (boot_id tells machines and reboots
    apart, where host names may repeat) and this pid namespace (containers sharing a folder)."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:  # no /proc (not Linux): the host name alone
        pass
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


# a temporary file names its writer, a process in this scope, so that one a killed writer left behind
# can be told from one a live writer is still filling
_SCOPE = _writer_scope()
_TEMPORARY_NAME = re.compile(r"^\..*\.[0-9a-f]{8}\.(?P<pid>[0-9]{1,9})-(?P<scope>[0-9a-f]{12})\.partial(\.[^.]*)?$", re.DOTALL)
_NAME_BYTES = 255  # the longest file name Linux file systems take


def temporary_path(path: Path) -> Path:
    """A new, empty file beside ``path`` under a unique name no other file has (created exclusively,
    so it never is a file of the user's), ending in ``path``'s extension (OpenCV and matplotlib
    choose the format by it). The caller renames it over ``path`` or removes it; the name records
    the writing process, so that ``remove_abandoned_partials`` can remove it if that process is killed."""
    path = Path(path)
    for _ in range(100):
        tail = f".{secrets.token_hex(4)}.{os.getpid()}-{_SCOPE}.partial{path.suffix}"
        # the stem shortened so that the name stays within what the file system takes
        room = max(0, _NAME_BYTES - 1 - len(tail.encode()))
        stem = path.stem.encode()[:room].decode(errors="ignore")
        name = path.parent / f".{stem}{tail}"
        try:
            # 0666 less the umask, as open() gives (mkstemp's 0600 would make every result private)
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return name
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(f"could not write {path}: {_reason(exc)}") from None
    raise OutputError(f"could not write {path}: no free temporary name beside it")


def _writer_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # alive and someone else's, or no such pid number here
        pass
    return False


def remove_abandoned_partials(folder: Path, depth: int = 2) -> List[Path]:
    """Remove the temporary files (``temporary_path``) in ``folder`` and its subfolders down to
    ``depth`` whose writer no longer runs: what a kill -9 or a crash during a write leaves (a
    checkpoint's is the model's size). Only names this module makes are touched, and only those of a
    writer in this process's scope (machine, boot, pid namespace) whose pid is gone: never a live
    writer's, nor one this process cannot judge (another machine's or container's; one from before a
    reboot), which stays. Best effort: a file that cannot be removed stays. Returns the files removed."""
    removed: List[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    base = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        if len(Path(root).parts) - base >= depth:
            dirs[:] = []
        for name in files:
            match = _TEMPORARY_NAME.match(name)
            if match and match["scope"] == _SCOPE and _writer_is_gone(int(match["pid"])):
                path = Path(root) / name
                try:
                    path.unlink()
                except OSError:
                    continue
                removed.append(path)
    return removed


def _appeared(path: Path) -> OutputError:
    return OutputError(f"{path} appeared while this ran (another run writing the same output?); it was left as it is and "
                       "nothing was written: pass --overwrite to replace it, or choose another location")


def no_hard_links(exc: OSError) -> bool:
    """Whether a failed ``os.link`` says that the file system makes no hard links (FAT, some network
    and FUSE file systems), rather than that something is wrong."""
    return exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS)


def _put(tmp: Path, path: Path, replace: bool) -> None:
    """Give the finished temporary file ``tmp`` the name ``path``. Without ``replace`` an existing ``path``
    stays: a hard link never replaces its target, where a rename would (the file system checks and links
    in one step, so a file appearing after any earlier check is still seen). On a file system without
    hard links the check and the rename are two steps."""
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _appeared(path) from None
    except OSError as exc:
        if not no_hard_links(exc):
            raise
        if os.path.lexists(path):
            raise _appeared(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _refuse_non_regular(path: Path) -> None:
    """A write renames its finished file over ``path``: over a folder, pipe or device (or a link to one) that
    would replace what is there (as root, /dev/null itself), never write into it."""
    if path.exists() and not path.is_file():
        raise OutputError(f"could not write {path}: it {not_a_file(path)}; name a file (nothing was written)")


def write_bytes(path: Path, data: bytes, replace: bool = True) -> Path:
    """Write through a temporary file and rename; errors name the path and the reason. With
    ``replace=False`` a file that is at ``path`` by then stays, and the write is an error (``_put``).
    Only a regular file is ever replaced: a folder, pipe or device there (also behind a link) is named."""
    path = Path(path)
    _refuse_non_regular(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _put(tmp, path, replace)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"could not write {path}: {_reason(exc)}") from None
    except OutputError:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str, replace: bool = True) -> Path:
    return write_bytes(path, text.encode(), replace)


def check_written(path: Path, what: str = "file") -> Path:
    """After a library call that reports failure only by its return value (OpenCV) or not at all."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise OutputError(f"could not write {what} {path} (nothing, or an empty file, is there)")
    return path


def imwrite(path: Path, image) -> Path:
    """cv2.imwrite, checked: encoded in memory (OpenCV's own write only returns False on failure),
    then written through a temporary file, so a full disk or a missing folder is named as such."""
    import cv2

    path = Path(path)
    try:
        ok, encoded = cv2.imencode(path.suffix or ".png", image)
    except cv2.error as exc:
        raise OutputError(f"could not write image {path}: {str(exc).strip().splitlines()[-1]}") from None
    if not ok:
        raise OutputError(f"could not write image {path}: OpenCV could not encode it as {path.suffix}")
    try:
        return write_bytes(path, encoded.tobytes())
    except OutputError as exc:
        raise OutputError(f"could not write image {str(exc)[len('could not write '):]}") from None


class StagedFiles:
    """Several files that appear together or not at all: write each to ``stage(path)`` (a temporary
    name beside it), then ``commit()`` renames them all; a failure before removes the partial files.

        with StagedFiles() as staged:
            write(staged.stage(a)); write(staged.stage(b))
        # committed on leaving the block without an error
    """

    def __init__(self, replace: bool = True) -> None:
        """``replace=False``: files at the destinations by the commit stay, and the commit is an error
        that writes none of the set (``_put``)."""
        self.pending: Dict[Path, Path] = {}
        self.replace = replace
        self.placed: List[Tuple[Path, Tuple[int, int]]] = []  # and its (device, inode): only that file is removed

    def stage(self, path: Path) -> Path:
        _refuse_non_regular(Path(path))
        tmp = temporary_path(Path(path))
        self.pending[Path(path)] = tmp
        return tmp

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is None:
            try:
                for path, tmp in self.pending.items():
                    check_written(tmp, "file")
                for path, tmp in self.pending.items():
                    identity = os.stat(tmp)
                    _put(tmp, path, self.replace)
                    self.placed.append((path, (identity.st_dev, identity.st_ino)))
                return False
            except OSError as error:
                self._discard(placed=not self.replace)
                raise OutputError(f"could not write {next(iter(self.pending))}: {_reason(error)}") from None
            except OutputError:
                self._discard(placed=not self.replace)
                raise
        self._discard()
        if isinstance(exc, OutputError):  # a writer's own message names the file it was given: the temporary one
            text = str(exc)
            for path, tmp in self.pending.items():
                text = text.replace(str(tmp), str(path))
            if text != str(exc):
                raise OutputError(text) from None
        if isinstance(exc, OSError):
            # named by the file it was to become (a temporary name means nothing to the user)
            name = getattr(exc, "filename", None)
            name = next((path for path, tmp in self.pending.items() if name is not None and str(tmp) == str(name)),
                        name or next(iter(self.pending), ""))
            raise OutputError(f"could not write {name}: {_reason(exc)}") from None
        return False

    def _discard(self, placed: bool = False) -> None:
        """Remove the temporary files; with ``placed``, also the files of the set this commit already
        linked to their names (new files of its own: a set appears all or not at all)."""
        for path, identity in self.placed if placed else ():
            try:
                now = os.stat(path)
                if (now.st_dev, now.st_ino) == identity:  # not a file another run put there since
                    path.unlink()
            except OSError:
                pass
        for tmp in self.pending.values():
            Path(tmp).unlink(missing_ok=True)


def existing(paths: Iterable[Path]) -> List[Path]:
    """The paths that name something, a dangling symbolic link included (writing there replaces it)."""
    return [Path(p) for p in paths if os.path.lexists(p)]


__all__ = [
    "StagedFiles",
    "check_written",
    "ensure_writable_dir",
    "existing",
    "file_path_argument",
    "file_sha256",
    "imwrite",
    "no_hard_links",
    "path_argument",
    "refuse_file",
    "refuse_overwrite",
    "remove_abandoned_partials",
    "same_file",
    "temporary_path",
    "write_bytes",
    "write_text",
]
