"""What every tool shares, in the conventions of Detectron2's ``engine/defaults.py``: the argument
parser of train_net, argparse types that name what is allowed, the per-process setup (logging,
config dump, seed, CPU threads), and ``run_main``, which turns a :class:`UserError` into one
``error: ...`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import errno
import fcntl
import logging
import os
import re
import shlex
import stat
import sys
import urllib.parse
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.engine import default_argument_parser
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..config import load_config
from ..data import register_coco_dataset
from ..checkpoint import intact_checkpoints
from ..errors import OutputError, UserError
from ..evaluation import INFERENCE_FOLDER
from ..utils.file_safety import remove_abandoned_partials, write_text

logger = logging.getLogger("lambda_det")

EPILOG = """
Examples:
  Toy data, CPU:       tools/train_net.py --config-file configs/Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml
  COCO, 8 GPUs:        tools/train_net.py --num-gpus 8 --config-file configs/COCO-InstanceSegmentation/mask_rcnn_LambdaR_101_FPN_100ep.yaml
  Resume after a stop: the same command with --resume
  Evaluate:            tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/.../model_final.pth
  Two CPU processes:   tools/train_net.py --num-gpus 2 ... (without GPUs, --num-gpus counts gloo processes)

Training never writes over an earlier run: an OUTPUT_DIR that holds one (checkpoints, metrics,
logs, evaluations, a config.yaml) is continued with --resume, or refused. --eval-only writes into
OUTPUT_DIR/inference/<dataset>/ (its config.yaml too) and refuses to replace an earlier evaluation
there unless --overwrite is given.
"""


def argument_parser() -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` with --amp and --overwrite."""
    parser = default_argument_parser(epilog=EPILOG)
    parser.add_argument("--amp", action="store_true", help="mixed precision (sets SOLVER.AMP.ENABLED; needs CUDA)")
    add_dataset_argument(parser)
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace an earlier evaluation in OUTPUT_DIR/inference/<dataset>/: with --eval-only, or with --resume "
        "of a finished run (which otherwise changes nothing but a final evaluation it never finished)",
    )
    return parser


def add_dataset_argument(parser: argparse.ArgumentParser, keys: str = "DATASETS.TRAIN / DATASETS.TEST",
                         classes: Optional[str] = "MODEL.ROI_HEADS.NUM_CLASSES") -> None:
    """--dataset NAME JSON IMAGES (repeatable); ``keys``, ``classes``: the config keys that name
    datasets and the class count, as the tool's config spells them (None: the tool checks no count)."""
    parser.add_argument(
        "--dataset", nargs=3, action="append", default=[], metavar=("NAME", "JSON", "IMAGES"),
        help=f"register a COCO-format dataset (annotation json, image folder) under NAME, for {keys}"
        + (f" ({classes} must be its number of categories)" if classes else "") + "; repeatable",
    )


def register_datasets(args: argparse.Namespace) -> None:
    """The datasets named by --dataset, in this process (each training process registers them)."""
    for name, json_file, image_root in args.dataset:
        register_coco_dataset(name, json_file, image_root)


# --------------------------------------------------------------------------------------------
# argparse types: argparse names the flag ("argument --repeats: ...") and exits with status 2
# --------------------------------------------------------------------------------------------
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
# a LazyConfig override: key=value, the key dotted and in lower case (train.max_iter=10)
LAZY_OVERRIDE = re.compile(r"^[a-z_][a-z0-9_]*(\.[A-Za-z0-9_]+)*=")
# the first override of a tool that reads both kinds of config
ANY_OVERRIDE = re.compile(f"{CONFIG_KEY.pattern}|{LAZY_OVERRIDE.pattern}")


def parse_args_with_overrides(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
                              override: re.Pattern = CONFIG_KEY) -> argparse.Namespace:
    """``parser.parse_args``, for tools whose trailing config overrides (``override`` matches the
    first: KEY VALUE, or LAZY_OVERRIDE's key=value) are argparse's REMAINDER: a flag after them
    would be handed over as a config key (or a required flag reported missing), so it is named instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = _first_override(parser, argv, override)
    flags = [option for action in parser._actions for option in action.option_strings]
    # an unknown flag before them: argparse hands it and all after it to the overrides, then names the
    # required flags it "lacks" (given after the unknown one)
    problem = _unknown_flags(parser, argv[:first] if first is not None else argv)
    if problem:
        parser.error(problem)
    late = [a for a in argv[first:] if a.startswith("--") or a in flags] if first is not None else []
    if late:
        name = late[0].split("=", 1)[0]
        abbreviates = [flag for flag in flags if flag.startswith("--") and flag.startswith(name)]  # argparse's allow_abbrev
        if name not in flags and len(abbreviates) != 1:
            close = difflib.get_close_matches(name, flags, n=1)
            parser.error(f"{late[0]}, after the config overrides (from {argv[first]} on), is no flag of this tool"
                         + (f"; did you mean {close[0]}?" if close else ""))
        parser.error(f"{late[0]} comes after the config overrides (from {argv[first]} on), where it would be read "
                     "as a config key; put flags before the trailing config overrides")
    return parser.parse_args(argv)


def _unknown_flags(parser: argparse.ArgumentParser, argv: List[str]) -> Optional[str]:
    """What is wrong with the first word that is written as a flag (-x, --name; not a negative number)
    and is not a value a flag takes, as argparse reads flags: no flag of ``parser``, nor a unique
    abbreviation of one (``--num`` of --num-gpus / --num-machines is ambiguous), nor a short flag with
    its value attached (``-n5``); None when every one is a flag."""
    flags = {option: action for action in parser._actions for option in action.option_strings}
    values_owed = 0
    for token in argv:
        if values_owed:
            values_owed -= 1
            continue
        name = token.split("=", 1)[0]
        if not re.match(r"^--?[A-Za-z]", name):
            continue
        if name in flags:
            action = flags[name]
        elif not name.startswith("--") and token[:2] in flags:  # -n5
            continue
        else:
            matches = [flag for flag in flags if flag.startswith("--") and flag.startswith(name)]
            if len(matches) > 1:
                return f"ambiguous option: {token} could match {', '.join(matches)}"
            if not matches:
                close = sorted((f for f in flags if f.startswith("--") and name.startswith(f)), key=len)[-1:]  # --json-file
                close = close or difflib.get_close_matches(name, flags, n=1)
                return f"unrecognized arguments: {token}" + (f"; did you mean {close[0]}?" if close else "")
            action = flags[matches[0]]
        if "=" not in token:
            values_owed = _values_taken(action)
    return None


def _values_taken(action: argparse.Action) -> int:
    """The words after a flag that are its values, where their count is fixed (else 0: '+', '*', '?')."""
    return 1 if action.nargs is None else action.nargs if isinstance(action.nargs, int) else 0


def _first_override(parser: argparse.ArgumentParser, argv: List[str], override: re.Pattern) -> Optional[int]:
    """Where the overrides begin: after the flag that takes them (--opts), or at the first word that
    looks like one and is no flag's value (IMG_0001.JPG after --sample-image is a file, not a key;
    the values of a flag taking any number of them cannot be told apart, and are read as argparse would
    read a key among them)."""
    flags = {option: action for action in parser._actions for option in action.option_strings}
    by_flag = any(action.nargs == argparse.REMAINDER for action in flags.values())
    values_owed = 0
    for i, token in enumerate(argv):
        if values_owed:
            values_owed -= 1
            continue
        action = flags.get(token.split("=", 1)[0]) if token.startswith("-") else None
        if action is not None:
            if action.nargs == argparse.REMAINDER:
                return i + 1 if i + 1 < len(argv) else None
            if "=" not in token:
                values_owed = _values_taken(action)
        elif not by_flag and override.match(token):
            return i
    return None


def positive_int(text: str) -> int:
    value = _parse_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: give an integer >= 1")
    return value


def non_negative_int(text: str) -> int:
    value = _parse_int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: give an integer >= 0")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: give a value in [0, 1]") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: give a value in [0, 1]")
    return value


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def check_launch_args(args: argparse.Namespace, device: str) -> None:
    """Detectron2's launcher flags (--num-gpus, --num-machines, --machine-rank) for this device."""
    if args.num_gpus < 1:
        raise UserError(f"--num-gpus {args.num_gpus}: give 1 or more (on CPUs it counts processes)")
    if args.num_machines < 1:
        raise UserError(f"--num-machines {args.num_machines}: give 1 or more")
    if not 0 <= args.machine_rank < args.num_machines:
        raise UserError(f"--machine-rank {args.machine_rank}: must lie in [0, --num-machines - 1 = {args.num_machines - 1}]")
    if device.startswith("cuda"):
        available = torch.cuda.device_count()
        if args.num_gpus > available:
            raise UserError(f"--num-gpus {args.num_gpus}: this machine has {available} CUDA device(s)")
    if args.num_gpus * args.num_machines > 1 and args.dist_url != "auto":
        check_dist_url(args.dist_url)


def check_dist_url(url: str) -> None:
    """--dist-url as torch.distributed takes it for Detectron2's launch: tcp://HOST:PORT, file://, env://."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("tcp", "file", "env"):
        raise UserError(f"--dist-url {url}: give 'auto' (one machine) or tcp://HOST:PORT (the first machine's address)")
    if parts.scheme == "tcp":
        try:
            port = parts.port
        except ValueError:  # not a number, or beyond 65535
            port = None
        if not parts.hostname or not port:
            raise UserError(f"--dist-url {url}: give tcp://HOST:PORT with a port in 1-65535")


def run_main(main: Callable[[], object], interrupt_line: bool = True) -> int:
    """A tool's exit status: what ``main`` returns if it is an int (anything else is 0), or 2 with
    one ``error:`` line when it raises a UserError (bad input), or 130 with one line for Ctrl-C
    (the tools' files are written whole or not at all, so there is nothing more to say;
    ``interrupt_line=False``: Ctrl-C goes on up, for a caller that says more)."""
    try:
        status = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not interrupt_line:
            raise
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except SizeMismatchError as exc:
        # Detectron2's loader finds it in the middle of a run (a data-loader worker's wraps it in its traceback)
        found = re.search(r"Mismatched image shape.*", str(exc))
        print(f"error: {found.group(0) if found else exc} (if it is a photo with an EXIF orientation: Detectron2 reads it "
              "turned, so the annotation needs the turned picture's height and width)", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        # a path argument or OUTPUT_DIR with a name the file system cannot hold (255 bytes per name on
        # most): refused by the first look at it, before anything was written
        print(f"error: {exc.filename}: a file or folder name in it is longer than the file system allows "
              f"({exc.strerror}); choose a shorter path", file=sys.stderr)
        return 2
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


# --------------------------------------------------------------------------------------------
# one writer per run folder, and runs that stop
# --------------------------------------------------------------------------------------------
LOCK_FILE = ".lambda_det.lock"


@contextlib.contextmanager
def run_folder_lock(output_dir: str, flag: str = "OUTPUT_DIR"):
    """Hold an exclusive lock on OUTPUT_DIR while the block runs (the process's end, kill -9 included,
    releases it): a second run into the same folder is refused, naming the process that holds it.
    The unfinished files a killed run left there (a checkpoint's can be gigabytes) are removed."""
    folder = Path(output_dir)
    lock = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # never through a link: the pid written below would replace the file it points to
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputError(f"{flag} {output_dir}: {lock} is a symbolic link (to {os.readlink(lock)}), where the run's "
                              "lock file goes; it was left as it is and nothing was written: remove the link") from None
        raise OutputError(f"{flag} {output_dir}: cannot write there ({exc.strerror or exc})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"{flag} {output_dir}: {lock}, where the run's lock file goes, is not a regular file; "
                          "nothing was written: remove it")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise OutputError(f"{flag} {output_dir} is in use by another run (pid {holder}); nothing was written. "
                              f"Wait for it to end, or use another {flag}") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as exc:  # a full disk: the lock (ours, held) goes, and nothing else was written
            lock.unlink(missing_ok=True)
            raise OutputError(f"{flag} {output_dir}: cannot write there ({exc.strerror or exc})") from None
        abandoned = remove_abandoned_partials(folder)
        if abandoned:
            print(f"warning: removed {len(abandoned)} unfinished file(s) a killed process left in {folder}: "
                  f"{', '.join(p.name for p in abandoned[:3])}{' ...' if len(abandoned) > 3 else ''}", file=sys.stderr)
        yield
    finally:
        os.close(fd)  # closing the file releases the lock


def interrupted(output_dir: str, command: Sequence[str], flag: str = "OUTPUT_DIR", *, eval_only: bool = False) -> str:
    """The message for Ctrl-C during a run: where the last checkpoint is, and the command that goes on
    (``flag``: the config key of the run folder, as the tool's config spells it)."""
    if eval_only:
        return (f"interrupted before the evaluation finished ({flag} {output_dir}): run the same command again "
                "(it says so if results of this one are left to replace)")
    intact = intact_checkpoints(Path(output_dir)) if Path(output_dir).is_dir() else []
    if not intact:
        return (f"interrupted before the first checkpoint was written ({flag} {output_dir}); start again with:\n  "
                f"{' '.join(shlex.quote(str(w)) for w in command)}")
    path, iteration = intact[0]
    at = f" (iteration {iteration})" if iteration is not None else ""
    return f"interrupted; the last checkpoint is {path}{at}. Continue with:\n  {' '.join(shlex.quote(str(w)) for w in command)}"


# --------------------------------------------------------------------------------------------
# the config and the process
# --------------------------------------------------------------------------------------------
def cpu_if_no_cuda(cfg) -> None:
    """MODEL.DEVICE cuda on a machine without CUDA runs on the CPU, with a warning."""
    if str(cfg.MODEL.DEVICE).startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu)")
        cfg.MODEL.DEVICE = "cpu"


def load_cfg(args):
    """The config of a train_net run (no side effects): file, overrides, --amp, CPU fallback."""
    cfg = load_config(args.config_file, args.opts)
    if args.amp:
        cfg.SOLVER.AMP.ENABLED = True
    cpu_if_no_cuda(cfg)
    cfg.freeze()
    return cfg


def setup_cfg(args):
    """Per process: the datasets of --dataset, the config, the CPU threads it may use, logging, the
    config dump, the seed."""
    register_datasets(args)
    cfg = load_cfg(args)
    share_cpu_cores(cfg, args.num_gpus)
    setup(cfg, args, eval_only=args.eval_only)
    return cfg


def setup(cfg, args, *, eval_only: bool = False, console_filter: Optional[Callable[[logging.LogRecord], bool]] = None) -> None:
    """Detectron2's default_setup for a yacs config (see ``setup_process``)."""
    output_dir = Path(cfg.OUTPUT_DIR)
    if eval_only:
        targets = [output_dir / INFERENCE_FOLDER / name / "config.yaml" for name in cfg.DATASETS.TEST]
    else:
        targets = [output_dir / "config.yaml"]
    setup_process(output_dir, args, config_text=cfg.dump(), config_targets=targets, seed=cfg.SEED,
                  cudnn_benchmark=cfg.CUDNN_BENCHMARK, eval_only=eval_only, console_filter=console_filter)


def setup_process(output_dir: Path, args, *, config_text: str, config_targets: Sequence[Path], seed: int,
                  cudnn_benchmark: bool, eval_only: bool,
                  console_filter: Optional[Callable[[logging.LogRecord], bool]] = None) -> None:
    """Detectron2's default_setup (logger into OUTPUT_DIR/log.txt, environment and config in the log,
    seed), except that a config.yaml of an earlier run is never replaced: an evaluation writes its
    config beside its results (``config_targets``), and a resumed run whose config changed keeps
    the earlier one as config.<n>.yaml. ``console_filter``: which log records the terminal shows
    (log.txt gets all)."""
    rank = comm.get_rank()
    if comm.is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
    log_file = Path(output_dir) / ("log.txt" if rank == 0 else f"log.txt.rank{rank}")  # Detectron2's setup_logger's name
    if log_file.is_symlink() or (log_file.exists() and not log_file.is_file()):
        # the log is appended to: through a link it would grow the file the link points to
        raise OutputError(f"{log_file} is {'a symbolic link' if log_file.is_symlink() else 'not a regular file'}, where the "
                          "run's log goes; it was left as it is: remove it or choose another output folder")
    setup_logger(str(output_dir), distributed_rank=rank, name="fvcore")
    log = setup_logger(str(output_dir), distributed_rank=rank)
    setup_logger(str(output_dir), distributed_rank=rank, name="lambda_det")
    for handler in console_handlers("detectron2", "fvcore", "lambda_det"):  # log.txt keeps everything
        handler.addFilter(_known_failures_in_one_line)
        if console_filter is not None:
            handler.addFilter(console_filter)
    log.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    # the report imports torch's extension builder, which warns on a CPU-only machine that it found no CUDA runtime
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    _silence_known_library_warnings()
    log.info("Environment info:\n%s", collect_env_info())
    log.info("Command line arguments: %s", args)
    if comm.is_main_process():
        for target in config_targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_file() and target.read_text() != config_text and not eval_only:
                kept = _free_name(target)
                os.replace(target, kept)
                log.info("The config changed since this run's last start: the earlier one is kept as %s", kept)
            write_text(target, config_text)
            log.info("Full config saved to %s", target)
    seed_all_rng(None if seed < 0 else seed + rank)
    if not eval_only:
        torch.backends.cudnn.benchmark = cudnn_benchmark


def _silence_known_library_warnings() -> None:
    """Warnings that Detectron2's own code raises through torch on every run, about nothing the user
    can change (it stacks read-only mask arrays, calls meshgrid the old way, asks whether fx traces)."""
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
    warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release", category=UserWarning)
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def console_handlers(*loggers: str) -> List[logging.Handler]:
    """The terminal handlers of the named loggers (Detectron2 writes log.txt through a StreamHandler
    too, on a stream named after the file)."""
    return [h for name in loggers for h in logging.getLogger(name).handlers
            if isinstance(h, logging.StreamHandler) and not os.path.isfile(str(getattr(h.stream, "name", "")))]


def _known_failures_in_one_line(record: logging.LogRecord) -> bool:
    """Detectron2 logs the traceback of any error that ends training; for bad input, divergence,
    failed writes and an image of another size than its annotation (``run_main``) the tool prints one
    line that says it all, so the terminal gets no traceback (log.txt keeps it)."""
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, (UserError, OSError, SizeMismatchError))


def _free_name(path: Path) -> Path:
    n = 1
    while (path.parent / f"{path.stem}.{n}{path.suffix}").exists():
        n += 1
    return path.parent / f"{path.stem}.{n}{path.suffix}"


def share_cpu_cores(cfg, processes_per_machine: int, device: Optional[str] = None) -> None:
    """N training processes on CPUs: each gets its share of the cores (when each takes all of them, all run slower).
    ``device``: where the model runs, when ``cfg`` is no yacs config (a LazyConfig's train.device).

    An explicit OMP_NUM_THREADS is the user's choice and is kept.
    """
    device = cfg.MODEL.DEVICE if device is None else device
    if processes_per_machine <= 1 or not device.startswith("cpu") or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // processes_per_machine))
