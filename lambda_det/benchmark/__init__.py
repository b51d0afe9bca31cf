"""Benchmarks: the lambda layer against its alternatives and the 3x3 conv (``layer``), whole Mask
R-CNNs with the Table 6 backbones (``detector``), on shared timing / memory / plotting helpers.
Tools: tools/benchmark_lambda.py, tools/benchmark_detector.py."""
from .layer import (
    LayerSpec, available_methods, form_sweep, layer_table, run_layer_benchmark, scope_sweep_cells, table6_cells, vs_conv, write_sweep,
)
from .timing import Timing, environment_summary, interleaved, peak_memory_bytes, run_worker

__all__ = [
    "LayerSpec",
    "Timing",
    "available_methods",
    "environment_summary",
    "form_sweep",
    "interleaved",
    "layer_table",
    "peak_memory_bytes",
    "run_layer_benchmark",
    "run_worker",
    "scope_sweep_cells",
    "table6_cells",
    "vs_conv",
    "write_sweep",
]
