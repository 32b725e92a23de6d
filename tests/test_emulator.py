"""The SIMT emulator's own tests (csrc/emu): each pattern the CUDA sources rely on, right, and a
broken copy of it that the emulator must catch (csrc/emu/selftest.cpp), by a wrong result or by
an error naming the fault; its schedule, poison and coverage machinery."""
import os
import re

import pytest
import torch

from emulated_cuda import CSRC, emu_ops, kernels

SEEDS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def ops():
    return emu_ops()


def selftest(ops, name, x, seed=0):
    ops.emu_set_seed(seed)
    return ops.emu_selftest(name, x)


@pytest.fixture
def x():
    # 64 blocks of 256: integers, so every order of the sums gives the same float
    return torch.randint(-8, 9, (64 * 256,)).float()


@pytest.mark.parametrize("seed", SEEDS)
def test_block_sum_with_barrier_is_right_under_every_schedule(ops, x, seed):
    assert torch.equal(selftest(ops, "block_sum", x, seed), x.view(64, 256).sum(1))


@pytest.mark.parametrize("seed", SEEDS)
def test_missing_barrier_gives_a_wrong_answer(ops, x, seed):
    """Warp 0 reads the other warps' slots with no __syncthreads after their writes: the warps
    run in a random order and shared memory starts as NaN, so the blocks whose warp 0 runs
    before another warp read poison (on a GPU: whatever the slot held, sometimes right)."""
    got = selftest(ops, "block_sum_no_barrier", x, seed)
    wrong = ~(got == x.view(64, 256).sum(1))
    assert wrong.sum() >= 32, f"only {int(wrong.sum())} of 64 blocks read poison"
    assert got[wrong].isnan().all()  # the poison, not a lucky partial sum


@pytest.mark.parametrize("seed", SEEDS)
def test_shuffle_width(ops, x, seed):
    ref = x.view(-1, 32).sum(1)
    assert torch.equal(selftest(ops, "warp_sum", x, seed), ref)
    # width 16 cuts the warp in two: by CUDA's rule the step of 16 reaches past lane 0's
    # segment and hands it its own value, so lane 0 ends with twice its half's sum
    assert torch.equal(selftest(ops, "warp_sum_width16", x, seed),
                       2 * x.view(-1, 2, 16)[:, 0].sum(1))


def test_group_shuffles_and_a_mask_that_leaves_lanes_out(ops, x):
    assert torch.equal(selftest(ops, "group_sum", x), x.view(-1, 4).sum(1).repeat_interleave(4))
    with pytest.raises(RuntimeError, match=r"reads lane \d+ in __shfl_xor_sync at .*selftest.cpp:\d+, "
                                           r"outside the mask 0x0000000?3"):
        selftest(ops, "group_sum_narrow_mask", x)


def test_block_order_dependence_shows(ops, x):
    right = torch.arange(1, 65, dtype=torch.float32)
    outs = [selftest(ops, "block_order_chain", x, s) for s in SEEDS]
    for s in SEEDS:
        assert torch.equal(selftest(ops, "block_order", x, s), right)
    # in launch order the chain would be right; scrambled, no seed gets it right
    assert all(not torch.equal(o, right) for o in outs)
    assert len({tuple(o.tolist()) for o in outs}) == len(SEEDS)  # and each order differs


def test_divergent_barrier_is_an_error(ops, x):
    with pytest.raises(RuntimeError, match=r"__syncthreads reached from two places, .*selftest.cpp:\d+ "
                                           r"and .*selftest.cpp:\d+: a barrier in divergent code"):
        selftest(ops, "divergent_barrier", x)


def test_a_lane_that_left_is_an_error_not_a_hang(ops, x):
    with pytest.raises(RuntimeError, match=r"lane 30 of warp 0 reads lane 31 in __shfl_down_sync at "
                                           r".*selftest.cpp:\d+, which has exited"):
        selftest(ops, "exited_lane", x)
    # and the emulator is usable after a failed launch (its fibers were reclaimed)
    assert torch.equal(selftest(ops, "block_sum", x), x.view(64, 256).sum(1))


@pytest.mark.parametrize("seed", SEEDS)
def test_collectives_of_disjoint_masks_interleave(ops, x, seed):
    """Lanes 20-31 wait in the warp's sum while lanes 0-19 finish their group sums first."""
    v = x.view(-1, 32).clone()
    v[:, :20] = v[:, :20].view(-1, 5, 4).sum(-1, keepdim=True).expand(-1, 5, 4).reshape(-1, 20)
    assert torch.equal(selftest(ops, "staggered", x, seed), v.sum(1))


def test_collectives_that_can_never_complete_are_errors(ops, x):
    with pytest.raises(RuntimeError, match=r"the lanes of a collective disagree: lane \d+ calls "
                                           r"__shfl_(down|xor)_sync .*: a deadlock"):
        selftest(ops, "mismatch", x)
    with pytest.raises(RuntimeError, match=r"__shfl_down_sync at .*selftest.cpp:\d+ \(mask 0xffffffff\) "
                                           r"waits for lane \d+ of warp 0, which waits at "
                                           r"__syncthreads at .*: a deadlock"):
        selftest(ops, "barrier_in_shuffle", x)


def test_an_invalid_access_is_an_error_not_a_crash(ops, x):
    with pytest.raises(RuntimeError, match=r"invalid memory access \(SIGSEGV at address 0x[0-9a-f]+\) "
                                           r"by thread \(3, 0, 0\) \(kernel detloss::cuda::selftest::"
                                           r"out_of_bounds_kernel"):
        selftest(ops, "out_of_bounds", x)
    assert torch.equal(selftest(ops, "block_sum", x), x.view(64, 256).sum(1))


def test_shared_memory_is_poisoned(ops, x):
    assert ops.emu_shared_bytes() > 0, "the linker script (csrc/emu/shared.ld) was not applied"
    got = selftest(ops, "poison", x)
    assert (got.view(torch.int32) == -1).all()  # every byte 0xFF


def test_ballot_and_popc(ops):
    x = torch.randn(4 * 256)
    got = selftest(ops, "ballot", x)
    pos = (x > 0).view(-1, 32).int()
    below = pos.cumsum(1) - pos  # positive lanes below each lane
    assert torch.equal(got, below.view(-1).float())


def test_counters_count(ops, x):
    before = ops.emu_counters()
    selftest(ops, "block_sum", x)
    after = ops.emu_counters()
    launches, blocks, threads, barriers, switches = (a - b for a, b in zip(after, before))
    assert (launches, blocks, threads, barriers) == (1, 64, 64 * 256, 64)
    # each thread: started once, back from 5 shuffles and a barrier, warp 0 from 5 more
    assert switches == 64 * (256 * 7 + 32 * 5)


def test_registry_names_every_kernel_once():
    ks = kernels()
    names = [n for _, n, _ in ks]
    assert len(names) == len(set(names)) == len({t for t, _, _ in ks})
    assert all(n.startswith(("void detloss::cuda::", "detloss::cuda::")) for n in names), names[:3]
    assert any(n.startswith("void detloss::cuda::map_reduce_kernel<") for n in names)
    assert any("box_matrix_kernel<" in n for n in names)
    assert any("finalize_sum_kernel<" in n for n in names)


def shared_declarations():
    """(function, variable) of every __shared__ declaration in csrc/cuda and the self-tests."""
    found = set()
    files = [os.path.join(CSRC, "cuda", f) for f in os.listdir(os.path.join(CSRC, "cuda"))]
    for path in files + [os.path.join(CSRC, "emu", "selftest.cpp")]:
        with open(path) as f:
            for m in re.finditer(r"__shared__\s+[\w:<>, ]+?\s+(\w+)\s*\[", f.read()):
                found.add(m.group(1))
    return found


def test_the_poisoned_section_holds_shared_memory_only():
    """csrc/emu/shared.ld gathers the function-local statics of namespace detloss::cuda: every
    one must be a __shared__ variable (a host static there would be poisoned)."""
    import glob
    import subprocess

    from emulated_cuda import build_dir

    so = glob.glob(os.path.join(build_dir(), "detloss_emu*.so"))
    assert so, "the emulated build's library is missing"
    nm = subprocess.run(["nm", "-C", so[0]], capture_output=True, text=True, check=True).stdout
    statics = set()
    for line in nm.splitlines():
        m = re.match(r"[0-9a-f]+ [bBdDuV] (detloss::cuda::.*)::(\w+)$", line)
        if m:
            statics.add(m.group(2))
    assert statics, "no __shared__ variable found in the emulated build"
    assert statics <= shared_declarations(), statics - shared_declarations()


@pytest.mark.slow
def test_sanitizer_cases_launch_every_kernel():
    """bench/sanitize_cases.py, the compute-sanitizer workload of the GPU check, run here on the
    emulated kernels: it runs, and it launches every kernel instantiation of csrc/cuda, so the
    next sanitizer run covers them all."""
    import importlib.util
    import os

    from emulated_cuda import ROOT, emulated

    spec = importlib.util.spec_from_file_location(
        "sanitize_cases", os.path.join(ROOT, "bench", "sanitize_cases.py"))
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    cases.DEVICE = "cpu"
    before = {name: n for _, name, n in kernels()}
    with emulated():
        for run in (cases.cls_cases, cases.box_cases, cases.dfl_cases, cases.mask_cases,
                    cases.assign_cases):
            run(False)
    missed = [name for _, name, n in kernels() if n == before[name] and "::selftest::" not in name]
    assert not missed, f"{len(missed)} kernels the sanitizer cases never launch:\n" + "\n".join(missed)
