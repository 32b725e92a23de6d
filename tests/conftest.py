
import contextlib
import os
import tempfile

# A fresh torch.compile cache per test session: Inductor's on-disk cache outlives a rebuild of
# the extension, and a cached graph of an op whose fake kernel changed fails at run time.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="detloss-inductor-"))

import pytest  # noqa: E402
import torch  # noqa: E402

import detloss_cuda

HAS_CUDA = detloss_cuda.build_info()["cuda_available"]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# The tolerances (justified by dtype) live with `python -m detloss_cuda verify`, which uses
# the same ones on a user's machine.
from detloss_cuda.verify import ARITH, TOL, assert_close_dtype  # noqa: E402,F401


class OpSpy:
    """The ops that ran (their dispatcher names, e.g. 'detloss::cls_loss_with_grad',
    'aten::mul_'), by the profiler: a dispatch mode would change what is dispatched (under
    one, every tensor counts as a subclass and takes the functional paths)."""

    def __enter__(self):
        self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        self.prof.__exit__(*exc)
        self.ops = [e.name for e in self.prof.events()]


def devices():
    """The devices a test runs on: the CPU always; CUDA where a GPU is, marked `cuda` so that
    `pytest -m cuda` (bench/gpu_check.sh) runs every device-parametrised CUDA case too."""
    return ["cpu"] + ([pytest.param("cuda", marks=pytest.mark.cuda)] if HAS_CUDA else [])


def drivers():
    """The kernels a test runs on: 'cpu'; 'emulated', the CUDA kernels on CPU tensors under the
    SIMT emulator (tests/emulated_cuda.py); 'cuda' where a GPU is (marked `cuda`). A test
    enters `on_driver(driver)` for its tensors' device and the ops' namespace."""
    return ["cpu", "emulated"] + ([pytest.param("cuda", marks=pytest.mark.cuda)] if HAS_CUDA else [])


@contextlib.contextmanager
def on_driver(driver):
    """(device, op namespace) of a driver; for 'emulated', detloss_cuda's functions run the
    emulated CUDA kernels inside the block."""
    if driver == "emulated":
        from emulated_cuda import emulated

        with emulated():
            yield "cpu", "detloss_emu"
    else:
        yield driver, "detloss"


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
