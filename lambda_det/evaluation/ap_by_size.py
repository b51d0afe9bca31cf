"""AP by object size: JSON, a markdown table in the shape of the paper's Table 6, a bar chart."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import OutputError, ResultFileError
from ..utils import markdown
from ..utils.file_safety import StagedFiles, ensure_writable_dir, existing, refuse_overwrite, same_file, write_text

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TASKS = (("bbox", "box"), ("segm", "mask"))

# LambdaNetworks Table 6 (COCO val, Mask R-CNN 1024x1024 from scratch). AP50/AP75 not reported.
PAPER_TABLE6: Dict[str, Dict[str, Dict[str, float]]] = {
    name: {
        "bbox": {"AP": bb[0], "APs": bb[1], "APm": bb[2], "APl": bb[3]},
        "segm": {"AP": mk[0], "APs": mk[1], "APm": mk[2], "APl": mk[3]},
    }
    for name, bb, mk in [
        ("ResNet-101", (48.2, 29.9, 50.9, 64.9), (42.6, 24.2, 45.6, 60.0)),
        ("ResNet-101 + SE", (48.5, 29.9, 51.5, 65.3), (42.8, 24.0, 46.0, 60.2)),
        ("LambdaResNet-101", (49.4, 31.7, 52.2, 65.6), (43.5, 25.9, 46.5, 60.8)),
        ("ResNet-152", (48.9, 29.9, 51.8, 66.0), (43.2, 24.2, 46.1, 61.2)),
        ("ResNet-152 + SE", (49.4, 30.0, 52.3, 66.7), (43.5, 24.6, 46.8, 61.8)),
        ("LambdaResNet-152", (50.0, 31.8, 53.4, 67.0), (43.9, 25.5, 47.3, 62.0)),
    ]
}

Summary = Dict[str, Dict[str, Optional[float]]]


def summarize(results: Mapping[str, Mapping[str, float]]) -> Summary:
    """The six size metrics of each task from Detectron2's evaluation results (NaN -> None)."""
    out: Summary = {}
    for task, _ in TASKS:
        if task in results:
            out[task] = {m: _clean(results[task].get(m)) for m in METRICS}
    if not out:
        raise ValueError(f"no bbox or segm results to summarize (got tasks {sorted(results)})")
    return out


def _clean(value) -> Optional[float]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def ap_table(rows: Sequence[Tuple[str, Summary]]) -> str:
    """| run | AP bb | AP50 | AP75 | APs | APm | APl | AP mask | ... |: one row per run."""
    head = ["run"] + [f"{m} {label}" for _, label in TASKS for m in METRICS]
    return markdown.markdown_table(head, [
        [name] + ["-" if summary.get(task, {}).get(m) is None else f"{summary[task][m]:.1f}" for task, _ in TASKS for m in METRICS]
        for name, summary in rows])


def bar_chart(rows: Sequence[Tuple[str, Summary]], path: Path, title: str = "AP by object size") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    groups = ["APs", "APm", "APl", "AP"]
    labels = ["small", "medium", "large", "all"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    width = 0.8 / max(1, len(rows))
    for ax, (task, label) in zip(axes, TASKS):
        x = np.arange(len(groups))
        for i, (name, summary) in enumerate(rows):
            values = [summary.get(task, {}).get(g) for g in groups]
            heights = [v if v is not None else 0.0 for v in values]
            bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, heights, width, label=name)
            for bar, v in zip(bars, values):
                ax.annotate("-" if v is None else f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x)
        ax.set_xticklabels(labels)
        ax.set_title(f"{label} AP")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("AP (COCO, IoU .50:.95)")
    axes[1].legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise OutputError(f"could not write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def write_ap_by_size(
    results: Mapping[str, Mapping[str, float]], out_dir: Path, run_name: str, extra: Optional[dict] = None,
    provenance: Optional[dict] = None,
) -> Dict[str, Path]:
    """Write ap_by_size.json, ap_by_size.md and ap_by_size.png into ``out_dir``; return their paths.

    ``provenance`` (what produced the numbers: weights, config, input size, dataset) goes into the
    JSON and under the markdown table.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    paths = {"json": out_dir / "ap_by_size.json", "md": out_dir / "ap_by_size.md", "png": out_dir / "ap_by_size.png"}
    payload = {"run": run_name, **(extra or {}), **summary}
    if provenance:
        payload["provenance"] = provenance
    md = f"# AP by object size: {run_name}\n\n" + ap_table([(run_name, summary)])
    if provenance:
        md += "\n" + provenance_table([(run_name, provenance)])
    with StagedFiles() as staged:  # the three appear together or not at all
        write_text(staged.stage(paths["json"]), json.dumps(payload, indent=2))
        write_text(staged.stage(paths["md"]), md)
        bar_chart([(run_name, summary)], staged.stage(paths["png"]), f"AP by object size: {run_name}")
    return paths


def provenance_table(rows: Sequence[Tuple[str, Optional[dict]]]) -> str:
    """| run | dataset | weights | iterations | test size | model | config |: what produced each row."""
    head = ["run", "dataset", "weights", "iterations", "test size", "model", "config"]
    cells = []
    for name, p in rows:
        if not p:
            cells.append([name] + ["-"] * (len(head) - 1))
            continue
        weights = str(p.get("weights") or "-")
        if p.get("weights_sha256"):
            weights += f" (sha256 {str(p['weights_sha256'])[:8]})"
        size = p.get("input_size_test") if isinstance(p.get("input_size_test"), dict) else {}
        dataset = str(p.get("dataset", "-")) + (f" ({p['images']} images)" if p.get("images") else "")
        config = str(p.get("config_file") or "-")
        if p.get("config_sha256"):
            config += f" (sha256 {str(p['config_sha256'])[:8]})"
        cells.append([name, dataset, weights, p.get("iterations_trained", "-"), input_size_text(size), p.get("model", "-"), config])
    return markdown.markdown_table(head, cells)


def input_size_text(size: dict) -> str:
    """"256/256" (short side / longest side); test-time augmentation as "TTA 256,320/512 + flip"."""
    shortest = size.get("min", "-")
    if isinstance(shortest, (list, tuple)):
        return f"TTA {','.join(map(str, shortest))}/{size.get('max', '-')}" + (" + flip" if size.get("flip") else "")
    return f"{shortest}/{size.get('max', '-')}"


def find_ap_by_size(path: Path) -> Path:
    """The ap_by_size.json of a run: the file itself, or the only one under an output directory."""
    path = Path(path)
    if not path.exists():
        raise ResultFileError(f"{path}: no such file or directory")
    if path.is_file():
        return path
    found = sorted(path.rglob("ap_by_size.json"))
    if not found:
        raise ResultFileError(f"{path}: no ap_by_size.json under it; evaluate the run first (tools/train_net.py --eval-only ...)")
    if len(found) > 1:
        listed = ", ".join(str(p) for p in found[:4])
        raise ResultFileError(f"{path} holds {len(found)} evaluations ({listed}): name the ap_by_size.json you mean")
    return found[0]


def load_ap_by_size(path: Path) -> Tuple[str, Summary]:
    """(run name, summary) from an ap_by_size.json or an output directory that holds one."""
    name, summary, _ = load_run(path)
    return name, summary


def load_run(path: Path) -> Tuple[str, Summary, Optional[dict]]:
    """(run name, summary, provenance or None), checking that the file is what it should be."""
    path = find_ap_by_size(path)
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise ResultFileError(f"{path} is not an ap_by_size.json: not a text file") from None
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"{path} is not an ap_by_size.json: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:  # Python's parser gives up on nesting some thousand levels deep
        raise ResultFileError(f"{path} is not an ap_by_size.json: nested too deeply to read") from None
    if not isinstance(data, dict) or not any(isinstance(data.get(t), dict) for t, _ in TASKS):
        raise ResultFileError(f"{path} is not an ap_by_size.json: it has no 'bbox' or 'segm' results")
    summary: Summary = {}
    for task, _ in TASKS:
        if isinstance(data.get(task), dict):
            values = data[task]
            for m in METRICS:
                value = values.get(m)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                    raise ResultFileError(f"{path}: {task} {m}={value!r} is not an AP (a number in [0, 100], or null)")
            if not any(m in values for m in METRICS):  # null values are fine: "no instances of that size"
                raise ResultFileError(f"{path}: {task} has none of {list(METRICS)}")
            summary[task] = {m: values.get(m) for m in METRICS}
    provenance = data.get("provenance")
    if provenance is not None and not isinstance(provenance, dict):
        raise ResultFileError(f"{path}: 'provenance' is a {type(provenance).__name__}, not a mapping")
    return str(data.get("run", path.parent.name)), summary, provenance


def compare(
    run_paths: Sequence[Path], out_dir: Path, paper_rows: Sequence[str] = (), names: Sequence[str] = (),
    overwrite: bool = False,
) -> Dict[str, Path]:
    """One table and one chart for several runs, with rows of the paper's Table 6 as reference."""
    unknown = [r for r in paper_rows if r not in PAPER_TABLE6]
    if unknown:
        raise ResultFileError(f"unknown paper rows {unknown}; Table 6 has {list(PAPER_TABLE6)}")
    if len(names) > len(run_paths):
        raise ResultFileError(f"--names gives {len(names)} names for {len(run_paths)} runs")
    runs = [load_run(path) for path in run_paths]  # every input is checked before anything is written
    labels = [names[i] if i < len(names) else name for i, (name, _, _) in enumerate(runs)]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    for i, label in enumerate(labels[len(names):], start=len(names)):
        if label in duplicated:  # two runs of the same folder name: the paths tell them apart
            labels[i] = str(run_paths[i])
    if len(set(labels)) != len(labels):
        repeated = sorted({x for x in labels if labels.count(x) > 1})
        if set(repeated) & set(names):
            raise ResultFileError(f"--names: row names must differ; {repeated} repeat")
        # only the same evaluation given twice has the same name and the same path
        raise ResultFileError(f"the same evaluation is given twice: {repeated}")
    out_dir = Path(out_dir)
    paths = {"md": out_dir / "comparison.md", "png": out_dir / "comparison.png", "json": out_dir / "comparison.json"}
    for run_path in run_paths:  # --overwrite replaces an earlier comparison, never one of the runs compared
        for out in paths.values():
            if same_file(out, run_path):
                raise ResultFileError(f"--output {out_dir}: {out} is the input {run_path}; choose another --output")
    if not overwrite:
        refuse_overwrite(existing(paths.values()), "--output", "from an earlier comparison")
    rows: List[Tuple[str, Summary]] = [(label, summary) for label, (_, summary, _) in zip(labels, runs)]
    provenance: List[Tuple[str, Optional[dict]]] = [(label, prov) for label, (_, _, prov) in zip(labels, runs)]
    records = [{"run": n, **s, "provenance": p} for (n, s), (_, p) in zip(rows, provenance)]
    rows += [(f"paper: {r}", {t: {m: PAPER_TABLE6[r][t].get(m) for m in METRICS} for t in PAPER_TABLE6[r]}) for r in paper_rows]
    records += [{"run": n, **s, "provenance": None} for n, s in rows[len(runs):]]
    text = "# AP by object size, side by side\n\n" + ap_table(rows)
    text += "\n## What produced each run\n\n" + provenance_table(provenance)
    ensure_writable_dir(out_dir, "--output")
    with StagedFiles(replace=overwrite) as staged:  # nor a comparison another run wrote meanwhile
        write_text(staged.stage(paths["md"]), text)
        write_text(staged.stage(paths["json"]), json.dumps(records, indent=2))
        bar_chart(rows, staged.stage(paths["png"]), "AP by object size, side by side")
    return paths
