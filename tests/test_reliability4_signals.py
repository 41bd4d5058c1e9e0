"""Reliability, round four (issue 29 items 6 and 7, issue 30 item 5): SIGINT and SIGTERM at any moment
are one line and exit 130/143, limits are refused up front, unclear lines name the problem.
Every case goes through the `vae-jax` console script."""

import json
import os
import signal
import subprocess
import time

import pytest

from tests.helpers import TINY, console, one_line, run
from vae_jax import cli, evaluate

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


# ------------------------------------------------------------------------------- the importance-sampled NLL's cost


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(["train", "--workdir", str(work), *TINY, "--no-figures"]) == 0
    return work


@pytest.mark.parametrize("k", ["1000000000", "99999999999999999999999"])
def test_an_iwae_k_past_a_day_is_refused_up_front_with_one_that_fits(trained, tmp_path, capsys, k):
    code, err, _ = run(["eval", "--workdir", trained, "--iwae-k", k, "--out", tmp_path / "e.json"], capsys)
    line = one_line(code, err, f"--iwae-k {k} would take about", "days")
    fit = int(line.split("use --iwae-k ")[1].split()[0])
    assert 1 <= fit < int(k) and not (tmp_path / "e.json").exists()
    code, err, _ = run(["train", "--workdir", tmp_path / "run", *TINY, "--no-figures", "--iwae-k", k], capsys)
    one_line(code, err, f"--iwae-k {k} would take about", "use --iwae-k")
    assert not (tmp_path / "run").exists()  # refused before the first step, and before tensorboardX


def test_eval_says_the_nll_cost_first_and_a_line_per_tenth_off_a_terminal(trained, tmp_path, capsys, monkeypatch):
    code, err, out = run(["eval", "--workdir", trained, "--iwae-k", "30", "--out", tmp_path / "a.json"], capsys)
    assert code == 0 and err == [], err
    assert out.splitlines()[0].startswith("NLL (k=30): 20 test images x 30 samples, about ") and "% done" not in out
    monkeypatch.setattr(evaluate, "PROGRESS_AFTER_SECONDS", 0)  # as for an evaluation of minutes
    args = ["eval", "--workdir", trained, "--iwae-k", "3000", "--json", "--out", tmp_path / "b.json"]
    code, err, out = run(args, capsys)
    assert code == 0 and [line.split(": ")[1].split()[0] for line in err[1:]] == [f"{t}0%" for t in range(1, 10)], err
    assert err[0].startswith("NLL (k=3000): 20 test images x 3000 samples") and json.loads(out)["iwae_k"] == 3000
