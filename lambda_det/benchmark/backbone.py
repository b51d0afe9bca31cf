"""timm's lambda_resnet50ts (its own LambdaLayer) against the same backbone rebuilt on this package's
layer, with the same weights: forward and forward+backward, interleaved in one run. Used by
``tools/benchmark_lambda.py --vs-timm``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, Sequence

import torch

from ..errors import UserError
from ..modeling import build_lambda_resnet
from ..modeling.timm_lambda import build_kwargs, convert_state_dict
from ..utils.markdown import markdown_table
from .layer import MODES, step_function
from .timing import INTERLEAVING, environment_summary, interleaved, result_paths, spread, write_results


def backbone_pair(name: str, device: torch.device):
    """(timm's features_only model, ours with its converted weights), both in training mode."""
    try:
        import timm  # optional (the "bench" extra): needed only here
    except ImportError:
        raise UserError("--vs-timm needs timm: pip install -e '.[bench]'") from None

    torch.manual_seed(0)
    theirs = timm.create_model(name, pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    ours = build_lambda_resnet(**build_kwargs(name))
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), name)[1])
    return theirs.to(device), ours.to(device)


def vs_timm_paths(out_dir: Path, device: str) -> Dict[str, Path]:
    return result_paths(out_dir, f"vs_timm_{torch.device(device).type}", plot=False)


def vs_timm(out_dir: Path, sizes: Sequence[int] = (512, 1024), batch: int = 1, repeats: int = 3, device: str = "cpu",
            name: str = "lambda_resnet50ts", log: Callable[[str], None] = print) -> dict:
    dev = torch.device(device)
    theirs, ours = backbone_pair(name, dev)
    records = []
    for size in sizes:
        x = torch.randn(batch, 3, size, size, device=dev)
        record = {"model": name, "size": size, "batch": batch}
        for mode in MODES:
            timings = interleaved({"timm": step_function(theirs, x, mode), "lambda_det": step_function(ours, x, mode)}, repeats, dev)
            record[mode] = {k: t.to_dict() for k, t in timings.items()}
            record[mode]["speedup"] = timings["timm"].median / timings["lambda_det"].median
            log(f"{name} {size}x{size} {mode}: timm {spread(record[mode]['timm'])}, lambda_det "
                f"{spread(record[mode]['lambda_det'])}: {record[mode]['speedup']:.2f}x")
        records.append(record)
    result = {"environment": environment_summary(dev), "repeats": repeats, "records": records}
    rows = [[r["size"], r["batch"], mode, spread(r[mode]["timm"]), spread(r[mode]["lambda_det"]), f"{r[mode]['speedup']:.2f}x"]
            for r in records for mode in MODES]
    text = (f"# {name}: timm's model against the same backbone on lambda_det's layer ({dev.type})\n\n"
            f"`{json.dumps(result['environment'])}`; the same weights (converted), training mode (batch norm on batch "
            f"statistics), median (range) of {repeats} rounds, {INTERLEAVING}; backbone only (res2..res5), "
            "impl=\"auto\".\n\n" + markdown_table(["size", "batch", "mode", "timm", "lambda_det", "speed-up"], rows))
    write_results(vs_timm_paths(out_dir, device), result, text)
    log(text)
    return result


__all__ = ["backbone_pair", "vs_timm", "vs_timm_paths"]
