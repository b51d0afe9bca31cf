"""Charts for the benchmarks (matplotlib, Agg): written to a path given by the caller."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np

from ..errors import OutputError


def _pyplot():
    # lazy: Agg must be chosen before pyplot is imported, and importing this module must not choose it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    try:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise OutputError(f"could not write {path}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def line_plot(records: List[dict], path: Path, title: str) -> None:
    """Forward, forward+backward time and peak memory against the number of positions, per method."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    panels = ((axes[0], "forward", "forward time (ms)"), (axes[1], "forward+backward", "forward+backward time (ms)"),
              (axes[2], "peak_bytes", "peak memory, forward+backward (MiB)"))
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method]
        style = "-" if method.startswith("lambda/") else "--"
        for ax, key, _ in panels:
            if key == "peak_bytes":
                pts = [(r["side"] ** 2, r[key] / 2**20) for r in rows if key in r]
            else:
                pts = [(r["side"] ** 2, r[key]["median_s"] * 1000) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*sorted(pts)), style, marker="o", label=method)
    for ax, _, label in panels:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("positions n = side^2")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def ratio_bars(records: List[dict], path: Path, title: str) -> None:
    """lambda / conv time per shape and batch, for the layer and the block, forward and forward+backward."""
    plt = _pyplot()
    levels = [lv for lv in ("layer", "block") if any(r["level"] == lv for r in records)]
    fig, axes = plt.subplots(1, len(levels), figsize=(7 * len(levels), 4.8), squeeze=False)
    for ax, level in zip(axes[0], levels):
        rows = [r for r in records if r["level"] == level]
        labels = [f"{r['shape'].split(':')[0]}\n{r.get('precision', 'float32')}, batch {r['batch']}" for r in rows]
        x = np.arange(len(rows))
        for i, mode in enumerate(("forward", "forward+backward")):
            ax.bar(x + (i - 0.5) * 0.4, [r[mode]["ratio"] for r in rows], 0.4, label=mode)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=6, rotation=90)
        ax.set_ylabel("lambda time / 3x3 conv time")
        ax.set_title(level)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def grouped_bars(groups: Sequence[str], series: dict, path: Path, title: str, ylabel: str) -> None:
    """One group of bars per entry of ``groups``; ``series`` maps a label to one value per group."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(groups)), 5))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [v if v is not None else 0 for v in values], width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


__all__ = ["grouped_bars", "line_plot", "ratio_bars"]
