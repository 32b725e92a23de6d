"""Static quality of the compiled CUDA kernels (no GPU needed): bench/kernel_report.py reads
the sm_90 machine code in the built extension; no kernel may spill, and the element-wise
hot paths must keep their 16-byte (fp32/fp64 boxes and bins: 16; half boxes and bins: 8)
global loads. Also checks that the report's parser does catch what it looks for."""
import os
import sys

import pytest

import detloss_cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import kernel_report as KR  # noqa: E402

BUILT_WITH_CUDA = detloss_cuda.build_info()["with_cuda"]


@pytest.fixture(scope="module")
def kernels():
    if not BUILT_WITH_CUDA:
        pytest.skip("the extension was built without CUDA kernels: nothing to inspect")
    so = detloss_cuda._C.__file__
    # a CUDA build must be inspectable: a missing cuobjdump is a failure here, not a skip
    return KR.collect(so, KR.find_cuobjdump())


def test_every_family_is_compiled(kernels):
    fams = {}
    for k in kernels:
        fams.setdefault(k.family, set()).add(k.dtype)
    for fam in ("cls", "box", "dfl", "kl", "matrix", "finalize", "scale", "match"):
        assert fams.get(fam) == {"fp16", "bf16", "fp32", "fp64"}, (fam, fams.get(fam))
    assert fams.get("count") == {"int64"}
    assert {"fp32", "fp64"} <= fams.get("assign", set())  # the arithmetic of the boxes
    assert "other" not in fams, [k.name for k in kernels if k.family == "other"]


def test_no_kernel_spills(kernels):
    # by design (kernel_report.allowed_frame): the assigner keeps each box's top-k list in a
    # local array indexed at run time; the KL's float forward saves one register around the
    # double log's called slow path
    bad = [f"{k.name}: {k.problems}" for k in kernels if not KR.allowed_frame(k) and
           (k.spill_stores or k.spill_loads or k.stack or k.local)]
    assert not bad, "\n".join(bad)


def test_hot_paths_keep_vector_loads(kernels):
    checked = [k for k in kernels if k.expected_load_bits]
    assert len(checked) >= 100  # every cls/box/dfl unit, forward and backward
    bad = [f"{k.name}: {k.problems}" for k in checked if k.problems]
    assert not bad, "\n".join(bad)


def test_occupancy_is_sane(kernels):
    # 256 threads per block: at least one block (8 warps) fits on an SM for every kernel, and
    # the fp32 element-wise kernels keep at least 4 resident (50% of the SM's 64 warps)
    assert all(k.blocks_per_sm >= 1 for k in kernels)
    # (but ProbIoU with CIoU's aspect term: three, as 64 registers spill there and the unit
    # is bound by its arithmetic; csrc/cuda/box_kernel.cu)
    low = [(k.name, k.registers, k.occupancy) for k in kernels
           if k.family in ("cls", "box") and k.dtype == "fp32"
           and k.occupancy < (0.375 if "BoxKind)5" in k.name else 0.5)]
    assert not low, low


def test_the_emulator_holds_every_kernel_of_the_cuda_build(kernels):
    """The SIMT emulator's registry (tests/test_cuda_emulated.py fails unless each of its
    kernels was launched) lists the very kernels nvcc compiled: the same instantiations, by
    name, neither more nor fewer. So coverage under the emulator is coverage of this build."""
    from emulated_cuda import kernels as emulated_kernels

    built = sorted(k.name for k in kernels)
    emulated = sorted(KR.shorten(n) for _, n, _ in emulated_kernels() if "::selftest::" not in n)
    assert len(built) == len(set(built)) and len(emulated) == len(set(emulated))
    assert built == emulated, (f"only in the CUDA build: {sorted(set(built) - set(emulated))[:5]}; "
                               f"only emulated: {sorted(set(emulated) - set(built))[:5]}")


# ---------------------------------------------------------------- the parser itself

RES = """
Fatbin elf code:
================
arch = sm_90
	Function _Z4goodv:
		REG:40 STACK:0 SHARED:1056 LOCAL:0 CONSTANT[0]:600 TEXTURE:0 SURFACE:0 SAMPLER:0
	Function _Z3badv:
		REG:48 STACK:16 SHARED:1056 LOCAL:0 CONSTANT[0]:600 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
SASS = """
	code for sm_90
		Function : _Z4goodv
        /*0080*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0090*/                   LDG.E.64.CONSTANT R8, desc[UR4][R2.64+0x10] ;
        /*00a0*/                   MUFU.EX2 R9, R9 ;
        /*00b0*/                   MUFU.RCP R10, R10 ;
        /*00c0*/                   MUFU.EX2 R11, R11 ;
		Function : _Z3badv
        /*0080*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0a80*/                   STL.64 [R1], R2 ;
        /*0ae0*/                   LDL.LU.64 R2, [R1] ;
        /*0b00*/                   CALL.REL.NOINC 0x36f0 ;
"""
NAMES = {
    "_Z4goodv": "void detloss::cuda::map_reduce_kernel<float, detloss::cuda::(anonymous "
                "namespace)::ClsUnit<float, (detloss::math::ClsKind)1, true, -1>, 0>(long, "
                "detloss::cuda::(anonymous namespace)::ClsUnit<float, (detloss::math::ClsKind)"
                "1, true, -1>, float*)",
    "_Z3badv": "void detloss::cuda::map_reduce_kernel<float, detloss::cuda::(anonymous "
               "namespace)::BoxUnit<float, (detloss::math::BoxKind)3, false>, 0>(long, "
               "detloss::cuda::(anonymous namespace)::BoxUnit<float, (detloss::math::BoxKind)"
               "3, false>, float*)",
}


def test_parser_reads_usage_loads_and_spills():
    ks = {k.mangled: k for k in KR.parse(RES, SASS, NAMES)}
    good, bad = ks["_Z4goodv"], ks["_Z3badv"]
    assert good.name == "map_reduce_kernel<float, ClsUnit<float, (ClsKind)1, true, -1>, 0>"
    assert (good.family, good.dtype, good.registers, good.shared) == ("cls", "fp32", 40, 1056)
    assert good.loads == {128: 1, 64: 1} and not good.problems
    assert good.mufu == {"EX2": 2, "RCP": 1} and good.calls == 0
    assert good.blocks_per_sm == 6 and good.occupancy == 0.75  # 40 regs: 6 blocks of 8 warps
    assert (bad.family, bad.spill_stores, bad.spill_loads, bad.stack, bad.calls) == \
        ("box", 1, 1, 16, 1)
    assert bad.loads == {32: 1}
    assert any("spills" in p for p in bad.problems)
    assert any("no 128-bit global loads" in p for p in bad.problems)


def test_half_units_expect_64_bit_loads():
    k = KR.Kernel("x", name="map_reduce_kernel<float, DflForward<half, 4, 4, false>, 0>")
    KR.classify(k)
    assert (k.family, k.dtype, k.expected_load_bits) == ("dfl", "fp16", 64)
    k = KR.Kernel("y", name="map_reduce_kernel<float, ClsUnit<bf16, (ClsKind)0, true, -1>, 0>")
    KR.classify(k)
    assert (k.family, k.dtype, k.expected_load_bits) == ("cls", "bf16", 128)
    k = KR.Kernel("z", name="map_reduce_kernel<float, ScaleUnit<half>, 0>")
    KR.classify(k)
    assert (k.family, k.dtype, k.expected_load_bits) == ("scale", "fp16", 128)
