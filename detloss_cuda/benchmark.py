"""The benchmark: every op, fused vs the eager PyTorch users run today vs torch.compile of
it, forward and forward+backward, over sizes and dtypes, with a roofline.

Speed is reported as ratios measured in one process (never absolute claims from other
runs). For each op the minimum bytes it must move (each input read once, each output
written once) is divided by the time, and compared with a device copy of the same number
of bytes measured in the same run.
"""
import datetime
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field

import torch

from . import baselines as BL
from . import functional as DF
from . import reference as R

# ----------------------------------------------------------------------------- the ops


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


def _nbytes(*ts):
    return sum(t.numel() * t.element_size() for t in ts)


def _cls_inputs(size, dtype, device, gen, num_classes=80):
    """Detector-like classification inputs: [anchors, classes] logits, targets mostly 0
    with ~1% positives carrying IoU-like soft scores."""
    n = max(1, size // num_classes)
    x = torch.randn(n, num_classes, generator=gen) * 2 - 3  # most anchors confidently negative
    u = torch.rand(n, num_classes, generator=gen)
    t = torch.where(u < 0.01, torch.rand(n, num_classes, generator=gen), torch.zeros_like(u))
    return {"x": x.to(device=device, dtype=dtype), "t": t.to(device=device, dtype=dtype)}


def _cls_bytes(inp, mode):
    x, t = inp["x"], inp["t"]
    if mode == "fwd":
        return _nbytes(x, t) + x.element_size()  # read x, t; write one scalar
    return _nbytes(x, t) + _nbytes(x)  # read x, t; write d/dx (the loss scalar is noise)


def _cls_idx_inputs(size, dtype, device, gen, num_classes=80):
    """The same logits with what an assigner produces: one class per anchor (background C
    for ~95% of them) and a soft score; the dense target they stand for rides along for the
    dense fused op."""
    x = _cls_inputs(size, dtype, device, gen, num_classes)["x"]
    n = x.shape[0]
    lab = torch.randint(0, num_classes, (n,), generator=gen)
    lab = torch.where(torch.rand(n, generator=gen) < 0.05, lab, torch.full_like(lab, num_classes))
    score = torch.rand(n, generator=gen).to(device=device, dtype=dtype)
    lab = lab.to(device)
    return {"x": x, "labels": lab, "score": score, "t": BL.dense_target(x, lab, score)}


def _cls_idx_bytes(inp, mode):
    x = inp["x"]
    read = _nbytes(x, inp["labels"], inp["score"])
    return read + (x.element_size() if mode == "fwd" else _nbytes(x))


_CLS = {
    "bce": ("binary_cross_entropy_with_logits", {}),
    "focal": ("sigmoid_focal_loss", {"alpha": 0.25, "gamma": 2.0}),
    "qfl": ("quality_focal_loss", {"gamma": 2.0}),
    "vfl": ("varifocal_loss", {"alpha": 0.75, "gamma": 2.0}),
}


def _cls_op(name):
    fn, kw = _CLS[name]
    fused, eager = getattr(DF, fn), getattr(BL, fn)
    return BenchOp(
        name=name, family="cls", unit="elements", make=_cls_inputs,
        fused=lambda i: fused(i["x"], i["t"], reduction="sum", **kw),
        eager=lambda i: eager(i["x"], i["t"], reduction="sum", **kw),
        reference=lambda i: getattr(R, fn)(i["x"], i["t"], reduction="sum", **kw),
        bytes_moved=_cls_bytes,
        sizes={"quick": [10**4, 10**6], "cpu": [10**3, 10**4, 10**5, 10**6, 10**7],
               "cuda": [10**3, 10**4, 10**5, 10**6, 10**7, 10**8]},
    )


def _cls_idx_op(name):
    fn, kw = _CLS[name]
    fused, eager_dense = getattr(DF, fn), getattr(BL, fn)
    if name == "qfl":  # mmdet takes (label, score) itself
        eager = lambda i: BL.quality_focal_loss_label(i["x"], i["labels"], i["score"], **kw)  # noqa: E731
    elif name == "vfl":  # ultralytics: positives are the one-hot's ones
        eager = lambda i: eager_dense(i["x"], BL.dense_target(i["x"], i["labels"], i["score"]), **kw)  # noqa: E731
    else:
        eager = lambda i: eager_dense(i["x"], BL.dense_target(i["x"], i["labels"], i["score"]), **kw)  # noqa: E731
    return BenchOp(
        name=f"{name}_idx", family="cls_idx", unit="elements", make=_cls_idx_inputs,
        fused=lambda i: fused(i["x"], i["labels"], score=i["score"], reduction="sum", **kw),
        eager=eager,
        reference=lambda i: getattr(R, fn)(i["x"], i["labels"], score=i["score"], reduction="sum", **kw),
        bytes_moved=_cls_idx_bytes,
        extra={"dense": lambda i: fused(i["x"], i["t"], reduction="sum", **kw)},
        sizes={"quick": [10**4, 10**6], "cpu": [10**3, 10**4, 10**5, 10**6, 10**7],
               "cuda": [10**3, 10**4, 10**5, 10**6, 10**7, 10**8]},
    )


def _box_inputs(size, dtype, device, gen):
    """Box pairs as a detector's box loss sees them: predictions near their targets."""
    n = max(1, size)
    xy = torch.rand(n, 2, generator=gen) * 640
    wh = torch.rand(n, 2, generator=gen) * 120 + 4
    t = torch.cat([xy, xy + wh], -1)
    p = t + torch.randn(n, 4, generator=gen) * 8
    return {"x": p.to(device=device, dtype=dtype), "t": t.to(device=device, dtype=dtype)}


def _box_bytes(inp, mode):
    x, t = inp["x"], inp["t"]
    if mode == "fwd":
        return _nbytes(x, t) + x.element_size()
    return _nbytes(x, t) + _nbytes(x)  # read both boxes, write d/d(pred)


def _box_op(kind):
    return BenchOp(
        name=kind, family="box", unit="box pairs", make=_box_inputs,
        fused=lambda i: DF.iou_loss(i["x"], i["t"], kind, reduction="sum"),
        eager=lambda i: BL.iou_loss(i["x"], i["t"], kind, reduction="sum"),
        reference=lambda i: R.iou_loss(i["x"], i["t"], kind, reduction="sum"),
        bytes_moved=_box_bytes,
        sizes={"quick": [10**3, 10**5], "cpu": [10**2, 10**3, 10**4, 10**5, 10**6],
               "cuda": [10**2, 10**3, 10**4, 10**5, 10**6, 10**7]},
    )


_MATRIX_M = 64  # ground-truth boxes per image, the assigner's other side


def _matrix_inputs(size, dtype, device, gen):
    n = max(1, size // _MATRIX_M)
    a = _box_inputs(n, dtype, device, gen)["t"]
    b = _box_inputs(_MATRIX_M, dtype, device, gen)["t"]
    return {"x": a, "t": b}


def _matrix_bytes(inp, mode):
    a, b = inp["x"], inp["t"]
    return _nbytes(a, b) + a.shape[0] * b.shape[0] * a.element_size()


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

OPS = {name: _cls_op(name) for name in _CLS}
OPS.update({f"{name}_idx": _cls_idx_op(name) for name in _CLS})
OPS.update({kind: _box_op(kind) for kind in ("iou", "giou", "diou", "ciou")})
OPS["iou_matrix"] = BenchOp(
    name="iou_matrix", family="matrix", unit="matrix entries (N x 64)", make=_matrix_inputs,
    fused=lambda i: DF.box_iou_matrix(i["x"], i["t"]),
    eager=lambda i: BL.box_iou(i["x"], i["t"]),
    reference=lambda i: R.box_iou_matrix(i["x"], i["t"]),
    bytes_moved=_matrix_bytes, differentiable=False,
    sizes={"quick": [10**4, 10**6], "cpu": [10**3, 10**4, 10**5, 10**6, 10**7],
           "cuda": [10**3, 10**4, 10**5, 10**6, 10**7, 10**8]},
)
OPS["dfl"] = BenchOp(
    name="dfl", family="dfl", unit="logits (rows x 16)", make=_dfl_inputs,
    fused=lambda i: DF.distribution_focal_loss(i["x"], i["t"], reduction="sum"),
    eager=lambda i: BL.distribution_focal_loss(i["x"], i["t"], reg_max=i["x"].shape[-1]),
    reference=lambda i: R.distribution_focal_loss(i["x"], i["t"], reduction="sum"),
    bytes_moved=_dfl_bytes, sizes=_DFL_SIZES,
)
OPS["integral"] = BenchOp(
    name="integral", family="dfl", unit="logits (rows x 16)", make=_dfl_inputs,
    fused=lambda i: DF.distribution_integral(i["x"]).sum(),
    eager=lambda i: BL.distribution_integral(i["x"]).sum(),
    reference=lambda i: R.distribution_integral(i["x"]).sum(),
    bytes_moved=_integral_bytes, sizes=_DFL_SIZES,
)

def _assign_inputs(size, dtype, device, gen, num_classes=80):
    """A YOLOv8 640 px step's assignment: 8400 anchors (strides 8, 16, 32), `size` boxes per
    image (16 images; 4 at 4096 boxes, where ultralytics' (B, M, A) tensors would need ~30 GB),
    predicted boxes around the anchors, class probabilities."""
    M = max(1, int(size))
    B = 16 if M < 4096 else 4
    pts = []
    for s in (8, 16, 32):
        n = 640 // s
        y, x = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
        pts.append(torch.stack([x, y], -1).view(-1, 2) * s)
    anc = torch.cat(pts)
    A = anc.shape[0]
    xy = torch.rand(B, M, 2, generator=gen) * 600 + 20
    wh = torch.rand(B, M, 2, generator=gen) * 150 + 8
    gt = torch.cat([xy - wh / 2, xy + wh / 2], -1).clamp(0, 640)
    pwh = torch.rand(B, A, 2, generator=gen) * 120 + 8
    pd = torch.cat([anc - pwh / 2, anc + pwh / 2], -1)
    scores = torch.rand(B, A, num_classes, generator=gen) * 0.1
    labels = torch.randint(0, num_classes, (B, M, 1), generator=gen).float()
    return {"x": scores.to(device=device, dtype=dtype), "pd": pd.to(device), "anc": anc.to(device),
            "labels": labels.to(device), "gt": gt.to(device),
            "mask": torch.ones(B, M, 1, device=device)}


def _assign_bytes(inp, mode):
    s = inp["x"]
    B, A, C = s.shape
    # read: boxes, anchors, gt, one score per candidate (at most B·A·C); written: the five
    # outputs, the dense [B, A, C] target scores included
    return _nbytes(inp["pd"], inp["anc"], inp["gt"], inp["labels"]) + B * A * (8 + 16 + 1 + 8 + C * s.element_size())


_ASSIGNERS = {}


def _assigner(kind):
    if kind not in _ASSIGNERS:
        if kind == "fused":
            from .nn import TaskAlignedAssigner
        else:
            from ultralytics.utils.tal import TaskAlignedAssigner
        _ASSIGNERS[kind] = TaskAlignedAssigner(topk=10, num_classes=80, alpha=0.5, beta=6.0)
    return _ASSIGNERS[kind]


def _assign_run(kind):
    def run(i):
        return _assigner(kind)(i["x"], i["pd"], i["anc"], i["labels"], i["gt"], i["mask"])
    return run


if importlib.util.find_spec("ultralytics") is not None:
    OPS["assigner"] = BenchOp(
        name="assigner", family="assign", unit="boxes per image (16 images; 4 at 4096)",
        make=_assign_inputs, fused=_assign_run("fused"), eager=_assign_run("ultralytics"),
        bytes_moved=_assign_bytes, differentiable=False, compilable=False,
        sizes={"quick": [8, 64], "cpu": [8, 64, 512, 4096], "cuda": [8, 64, 512, 4096]})

# end to end: the loss part of a real detector's training step, patched vs unpatched
# (detloss_cuda.integrations), when ultralytics / torchvision are installed
from .integrations._bench import bench_ops as _bench_ops  # noqa: E402

OPS.update(_bench_ops(BenchOp))

# ----------------------------------------------------------------------------- timing


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device, min_time=0.2, min_reps=5, max_reps=2000):
    """Median and spread (20th..80th percentile) of fn's time in seconds, after warm-up."""
    for _ in range(2):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    est = max(time.perf_counter() - t0, 1e-6)
    reps = int(min(max_reps, max(min_reps, min_time / est)))
    times = []
    if device == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return {"median": q(0.5), "p20": q(0.2), "p80": q(0.8), "reps": reps}


def _proc_status(*keys):
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0]) * 1024
    return out


def _cpu_peak(fn):
    """Peak resident memory added by one call on the CPU, where PyTorch keeps no allocator
    statistics: free heap pages are returned to the OS (malloc_trim), the kernel's high-water
    mark of the process is reset (/proc/self/clear_refs, 5), and after the call its rise over
    the resident size before is read (VmHWM - VmRSS). Linux with glibc; None elsewhere. It
    counts pages touched, so it is an upper bound of the allocations' peak within a page."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status("VmRSS")["VmRSS"]
        fn()
        return max(0, _proc_status("VmHWM")["VmHWM"] - before)
    except (OSError, KeyError, AttributeError):
        return None


def peak_memory(fn, device):
    """Peak bytes allocated by one call beyond what was allocated before it: on CUDA the
    caching allocator's statistics; on the CPU the rise of the process's peak resident
    memory (_cpu_peak)."""
    if device != "cuda":
        return _cpu_peak(fn)
    _sync(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def copy_bandwidth(nbytes, device, min_time):
    """Bytes/s of a device copy that moves `nbytes` in total (nbytes/2 read, nbytes/2 written)."""
    n = max(1, int(nbytes // 2))
    src = torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, min_time=min_time)
    return 2 * n / t["median"]


# ----------------------------------------------------------------------------- running


def _make_runner(op, impl, inputs, mode, compiled_cache, compile_dynamic=False):
    if impl == "fused":
        f = op.fused
    elif impl in op.extra:
        f = op.extra[impl]
    elif impl == "eager":
        f = op.eager
    elif impl == "reference":
        f = op.reference
    else:
        # compile: static shapes by default, one specialised graph per size, as a training
        # loop with fixed shapes gets. With dynamic shapes one graph serves every size, but
        # Inductor then cannot size its reductions (seen on an H200: a 1e8-element focal
        # loss 170x slower than static), so that column would not be a fair baseline.
        key = (op.name, mode)
        if key not in compiled_cache:
            compiled_cache[key] = torch.compile(op.eager, dynamic=compile_dynamic)
        f = compiled_cache[key]
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return f(inputs)
        return run
    leaves = _leaves(inputs)

    def run():
        return torch.autograd.grad(f(inputs), leaves)
    return run


def _leaves(inputs):
    """What a fwd+bwd row differentiates: inputs["x"], or every tensor of "grad_leaves" (the
    e2e rows: the head's separate outputs)."""
    return inputs.get("grad_leaves") or [inputs["x"]]


def _git_commit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "fp16": torch.float16,
          "bf16": torch.bfloat16}


def run(ops, devices, dtypes, modes, impls, sizes=None, quick=False, min_time=None, log=print,
        compile_dtypes=None, compile_dynamic=False, on_row=None):
    """Runs the sweep; returns the JSON-ready result (meta + rows). `compile_dtypes` limits
    the torch.compile column to those dtypes (compiling is most of a GPU sweep's time);
    `compile_dynamic` compiles once with dynamic shapes instead of once per size;
    `on_row(result)` is called after every row (the CLI saves the JSON as it goes)."""
    from . import build_info

    def cell_time(device):
        if min_time is not None:
            return min_time
        return 0.05 if quick else (0.1 if device == "cuda" else 0.2)

    # every (op, mode, dtype, size) compiles once; the default limit (8) would silently fall
    # back to eager and make the "compile" column a lie
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 4096)
    rows = []
    compiled_cache = {}
    copy_cache = {}
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "build_info": build_info(),
        "python": sys.version.split()[0],
        "devices": {d: device_name(d) for d in devices},
        "quick": quick,
        "compile_dynamic": compile_dynamic,
        "min_time_s": {d: cell_time(d) for d in devices},
        "command": " ".join(sys.argv),
    }
    for device in devices:
        for dname in dtypes[device]:
            dtype = DTYPES[dname]
            for op in ops:
                # --sizes counts elements; the e2e rows count images and keep their own
                use = sizes if sizes and op.family not in ("e2e", "assign") else None
                op_sizes = use or op.sizes["quick" if quick else device]
                for size in op_sizes:
                    gen = torch.Generator().manual_seed(0)
                    inputs = op.make(int(size), dtype, device, gen)
                    for mode in modes:
                        if mode == "fwdbwd" and not op.differentiable:
                            continue
                        for t in _leaves(inputs):
                            t.requires_grad_(mode == "fwdbwd")
                        nbytes = op.bytes_moved(inputs, mode)
                        ck = (device, nbytes)
                        if ck not in copy_cache:
                            copy_cache[ck] = copy_bandwidth(nbytes, device, cell_time(device))
                        row = {"op": op.name, "family": op.family, "device": device,
                               "dtype": dname, "size": int(size), "unit": op.unit,
                               "mode": mode, "min_bytes": nbytes,
                               "copy_bytes_per_s": copy_cache[ck]}
                        for impl in list(impls) + (list(op.extra) if "fused" in impls else []):
                            if impl == "compile" and compile_dtypes and dname not in compile_dtypes:
                                continue
                            if impl == "compile" and quick and size != op_sizes[-1]:
                                continue  # quick: compiling is most of the time; largest size only
                            if (impl == "compile" and not op.compilable) or (
                                    impl == "reference" and op.reference is None):
                                continue
                            fn = _make_runner(op, impl, inputs, mode, compiled_cache, compile_dynamic)
                            try:
                                t = time_fn(fn, device, min_time=cell_time(device))
                                mem = peak_memory(fn, device)
                            except Exception as e:  # e.g. compile unavailable: report it
                                row[impl] = {"error": f"{type(e).__name__}: {e}"[:300]}
                                continue
                            bw = nbytes / t["median"]
                            row[impl] = dict(t, peak_bytes=mem, bytes_per_s=bw,
                                             copy_fraction=bw / copy_cache[ck])
                        for other in ("eager", "compile", "reference", *op.extra):
                            if "median" in row.get("fused", {}) and "median" in row.get(other, {}):
                                row[f"speedup_vs_{other}"] = row[other]["median"] / row["fused"]["median"]
                        rows.append(row)
                        log(format_row(row))
                        if on_row is not None:
                            on_row({"meta": meta, "rows": rows})
                    del inputs
            if device == "cuda":
                torch.cuda.empty_cache()
    return {"meta": meta, "rows": rows}


# ----------------------------------------------------------------------------- output


def _fmt_time(s):
    if s is None:
        return "-"
    return f"{s * 1e6:.1f}us" if s < 1e-3 else f"{s * 1e3:.2f}ms"


def _fmt_size(n):
    if n <= 0:
        return str(n)
    e = int(math.floor(math.log10(n)))
    m = n / 10**e
    return f"{m:.0f}e{e}" if m == int(m) else f"{m:.1f}e{e}"


HEADER = (f"{'op':<15}{'dev':<5}{'dtype':<6}{'size':>6} {'mode':<7}"
          f"{'fused':>10}{'eager':>10}{'compile':>10}{'x eager':>9}{'x comp':>8}"
          f"{'GB/s':>8}{'% copy':>8}{'mem fused/eager':>18}")


def format_row(r):
    def t(impl):
        return _fmt_time(r.get(impl, {}).get("median"))

    def x(k):
        v = r.get(k)
        return f"{v:.2f}" if v else "-"

    f = r.get("fused", {})
    bw = f.get("bytes_per_s")
    frac = f.get("copy_fraction")
    mf, me = f.get("peak_bytes"), r.get("eager", {}).get("peak_bytes")
    mem = "-" if mf is None or me is None else f"{mf / 2**20:.1f}/{me / 2**20:.1f}MiB"
    line = (f"{r['op']:<15}{r['device']:<5}{r['dtype']:<6}{_fmt_size(r['size']):>6} "
            f"{r['mode']:<7}{t('fused'):>10}{t('eager'):>10}{t('compile'):>10}"
            f"{x('speedup_vs_eager'):>9}{x('speedup_vs_compile'):>8}"
            f"{(bw / 1e9 if bw else 0):>8.1f}{(100 * frac if frac else 0):>7.1f}%{mem:>18}")
    for other in ("dense", "reference"):
        if other in r:
            line += f"   {other} {t(other)} (x{x('speedup_vs_' + other)})"
    return line


def markdown_table(result):
    lines = ["| op | device | dtype | size | mode | fused | eager | compile | × eager | × compile | GB/s | % of copy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        f = r.get("fused", {})
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["op"], r["device"], r["dtype"], _fmt_size(r["size"]), r["mode"],
            _fmt_time(f.get("median")), _fmt_time(r.get("eager", {}).get("median")),
            _fmt_time(r.get("compile", {}).get("median")),
            f"{r['speedup_vs_eager']:.2f}" if r.get("speedup_vs_eager") else "-",
            f"{r['speedup_vs_compile']:.2f}" if r.get("speedup_vs_compile") else "-",
            f"{f['bytes_per_s'] / 1e9:.1f}" if f.get("bytes_per_s") else "-",
            f"{100 * f['copy_fraction']:.0f}%" if f.get("copy_fraction") else "-"))
    return "\n".join(lines)


# One panel per family: (title, x axis: what `size` counts there).
PANELS = {
    "cls": ("classification (bce, focal, qfl, vfl)", "elements (logits, 80 classes per anchor)"),
    "cls_idx": ("classification from class indices (eager builds the one-hot)",
                "elements (logits, 80 classes per anchor)"),
    "box": ("box losses", "box pairs"),
    "matrix": ("pairwise IoU matrix (forward only)", "matrix entries (N boxes x 64)"),
    "dfl": ("distribution (DFL, integral)", "elements (logits, 16 bins per row)"),
    "assign": ("task-aligned assigner vs ultralytics' (forward)", "ground-truth boxes per image"),
    "e2e": ("end to end: a detector's loss step, patched vs unpatched", "images per step"),
}
_MARKERS = "osD^vP*Xhp<>dH8+x1234"


def plot(result, path):
    """Writes figure(result) as a PNG. Returns False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig = figure(result)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def figure(result):
    """Speedup of the fused op over eager against size: one panel per family and device
    (forward+backward where the op has a backward, else forward), each op its own colour
    and marker, each dtype its own line style, axes in the family's units."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = [r for r in result["rows"] if r.get("speedup_vs_eager")]
    meta = result["meta"]
    ops = list(dict.fromkeys(r["op"] for r in result["rows"]))
    marker = {op: _MARKERS[i % len(_MARKERS)] for i, op in enumerate(ops)}
    tab10 = plt.get_cmap("tab10")
    dashes = {"fp32": "-", "bf16": "--", "fp16": ":", "fp64": "-."}
    panels = []  # (device, family) in a fixed order
    for dev in sorted({r["device"] for r in rows}) or ["cpu"]:
        fams = {r["family"] for r in rows if r["device"] == dev}
        panels += [(dev, f) for f in list(PANELS) + sorted(fams - set(PANELS)) if f in fams]
    if not panels:
        panels = [("cpu", "cls")]
    ncol = min(3, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.6 * ncol, 4.3 * nrow), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (dev, fam) in zip(axes.flat, panels):
        mine = [r for r in rows if r["device"] == dev and r["family"] == fam]
        lines = {}
        for r in mine:  # a size measured twice: the later row
            has_bwd = any(o["op"] == r["op"] and o["mode"] == "fwdbwd" for o in mine)
            if r["mode"] == ("fwdbwd" if has_bwd else "fwd"):
                lines.setdefault((r["op"], r["dtype"], r["mode"]), {})[r["size"]] = \
                    r["speedup_vs_eager"]
        colour = {op: tab10(i % 10) for i, op in
                  enumerate(dict.fromkeys(k[0] for k in sorted(lines, key=lambda k: ops.index(k[0]))))}
        for (op, dt, mode), by_size in sorted(lines.items(), key=lambda kv: (ops.index(kv[0][0]), kv[0][1])):
            pts = sorted(by_size.items())
            c, m = colour[op], marker[op]
            label = op + ("" if mode == "fwdbwd" or fam == "matrix" else " (fwd)")
            if len({k[1] for k in lines}) > 1:
                label += f" {dt}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=c, marker=m,
                    ls=dashes.get(dt, "-"), label=label)
        title, xlabel = PANELS.get(fam, (fam, mine[0]["unit"] if mine else "size"))
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "235" else ""))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("speedup vs eager (x), fwd+bwd" if fam != "matrix" else "speedup vs eager (x), fwd")
        ax.set_title(title + (f" [{dev}]" if len({p[0] for p in panels}) > 1 else ""), fontsize=9)
        if lines:
            ax.legend(fontsize=7, ncol=2)
        ax.grid(True, which="both", alpha=0.3)
    names = "; ".join(f"{d}: {n}" for d, n in meta.get("devices", {}).items())
    fig.suptitle(f"detloss_cuda {meta['build_info']['version']}, commit {meta.get('git_commit')}, "
                 f"{meta['date'][:10]}, torch {meta.get('torch')}\n{names}", fontsize=10)
    fig.tight_layout()
    return fig


def save_json(result, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(tmp, path)  # readers (and a kill mid-write) never see half a file
