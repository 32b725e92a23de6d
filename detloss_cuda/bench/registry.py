"""What a benchmark row is (BenchOp) and the registry of every family's rows.

Each family declares its ops in its own module (cls.py, box.py, dfl.py, mask.py, assign.py,
e2e.py) as a function ``ops() -> {name: BenchOp}``; nothing is imported or built until the
first call of ``all_ops()`` (importing the package does no work)."""
import importlib
from dataclasses import dataclass, field

import torch

# the modules of this package that declare rows, in the order the sweep runs them
FAMILY_MODULES = ("cls", "box", "dfl", "mask", "assign", "match", "e2e")

DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "fp16": torch.float16,
          "bf16": torch.bfloat16}


@dataclass
class BenchOp:
    name: str
    family: str
    unit: str  # what `size` counts
    make: object  # (size, dtype, device, generator) -> dict of tensors; "x" is differentiated
    fused: object  # inputs -> scalar loss (the matrix op: the matrix)
    eager: object  # inputs -> scalar loss: the PyTorch code users run (baselines.py)
    bytes_moved: object  # (inputs, mode) -> minimum bytes for that mode
    sizes: dict = field(default_factory=dict)  # "cpu" / "cuda" / "quick" -> list of sizes
    differentiable: bool = True
    reference: object = None  # inputs -> scalar loss: the oracle (impl "reference", opt-in)
    compilable: bool = True  # False: no torch.compile column (the e2e rows)
    # further implementations timed in every row of this op, reported as row[name] and
    # speedup_vs_<name> (the index-target rows race the dense fused op as "dense")
    extra: dict = field(default_factory=dict)
    # --quick compiles only one op a family (this one), at the larger size, in its training
    # mode: compiling is most of a quick run's time
    quick_compile: bool = False


def nbytes(*ts):
    return sum(t.numel() * t.element_size() for t in ts)


_OPS = {}


def all_ops():
    """{name: BenchOp} of every family whose libraries are installed (built once)."""
    if not _OPS:
        for mod in FAMILY_MODULES:
            _OPS.update(importlib.import_module(f"{__package__}.{mod}").ops())
    return _OPS
