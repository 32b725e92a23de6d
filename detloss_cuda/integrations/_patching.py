"""Replace attributes of a library's modules and classes and put back the very same objects."""
import contextlib
import functools
import importlib
import math
import os

import torch

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def ours(*tensors):
    """True when the fused ops take these tensors (CPU or CUDA, a floating dtype they support);
    the wrappers hand anything else (MPS, integer boxes, tensor subclasses) to the original."""
    for t in tensors:
        if type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
            return False
        if t.device.type not in ("cpu", "cuda") or t.dtype not in _DTYPES:
            return False
    return True


def is_number(v):
    """A finite int or float (not a bool): what the fused ops take for a scalar argument."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def wrap_bbox_iou(orig, fused):
    """ultralytics' / YOLOv5's ``bbox_iou`` (the same signature and ``[..., 1]`` result) on
    ``fused`` (``functional.bbox_iou``, looked up by the integration at call time); boxes the
    kernels do not take go to ``orig``."""
    @functools.wraps(orig)
    def bbox_iou(box1, box2, xywh=True, GIoU=False, DIoU=False, CIoU=False, eps=1e-7):  # noqa: N803
        if not ours(box1, box2) or box1.shape[-1:] != (4,) or box2.shape[-1:] != (4,):
            return orig(box1, box2, xywh, GIoU, DIoU, CIoU, eps)
        if box1.dtype != box2.dtype:  # mixed under AMP: promote as torch would
            dt = torch.promote_types(box1.dtype, box2.dtype)
            box1, box2 = box1.to(dt), box2.to(dt)
        return fused(box1, box2, xywh=xywh, GIoU=GIoU, DIoU=DIoU, CIoU=CIoU, eps=eps)
    return bbox_iou


def load_library(library, modules, known):
    """Imports `library` and its `modules` (dotted names); a Patchset for them, whose
    `.mods[name]` are the modules. A missing library is an ImportError saying how to
    install it (the integrations are extras, not dependencies)."""
    try:
        top = importlib.import_module(library)
        mods = {name: importlib.import_module(name) for name in modules}
    except ImportError as e:
        raise ImportError(
            f"detloss_cuda.integrations.{library} needs the {library} package: "
            f"pip install 'detloss_cuda[{library}]' (or pip install {library})") from e
    ps = Patchset(library, getattr(top, "__version__", "?"), known)
    ps.mods = mods
    return ps


class Patchset:
    """The replacements made by one patch(): (owner, name, original) in order."""

    def __init__(self, library, version, known):
        self.library, self.version, self.known = library, version, known
        self._saved = []

    def original(self, owner, name, what=None):
        """The object `owner.name` holds now (a class's own attribute, unbound), or a
        RuntimeError naming the installed version when this version has no such name."""
        if isinstance(owner, type):
            found = owner.__dict__.get(name)
        else:
            found = getattr(owner, name, None)
        if found is None:
            where = getattr(owner, "__qualname__", getattr(owner, "__name__", repr(owner)))
            raise RuntimeError(
                f"detloss_cuda.integrations.{self.library}: {self.library} {self.version} has no "
                f"{what or f'{where}.{name}'}, which the patch replaces; it knows {self.known}. "
                "Nothing was patched.")
        return found

    def replace(self, owner, name, new):
        self._saved.append((owner, name, self.original(owner, name)))
        setattr(owner, name, new)

    def restore(self):
        for owner, name, orig in reversed(self._saved):
            setattr(owner, name, orig)
        self._saved.clear()


ENV = "DETLOSS_PATCH"


def _env_set(library, on):
    """Add `library` to (or remove it from) DETLOSS_PATCH, the comma-separated list of
    libraries that `import detloss_cuda` patches: processes started from this one inherit it,
    so a worker re-launched by torch.distributed.run patches itself when it imports us."""
    names = [n for n in os.environ.get(ENV, "").replace(" ", "").split(",") if n and n != library]
    if on:
        names.append(library)
    if names:
        os.environ[ENV] = ",".join(names)
    else:
        os.environ.pop(ENV, None)


class Switch:
    """patch() / unpatch() / patched() for one library; `apply(patchset)` makes the replacements.
    patch() also names the library in DETLOSS_PATCH (for child processes); unpatch() removes it."""

    def __init__(self, library, load, apply):
        self._library, self._load, self._apply = library, load, apply
        self._active = None

    @property
    def is_patched(self):
        return self._active is not None

    def patch(self):
        if self._active is not None:
            return  # idempotent: patching twice would wrap our own wrappers
        ps = self._load()
        try:
            self._apply(ps)
        except BaseException:
            ps.restore()  # all or nothing
            raise
        self._active = ps
        _env_set(self._library, True)

    def unpatch(self):
        if self._active is not None:
            self._active.restore()
            self._active = None
        _env_set(self._library, False)

    @contextlib.contextmanager
    def patched(self):
        was = self.is_patched
        self.patch()
        try:
            yield
        finally:
            if not was:
                self.unpatch()
