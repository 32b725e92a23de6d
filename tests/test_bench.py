"""The benchmark package: no work at import, interleaved timing, and noise detected rather
than printed as a result (a CPU-bound neighbour makes a --strict run fail)."""
import json
import os
import subprocess
import sys
import time

import pytest

from detloss_cuda.bench import report, sweep, timing


def test_import_does_no_work():
    code = ("import sys, detloss_cuda.bench as B; "
            "fam = [m for m in sys.modules if m.startswith('detloss_cuda.bench.') and "
            "m.split('.')[-1] in ('cls', 'box', 'dfl', 'mask', 'assign', 'e2e')]; "
            "libs = [m for m in ('ultralytics', 'torchvision', 'transformers', 'yolov5') "
            "if m in sys.modules]; print(fam, libs); assert not fam and not libs; "
            "assert 'giou' in B.OPS and 'detloss_cuda.bench.box' in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]


def test_interleaved_rounds_alternate_and_report_the_spread():
    calls = []
    fns = {"a": lambda: calls.append("a") or time.sleep(0.002),
           "b": lambda: calls.append("b") or time.sleep(0.004)}
    out, wait = timing.time_interleaved(fns, "cpu", min_time=0.05, min_rounds=5)
    for k in "ab":
        assert out[k]["rounds"] >= 5 and out[k]["p20"] <= out[k]["median"] <= out[k]["p80"]
        assert out[k]["spread"] >= 0
    assert 0.0015 < out["a"]["median"] < out["b"]["median"]
    # after warm-up (2 + 3 calls each, one fn then the other), the rounds alternate
    body = calls[10:]
    switches = sum(x != y for x, y in zip(body, body[1:]))
    assert switches >= out["a"]["rounds"] - 1, body
    assert wait is None or wait >= 0


def test_a_failing_implementation_is_reported_not_raised():
    def bad():
        raise RuntimeError("no compiler here")
    out, _ = timing.time_interleaved({"ok": lambda: None, "bad": bad}, "cpu", min_time=0.01)
    assert out["bad"] == {"error": "RuntimeError: no compiler here"}
    assert out["ok"]["median"] >= 0


def _row(**kw):
    row = {"op": "bce", "family": "cls", "device": "cpu", "dtype": "fp32", "size": 10,
           "unit": "elements", "mode": "fwd", "min_bytes": 80, "copy_bytes_per_s": 1e9,
           "copy_spread": 0.01, "wait_fraction": 0.0,
           "fused": {"median": 1e-6, "p20": 1e-6, "p80": 1e-6, "spread": 0.01,
                     "median_se": 0.003, "rounds": 10, "copy_fraction": 0.5},
           "eager": {"median": 2e-6, "p20": 2e-6, "p80": 2e-6, "spread": 0.02,
                     "median_se": 0.006, "rounds": 10},
           "speedup_vs_eager": 2.0}
    row.update(kw)
    row["noise"] = sweep.noise_reasons(row, ["fused", "eager"])
    return row


@pytest.mark.parametrize("change,reason", [
    ({}, None),
    ({"eager": {"median": 2e-6, "spread": 0.5, "median_se": 0.15, "rounds": 10}},
     "eager median uncertain by 15% (spread 50% over 10 rounds)"),
    ({"fused": {"median": 1e-6, "spread": 0.0, "median_se": 0.0, "rounds": 10,
                "copy_fraction": 1.5}}, "150% of a copy"),
    ({"wait_fraction": 0.3}, "waited for a CPU 30%"),
])
def test_noise_reasons_and_the_verdict(change, reason):
    row = _row(**change)
    quiet, line = report.verdict({"meta": {"cpu_count": 2, "load_average_start": [0.5, 0, 0]},
                                  "rows": [row, _row()]})
    printed = report.format_row(row)
    if reason is None:
        assert row["noise"] == [] and quiet and "quiet enough" in line
        assert "2.00" in printed and "NOISY" not in printed and "50.0%" in printed
    else:
        assert any(reason in r for r in row["noise"]), row["noise"]
        assert not quiet and "NOT quiet enough: 1 of 2 rows" in line
        assert "NOISY" in printed and "2.00" not in printed  # the speedup is not shown


def test_a_noisy_copy_hides_the_copy_fraction_not_the_row():
    row = _row(copy_spread=0.4)
    assert row["noise"] == []
    printed = report.format_row(row)
    assert "2.00" in printed and "50.0%" not in printed
    quiet, line = report.verdict({"meta": {}, "rows": [row]})
    assert quiet and "copy's own spread exceeded 20% in 1 rows" in line


def test_the_median_error_follows_the_spread_and_the_rounds():
    q = timing._quantiles([1.0, 1.0, 1.1, 1.2, 1.0, 0.9, 1.0, 1.05, 0.95, 1.0])
    assert q["median"] == 1.0 and 0 < q["spread"] < 0.2
    assert q["median_se"] == pytest.approx(0.929 * q["spread"] / 10 ** 0.5)


@pytest.mark.skipif(not os.path.exists("/proc/self/schedstat"),
                    reason="needs Linux schedstat (the run-queue wait)")
def test_a_cpu_bound_neighbour_is_flagged_and_strict_fails(tmp_path):
    """Busy processes on the benchmark's CPU: its rows are flagged NOISY, the last line says
    why, and --strict exits with 3.

    Everything is pinned to one CPU: unpinned, one busy process a CPU plus the benchmark is
    an imbalance of one task, which the scheduler does not move, so the benchmark could keep
    a CPU to itself for a whole row and rightly see no wait (CI saw that row)."""
    cpu = min(os.sched_getaffinity(0))

    def pin():
        os.sched_setaffinity(0, {cpu})
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pin)
            for _ in range(2)]
    try:
        time.sleep(0.5)
        out = tmp_path / "b.json"
        r = subprocess.run([sys.executable, "-m", "detloss_cuda", "bench", "--quick", "--ops",
                            "bce,giou", "--sizes", "10000", "--modes", "fwd", "--impls",
                            "fused,eager", "--strict", "--json", str(out)],
                           capture_output=True, text=True, timeout=600, preexec_fn=pin)
        alive = [h.poll() is None for h in hogs]
    finally:
        for h in hogs:
            h.kill()
    assert all(alive), "a busy process ended before the benchmark did"
    assert r.returncode == 3, r.stdout[-3000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("machine NOT quiet enough") and "waited for a CPU" in last, last
    rows = json.loads(out.read_text())["rows"]
    seen = [(row["op"], row["wait_fraction"], row["noise"]) for row in rows]
    assert rows and all(row["noise"] for row in rows), seen
    # two busy processes on its CPU: the benchmark waits about 2/3 of the time
    assert all(row["wait_fraction"] > 0.3 for row in rows), seen
    # the schema the earlier files have, plus the new fields
    for k in ("op", "family", "device", "dtype", "size", "unit", "mode", "min_bytes",
              "copy_bytes_per_s", "fused", "eager", "wait_fraction", "copy_spread"):
        assert k in rows[0], k
    for k in ("median", "p20", "p80", "reps", "peak_bytes", "bytes_per_s", "copy_fraction",
              "spread", "median_se", "rounds"):
        assert k in rows[0]["fused"], k
