"""What happens around a training tool's processes, shared by tools/train_net.py (yacs configs) and
tools/lazyconfig_train_net.py (LazyConfigs): a finished run resumed again changes nothing and says
so (or writes the final evaluation it never finished); the run folder has one writer; Ctrl-C, a
worker's error and a failed write each end the run with one line that says how to go on."""
from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from detectron2.engine import launch

from ..checkpoint import intact_checkpoints, kept_final_name
from .defaults import interrupted, run_folder_lock, run_main
from .preflight import RunKeys


def _evaluation_state(report: Path, output_dir: str, iterations: int) -> str:
    """"current" (an evaluation of the run as it is, or any other: kept), "outdated" (one this run's
    training wrote at fewer iterations: TEST.EVAL_PERIOD's, or its final one before it was trained
    longer; its final evaluation replaces it) or "missing"."""
    if not report.is_file():
        return "missing"
    try:
        provenance = json.loads(report.read_text()).get("provenance")
    except (OSError, ValueError, AttributeError):
        return "current"  # not ours to judge: kept
    if not isinstance(provenance, dict) or "initialized_from" not in provenance:
        return "current"  # --eval-only's (it records the weights it read instead), or unknown: kept
    trained, weights = provenance.get("iterations_trained"), str(provenance.get("weights", ""))
    folder = Path(output_dir).resolve()
    own = weights in (f"training state of {folder}", str(folder / "model_final.pth"))
    return "outdated" if own and isinstance(trained, int) and trained < iterations else "current"


def final_evaluation_written(output_dir: str, reports: Sequence[Path], iterations: int) -> bool:
    """Whether every report of a run's evaluation is there and of the run at ``iterations``."""
    return all(_evaluation_state(report, output_dir, iterations) == "current" for report in reports)


def should_resume_finished_run(keys: RunKeys, output_dir: str, finished: Tuple[Path, int], max_iter: int,
                               earlier: Sequence[Path], reports: Sequence[Path]) -> bool:
    """Whether --resume of a run that has trained all its iterations (``finished``, from
    ``finished_run``) goes on: only to write the final evaluation the run never finished (it stopped
    during it), which replaces nothing but that run's own evaluations at fewer iterations (during
    training, TEST.EVAL_PERIOD) and what the stopped one had written. Otherwise says why nothing is
    done and returns False. ``earlier``: the evaluation's files there; ``reports``: the ap_by_size.json
    of each evaluated dataset (``evaluation_reports``)."""
    run = (f"{keys.output_dir} {output_dir} holds a finished run ({finished[0].name}: {finished[1]} of "
           f"{keys.max_iter}={max_iter} iterations)")
    states = [_evaluation_state(report, output_dir, finished[1]) for report in reports]
    # (a run longer than max_iter, or ending on another checkpoint, would be evaluated as something else)
    as_trained = finished[1] == max_iter and finished[0].name == "model_final.pth"
    if reports and "current" not in states and as_trained:
        outdated = [str(r) for r, state in zip(reports, states) if state == "outdated"]
        replaced = f" (replacing its evaluation at fewer iterations: {', '.join(outdated)})" if outdated else ""
        print(f"{run} whose final evaluation was never finished (the run stopped before it ended): "
              f"evaluating it now{replaced}")
        return True
    not_current = [r for r, state in zip(reports, states) if state != "current"]
    if not_current:
        state = (f"Its final evaluation is incomplete (no final {', '.join(map(str, not_current[:2]))}"
                 f"{' ...' if len(not_current) > 2 else ''}). ")
    else:
        shown = [p for p in earlier if p.name == "ap_by_size.md"]
        state = f"Its evaluation: {', '.join(map(str, shown))}. " if shown else ""
    longer = f"raise {keys.max_iter}" + (" and add --overwrite (the longer run's final evaluation replaces this one)"
                                         if earlier else "")
    if finished[0].name == "model_final.pth":
        longer += f"; its {finished[0].name} stays as {kept_final_name(finished[0], finished[1] - 1).name}"
    print(f"{run}: nothing to train, and nothing was changed. {state}"
          f"To evaluate it again, add --overwrite (replaces the evaluation) or use --eval-only with "
          f"{keys.setting(keys.weights, finished[0])} and another {keys.output_dir}; to train longer, {longer}.")
    return False


def _main_in_worker(main: Callable, args) -> None:
    """``main(args)`` in one of several processes: an error about the user's input ends the worker
    with one line (exit status 2), not a traceback."""
    # (Ctrl-C reaches every process: the parent says once where the run stands)
    status = run_main(lambda: main(args), interrupt_line=False)
    if status:
        sys.exit(status)


def launch_in_run_folder(main: Callable, args, output_dir: str, argv: Optional[Sequence[str]] = None,
                         flag: str = "OUTPUT_DIR") -> int:
    """Detectron2's ``launch(main, ...)`` with the run folder (``flag``: its key) locked for it: the
    tool's exit status (0; 2 a worker's error about the user's input, already printed; 130 Ctrl-C, with
    the command that goes on; 1 a failed write, naming the file, with the last intact checkpoint)."""
    argv = list(sys.argv if argv is None else argv)
    processes = args.num_gpus * args.num_machines
    started_ns = time.time_ns() - 10**9  # file times come from a coarser clock, which may lag this one
    with run_folder_lock(output_dir, flag):
        try:
            launch(functools.partial(_main_in_worker, main) if processes > 1 else main, args.num_gpus,
                   num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
        except torch.multiprocessing.ProcessExitedException as exc:
            if exc.exit_code == 2:  # a worker already said why
                return 2
            raise
        except KeyboardInterrupt:
            if args.eval_only:
                unfinished_evaluation_configs(output_dir, started_ns, remove=True)
            command = ["python", *argv] if args.resume or args.eval_only else ["python", argv[0], "--resume", *argv[1:]]
            print(f"error: {interrupted(output_dir, command, flag, eval_only=args.eval_only)}", file=sys.stderr)
            return 130
        except OSError as exc:
            where = exc.filename or output_dir
            log = Path(output_dir) / "log.txt"
            print(f"error: the run stopped on {where}: {exc.strerror or exc}"
                  + (f" (the traceback is in {log})" if log.is_file() else ""), file=sys.stderr)
            intact = [] if args.eval_only else intact_checkpoints(Path(output_dir))
            if intact:
                print(f"  checkpoints written before are intact (newest: {intact[0][0]}); after fixing the cause, "
                      "continue with --resume", file=sys.stderr)
            return 1
    return 0


def unfinished_evaluation_configs(output_dir: str, since_ns: int, *, remove: bool = False) -> List[Path]:
    """The config.yaml files an evaluation wrote (first, Detectron2's way) into its inference folders
    since ``since_ns`` with no result beside them yet; with ``remove``, removed: an interrupted
    evaluation leaves nothing that would hold the next one back."""
    found = []
    for config in Path(output_dir).glob("inference*/*/config.yaml"):
        try:
            if config.stat().st_mtime_ns >= since_ns and [p.name for p in config.parent.iterdir()] == ["config.yaml"]:
                if remove:
                    config.unlink()
                found.append(config)
        except OSError:  # gone meanwhile, or unreadable: not one to judge
            pass
    return found


__all__ = ["final_evaluation_written", "launch_in_run_folder", "should_resume_finished_run", "unfinished_evaluation_configs"]
