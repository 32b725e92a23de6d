"""The documentation cannot rot: every Python block of README.md and docs/*.md runs (a file's
blocks in order, in one fresh interpreter, so a patch() cannot leak into other tests), every
relative link points at a file and heading that exist, and the README stays a page.

A block whose first line is ``# requires: <module>`` runs where that module is installed; it
is skipped elsewhere, unless DETLOSS_REQUIRE_INTEGRATIONS / DETLOSS_REQUIRE_YOLOV5 say that
library must be there (CI), which makes its absence a failure."""
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def python_blocks(rel):
    """[(line number, code)] of the file's ```python blocks."""
    text = _read(rel)
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in FENCE.finditer(text)]


def test_the_docs_have_python_blocks():
    counts = {rel: len(python_blocks(rel)) for rel in DOCS}
    for rel in ("README.md", "docs/api.md", "docs/integrations.md"):
        assert counts[rel] >= 1, counts


def _required(code):
    first = code.lstrip().splitlines()[0] if code.strip() else ""
    m = re.match(r"#\s*requires:\s*([\w.]+)", first)
    return m.group(1) if m else None


def _must_have(module):
    if module == "yolov5":
        return os.environ.get("DETLOSS_REQUIRE_YOLOV5") == "1"
    return os.environ.get("DETLOSS_REQUIRE_INTEGRATIONS") == "1"


@pytest.mark.parametrize("rel", [d for d in DOCS if python_blocks(d)])
def test_python_blocks_run(rel, tmp_path):
    runner = ["import importlib.util, sys", "ns = {'__name__': '__main__'}", "skipped = []"]
    for line, code in python_blocks(rel):
        req = _required(code)
        name = f"{rel}:{line}"
        body = f"exec(compile({code!r}, {name!r}, 'exec'), ns)"
        if req:
            body = textwrap.dedent(f"""\
                if importlib.util.find_spec({req!r}) is None:
                    skipped.append(({name!r}, {req!r}))
                else:
                    {body}""")
        runner.append(body)
    runner.append("print('SKIPPED', skipped)")
    script = tmp_path / "run_docs.py"
    script.write_text("\n".join(runner) + "\n")
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"),
               MPLBACKEND="Agg")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=900, cwd=str(tmp_path), env=env)
    assert r.returncode == 0, f"a Python block of {rel} failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    skipped = eval(r.stdout.strip().splitlines()[-1][len("SKIPPED "):])
    missing = [s for s in skipped if _must_have(s[1])]
    assert not missing, f"blocks that need a library this run requires: {missing}"
    if skipped:
        pytest.skip(f"blocks needing a library not installed here: {skipped}")


def _slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


@pytest.mark.parametrize("rel", DOCS)
def test_relative_links_resolve(rel):
    text = _read(rel)
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(rel), path)) if path else rel
        if not os.path.exists(os.path.join(ROOT, dest)):
            bad.append(f"{target}: no {dest}")
            continue
        if anchor and dest.endswith(".md"):
            heads = {_slug(h) for h in re.findall(r"^#+ (.+)$", _read(dest), re.M)}
            if anchor not in heads:
                bad.append(f"{target}: no heading #{anchor} in {dest}")
    assert not bad, bad


def test_readme_is_a_page():
    n = _read("README.md").count("\n")
    assert n <= 250, f"README.md has {n} lines; details belong in docs/"
