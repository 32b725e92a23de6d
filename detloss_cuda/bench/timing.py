"""Timing and memory: the implementations of a row are timed interleaved, in rounds.

Why not ``torch.utils.benchmark.Timer``: its ``blocked_autorange`` / ``adaptive_autorange``
measure one statement to completion before the next, so a machine whose speed drifts (a
shared CPU, a GPU changing clocks) biases every ratio; and its ``timeit`` warms up before
each block (``number // 100``, at least 2 calls), which triples the cost of a round of a
400 ms loss step. What is kept from it: its synchronising clock's rule (wait for the device,
then ``perf_counter``), blocks of several calls sized to a minimum duration, and the
interquartile spread as the measure of noise (its ``Measurement`` warns above 10%).

Each round times one block of every implementation, in an order that rotates from round to
round; a block's calls are sized from the median of three timed calls (one descheduled call
cannot shrink the sample). The row reports each implementation's median over the rounds,
its 20th and 80th percentiles, its spread (the interquartile range over the median: robust to
a quarter of the rounds being disturbed), and how long the process waited for a CPU while it
measured (Linux schedstat): the two signs of a machine too busy to time on.
"""
import math
import os
import time

import torch

# A row is noisy when an implementation's median is uncertain by more than SE_MAX (its
# standard error relative to it, from the spread and the number of rounds), or when the
# process waited for a CPU for more than WAIT_MAX of the row's wall time. Rounds continue,
# up to EXTRA_TIME x min_time, while a median is uncertain by more than SE_TARGET (the
# adaptive part, as torch.utils.benchmark's adaptive_autorange).
SE_MAX = 0.1
SE_TARGET = 0.05
EXTRA_TIME = 3.0
WAIT_MAX = 0.1
SPREAD_MAX = 0.2  # the copy's spread above which its "% of copy" column is not shown


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _clock(device):
    _sync(device)
    return time.perf_counter()


def runqueue_wait_ns():
    """Nanoseconds this process's threads have waited on a run queue (ready but not
    running: another process had the CPU); None where the kernel does not say."""
    total = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended meanwhile
    except OSError:
        return None
    return total


class WaitMeter:
    """The fraction of wall time this process's threads waited for a CPU between start()
    and stop() (summed over threads, so it can exceed 1)."""

    def start(self):
        self.w0, self.t0 = runqueue_wait_ns(), time.perf_counter()
        return self

    def stop(self):
        w1, t1 = runqueue_wait_ns(), time.perf_counter()
        if self.w0 is None or w1 is None or t1 <= self.t0:
            return None
        return (w1 - self.w0) / 1e9 / (t1 - self.t0)


def _quantiles(xs):
    xs = sorted(xs)

    def q(f):  # linear interpolation between order statistics
        i = f * (len(xs) - 1)
        lo = int(i)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)
    med = q(0.5)
    spread = (q(0.75) - q(0.25)) / med if med > 0 else 0.0
    # the median's standard error: 1.253 sigma / sqrt(n), sigma ~ IQR / 1.349
    return {"median": med, "p20": q(0.2), "p80": q(0.8), "spread": spread,
            "median_se": 0.929 * spread / math.sqrt(len(xs))}


def time_interleaved(fns, device, min_time=0.2, min_rounds=10, max_rounds=200):
    """{name: fn} -> ({name: {median, p20, p80, spread, reps, rounds}} in seconds per call,
    the fraction of the rounds' wall time the process waited for a CPU, or None).

    Rounds continue while an implementation's median is uncertain by more than SE_TARGET,
    up to EXTRA_TIME x min_time of it.

    Every fn runs once to warm up (compiling, caches), then up to three timed calls size its
    blocks to about min_time / min_rounds (two calls longer than a block settle it: one call
    a block); rounds continue until each fn has been timed for
    min_time and at least min_rounds rounds (at most max_rounds). A fn that raises is
    reported as {"error": ...} and left out of the rounds."""
    out, live, per_call = {}, {}, {}
    block = min_time / min_rounds
    for name, fn in fns.items():
        try:
            fn()
            ts = []
            while len(ts) < 3 and sum(t > block for t in ts) < 2:
                t0 = _clock(device)
                fn()
                ts.append(_clock(device) - t0)
            live[name], per_call[name] = fn, max(sorted(ts)[len(ts) // 2], 1e-7)
        except Exception as e:  # e.g. torch.compile unavailable here: report it
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
    n = {k: max(1, int(round(block / per_call[k]))) for k in live}
    samples = {k: [] for k in live}
    spent = {k: 0.0 for k in live}
    names = list(live)
    r = 0
    meter = WaitMeter().start()

    def more():
        if r >= max_rounds:
            return False
        if r < min_rounds or any(s < min_time for s in spent.values()):
            return True
        return any(spent[k] < EXTRA_TIME * min_time and
                   _quantiles(samples[k])["median_se"] > SE_TARGET for k in names)
    while more():
        for j in range(len(names)):
            k = names[(r + j) % len(names)]
            t0 = _clock(device)
            for _ in range(n[k]):
                live[k]()
            dt = _clock(device) - t0
            samples[k].append(dt / n[k])
            spent[k] += dt
        r += 1
    for k in live:
        out[k] = dict(_quantiles(samples[k]), reps=n[k] * r, rounds=r)
    return out, meter.stop()


def _proc_status(*keys):
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = int(v.split()[0]) * 1024
    return out


def _cpu_peak(fn):
    """Peak resident memory added by one call on the CPU, where PyTorch keeps no allocator
    statistics: free heap pages are returned to the OS (malloc_trim), the kernel's high-water
    mark of the process is reset (/proc/self/clear_refs, 5), and after the call its rise over
    the resident size before is read (VmHWM - VmRSS). Linux with glibc; None elsewhere. It
    counts pages touched, so it is an upper bound of the allocations' peak within a page."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status("VmRSS")["VmRSS"]
        fn()
        return max(0, _proc_status("VmHWM")["VmHWM"] - before)
    except (OSError, KeyError, AttributeError):
        return None


def peak_memory(fn, device):
    """Peak bytes allocated by one call beyond what was allocated before it: on CUDA the
    caching allocator's statistics; on the CPU the rise of the process's peak resident
    memory (_cpu_peak)."""
    if device != "cuda":
        return _cpu_peak(fn)
    _sync(device)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def copy_bandwidth(nbytes, device, min_time):
    """Bytes/s of a device copy that moves `nbytes` in total (nbytes/2 read, nbytes/2
    written), and the copy's own spread."""
    n = max(1, int(nbytes // 2))
    src = torch.empty(n, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    t = time_interleaved({"copy": lambda: dst.copy_(src)}, device, min_time=min_time)[0]["copy"]
    return 2 * n / t["median"], t["spread"]
