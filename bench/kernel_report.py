"""Static quality report of every CUDA kernel in the built extension (no GPU needed).

Reads the sm_90 machine code that the build put into detloss_cuda/_C*.so:

* `cuobjdump -res-usage`: registers, stack frame, static shared memory per kernel;
* `cuobjdump -sass`: spill traffic (local loads/stores, LDL/STL), calls, and the width of
  every global load (LDG.E.128 = 16 bytes per thread, ...).

From the registers and shared memory it computes the theoretical occupancy at the launch
configuration the code uses (256 threads per block, csrc/cuda/launch.cuh), and it checks the
design's expectations (DESIGN.md, "CUDA kernels"):

* no kernel spills (no LDL/STL, no stack frame);
* the element-wise hot paths load 16 bytes per thread: every classification kernel, and the
  box and distribution kernels in fp32/fp64 (their half/bf16 units load one 4-coordinate box
  or 4 bins = 8 bytes, so LDG.E.64 is what is expected there).

    python bench/kernel_report.py                 # table on stdout, exit 1 on a violation
    python bench/kernel_report.py --markdown F    # also write the table as markdown
    python bench/kernel_report.py --json F        # and as JSON (tests/test_kernels.py reads it)
    python bench/kernel_report.py --docs          # rewrite docs/performance.md's kernel table

cuobjdump comes from $CUOBJDUMP, PATH, $CUDA_HOME/bin, or the copy inside Triton's wheel
(installed with every CUDA build of torch).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field

ARCH = "sm_90"
BLOCK = 256  # csrc/cuda/launch.cuh: kBlock

# sm_90 limits (CUDA occupancy calculator, compute capability 9.0)
REGS_PER_SM = 65536
REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256
MAX_REGS_PER_THREAD = 255
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
SMEM_PER_SM = 228 * 1024
SMEM_RESERVED_PER_BLOCK = 1024
WARP = 32

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_BEGIN = "<!-- kernel-report:begin -->"
README_END = "<!-- kernel-report:end -->"


@dataclass
class Kernel:
    mangled: str
    name: str = ""
    family: str = ""  # cls | box | dfl | kl | matrix | match | mask | finalize | scale | count | assign | other
    dtype: str = ""
    registers: int = 0
    stack: int = 0
    shared: int = 0
    local: int = 0
    spill_stores: int = 0  # STL instructions in the SASS
    spill_loads: int = 0  # LDL instructions
    calls: int = 0  # CALL instructions (IEEE division and log slow paths are subroutines)
    mufu: dict = field(default_factory=dict)  # MUFU op (EX2, LG2, RCP, ...) -> instructions
    loads: dict = field(default_factory=dict)  # width in bits -> number of LDG instructions
    occupancy: float = 0.0
    blocks_per_sm: int = 0
    expected_load_bits: int = 0  # 0: no expectation
    problems: list = field(default_factory=list)
    # (the assigner's kernels keep each box's top-k list in a stack array indexed at run time:
    # local memory by design, reported but not a violation)


def find_cuobjdump() -> str:
    cands = [os.environ.get("CUOBJDUMP"), shutil.which("cuobjdump")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            cands.append(os.path.join(home, "bin", "cuobjdump"))
    try:
        import triton  # noqa: PLC0415

        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                                  "cuobjdump"))
    except Exception:  # noqa: BLE001
        pass
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise SystemExit("kernel_report: cuobjdump not found (set CUOBJDUMP, put the CUDA toolkit's "
                     "bin on PATH, or pip install triton, whose wheel carries one)")


def find_extension() -> str:
    found = sorted(glob.glob(os.path.join(ROOT, "detloss_cuda", "_C*.so")))
    if found:
        return found[0]
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.find_spec("detloss_cuda._C")
    if spec is None or not spec.origin:
        raise SystemExit("kernel_report: detloss_cuda._C is not built")
    return spec.origin


def run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"kernel_report: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def demangle(names: list[str]) -> dict[str, str]:
    filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def shorten(name: str) -> str:
    for ns in ("detloss::cuda::", "detloss::math::", "detloss::", "(anonymous namespace)::",
               "std::integral_constant"):
        name = name.replace(ns, "")
    if name.endswith(")"):  # drop the parameter list: the last top-level (...)
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    name = re.sub(r"^void ", "", name)
    return name.replace("c10::Half", "half").replace("c10::BFloat16", "bf16")


DTYPES = {"half": "fp16", "bf16": "bf16", "float": "fp32", "double": "fp64"}


ASSIGN_UNITS = ("SelectUnit", "ScatterUnit", "ResolveUnit", "BoxCountUnit", "FillUnit", "KeepUnit",
                "MaxUnit", "OutputUnit", "GtCountUnit", "PairRowUnit", "SegIouUnit", "GateUnit")


def classify(k: Kernel) -> None:
    n = k.name
    if any(u in n for u in ASSIGN_UNITS):
        k.family = "assign"  # the task-aligned assigner (csrc/cuda/assign_kernel.cu)
    elif "ClsUnit" in n:
        k.family = "cls"
    elif "BoxUnit" in n:
        k.family = "box"
    elif "DflForward" in n or "DflBackward" in n:
        k.family = "dfl"
    elif "box_matrix_kernel" in n:
        k.family = "matrix"
    elif "MatchCostUnit" in n:
        k.family = "match"  # the DETR matchers' cost (csrc/cuda/box_kernel.cu)
    elif "DflKlUnit" in n or "DflKlGradUnit" in n:
        k.family = "kl"  # the distillation KL, a thread a row (csrc/cuda/dfl_kernel.cu)
    elif "positive_kernel" in n or "ProtoGradUnit" in n or "LossSumUnit" in n:
        k.family = "mask"  # the prototype mask loss (csrc/cuda/mask_kernel.cu)
    elif "finalize_sum_kernel" in n:
        k.family = "finalize"
    elif "ScaleUnit" in n:
        k.family = "scale"  # the backward's in-place scaling by the upstream gradient
    elif "CountUnit" in n:
        k.family = "count"  # the 'mean' divisor of class-index targets
    else:
        k.family = "other"
    # the element type is the first template argument of the unit (or of the kernel)
    m = re.search(r"(?:ClsUnit|BoxUnit|DflForward|DflBackward|DflForwardLong|DflBackwardLong|"
                  r"box_matrix_kernel|positive_kernel|ProtoGradUnit|LossSumUnit|ScaleUnit|SelectUnit|ScatterUnit|ResolveUnit|KeepUnit|"
                  r"MaxUnit|OutputUnit|GtCountUnit|PairRowUnit|SegIouUnit|GateUnit|MatchCostUnit|DflKlUnit|"
                  r"DflKlGradUnit)<([^,<>]+)", n)
    if m is None:
        m = re.search(r"finalize_sum_kernel<[^,]+, ([^,<>]+)>", n)
    if m:
        k.dtype = DTYPES.get(m.group(1).strip(), m.group(1).strip())
    if k.family == "count":
        k.dtype = "int64"
    if k.family in ("cls", "scale"):
        k.expected_load_bits = 128
    elif k.family == "box" and re.search(r"BoxKind\)[45]\b", n):
        k.expected_load_bits = 0  # ProbIoU: rows of 5 (20 or 40 bytes) have no vector load
    elif k.family in ("box", "dfl"):
        k.expected_load_bits = 128 if k.dtype in ("fp32", "fp64") else 64


def allowed_frame(k) -> bool:
    """The stack frames by design: the assigner's per-box top-k list (a local array indexed at
    run time); the distillation KL's float64 forward, where the called slow path of the
    double-precision log saves one 8-byte register."""
    if k.family == "assign":
        return True
    return (k.family == "kl" and k.calls > 0 and k.stack <= 8
            and k.spill_stores <= 8 and k.spill_loads <= 8 and not k.local)


def occupancy(regs: int, shared: int) -> tuple[int, float]:
    warps_per_block = BLOCK // WARP
    regs_per_warp = -(-max(regs, 1) * WARP // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = (REGS_PER_SM // regs_per_warp) // warps_per_block
    by_smem = SMEM_PER_SM // (shared + SMEM_RESERVED_PER_BLOCK)
    by_threads = MAX_WARPS_PER_SM // warps_per_block
    blocks = min(by_regs, by_smem, by_threads, MAX_BLOCKS_PER_SM)
    return blocks, blocks * warps_per_block / MAX_WARPS_PER_SM


RES_RE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
LDG_RE = re.compile(r"\bLDG\.E((?:\.[A-Z0-9_]+)*)")
MUFU_RE = re.compile(r"\bMUFU\.([A-Z0-9]+)")


def load_bits(suffix: str) -> int:
    parts = suffix.split(".")
    for p in parts:
        if p in ("128", "64"):
            return int(p)
        if p in ("U8", "S8"):
            return 8
        if p in ("U16", "S16"):
            return 16
    return 32


def parse(res_usage: str, sass: str, names: dict[str, str] | None = None) -> list[Kernel]:
    """Kernels from `cuobjdump -res-usage` and `cuobjdump -sass` text, checked against the
    design's expectations (Kernel.problems). `names` maps mangled to demangled names."""
    kernels: dict[str, Kernel] = {}
    current = None
    for line in res_usage.splitlines():
        m = re.match(r"\s*Function (\S+):", line)
        if m:
            current = kernels.setdefault(m.group(1), Kernel(m.group(1)))
            continue
        m = RES_RE.search(line)
        if m and current is not None:
            current.registers, current.stack, current.shared, current.local = map(int, m.groups())
    current = None
    for line in sass.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = kernels.setdefault(m.group(1), Kernel(m.group(1)))
            continue
        if current is None or "/*" not in line:
            continue
        ins = line.split("*/", 1)[1] if line.lstrip().startswith("/*") else line
        if re.search(r"\bSTL(\.|\b)", ins):
            current.spill_stores += 1
        if re.search(r"\bLDL(\.|\b)", ins):
            current.spill_loads += 1
        if re.search(r"\bCALL\.", ins):
            current.calls += 1
        m = MUFU_RE.search(ins)
        if m:
            current.mufu[m.group(1)] = current.mufu.get(m.group(1), 0) + 1
        m = LDG_RE.search(ins)
        if m:
            bits = load_bits(m.group(1))
            current.loads[bits] = current.loads.get(bits, 0) + 1
    names = names or {}
    for k in kernels.values():
        k.name = shorten(names.get(k.mangled, k.mangled))
        classify(k)
        k.blocks_per_sm, k.occupancy = occupancy(k.registers, k.shared)
        if (k.spill_stores or k.spill_loads or k.stack or k.local) and not allowed_frame(k):
            k.problems.append(f"spills (STL {k.spill_stores}, LDL {k.spill_loads}, "
                              f"stack {k.stack} B, local {k.local} B)")
        if k.expected_load_bits and k.loads.get(k.expected_load_bits, 0) == 0:
            k.problems.append(f"no {k.expected_load_bits}-bit global loads "
                              f"(found widths {sorted(k.loads)})")
    return sorted(kernels.values(), key=lambda k: (k.family, k.name))


def collect(so: str, cuobjdump: str) -> list[Kernel]:
    res = run([cuobjdump, "-res-usage", "-arch", ARCH, so])
    if "Function" not in res:
        raise SystemExit(f"kernel_report: no {ARCH} kernels in {so} (built without CUDA, or for "
                         "another architecture? build with FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0)")
    sass = run([cuobjdump, "-sass", "-arch", ARCH, so])
    mangled = re.findall(r"^\s*Function (\S+):", res, re.M)
    return parse(res, sass, demangle(mangled))


def loads_text(k: Kernel) -> str:
    return " ".join(f"{b}b×{n}" for b, n in sorted(k.loads.items(), reverse=True)) or "-"


def mufu_text(k: Kernel) -> str:
    return " ".join(f"{op}×{n}" for op, n in sorted(k.mufu.items())) or "-"


def span(values) -> str:
    values = list(values)
    return f"{min(values)}–{max(values)}" if values else "-"


def markdown(kernels: list[Kernel], detail: bool) -> str:
    lines = []
    # summary per family and dtype
    groups: dict[tuple[str, str], list[Kernel]] = {}
    for k in kernels:
        groups.setdefault((k.family, k.dtype or "-"), []).append(k)
    lines += ["| family | dtype | kernels | registers (min–max) | spills | shared (B) | "
              "widest global load | expected | occupancy at 256 thr (min–max) | "
              "MUFU (min–max) | CALL (min–max) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    order = {"cls": 0, "box": 1, "dfl": 2, "kl": 3, "matrix": 4, "match": 5, "mask": 6,
             "finalize": 7, "scale": 8, "count": 9, "assign": 10, "other": 11}
    dorder = {"fp16": 0, "bf16": 1, "fp32": 2, "fp64": 3}
    for (fam, dt), ks in sorted(groups.items(), key=lambda x: (order.get(x[0][0], 11),
                                                               dorder.get(x[0][1], 9))):
        regs = [k.registers for k in ks]
        occ = [k.occupancy for k in ks]
        spills = sum(1 for k in ks if k.spill_stores or k.spill_loads or k.stack)
        widest = {max(k.loads) if k.loads else 0 for k in ks}
        exp = {k.expected_load_bits for k in ks}
        lines.append(
            f"| {fam} | {dt} | {len(ks)} | {min(regs)}–{max(regs)} | {spills} | "
            f"{max(k.shared for k in ks)} | {'/'.join(f'{w}-bit' for w in sorted(widest))} | "
            f"{'/'.join(f'{e}-bit' if e else '-' for e in sorted(exp))} | "
            f"{min(occ):.0%}–{max(occ):.0%} | {span(sum(k.mufu.values()) for k in ks)} | "
            f"{span(k.calls for k in ks)} |")
    if detail:
        lines += ["", "| kernel | regs | stack | shared | STL/LDL | calls | MUFU | global loads | "
                  "occupancy | problems |", "|---|---:|---:|---:|---:|---:|---|---|---:|---|"]
        for k in kernels:
            lines.append(f"| `{k.name}` | {k.registers} | {k.stack} | {k.shared} | "
                         f"{k.spill_stores}/{k.spill_loads} | {k.calls} | {mufu_text(k)} | "
                         f"{loads_text(k)} | {k.occupancy:.0%} | {'; '.join(k.problems) or 'ok'} |")
    return "\n".join(lines)


DOC = os.path.join("docs", "performance.md")


def update_docs(table: str, header: str) -> None:
    path = os.path.join(ROOT, DOC)
    text = open(path, encoding="utf-8").read()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"kernel_report: {DOC} has no {README_BEGIN} ... {README_END} block")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{README_BEGIN}\n{header}\n\n{table}\n{README_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--so", help="the extension to read (default: detloss_cuda/_C*.so)")
    ap.add_argument("--json", help="write every kernel's numbers here")
    ap.add_argument("--markdown", help="write the summary and per-kernel tables here")
    ap.add_argument("--docs", "--readme", dest="docs", action="store_true",
                    help=f"rewrite {DOC}'s kernel table")
    ap.add_argument("--detail", action="store_true", help="print one row per kernel")
    args = ap.parse_args(argv)

    so = args.so or find_extension()
    cuobjdump = find_cuobjdump()
    kernels = collect(so, cuobjdump)
    bad = [k for k in kernels if k.problems]
    local = [k for k in kernels if k.family == "assign" and (k.spill_stores or k.stack)]
    frames = [k for k in kernels if k.family == "kl" and allowed_frame(k) and k.stack]
    header = (f"{len(kernels)} {ARCH} kernels in the extension; "
              f"{sum(1 for k in kernels if (k.spill_stores or k.spill_loads or k.stack) and not allowed_frame(k))} "
              f"spill ({len(local)} assigner kernels keep a per-box top-k list in local memory, "
              f"by design; {len(frames)} distillation-KL forward (float64) saves one register "
              f"around the double log's called slow path), "
              f"{sum(1 for k in kernels if k.expected_load_bits)} have a load-width "
              f"expectation, {len(bad)} violate one. Occupancy is theoretical, at 256 threads "
              f"per block. Regenerate: `python bench/kernel_report.py --docs`.")
    table = markdown(kernels, args.detail)
    print(header)
    print()
    print(table)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(header + "\n\n" + markdown(kernels, True) + "\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"arch": ARCH, "block": BLOCK, "extension": os.path.basename(so),
                       "cuobjdump": cuobjdump, "kernels": [asdict(k) for k in kernels]}, f,
                      indent=1)
    if args.docs:
        update_docs(markdown(kernels, False), header)
    for k in bad:
        print(f"VIOLATION {k.name}: {'; '.join(k.problems)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
