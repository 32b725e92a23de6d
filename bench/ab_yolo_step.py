"""Interleaved A/B of the patched vs unpatched ultralytics YOLOv8n loss step (16 images at
640 px, fwd+bwd, the benchmark's yolo_loss inputs): 12 alternating pairs, medians. On a
shared machine whose speed drifts within a run, interleaving keeps both sides under the same
load (the benchmark times one side, then the other).

    python bench/ab_yolo_step.py
"""
import statistics, time, torch
from detloss_cuda.integrations import _bench as B
g = torch.Generator().manual_seed(0)
inp = B.yolo_inputs(16, torch.float32, "cpu", g)
def run(f):
    for l in inp["grad_leaves"]:
        l.requires_grad_(True); l.grad = None
    f(inp).backward()
for f in (B.yolo_fused, B._yolo_loss):
    run(f)
t = {"fused": [], "eager": []}
for _ in range(12):
    for name, f in (("fused", B.yolo_fused), ("eager", B._yolo_loss)):
        t0 = time.perf_counter(); run(f); t[name].append(time.perf_counter() - t0)
mf, me = statistics.median(t["fused"]) * 1e3, statistics.median(t["eager"]) * 1e3
print(f"fused {mf:.1f} ms  ultralytics {me:.1f} ms  x{me / mf:.2f}  (12 interleaved pairs, medians)")
