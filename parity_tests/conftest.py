"""Parity suite set-up. The tolerance table is parity_tests/tolerances.py (one place); the shared
machinery is parity_tests/harness.py. Every parity test runs at jax_default_matmul_precision 'highest'
(no TF32 on a GPU), scoped to the test (`_highest_matmul_precision`; harness.precision too): nothing
else in the session sees it.

`--parity-report DIR` (or PARITY_REPORT=DIR): at the end of the run, DIR/parity.md holds the largest
error of each (model, direction, dtype, quantity) the tests compared, with its bound (report.py);
`make parity` passes it with `--junitxml=DIR/junit.xml`, one run for both."""

import os
from pathlib import Path

import jax
import pytest
import torch

from parity_tests import harness
from vae_jax import pytest_plugin
from vae_jax.pytest_plugin import parity  # noqa: F401 -- the fixture, for tests of your own ports


_HERE = Path(__file__).resolve().parent


def _needs_data(item) -> bool:
    """A skipif on the item (function, class or module) whose reason mentions VAE_DATA_DIR."""
    return any("VAE_DATA_DIR" in str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif"))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    # Markers (registered in pyproject.toml): every parity_tests item is `parity`; `needs_data` as in
    # tests/conftest.py. `slow` is marked in the test files.
    for item in items:
        if not item.path.resolve().is_relative_to(_HERE):
            continue
        item.add_marker(pytest.mark.parity)
        if _needs_data(item):
            item.add_marker(pytest.mark.needs_data)


@pytest.fixture(scope="session", autouse=True)
def _torch_one_thread():
    """torch's CPU kernels with 2 OpenMP threads on a busy 2-core machine run ~5x slower than with
    one (spin-waiting); results are compared, not timed. Restored after the session."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _highest_matmul_precision():
    """The test at the highest matmul precision, and nothing after it."""
    assert jax.config.jax_default_matmul_precision is None, "a matmul precision leaked into this test"
    with jax.default_matmul_precision("highest"):
        assert jax.config.jax_default_matmul_precision == "highest"
        yield


@pytest.fixture(autouse=True)
def _no_x64_leak():
    """float64 runs only inside `harness.precision('float64')` (jax.enable_x64 as a context
    manager): no test may start or end with x64 on."""
    assert not jax.config.jax_enable_x64, "jax_enable_x64 leaked into this test"
    yield
    assert not jax.config.jax_enable_x64, "this test leaked jax_enable_x64"


def pytest_addoption(parser):
    parser.addoption(
        "--parity-report",
        metavar="DIR",
        default=os.environ.get("PARITY_REPORT") or None,
        help="write DIR/parity.md: the largest JAX-vs-torch error per model, direction, dtype and quantity, "
        "with its bound (default: $PARITY_REPORT)",
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Name the test, and its model and direction (a model case's parameters), in the records its
    comparisons add. harness.run_case/run_adam are cached per (model, direction, seed, dtype), so a
    case's records are made in the first test with those parameters."""
    start = len(harness.RECORDS)
    try:
        return (yield)
    finally:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        for r in harness.RECORDS[start:]:
            r.test = item.nodeid
            r.model = r.model or params.get("name")
            r.direction = r.direction or params.get("direction")


def pytest_sessionfinish(session, exitstatus):
    folder = session.config.getoption("--parity-report")
    if not folder or hasattr(session.config, "workerinput"):  # (an xdist worker: its controller writes)
        return
    from parity_tests import report

    harness.RECORDS.extend(_own_port_records())
    summary = (
        f"{session.testscollected} tests collected, {session.testsfailed} failed (pytest exit status "
        f"{int(exitstatus)}); {len(harness.RECORDS)} comparisons."
    )
    path = report.write(
        folder, harness.RECORDS, model_order=harness.MODEL_NAMES, redraws=harness.REDRAWS, summary=summary
    )
    session.config.stash[_REPORT] = path


def _own_port_records():
    """The `parity` fixture's reports (vae_jax.parity) as report records: per (model, phase: quantity),
    each check's largest error, its bound (None when it cannot fail) and its metric."""
    from parity_tests import report

    out = []
    for nodeid, rep in pytest_plugin.REPORTS:
        for c in rep.checks:
            bound = c.bound if c.can_fail else None
            quantity = f"{c.phase}: {c.quantity}"
            out.append(report.Record(rep.dtype, quantity, c.error, bound, c.passed, rep.name, None, nodeid, c.metric))
        for c in rep.conventions:
            quantity = f"convention: {c.line()}"
            out.append(report.Record(rep.dtype, quantity, float("inf"), 0.0, False, rep.name, None, nodeid, "exact"))
    return out


_REPORT = pytest.StashKey[Path]()


def pytest_terminal_summary(terminalreporter, config):
    if _REPORT in config.stash:
        terminalreporter.write_line(f"parity report: {config.stash[_REPORT]}")
