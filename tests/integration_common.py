"""What the integration tests share: a library that must be there (or skips), and the
comparison of a patched float32 training step with the library's own float32 step
against a float64 run (tests/test_integrations.py explains the tolerance)."""
import collections
import importlib
import os

import pytest
import torch


F32_EPS = torch.finfo(torch.float32).eps



def _require(name):
    if os.environ.get("DETLOSS_REQUIRE_INTEGRATIONS"):
        return importlib.import_module(name)  # CI: a missing library is a failure
    return pytest.importorskip(name, reason=f"{name} is not installed (pip install {name})")


class Spy:
    """Counts calls into detloss_cuda.functional made by an integration module."""

    def __init__(self, mod):
        self._mod, self.calls = mod, collections.Counter()

    def __getattr__(self, name):
        f = getattr(self._mod, name)

        def counted(*a, **k):
            self.calls[name] += 1
            return f(*a, **k)
        return counted


def _grads(model):
    return {n: p.grad.double().clone() for n, p in model.named_parameters() if p.grad is not None}


def _max_rel(g, ref):
    """The worst parameter's relative gradient error."""
    return max(((g[n] - ref[n]).norm() / ref[n].norm().clamp_min(1e-300)).item() for n in ref)


def _global_rel(g, ref):
    """The relative error of all gradients together (one vector)."""
    num = sum(((g[n] - ref[n]) ** 2).sum() for n in ref)
    return (num / sum((ref[n] ** 2).sum() for n in ref)).sqrt().item()


def _check_close_as_own_fp32(l32, g32, lp, gp, l64, g64):
    """lp, gp (patched, fp32) are as close to l64, g64 (float64) as l32, g32 (unpatched)."""
    assert l32.keys() == lp.keys() == l64.keys()
    for k in l64:
        own = (l32[k] - l64[k]).abs().max().item()
        ours = (lp[k] - l64[k]).abs().max().item()
        assert ours <= 2 * own + 8 * F32_EPS * l64[k].abs().max().item(), (k, ours, own)
    assert g32.keys() == gp.keys() == g64.keys() and len(g64) > 50
    own, ours = _max_rel(g32, g64), _max_rel(gp, g64)
    assert ours <= 2 * own + 1e-6, (ours, own)
    own, ours = _global_rel(g32, g64), _global_rel(gp, g64)
    assert ours <= 2 * own + 1e-6, (ours, own)
    # Sharper: the two float32 steps share every operation but the losses, and the backward
    # through the network is linear in the losses' gradients, which differ by float32
    # rounding (a few ulps per element): the parameter gradients may differ by that times
    # the backward's amplification (measured ~1e-6 here), far below what a wrong term,
    # factor or gradient path gives (>= 1e-3).
    direct = _global_rel(gp, g32)
    print(f"gradient error vs float64: ours {ours:.2e}, theirs {own:.2e}; ours vs theirs {direct:.2e}")
    assert direct < 1e-4, direct
    assert own < 1e-2  # the float32 step itself is sane: the comparison means something
