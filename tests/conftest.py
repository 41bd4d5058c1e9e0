"""Markers for the test run (registered in pyproject.toml):

- `slow`: written where each test is (a module's `pytestmark`, a decorator, or a `pytest.param`'s marks);
  `make test-fast` runs `-m "not slow"`.
- `needs_data`: every item with a skipif whose reason mentions VAE_DATA_DIR (the files' own
  `needs_data` skipifs), applied here at collection time. Tests that skip from inside a fixture or the
  body are not seen.
- `parity`: every item of parity_tests/ (parity_tests/conftest.py applies it, with `needs_data` there).
"""

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def _needs_data(item) -> bool:
    """A skipif on the item (function, class or module) whose reason mentions VAE_DATA_DIR."""
    return any("VAE_DATA_DIR" in str(m.kwargs.get("reason", "")) for m in item.iter_markers("skipif"))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.resolve().is_relative_to(_HERE) and _needs_data(item):
            item.add_marker(pytest.mark.needs_data)
