"""Command line: python -m detloss_cuda {info,verify,bench} (also installed as `detloss`)."""
import argparse
import logging
import sys

import torch


class _QuietCudaHome(logging.Filter):
    """torch.utils.cpp_extension logs "No CUDA runtime is found, using CUDA_HOME=..." when it
    is first imported on a machine without a GPU (torch.compile imports it): noise in the
    middle of a table, about a toolkit these commands never use."""

    def filter(self, record):
        return not str(record.msg).startswith("No CUDA runtime is found")


logging.getLogger("torch.utils.cpp_extension").addFilter(_QuietCudaHome())


def _available_devices():
    import detloss_cuda

    return ["cpu"] + (["cuda"] if detloss_cuda.build_info()["cuda_available"] else [])


def cmd_info(args):
    import detloss_cuda

    info = detloss_cuda.build_info()
    print(f"detloss_cuda {info['version']}")
    print(f"  torch built against {info['torch_version']}, running {info['torch_runtime_version']}")
    print(f"  build: {info['build_note']}")
    if info["with_cuda"]:
        print(f"  CUDA kernels compiled: yes (CUDA {info['cuda_version']}, archs {info['cuda_archs']})")
    else:
        print("  CUDA kernels compiled: no (CPU build)")
    print(f"  CPU kernels: {info['cpu_capabilities']} compiled, {info['cpu_capability']} in use "
          "(ATEN_CPU_CAPABILITY=default|avx2|avx512 overrides)")
    print(f"  CPU threads: {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"  cuda:{i} {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB"
                  + ("" if info["with_cuda"] else " (not usable: CPU build)"))
    else:
        print("  no CUDA device visible")
    return 0


def cmd_verify(args):
    from . import verify

    devices = _csv(args.devices) if args.devices else None
    return 1 if verify.run(devices) else 0


def _csv(s):
    return [v.strip() for v in s.split(",") if v.strip()]


def cmd_bench(args):
    from . import bench as B

    ops = list(B.OPS) if args.ops == "all" else _csv(args.ops)
    unknown = [o for o in ops if o not in B.OPS]
    if unknown:
        print(f"unknown op(s) {unknown}; choose from {', '.join(B.OPS)}", file=sys.stderr)
        return 2
    devices = _csv(args.devices) if args.devices else _available_devices()
    for d in devices:
        if d not in ("cpu", "cuda") or d not in _available_devices():
            print(f"device {d!r} is not available here (available: {_available_devices()})",
                  file=sys.stderr)
            return 2
    if args.dtypes:
        dts = _csv(args.dtypes)
        bad = [d for d in dts if d not in B.DTYPES]
        if bad:
            print(f"unknown dtype(s) {bad}; choose from {', '.join(B.DTYPES)}", file=sys.stderr)
            return 2
        dtypes = {d: dts for d in devices}
    else:  # the dtypes each device trains in
        dtypes = {"cpu": ["fp32"], "cuda": ["fp32"] if args.quick else ["fp32", "bf16", "fp16"]}
    modes = _csv(args.modes)
    impls = _csv(args.impls)
    sizes = [int(float(s)) for s in _csv(args.sizes)] if args.sizes else None

    import detloss_cuda

    print(f"detloss_cuda {detloss_cuda.__version__}, build: {detloss_cuda.build_info()['build_note']}")
    print(B.HEADER)
    compile_dtypes = _csv(args.compile_dtypes) if args.compile_dtypes else None
    # the JSON is rewritten after every row: a sweep cut short still leaves what it measured
    on_row = (lambda res: B.save_json(res, args.json)) if args.json else None
    result = B.run([B.OPS[o] for o in ops], devices, dtypes, modes, impls, sizes=sizes,
                   quick=args.quick, min_time=args.min_time, log=print,
                   compile_dtypes=compile_dtypes, compile_dynamic=args.compile_dynamic,
                   on_row=on_row, quick_compile_all=args.ops != "all")
    print(f"\n{len(result['rows'])} rows; speedups are eager/fused and compile/fused times in "
          "this run, the implementations timed interleaved (medians of rounds); GB/s counts "
          "the minimum bytes each op must move; % copy compares that with a device copy of "
          "as many bytes, timed in this run.")
    quiet, line = B.verdict(result)
    if args.json:
        B.save_json(result, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        if B.plot(result, args.plot):
            print(f"wrote {args.plot}")
        else:
            print("no plot: matplotlib is not installed (pip install matplotlib)")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(B.markdown_table(result) + "\n")
        print(f"wrote {args.markdown}")
    print(line)
    return 3 if args.strict and not quiet else 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="detloss", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="version, build (CUDA? archs? CPU capabilities) and devices")
    v = sub.add_parser("verify", help="every op against the reference on this machine; "
                       "exit code 1 on any failure")
    v.add_argument("--devices", default=None, help="cpu,cuda (default: all available)")
    b = sub.add_parser("bench", help="fused vs eager vs torch.compile, with a roofline")
    b.add_argument("--ops", default="all", help="comma list of ops, or 'all'")
    b.add_argument("--devices", default=None, help="cpu,cuda (default: all available)")
    b.add_argument("--dtypes", default=None, help="fp32,bf16,fp16,fp64 (default: fp32 on CPU; "
                   "fp32,bf16,fp16 on CUDA)")
    b.add_argument("--sizes", default=None, help="comma list, e.g. 1e4,1e6 (default: per op)")
    b.add_argument("--modes", default="fwd,fwdbwd", help="fwd and/or fwdbwd")
    b.add_argument("--impls", default="fused,eager,compile",
                   help="fused,eager,compile (eager: the code users run, baselines.py), and "
                   "reference (the oracle, reference.py)")
    b.add_argument("--compile-dtypes", default=None,
                   help="time torch.compile only for these dtypes (compiling dominates a GPU sweep)")
    b.add_argument("--compile-dynamic", action="store_true",
                   help="compile once with dynamic shapes (default: static, once per size)")
    b.add_argument("--quick", action="store_true",
                   help="two sizes an op, short timing; torch.compile at the larger size, for one "
                   "op a family unless --ops names them, forward+backward where measured")
    b.add_argument("--min-time", type=float, default=None, help="seconds of timing per cell")
    b.add_argument("--strict", action="store_true",
                   help="exit with status 3 when the machine was too busy (rows flagged noisy)")
    b.add_argument("--json", default=None, help="write every row as JSON here")
    b.add_argument("--plot", default=None, help="write a PNG plot here (needs matplotlib)")
    b.add_argument("--markdown", default=None, help="write a markdown table here")
    args = p.parse_args(argv)
    return {"info": cmd_info, "verify": cmd_verify, "bench": cmd_bench}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
