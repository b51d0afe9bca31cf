"""Worker process for the benchmarks' CPU memory measurements (see timing.run_worker): runs one job
on a list of cells in this fresh process and prints one JSON line per cell."""
from __future__ import annotations

import json
import sys

import torch


def _jobs():
    from .detector import detector_memory
    from .layer import LayerSpec, layer_memory, vs_conv_memory

    cpu = torch.device("cpu")
    return {
        "layer_memory": lambda cell, common: layer_memory(cell, LayerSpec(**common["spec"]), cpu),
        "vs_conv_memory": lambda cell, common: vs_conv_memory(cell, cpu),
        "detector_memory": lambda cell, common: detector_memory(cell, common),
    }


def main(payload: str) -> None:
    task = json.loads(payload)
    job = _jobs()[task["job"]]
    for cell in task["cells"]:
        print(json.dumps({"cell": cell, "started": True}), flush=True)
        print(json.dumps({"cell": cell, **job(cell, task["common"])}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
