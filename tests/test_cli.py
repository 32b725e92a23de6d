"""The command line: info, verify (which must be able to fail), bench (a smoke run)."""
import json

import pytest
import torch

import detloss_cuda
import detloss_cuda.reference as R
import detloss_cuda.verify as V
from detloss_cuda.__main__ import main


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"detloss_cuda {detloss_cuda.__version__}" in out and "CUDA kernels compiled" in out


def test_verify_passes_on_this_build(capsys):
    assert main(["verify", "--devices", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "0 failure(s)" in out and "FAIL" not in out


def test_verify_fails_when_an_op_is_wrong(monkeypatch, capsys):
    real = R.sigmoid_focal_loss
    monkeypatch.setattr(R, "sigmoid_focal_loss", lambda *a, **k: real(*a, **k) * 1.01)
    assert V.run(["cpu"], log=lambda *a: None) > 0
    assert main(["verify", "--devices", "cpu"]) == 1


def test_verify_covers_every_op(capsys):
    """The assigner, class-index and class-major targets and label smoothing too."""
    assert main(["verify", "--devices", "cpu"]) == 0
    out = capsys.readouterr().out
    for name in ("bce-idx", "focal-idx", "qfl-idx", "vfl-idx", "focal-cm", "bce-smooth",
                 "assigner", "integral", "dfl", "ciou-xywh"):
        assert f"\n{name} " in out, name


def test_verify_fails_when_the_assigner_is_wrong(monkeypatch):
    real = R.task_aligned_assign

    def scores_off(*a, **k):
        labels, boxes, scores, fg, idx = real(*a, **k)
        return labels, boxes, scores * 1.0001, fg, idx

    monkeypatch.setattr(R, "task_aligned_assign", scores_off)
    assert V.run(["cpu"], log=lambda *a: None) > 0


def test_bench_rejects_unknown_names(capsys):
    assert main(["bench", "--ops", "nope"]) == 2
    assert main(["bench", "--dtypes", "fp8"]) == 2


def test_bench_writes_json_with_every_row(tmp_path):
    out = tmp_path / "b.json"
    assert main(["bench", "--quick", "--ops", "focal,ciou,dfl,iou_matrix", "--sizes", "1000",
                 "--impls", "fused,eager", "--json", str(out), "--markdown",
                 str(tmp_path / "b.md")]) == 0
    result = json.loads(out.read_text())
    assert result["meta"]["build_info"]["version"] == detloss_cuda.__version__
    rows = result["rows"]
    assert {r["op"] for r in rows} == {"focal", "ciou", "dfl", "iou_matrix"}
    assert len(rows) == 7  # fwd + fwdbwd for three ops, fwd for the matrix
    for r in rows:
        assert r["fused"]["median"] > 0 and r["min_bytes"] > 0 and r["copy_bytes_per_s"] > 0
    assert (tmp_path / "b.md").read_text().startswith("| op |")


def _result(rows):
    return {"meta": {"build_info": {"version": "0"}, "git_commit": "abc1234", "date": "2026-11-29",
                     "torch": torch.__version__, "devices": {"cpu": "Some CPU (2 threads)"}},
            "rows": rows}


def test_plot_one_panel_per_family_each_op_its_own_style():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from detloss_cuda import bench as B

    rows = []
    for op in B.OPS.values():
        for size in (10, 100):
            for mode in ("fwd", "fwdbwd") if op.differentiable else ("fwd",):
                rows.append({"op": op.name, "family": op.family, "unit": op.unit, "device": "cpu",
                             "dtype": "fp32", "size": size, "mode": mode,
                             "speedup_vs_eager": 2.0 if mode == "fwd" else 3.0})
    fig = B.figure(_result(rows))
    axes = [a for a in fig.axes if a.get_visible()]
    fams = list(dict.fromkeys(op.family for op in B.OPS.values()))
    assert len(axes) == len(fams)
    assert "abc1234" in fig._suptitle.get_text() and "Some CPU" in fig._suptitle.get_text()
    for ax, fam in zip(axes, [f for f in B.PANELS if f in fams] + [f for f in fams if f not in B.PANELS]):
        assert ax.get_xlabel() == B.PANELS[fam][1], (fam, ax.get_xlabel())
        lines = [ln for ln in ax.get_lines() if ln.get_label()[:1] != "_"]
        names = [ln.get_label().split()[0] for ln in lines]
        assert sorted(names) == sorted(op.name for op in B.OPS.values() if op.family == fam)
        assert len({ln.get_color() for ln in lines}) == len(lines), fam  # colours differ in a panel
        assert len({ln.get_marker() for ln in lines}) == len(lines), fam  # markers differ too
        fwd_only = all(not B.OPS[name].differentiable for name in names)
        assert ax.get_ylabel().endswith("fwd" if fwd_only else "fwd+bwd"), (fam, ax.get_ylabel())
        for ln, name in zip(lines, names):
            want = 3.0 if B.OPS[name].differentiable else 2.0  # fwd+bwd where there is one
            assert list(ln.get_ydata()) == [want, want]
    plt.close(fig)


@pytest.mark.slow
def test_commands_print_no_torch_cuda_home_warning(tmp_path):
    """torch logs 'No CUDA runtime is found, using CUDA_HOME=...' when torch.compile first
    imports cpp_extension on a machine without a GPU; info, verify and bench stay quiet."""
    import subprocess
    import sys

    for args in (["info"], ["verify", "--devices", "cpu"],
                 ["bench", "--quick", "--ops", "focal", "--sizes", "1000", "--modes", "fwd",
                  "--impls", "fused,compile", "--min-time", "0.01", "--json",
                  str(tmp_path / "b.json")]):
        r = subprocess.run([sys.executable, "-m", "detloss_cuda"] + args, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, (args, r.stderr[-2000:])
        out = r.stdout + r.stderr
        assert "No CUDA runtime" not in out and "CUDA_HOME" not in out, (args, out[-2000:])
    row, = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert row["compile"]["median"] > 0  # torch.compile ran (what imports cpp_extension)
