
import pytest
import torch

import detloss_cuda

HAS_CUDA = detloss_cuda.build_info()["cuda_available"]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Tolerances of a fused result in `dtype` against the float64 reference on the same
# (dtype-rounded) inputs, as (rtol, atol relative to the largest |expected|, absolute floor).
# The fused op computes in fp32 (fp64 for fp64) and rounds once to the output dtype, so the
# budget is that rounding (half an ulp: 2^-11 for fp16, 2^-8 for bf16) plus a few fp32 ulps
# (2^-24 each) from the ~10 operations of a formula: rtol is about twice the sum. The
# relative atol covers fp32 cancellation in (1 - t)·x + softplus(-x), which is absolute
# (an ulp of the largest term); the floor covers fp16 subnormals, spaced 2^-24 = 6e-8.
TOL = {
    torch.float64: (1e-9, 1e-12, 0.0),
    torch.float32: (2e-5, 2e-6, 0.0),
    torch.float16: (1e-3, 1e-4, 6e-8),
    torch.bfloat16: (8e-3, 1e-3, 0.0),
}


# The arithmetic part of TOL for the opmath of each dtype (fp32, or fp64 for fp64): what a
# formula of ~10 operations accumulates. Longer formulas scale it (`ops`).
ARITH = {torch.float64: (1e-9, 1e-12), torch.float32: (2e-5, 2e-6),
         torch.float16: (2e-5, 2e-6), torch.bfloat16: (2e-5, 2e-6)}


def assert_close_dtype(actual, expected, dtype, msg="", ops=1):
    """actual: a result computed in `dtype`; expected: the float64 reference. `ops` scales
    the arithmetic error budget for formulas longer than ~10 operations (box gradients: a
    coordinate's gradient sums up to 8 terms of either sign, each as large as the result)."""
    rtol, atol_rel, floor = TOL[dtype]
    rtol += (ops - 1) * ARITH[dtype][0]
    atol_rel += (ops - 1) * ARITH[dtype][1]
    # the exact value, rounded to the dtype the op returns (an fp16 sum past 65504 is inf)
    expected = expected.detach().cpu().to(dtype).double()
    actual = actual.detach().double().cpu()
    finite = expected[torch.isfinite(expected)]
    scale = finite.abs().max().item() if finite.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol_rel * scale + floor,
                               msg=(lambda m: f"{msg}\n{m}") if msg else None)


def devices():
    return ["cpu"] + (["cuda"] if HAS_CUDA else [])


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="no CUDA device here: CUDA kernels compiled, not run")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
