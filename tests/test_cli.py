"""The command line: info, verify (which must be able to fail), bench (a smoke run)."""
import json

import pytest

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
