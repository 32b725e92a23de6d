"""The sweep: every (device, dtype, op, size, mode) row, its implementations timed
interleaved (timing.py), each row checked for noise before it is reported as a result."""
import datetime
import os
import platform
import subprocess
import sys

import torch

from . import timing
from .registry import DTYPES


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
        # loop with fixed shapes gets; with dynamic shapes Inductor cannot size its
        # reductions, which makes that column an unfair baseline (docs/performance.md)
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
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


def noise_reasons(row, impls):
    """Why a row's numbers are not results (empty: they are)."""
    why = []
    for impl in impls:
        t = row.get(impl, {})
        if t.get("median_se") is not None and t["median_se"] > timing.SE_MAX:
            why.append(f"{impl} median uncertain by {t['median_se']:.0%} "
                       f"(spread {t['spread']:.0%} over {t['rounds']} rounds)")
    frac = row.get("fused", {}).get("copy_fraction")
    if frac is not None and frac > 1.0:
        why.append(f"fused at {frac:.0%} of a copy (the copy's timing is off)")
    w = row.get("wait_fraction")
    if w is not None and w > timing.WAIT_MAX:
        why.append(f"waited for a CPU {w:.0%} of the time")
    return why


def run(ops, devices, dtypes, modes, impls, sizes=None, quick=False, min_time=None, log=print,
        compile_dtypes=None, compile_dynamic=False, on_row=None, quick_compile_all=False):
    """Runs the sweep; returns the JSON-ready result (meta + rows). `compile_dtypes` limits
    the torch.compile column to those dtypes (compiling is most of a GPU sweep's time);
    `compile_dynamic` compiles once with dynamic shapes instead of once per size;
    `on_row(result)` is called after every row (the CLI saves the JSON as it goes);
    `quick_compile_all`: --quick compiles every op given, not one a family (the CLI sets it
    when --ops names the ops)."""
    from .. import build_info
    from . import report

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
        "timing": "interleaved rounds, medians (detloss_cuda/bench/timing.py)",
        "cpu_count": os.cpu_count(),
        "load_average_start": _loadavg(),
    }
    for device in devices:
        for dname in dtypes[device]:
            dtype = DTYPES[dname]
            for op in ops:
                # --sizes counts elements; the e2e, assigner and mask rows count images or
                # objects an image and keep their own
                use = sizes if sizes and op.family not in ("e2e", "assign", "mask") else None
                op_sizes = use or op.sizes["quick" if quick else device]
                for size in op_sizes:
                    gen = torch.Generator().manual_seed(0)
                    inputs = op.make(int(size), dtype, device, gen)
                    for mode in modes:
                        if mode == "fwdbwd" and not op.differentiable:
                            continue
                        if quick and mode == "fwd" and op.family == "e2e":
                            continue  # quick: a loss step is timed as it trains
                        # quick: compile one op a family (BenchOp.quick_compile), at the
                        # larger size, in its training mode when that mode is measured
                        skip_compile = quick and (
                            size != op_sizes[-1]
                            or not (op.quick_compile or quick_compile_all)
                            or (mode == "fwd" and op.differentiable and "fwdbwd" in modes))
                        row = _row(op, device, dname, size, mode, inputs, impls,
                                   skip_compile, compile_dtypes, compiled_cache, compile_dynamic,
                                   copy_cache, cell_time(device))
                        rows.append(row)
                        log(report.format_row(row))
                        if on_row is not None:
                            on_row({"meta": meta, "rows": rows})
                    del inputs
            if device == "cuda":
                torch.cuda.empty_cache()
    meta["load_average_end"] = _loadavg()
    return {"meta": meta, "rows": rows}


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _row(op, device, dname, size, mode, inputs, impls, skip_compile, compile_dtypes,
         compiled_cache, compile_dynamic, copy_cache, min_time):
    for t in _leaves(inputs):
        t.requires_grad_(mode == "fwdbwd")
    nbytes = op.bytes_moved(inputs, mode)
    ck = (device, nbytes)
    if ck not in copy_cache:
        copy_cache[ck] = timing.copy_bandwidth(nbytes, device, min_time)
    row = {"op": op.name, "family": op.family, "device": device, "dtype": dname,
           "size": int(size), "unit": op.unit, "mode": mode, "min_bytes": nbytes,
           "copy_bytes_per_s": copy_cache[ck][0], "copy_spread": copy_cache[ck][1]}
    fns = {}
    for impl in list(impls) + (list(op.extra) if "fused" in impls else []):
        if impl == "compile" and compile_dtypes and dname not in compile_dtypes:
            continue
        if impl == "compile" and skip_compile:
            continue
        if (impl == "compile" and not op.compilable) or (
                impl == "reference" and op.reference is None):
            continue
        fns[impl] = _make_runner(op, impl, inputs, mode, compiled_cache, compile_dynamic)
    times, row["wait_fraction"] = timing.time_interleaved(fns, device, min_time=min_time)
    for impl, t in times.items():
        if "error" in t:
            row[impl] = t
            continue
        try:
            mem = timing.peak_memory(fns[impl], device)
        except Exception as e:  # noqa: BLE001 (reported, not raised)
            row[impl] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        bw = nbytes / t["median"]
        row[impl] = dict(t, peak_bytes=mem, bytes_per_s=bw, copy_fraction=bw / copy_cache[ck][0])
    for other in ("eager", "compile", "reference", *op.extra):
        if "median" in row.get("fused", {}) and "median" in row.get(other, {}):
            row[f"speedup_vs_{other}"] = row[other]["median"] / row["fused"]["median"]
    row["noise"] = noise_reasons(row, fns)
    return row
