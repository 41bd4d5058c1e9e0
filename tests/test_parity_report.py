"""`make parity`'s artifact: one pytest run writes the parity table (parity.md) and the JUnit XML."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from parity_tests import report
from parity_tests.report import Record

ROOT = Path(__file__).resolve().parents[1]


def _table(md):
    """The rows of parity.md's table as lists of cells (header and rule left out)."""
    lines = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| model |")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


@pytest.mark.slow  # a pytest run in a subprocess (imports JAX and torch)
def test_one_run_writes_the_table_and_the_junit_xml(tmp_path):
    out = tmp_path / "parity-report"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "parity_tests/test_losses.py"]
    cmd += ["-k", "0-bce-float32 or 0-bce-float64", "--parity-report", out, f"--junitxml={out / 'junit.xml'}"]
    env = {**os.environ, "PARITY_REPORT": ""}
    p = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"parity report: {out / 'parity.md'}" in p.stdout
    suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures")) == ("2", "0")
    md = (out / "parity.md").read_text()
    assert "2 tests collected, 0 failed" in md
    rows = {(r[2], r[3]): r for r in _table(md)}
    # test_elbo_matches_elbo_loss compares loss, kl and grad, in each dtype: one row each
    assert set(rows) == {(d, q) for d in ("float32", "float64") for q in ("grad", "kl", "loss")}
    for (dtype, quantity), (model, direction, _, _, error, bound, _metric, n, result) in rows.items():
        assert (model, direction, n, result) == ("(losses)", "-", "1", "ok")
        assert 0 <= float(error) <= float(bound), (dtype, quantity, error, bound)
    assert rows[("float32", "loss")][5:7] == ["1e-06", "rel"]  # tolerances.py's bound and metric


def test_rows_take_the_largest_error_and_mark_failures():
    records = [
        Record("float32", "forward", 2e-7, 1e-5, True, "VAE", "torch->flax", "t::a"),
        Record("float32", "forward", 3e-6, 1e-5, True, "VAE", "torch->flax", "t::b"),
        Record("float32", "forward", 4e-5, 1e-5, False, "VAE", "flax->torch", "t::c"),
        Record("float32", "adam_q999", 1e-7, None, True, "VAE", "flax->torch", "t::c"),
        Record("float64", "loss", 1e-16, 1e-12, True, None, None, "parity_tests/test_pitfalls.py::test_x"),
    ]
    rows = _table(report.markdown(records, model_order=("CVAE", "VAE")))
    assert rows == [
        ["VAE", "flax->torch", "float32", "adam_q999", "1.0e-07", "-", "-", "1", "not asserted"],
        ["VAE", "flax->torch", "float32", "forward", "4.0e-05", "1e-05", "abs", "1", "FAIL"],
        ["VAE", "torch->flax", "float32", "forward", "3.0e-06", "1e-05", "abs", "2", "ok"],
        ["(pitfalls)", "-", "float64", "loss", "1.0e-16", "1e-12", "rel", "1", "ok"],
    ]
