"""Worker process for the benchmarks' CPU memory measurements (see timing.run_worker): runs one job
on a list of cells in this fresh process and prints one JSON line per cell."""
from __future__ import annotations

import json
import sys

import torch

from .detector import detector_memory
from .layer import LayerSpec, layer_memory, vs_conv_memory

CPU = torch.device("cpu")
JOBS = {
    "layer_memory": lambda cell, common: layer_memory(cell, LayerSpec(**common["spec"]), CPU),
    "vs_conv_memory": lambda cell, common: vs_conv_memory(cell, CPU),
    "detector_memory": detector_memory,
}


def main(payload: str) -> None:
    task = json.loads(payload)
    job = JOBS[task["job"]]
    for cell in task["cells"]:
        print(json.dumps({"cell": cell, "started": True}), flush=True)
        print(json.dumps({"cell": cell, **job(cell, task["common"])}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
