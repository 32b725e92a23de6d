"""The benchmark: every op, fused vs the eager PyTorch users run today vs torch.compile of
it, forward and forward+backward, over sizes and dtypes, with a roofline and peak memory.

Speed is reported as ratios measured in one process, the implementations of a row timed
interleaved (timing.py), and a row measured on a machine too busy to time on is flagged,
not reported (sweep.noise_reasons, report.verdict). For each op the minimum bytes it must
move (each input read once, each output written once) is divided by the time, and
compared with a device copy of the same number of bytes measured in the same run.

    registry.py  BenchOp, the registry (each family's rows: cls.py, box.py, dfl.py,
                 assign.py, e2e.py; built at first use, nothing at import)
    timing.py    interleaved timing, peak memory, the copy's bandwidth
    sweep.py     the sweep and the noise checks
    report.py    printed rows, markdown, JSON, the verdict
    plot.py      the PNG
"""
from .plot import PANELS, figure, plot
from .registry import DTYPES, BenchOp, all_ops
from .report import HEADER, format_row, markdown_table, save_json, verdict
from .sweep import run

__all__ = ["BenchOp", "DTYPES", "HEADER", "OPS", "PANELS", "all_ops", "figure", "format_row",
           "markdown_table", "plot", "run", "save_json", "verdict"]


def __getattr__(name):  # OPS: the registry, built at first use
    if name == "OPS":
        return all_ops()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
