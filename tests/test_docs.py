"""README.md and docs/: the front door is short and complete, links resolve, and the code blocks work.

Every ```python block runs as written (a document's blocks in order, in one temporary folder). A
```bash block marked `<!-- test: run -->` on the line before it runs as written there too; every other
command of a bash (or plain) block is checked without running it (long trainings, other machines):
each `vae-jax ...` line must parse with the real command line, each `make X` must be a Makefile target,
each `python scripts/X.py` must exist."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from vae_jax import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(<!-- test: run -->\n)?```(\w*)\n(.*?)```", re.S)


def blocks(path: Path):
    """(language, code, marked to run) of each fenced block."""
    return [(m.group(2), m.group(3), bool(m.group(1))) for m in FENCE.finditer(path.read_text())]


def commands(code: str):
    """The shell commands of a block: continuation lines joined, comments dropped, heredocs skipped."""
    out, heredoc = [], None
    for line in code.replace("\\\n", " ").splitlines():
        if heredoc:
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        if "<<" in line:
            heredoc = line.split("<<", 1)[1].strip().strip("'\"")
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first = blocks(ROOT / "README.md")[0][1]
    assert [c[:2] for c in commands(first)] == [["make", "train"], ["make", "test"]]


def test_the_layout_table_names_every_module_and_script():
    table = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    names = [p.name for p in (ROOT / "vae_jax").glob("*.py") if p.name != "__init__.py"]
    names += [p.name for p in (ROOT / "scripts").iterdir() if p.is_file() and p.name != "__init__.py"]
    names += [
        "configs/",
        "onednn_conv.cc",
        "CMakeLists.txt",
        "notebooks/",
        "vae_torch_ref/",
        "parity_tests/",
        "tests/",
        "docs/",
    ]
    missing = [n for n in names if n not in table]
    assert not missing, missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_resolve(doc):
    for target in re.findall(r"\]\(([^)#]+)\)", doc.read_text()):
        if not target.startswith("http"):
            assert (doc.parent / target).exists(), (doc.name, target)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_is_one_the_tools_take(doc):
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    for language, code, _ in blocks(doc):
        if language not in ("bash", ""):
            continue
        for words in commands(code):
            if words[0] == "vae-jax":
                try:
                    cli._parser().parse_args(words[1:])
                except SystemExit:
                    pytest.fail(f"{doc.name}: {shlex.join(words)} does not parse")
            elif words[0] == "make":
                assert {w for w in words[1:] if "=" not in w} <= targets, (doc.name, words)
            elif words[0] == "python" and len(words) > 1 and words[1].startswith("scripts/"):
                assert (ROOT / words[1]).is_file(), (doc.name, words)


def _env():
    bin_dir = str(Path(sys.executable).parent)  # vae-jax and python of this environment
    path = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
    return dict(os.environ, PATH=path, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))


RUNNABLE = [doc for doc in DOCS if any(lang == "python" or run for lang, _, run in blocks(doc))]


@pytest.mark.slow  # trains on the embedded digits
@pytest.mark.timeout(900)
@pytest.mark.parametrize("doc", RUNNABLE, ids=lambda p: p.name)
def test_code_blocks_run_as_written(doc, tmp_path):
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")  # `python scripts/...` as from the checkout
    for language, code, marked in blocks(doc):
        if language == "python":
            argv = [sys.executable, "-c", code]
        elif language == "bash" and marked:
            argv = ["bash", "-euo", "pipefail", "-c", code]
        else:
            continue
        p = subprocess.run(argv, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{doc.name}:\n{code}\n--- stderr:\n{p.stderr[-3000:]}"
