"""The plot: speedup over eager against size, one panel per family and device."""
import os

# One panel per family: (title, x axis: what `size` counts there).
PANELS = {
    "cls": ("classification (bce, focal, qfl, vfl)", "elements (logits, 80 classes per anchor)"),
    "cls_idx": ("classification from class indices (eager builds the one-hot)",
                "elements (logits, 80 classes per anchor)"),
    "box": ("box losses", "box pairs"),
    "matrix": ("pairwise IoU matrix (forward only)", "matrix entries (N boxes x 64)"),
    "dfl": ("distribution (DFL, integral)", "elements (logits, 16 bins per row)"),
    "mask": ("prototype mask loss vs ultralytics' loop", "objects an image (16 images)"),
    "assign": ("task-aligned assigner vs ultralytics' (forward)", "ground-truth boxes per image"),
    "e2e": ("end to end: a detector's loss step, patched vs unpatched", "images per step"),
}
_MARKERS = "osD^vP*Xhp<>dH8"  # filled: a hollow one means "noisy"


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
    and marker within its panel, each dtype its own line style, axes in the family's units."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = [r for r in result["rows"] if r.get("speedup_vs_eager")]
    noisy = {(r["op"], r["dtype"], r["mode"], r["size"]) for r in rows if r.get("noise")}
    meta = result["meta"]
    ops = list(dict.fromkeys(r["op"] for r in result["rows"]))
    tab20 = plt.get_cmap("tab20")  # (the e2e panel holds 13 steps: tab10 would repeat)
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
        colour = {op: tab20(i % 20) for i, op in
                  enumerate(dict.fromkeys(k[0] for k in sorted(lines, key=lambda k: ops.index(k[0]))))}
        for (op, dt, mode), by_size in sorted(lines.items(), key=lambda kv: (ops.index(kv[0][0]), kv[0][1])):
            pts = sorted(by_size.items())
            c, m = colour[op], _MARKERS[list(colour).index(op) % len(_MARKERS)]
            label = op + ("" if mode == "fwdbwd" or fam == "matrix" else " (fwd)")
            if len({k[1] for k in lines}) > 1:
                label += f" {dt}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=c, marker=m, ms=7,
                    ls=dashes.get(dt, "-"), label=label)
            loud = [p for p in pts if (op, dt, mode, p[0]) in noisy]
            if loud:  # flagged rows: hollow, not results
                ax.plot([p[0] for p in loud], [p[1] for p in loud], ls="", marker=m, ms=9,
                        mfc="white", mec=c, zorder=3, label="_noisy")
        title, xlabel = PANELS.get(fam, (fam, mine[0]["unit"] if mine else "size"))
        ax.axhline(1.0, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "235" else ""))
        ax.set_xlabel(xlabel)
        fwd_only = bool(lines) and all(k[2] == "fwd" for k in lines)
        ax.set_ylabel("speedup vs eager (x), " + ("fwd" if fwd_only else "fwd+bwd"))
        ax.set_title(title + (f" [{dev}]" if len({p[0] for p in panels}) > 1 else ""), fontsize=9)
        if lines:
            ax.legend(fontsize=7, ncol=2)
        ax.grid(True, which="both", alpha=0.3)
    names = "; ".join(f"{d}: {n}" for d, n in meta.get("devices", {}).items())
    fig.suptitle(f"detloss_cuda {meta['build_info']['version']}, commit {meta.get('git_commit')}, "
                 f"{meta['date'][:10]}, torch {meta.get('torch')}\n{names}"
                 + (f"\nhollow markers: {len(noisy)} rows measured on a busy machine, not results"
                    if noisy else ""), fontsize=10)
    fig.tight_layout()
    return fig
