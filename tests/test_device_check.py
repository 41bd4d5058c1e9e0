"""scripts/device_check.sh on a machine without an accelerator: one line naming the problem, exit 2,
nothing written."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end runs: `make test-fast` leaves this module out

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_without_an_accelerator_is_one_line_and_exit_2(tmp_path):
    import jax

    if jax.devices()[0].platform != "cpu":
        pytest.skip("an accelerator is present: device_check.sh would run the whole check")
    env = dict(os.environ, PY=sys.executable, OUT=str(tmp_path / "out"), JAX_PLATFORMS="cpu")
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "device_check.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no accelerator" in lines[0] and "GPU" in lines[0], lines
    assert not (tmp_path / "out").exists()
