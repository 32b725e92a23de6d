"""One-line drop-ins for detection libraries: route their loss code to detloss_cuda's kernels.

    import detloss_cuda.integrations.ultralytics as dl_ultralytics
    dl_ultralytics.patch()          # or: with dl_ultralytics.patched(): ...

    import detloss_cuda.integrations.torchvision as dl_torchvision
    dl_torchvision.patch()

    import detloss_cuda.integrations.transformers as dl_transformers   # DETR family
    dl_transformers.patch()

    import detloss_cuda.integrations.yolov5 as dl_yolov5               # pip yolov5
    dl_yolov5.patch()

None of the libraries is a dependency of detloss_cuda (extras: ``pip install .[ultralytics]``,
``.[torchvision]``, ``.[transformers]``, ``.[yolov5]``); each module imports its library when ``patch()`` is called and says
how to install it when it is missing. ``unpatch()`` puts back the very objects it replaced.

Processes started later (``torch.distributed.run`` workers, ultralytics' multi-GPU
re-launch) do not inherit a ``patch()``; they inherit the environment: ``patch()`` names the
library in ``DETLOSS_PATCH`` (e.g. ``DETLOSS_PATCH=ultralytics,torchvision``), and
``import detloss_cuda`` patches the libraries it names. Set it yourself to patch workers you
launch (their script must import detloss_cuda); ultralytics' own re-launch script is made to
import it by the ultralytics patch.
"""
import importlib
import os

__all__ = ["ultralytics", "torchvision", "transformers", "yolov5", "patch_from_env"]

LIBRARIES = ("ultralytics", "torchvision", "transformers", "yolov5")


def patch_from_env():
    """patch() each library DETLOSS_PATCH names (comma-separated); called by ``import
    detloss_cuda``. An unknown name is a ValueError naming the variable."""
    names = [n for n in os.environ.get("DETLOSS_PATCH", "").replace(" ", "").split(",") if n]
    for name in names:
        if name not in LIBRARIES:
            raise ValueError(f"DETLOSS_PATCH={os.environ['DETLOSS_PATCH']!r}: unknown library "
                             f"{name!r}; it takes a comma-separated list of {', '.join(LIBRARIES)}")
    for name in names:
        importlib.import_module(f"{__name__}.{name}").patch()
