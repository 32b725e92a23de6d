"""Reports: the printed rows, the markdown table, the JSON file, and the verdict on
whether the machine was quiet enough for the rows to be results."""
import json
import math
import os

from . import timing


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


HEADER = (f"{'op':<17}{'dev':<5}{'dtype':<6}{'size':>6} {'mode':<7}"
          f"{'fused':>10}{'eager':>10}{'compile':>10}{'x eager':>9}{'x comp':>8}"
          f"{'GB/s':>8}{'% copy':>8}{'mem fused/eager':>18}")


def format_row(r):
    def t(impl):
        return _fmt_time(r.get(impl, {}).get("median"))

    def x(k):
        v = r.get(k)
        if not v:
            return "-"
        return "?" if r.get("noise") else f"{v:.2f}"

    f = r.get("fused", {})
    bw = f.get("bytes_per_s")
    frac = f.get("copy_fraction")
    copy_ok = (r.get("copy_spread") or 0) <= timing.SPREAD_MAX
    mf, me = f.get("peak_bytes"), r.get("eager", {}).get("peak_bytes")
    mem = "-" if mf is None or me is None else f"{mf / 2**20:.1f}/{me / 2**20:.1f}MiB"
    line = (f"{r['op']:<17}{r['device']:<5}{r['dtype']:<6}{_fmt_size(r['size']):>6} "
            f"{r['mode']:<7}{t('fused'):>10}{t('eager'):>10}{t('compile'):>10}"
            f"{x('speedup_vs_eager'):>9}{x('speedup_vs_compile'):>8}"
            f"{(bw / 1e9 if bw else 0):>8.1f}"
            + (f"{(100 * frac if frac else 0):>7.1f}%" if copy_ok else f"{'?':>8}") + f"{mem:>18}")
    for other in ("dense", "reference"):
        if other in r:
            line += f"   {other} {t(other)} (x{x('speedup_vs_' + other)})"
    if r.get("noise"):
        line += "   NOISY, not a result: " + "; ".join(r["noise"])
    return line


def markdown_table(result):
    lines = ["| op | device | dtype | size | mode | fused | eager | compile | × eager | × compile | GB/s | % of copy | noise |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        f = r.get("fused", {})
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["op"], r["device"], r["dtype"], _fmt_size(r["size"]), r["mode"],
            _fmt_time(f.get("median")), _fmt_time(r.get("eager", {}).get("median")),
            _fmt_time(r.get("compile", {}).get("median")),
            f"{r['speedup_vs_eager']:.2f}" if r.get("speedup_vs_eager") else "-",
            f"{r['speedup_vs_compile']:.2f}" if r.get("speedup_vs_compile") else "-",
            f"{f['bytes_per_s'] / 1e9:.1f}" if f.get("bytes_per_s") else "-",
            (f"{100 * f['copy_fraction']:.0f}%" if (r.get("copy_spread") or 0) <= timing.SPREAD_MAX
             else "? (copy noisy)") if f.get("copy_fraction") else "-",
            "; ".join(r.get("noise") or []) or "-"))
    return "\n".join(lines)


def save_json(result, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(tmp, path)  # readers (and a kill mid-write) never see half a file


def verdict(result):
    """(quiet, one line): whether every row was measured on a quiet enough machine, and if
    not, why (the rows flagged, how long the process waited for a CPU, the load average, the
    copy's own spread)."""
    rows = result["rows"]
    bad = [r for r in rows if r.get("noise")]
    if not rows:
        return True, "no rows measured"
    spreads = [r["copy_spread"] for r in rows if r.get("copy_spread") is not None]
    copy_note = ""
    if spreads and max(spreads) > timing.SPREAD_MAX:
        n = sum(s > timing.SPREAD_MAX for s in spreads)
        copy_note = (f"; the device copy's own spread exceeded {timing.SPREAD_MAX:.0%} in {n} rows "
                     "(their '% copy' is shown as ?)")
    if not bad:
        return True, (f"machine quiet enough: every one of the {len(rows)} rows has each "
                      f"median within {timing.SE_MAX:.0%} and waited for a CPU less than "
                      f"{timing.WAIT_MAX:.0%} of its time" + copy_note)
    why = []
    waits = [r["wait_fraction"] for r in rows if r.get("wait_fraction") is not None]
    if waits and max(waits) > timing.WAIT_MAX:
        why.append(f"load: this process waited for a CPU up to {max(waits):.0%} of a row's "
                   "time (another process had the CPUs)")
    meta = result.get("meta", {})
    la = [v[0] for v in (meta.get("load_average_start"), meta.get("load_average_end")) if v]
    ncpu = meta.get("cpu_count")
    if la and ncpu and max(la) > ncpu + 0.5:  # (this run's own threads count up to ncpu)
        why.append(f"load average {max(la):.1f} on {ncpu} CPUs")
    if not why:
        why.append(f"medians uncertain by more than {timing.SE_MAX:.0%} (wide spreads)")
    return False, (f"machine NOT quiet enough: {len(bad)} of {len(rows)} rows flagged noisy "
                   f"(marked NOISY; their numbers are not results): " + "; ".join(why)
                   + copy_note)
