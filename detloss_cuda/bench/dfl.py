"""Distribution rows: DFL and the distribution integral (a YOLOv8 head's 16 bins)."""
import torch

from .. import baselines as BL
from .. import functional as DF
from .. import reference as R
from .registry import BenchOp, nbytes as _nbytes


def _dfl_inputs(size, dtype, device, gen, bins=16):
    """A YOLOv8 head's distance distributions: rows of 16 bin logits, targets in bins."""
    n = max(1, size // bins)
    x = torch.randn(n, bins, generator=gen) * 2
    t = torch.rand(n, generator=gen) * (bins - 1)
    return {"x": x.to(device=device, dtype=dtype), "t": t.to(device=device)}


def _dfl_bytes(inp, mode):
    x, t = inp["x"], inp["t"]
    if mode == "fwd":
        return _nbytes(x, t) + x.element_size()
    return _nbytes(x, t) + _nbytes(x)


def _integral_bytes(inp, mode):
    x = inp["x"]
    out = x.shape[0] * x.element_size()
    return _nbytes(x) + out if mode == "fwd" else _nbytes(x) + _nbytes(x)  # bwd: + d/dx


_DFL_SIZES = {"quick": [10**4, 10**6], "cpu": [10**3, 10**4, 10**5, 10**6, 10**7, 64 * 10**6],
              "cuda": [10**3, 10**4, 10**5, 10**6, 10**7, 10**8]}


def ops():
    return {
        "dfl": BenchOp(
            name="dfl", family="dfl", unit="logits (rows x 16)", make=_dfl_inputs,
            fused=lambda i: DF.distribution_focal_loss(i["x"], i["t"], reduction="sum"),
            eager=lambda i: BL.distribution_focal_loss(i["x"], i["t"], reg_max=i["x"].shape[-1]),
            reference=lambda i: R.distribution_focal_loss(i["x"], i["t"], reduction="sum"),
            bytes_moved=_dfl_bytes, sizes=_DFL_SIZES, quick_compile=True),
        "integral": BenchOp(
            name="integral", family="dfl", unit="logits (rows x 16)", make=_dfl_inputs,
            fused=lambda i: DF.distribution_integral(i["x"]).sum(),
            eager=lambda i: BL.distribution_integral(i["x"]).sum(),
            reference=lambda i: R.distribution_integral(i["x"]).sum(),
            bytes_moved=_integral_bytes, sizes=_DFL_SIZES),
    }
