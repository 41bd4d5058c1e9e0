"""notebooks/tour.ipynb: generated from notebooks/tour.py (its one source) and run end to end with nbclient,
in a kernel of this interpreter that imports this checkout's vae_jax."""

import base64
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def build_ipynb():
    spec = importlib.util.spec_from_file_location("build_ipynb", NOTEBOOKS / "build_ipynb.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ipynb_is_generated_from_the_percent_script():
    import nbformat

    script = (NOTEBOOKS / "tour.py").read_text()
    builder = build_ipynb()
    nb = nbformat.read(NOTEBOOKS / "tour.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in nb.cells] == builder.cells(script), (
        "tour.ipynb is not tour.py's notebook: run `python notebooks/build_ipynb.py`"
    )
    assert [c.source for c in nb.cells if c.cell_type == "code"] == [
        s for kind, s in builder.cells(script) if kind == "code"
    ]
    assert sum(c.cell_type == "code" for c in nb.cells) >= 5 and sum(c.cell_type == "markdown" for c in nb.cells) >= 5
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert (NOTEBOOKS / "tour.ipynb").read_text() == nbformat.writes(builder.notebook(script)) + "\n"


def test_cells_of_a_percent_script():
    script = "# ---\n# jupyter: {}\n# ---\n\n# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nx = 1\n\n\n"
    cells = build_ipynb().cells(script)
    assert cells == [("markdown", "# Title\n\ntext"), ("code", "x = 1")]
    with pytest.raises(ValueError, match="before the first"):
        build_ipynb().cells("x = 1\n# %%\n")


def _kernel(tmp_path, monkeypatch):
    """A kernelspec that runs this interpreter (not whatever `python` is first on PATH), found through
    JUPYTER_PATH; the kernel inherits the environment: PYTHONPATH puts this checkout first, TMPDIR keeps
    the notebook's temporary workdir inside tmp_path."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "vae-jax-tour"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "vae-jax", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    return "vae-jax-tour"


def _text(cell, name="stdout"):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == name)


@pytest.mark.slow  # the notebook trains a model and draws its figures
@pytest.mark.timeout(600)
def test_tour_notebook_runs(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / "tour.ipynb", as_version=4)
    n = len(nb.cells)
    check = "import sys\nimport vae_jax\n\nprint(sys.executable)\nprint(vae_jax.__file__)"
    nb.cells.append(nbformat.v4.new_code_cell(check))  # which interpreter and which vae_jax the kernel ran
    client = NotebookClient(nb, kernel_name=_kernel(tmp_path, monkeypatch), timeout=600)
    client.execute(cwd=str(tmp_path))

    interpreter, package = _text(nb.cells[n]).split()
    assert interpreter == sys.executable and Path(package).resolve() == ROOT / "vae_jax" / "__init__.py"
    code = [c for c in nb.cells[:n] if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not [_text(c, "stderr") for c in code if _text(c, "stderr")]  # no warnings or log lines for the reader
    out = "\n".join(_text(c) for c in code)
    assert "JAX devices: [" in out and "torch device: " in out
    assert out.count("<All keys matched successfully>") == 2  # the fresh model, then the exported file
    for label in ("max abs difference between Flax and PyTorch", "max abs difference between Flax and PyTorch samples"):
        value = float(re.search(re.escape(label) + r": (\S+)", out).group(1))
        assert 0 <= value < 1e-5, (label, value)
    assert re.search(r"^Epoch (\d+)/\1 ", out, re.M) and "figures: " in out

    shown = [c for c in code if any(o.output_type == "display_data" for o in c.outputs)]
    assert len(shown) == 1
    pngs = [base64.b64decode(o.data["image/png"]) for o in shown[0].outputs if o.output_type == "display_data"]
    names = _text(shown[0]).split()
    assert len(pngs) == len(names) and {"reconstruction", "samples", "loss_curves"} <= set(names)
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert list((tmp_path / "tmp").glob("vae-tour-*/run/vae.pt"))  # the export went to the temporary workdir
