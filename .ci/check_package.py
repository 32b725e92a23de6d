"""Packaging check (run by .ci/run after the CUDA build, in the CI virtual environment):

1. the sdist holds every file the build read: each header ninja recorded for every object
   of the builds in build/ (the compiler's own dependency lists), every tracked source;
2. the wheel, built from this tree with the environment's build variables (CI: FORCE_CUDA=1
   TORCH_CUDA_ARCH_LIST=9.0), holds the extension and says which torch it needs;
3. that wheel, installed (not editable) into a fresh virtual environment outside the source
   tree, imports from there and passes `python -m detloss_cuda info` and `verify`; its
   version metadata and build_info() agree.

Exit code 0 when all hold; every step prints what it checked.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, **kw):
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def fail(msg):
    print(f"PACKAGE CHECK FAILED: {msg}", flush=True)
    sys.exit(1)


def version():
    with open(os.path.join(ROOT, "detloss_cuda", "version.py")) as f:
        return re.search(r'__version__\s*=\s*"([^"]+)"', f.read()).group(1)


def headers_the_build_read():
    """Files inside the source tree (not build/) that ninja recorded as read by any object."""
    read = set()
    logs = glob.glob(os.path.join(ROOT, "build", "*", ".ninja_deps")) + glob.glob(
        os.path.join(ROOT, "build", "*", "*", ".ninja_deps"))
    if not logs:
        fail("no ninja dependency log under build/: build the extension first")
    for log in logs:
        out = subprocess.run(["ninja", "-t", "deps"], cwd=os.path.dirname(log), text=True,
                             capture_output=True, check=True).stdout
        for line in out.splitlines():
            p = line.strip()
            if line.startswith(" ") and p.startswith(ROOT + os.sep):
                rel = os.path.relpath(p, ROOT)
                top = rel.split(os.sep)[0]
                if top != "build" and not top.startswith("."):  # not build/ or a .venv*
                    read.add(rel)
    return read


def main():
    v = version()
    out = tempfile.mkdtemp(prefix="detloss-pkg-")
    t0 = time.time()

    # 1. sdist
    run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", out, ROOT],
        stdout=subprocess.DEVNULL)
    sdist = os.path.join(out, f"detloss_cuda-{v}.tar.gz")
    if not os.path.exists(sdist):
        fail(f"no {sdist} (found {os.listdir(out)})")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    tracked = subprocess.run(["git", "ls-files", "csrc", "detloss_cuda", "setup.py",
                              "pyproject.toml", "MANIFEST.in", "README.md", "requirements.txt",
                              "requirements-yolov5.txt", "CMakeLists.txt", "tests", "docs"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    read = headers_the_build_read()
    missing = sorted((set(tracked) | read) - names)
    if missing:
        fail(f"the sdist lacks {len(missing)} files the build needs: {missing[:20]}")
    stray = sorted(n for n in names if n.endswith((".so", ".o")) or n.startswith(("build/", "bench/results/")))
    if stray:
        fail(f"the sdist carries build outputs or results: {stray[:10]}")
    print(f"sdist: {len(names)} files; every tracked source and all {len(read)} files the "
          "build read (ninja's dependency logs) are in it", flush=True)

    # 2. wheel, from this tree (reuses build/: ninja recompiles nothing that is current)
    run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q",
         "-w", out, ROOT])
    wheels = glob.glob(os.path.join(out, f"detloss_cuda-{v}-*.whl"))
    if len(wheels) != 1:
        fail(f"expected one wheel, found {os.listdir(out)}")
    import torch

    with zipfile.ZipFile(wheels[0]) as zf:
        wnames = zf.namelist()
        meta = zf.read(f"detloss_cuda-{v}.dist-info/METADATA").decode()
    if not any(re.fullmatch(r"detloss_cuda/_C\..*\.so", n) for n in wnames):
        fail(f"no extension in the wheel: {wnames}")
    pin = f"Requires-Dist: torch=={torch.__version__.split('+')[0]}"
    if f"Version: {v}" not in meta or pin not in meta:
        fail(f"wheel metadata lacks 'Version: {v}' or '{pin}':\n{meta[:1500]}")
    print(f"wheel: {os.path.basename(wheels[0])}, {len(wnames)} files, {pin}", flush=True)

    # 3. a fresh virtual environment outside the tree
    venv = os.path.join(out, "venv")
    run([sys.executable, "-m", "venv", venv])
    py = os.path.join(venv, "bin", "python")
    run([py, "-m", "pip", "install", "-q", wheels[0]])
    env = {k: val for k, val in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "FORCE_CUDA", "TORCH_CUDA_ARCH_LIST",
                        "CUDA_HOME")}
    env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
    info = run([py, "-m", "detloss_cuda", "info"], cwd=out, env=env, capture_output=True,
               text=True).stdout
    print(info, flush=True)
    script = (
        "import detloss_cuda, importlib.metadata as m, os, sys\n"
        "f = os.path.realpath(detloss_cuda.__file__)\n"
        f"assert f.startswith(os.path.realpath({venv!r})), f\n"
        "b = detloss_cuda.build_info()\n"
        "assert m.version('detloss_cuda') == detloss_cuda.__version__ == b['version'], b\n"
        "print('installed at', f, 'version', b['version'], 'cuda', b['with_cuda'], b['cuda_archs'])\n")
    run([py, "-c", script], cwd=out, env=env)
    want_cuda = os.environ.get("FORCE_CUDA") == "1"
    if want_cuda and "CUDA kernels compiled: yes" not in info:
        fail("FORCE_CUDA=1 but the installed wheel has no CUDA kernels")
    run([os.path.join(venv, "bin", "detloss"), "verify"], cwd=out, env=env)
    # passed: the folder (sdist, wheel and a venv with torch: ~5.5 GB) goes; a failure keeps
    # it for a look (fail() exits before this line)
    shutil.rmtree(out, ignore_errors=True)
    print(f"package check passed in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
