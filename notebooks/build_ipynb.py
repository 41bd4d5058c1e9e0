"""Write tour.ipynb from tour.py, its one source (jupytext's percent format): `python notebooks/build_ipynb.py`.

tour.py holds the cells: `# %%` starts a code cell, `# %% [markdown]` a markdown cell whose lines are
comments (`# ` stripped); the `# ---` block at the top is jupytext's header, not a cell. The notebook
is written without outputs, with fixed cell ids, so the same tour.py always gives the same file
(tests/test_notebook.py checks that tour.ipynb is up to date).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def cells(text: str) -> list[tuple[str, str]]:
    """[(cell type, source)] of a percent-format script, in order."""
    lines = text.splitlines()
    if lines and lines[0] == "# ---":  # the jupytext header
        lines = lines[lines.index("# ---", 1) + 1 :]
    out: list[tuple[str, list[str]]] = []
    for line in lines:
        marker = re.fullmatch(r"# %%( \[markdown\])?", line)
        if marker:
            out.append(("markdown" if marker.group(1) else "code", []))
        elif out:
            out[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"text before the first '# %%' cell marker: {line!r}")
    result = []
    for kind, body in out:
        if kind == "markdown":
            body = [re.sub(r"^# ?", "", line) for line in body]
        result.append((kind, "\n".join(body).strip("\n")))
    return result


def notebook(text: str):
    """The nbformat notebook of a percent-format script (no outputs)."""
    import nbformat

    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC, "language_info": {"name": "python"}})
    for i, (kind, source) in enumerate(cells(text)):
        new = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(new(source, id=f"cell-{i}"))
    nbformat.validate(nb)
    return nb


def main(name: str = "tour") -> None:
    import nbformat

    nb = notebook((HERE / f"{name}.py").read_text())
    (HERE / f"{name}.ipynb").write_text(nbformat.writes(nb) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
