"""An independent check of the benchmark's yolo_loss row: the patched vs unpatched
ultralytics YOLOv8n loss step (16 images at 640 px, fwd+bwd, the benchmark's inputs) in 12
alternating pairs, medians, with a loop of its own (no code shared with
detloss_cuda/bench/timing.py). The two should agree within 10% on a quiet machine.

    python bench/ab_yolo_step.py [images]
"""
import statistics
import sys
import time

import torch

from detloss_cuda.bench import e2e as B


def main(images=16, pairs=12):
    inp = B.yolo_inputs(images, torch.float32, "cpu", torch.Generator().manual_seed(0))

    def step(f):
        for leaf in inp["grad_leaves"]:
            leaf.requires_grad_(True)
            leaf.grad = None
        f(inp).backward()

    sides = {"patched": B.yolo_fused, "ultralytics": B._yolo_loss}
    for f in sides.values():  # warm up
        step(f)
    times = {name: [] for name in sides}
    for _ in range(pairs):
        for name, f in sides.items():
            t0 = time.perf_counter()
            step(f)
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"YOLOv8n loss step, {images} images: patched {med['patched']:.1f} ms, ultralytics "
          f"{med['ultralytics']:.1f} ms, x{med['ultralytics'] / med['patched']:.2f} "
          f"({pairs} interleaved pairs, medians)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 16)
