
import pytest
import torch

import detloss_cuda

HAS_CUDA = detloss_cuda.build_info()["cuda_available"]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# The tolerances (justified by dtype) live with `python -m detloss_cuda verify`, which uses
# the same ones on a user's machine.
from detloss_cuda.verify import ARITH, TOL, assert_close_dtype  # noqa: E402,F401


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
