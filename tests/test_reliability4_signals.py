"""Reliability, round four (issue 29 items 6 and 7, issue 30 item 5): SIGINT and SIGTERM at any moment
are one line and exit 130/143, limits are refused up front, unclear lines name the problem.
Every case goes through the `vae-jax` console script."""

import os
import signal
import subprocess
import time

import pytest

from tests.helpers import TINY, console

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _signalled(args, sig, *, after: str, delay: float = 0.0):
    """(exit code, stderr lines) of `vae-jax args` sent `sig` `delay` seconds after the first stdout
    line holding `after`."""
    with subprocess.Popen(console(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) as p:
        line = p.stdout.readline()
        while after not in line:
            assert line, "the run ended before the signal"
            line = p.stdout.readline()
        time.sleep(delay)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
    return p.returncode, err.strip().splitlines()


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
@pytest.mark.parametrize("delay", [0.0, 1.5])
def test_a_signal_while_loading_is_one_line_and_never_advises_resume(tmp_path, sig, code, said, delay):
    work = tmp_path / "run"
    rc, err = _signalled(["train", "--workdir", work, *TINY, "--no-figures"], sig, after="loading JAX", delay=delay)
    assert rc == code and len(err) == 1 and err[0].startswith(f"vae-jax: {said}"), (rc, err)
    if not (work / "config.json").exists():  # removed as unused (or never made): start again
        assert "--resume" not in err[0] and "start again" in err[0], err


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_training_keeps_the_last_checkpoint(tmp_path, sig, code):
    work = tmp_path / "run"
    args = ["train", "--workdir", work, *TINY, "--train-limit", "400", "--epochs", "60", "--no-figures"]
    rc, err = _signalled(args, sig, after="Epoch 2/")
    assert rc == code and len(err) == 1, (rc, err)
    assert "is kept -- continue with --resume" in err[0], err
    step = int(err[0].split("checkpoint of step ")[1].split()[0])
    assert step >= 16 and (work / "checkpoints" / str(step)).is_dir(), err
    assert not (work / "summary.json").exists()  # the run stopped


# ------------------------------------------------------------------------------- limits of the machine


def _console(args, env=None, **kw):
    r = subprocess.run(console(args), capture_output=True, text=True, env={**ENV, **(env or {})}, timeout=300, **kw)
    return r.returncode, r.stderr.strip().splitlines(), r.stdout


@pytest.mark.slow
def test_a_file_size_limit_is_the_disk_line(tmp_path):
    import resource

    def limit():  # `ulimit -f 1000`: 1000 blocks of 1024 bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000 * 1024, 1000 * 1024))

    code, err, _ = _console(["train", "--workdir", tmp_path / "run", *TINY, "--no-figures"], preexec_fn=limit)
    assert code == 2 and len(err) == 1 and "internal error" not in err[0], err
    assert "ulimit -f" in err[0] and " -- " in err[0], err


def test_a_bad_matmul_precision_names_the_variable_and_its_values(tmp_path):
    code, err, _ = _console(["eval", "--workdir", tmp_path], env={"JAX_DEFAULT_MATMUL_PRECISION": "bogus"})
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("vae-jax: error: JAX_DEFAULT_MATMUL_PRECISION=bogus") and "highest" in err[0], err


@pytest.mark.parametrize("flags", ["--garbage_flag_xyz", "--xla_force_host_platform_device_count=abc"])
def test_xla_flags_xla_refuses_are_one_line_before_anything_runs(tmp_path, flags):
    code, err, _ = _console(["train", "--workdir", tmp_path / "run", *TINY], env={"XLA_FLAGS": flags})
    assert code == 2 and len(err) == 1 and err[0].startswith("vae-jax: error: XLA_FLAGS="), err
    assert flags.split("=")[0].lstrip("-") in err[0] and "unset XLA_FLAGS" in err[0], err
    assert not (tmp_path / "run").exists()
