"""Data parallelism: an epoch on 4 (forced host) CPU devices gives the metrics of 1 device."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # end-to-end runs: `make test-fast` leaves this module out

SCRIPT = r"""
import json, sys
from vae_jax import train
out = {}
for devices in (1, 4):
    cfg = train.Config(model=sys.argv[1], epochs=2, batch_size=64, train_limit=300, test_limit=100,
                       devices=devices, progress=False, figures=False, checkpoint=False)
    out[devices] = train.train_and_evaluate(cfg, sys.argv[2] + f"/d{devices}", log=lambda s: None)["final"]
print(json.dumps(out))
"""


def _run(model, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, model, str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_four_devices_match_one_device(tmp_path):
    out = _run("vae", tmp_path)
    one, four = out["1"], out["4"]
    for k in ("train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl"):
        assert abs(one[k] - four[k]) <= 1e-4 * abs(one[k]) + 1e-4, (k, one[k], four[k])


def test_too_many_devices_is_one_clear_error(tmp_path, capsys):
    from vae_jax import cli

    code = cli.main(["train", "--devices", "64", "--workdir", str(tmp_path / "w"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "xla_force_host_platform_device_count" in err[0]
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())
