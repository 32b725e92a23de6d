"""One-line drop-ins for detection libraries: route their loss code to detloss_cuda's kernels.

    import detloss_cuda.integrations.ultralytics as dl_ultralytics
    dl_ultralytics.patch()          # or: with dl_ultralytics.patched(): ...

    import detloss_cuda.integrations.torchvision as dl_torchvision
    dl_torchvision.patch()

Neither library is a dependency of detloss_cuda (extras: ``pip install .[ultralytics]``,
``.[torchvision]``); each module imports its library when ``patch()`` is called and says
how to install it when it is missing. ``unpatch()`` puts back the very objects it replaced.
"""

__all__ = ["ultralytics", "torchvision"]
