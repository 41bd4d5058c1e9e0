"""pytest plugin: the `parity` fixture, so that a parity test of your own port is ten lines.

Enable it in your conftest.py (the top-level one):

    pytest_plugins = ["vae_jax.pytest_plugin"]

and write a test:

    def test_my_port(parity):
        report = parity(MyTorchVAE(), MyFlaxVAE(rngs=nnx.Rngs(0)), x)
        assert report.passed, report.to_markdown()

`pytest --parity-report DIR` writes DIR/parity.md (every report of the run, with its checks and
first divergence); `--junitxml` holds the tests as usual. Inside vae-jax's own suite (parity_tests/)
the fixture is imported by parity_tests/conftest.py, and each report's checks land in `make
parity`'s parity-report/parity.md beside the chapter's models.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from vae_jax.files import atomic_write

REPORTS: list = []  # (test node id, vae_jax.parity.Report), in the order the tests ran


@pytest.fixture
def parity(request):
    """A function `parity(torch_model, flax_model, x, **options) -> Report` (vae_jax.parity.check's
    arguments), whose report is kept for the run's parity report."""
    from vae_jax import parity as P

    def run(torch_model, flax_model, x, **options):
        report = P.check(torch_model, flax_model, x, **options)
        REPORTS.append((request.node.nodeid, report))
        return report

    return run


def pytest_addoption(parser):
    # another plugin (vae-jax's own parity_tests/conftest.py) may define it: then that one writes the report
    with contextlib.suppress(ValueError):
        parser.addoption(
            "--parity-report",
            metavar="DIR",
            default=None,
            help="write DIR/parity.md: every vae_jax.parity report of the run",
        )


def pytest_sessionfinish(session, exitstatus):
    folder = session.config.getoption("--parity-report", None)
    if not folder or not REPORTS or hasattr(session.config, "workerinput"):
        return
    text = "\n".join(f"<!-- {nodeid} -->\n{report.to_markdown()}" for nodeid, report in REPORTS)
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(folder) / "parity.md", text)
