"""Parity suite set-up. The tolerance table is parity_tests/tolerances.py (one place); the shared
machinery is parity_tests/harness.py (importing it sets jax_default_matmul_precision='highest')."""

from pathlib import Path

import jax
import pytest
import torch

from parity_tests import harness  # noqa: F401  (sets the matmul precision on import)

assert jax.config.jax_default_matmul_precision == "highest"


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
def _no_x64_leak():
    """float64 runs only inside `harness.precision('float64')` (jax.enable_x64 as a context
    manager): no test may start or end with x64 on."""
    assert not jax.config.jax_enable_x64, "jax_enable_x64 leaked into this test"
    yield
    assert not jax.config.jax_enable_x64, "this test leaked jax_enable_x64"
