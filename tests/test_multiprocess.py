"""Multi-process training for real: 2 local `vae-jax` processes (one CPU device each, gloo
collectives over 127.0.0.1) train one run in one shared --workdir, as several hosts would."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import console, free_port

pytestmark = pytest.mark.slow  # end-to-end runs: `make test-fast` leaves this module out

DATA = os.environ.get("VAE_DATA_DIR")
needs_data = pytest.mark.skipif(
    not DATA or not (Path(DATA) / "mnist").is_dir(), reason="VAE_DATA_DIR not set: real MNIST files absent"
)
KEYS = ("train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl")


def env():
    e = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
    return dict(e, JAX_PLATFORMS="cpu")


def launch(tmp_path, args, n=2, tag="run"):
    port = free_port()
    procs = []
    for i in range(n):
        # the child writes to its own copies of the descriptors: ours are closed once it has started
        with open(tmp_path / f"{tag}{i}.out", "w") as out, open(tmp_path / f"{tag}{i}.err", "w") as err:
            procs.append(
                subprocess.Popen(
                    console(
                        [
                            *args,
                            "--coordinator-address",
                            f"127.0.0.1:{port}",
                            "--num-processes",
                            str(n),
                            "--process-id",
                            str(i),
                            "--devices",
                            str(n),
                        ]
                    ),
                    stdout=out,
                    stderr=err,
                    env=env(),
                )
            )
    return procs


def wait_all(procs, timeout=600):
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a process of the multi-process run hung")
    return codes


def metrics(work):
    return [json.loads(line) for line in (Path(work) / "metrics.jsonl").read_text().splitlines()]


def assert_close(got, want):
    assert [r["epoch"] for r in got] == [r["epoch"] for r in want]
    for g, w in zip(got, want, strict=False):
        for k in KEYS:
            assert abs(g[k] - w[k]) <= 1e-4 * abs(w[k]), (k, g[k], w[k])


def mnist_args(work, *extra):
    return [
        "train",
        "--dataset",
        "mnist",
        "--data-dir",
        DATA,
        "--train-limit",
        "512",
        "--test-limit",
        "256",
        "--batch-size",
        "64",
        "--epochs",
        "2",
        "--seed",
        "0",
        "--no-progress",
        "--workdir",
        str(work),
        *extra,
    ]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    work = tmp_path_factory.mktemp("one") / "run"
    r = subprocess.run(
        console(mnist_args(work, "--no-figures")), env=env(), capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return work


@needs_data
def test_two_processes_train_the_one_process_run(tmp_path, one_process):
    work = tmp_path / "run"
    procs = launch(tmp_path, mnist_args(work))
    assert wait_all(procs) == [0, 0], (tmp_path / "run0.err").read_text()[-2000:]
    assert_close(metrics(work), metrics(one_process))  # 2 rows: process 1 wrote none
    summary = json.loads((work / "summary.json").read_text())
    assert summary["steps"] == 16 and len(list((work / "figures").glob("*.png"))) >= 6
    assert "Epoch 2/2" in (tmp_path / "run0.out").read_text()
    assert "Epoch" not in (tmp_path / "run1.out").read_text()  # process 0 speaks for the run
    # the checkpoint written by 2 processes is read by one (eval, export, plot)
    from vae_jax import train

    model, config, shape = train.restore_run(work)
    assert json.loads((work / "config.json").read_text())["devices"] == 2 and shape == (28, 28, 1)
    assert config.devices == 1 and model.encode  # read on the one device this process has


@needs_data
def test_two_processes_stop_and_resume(tmp_path, one_process):
    work = tmp_path / "run"
    assert wait_all(launch(tmp_path, mnist_args(work, "--no-figures", "--max-steps", "11"), tag="a")) == [0, 0]
    # epoch 1, and the evaluation where it stopped inside epoch 2 (marked partial; the resume replaces it)
    assert [(r["epoch"], r.get("partial_epoch", False)) for r in metrics(work)] == [(1, False), (2, True)]
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["11", "8"]
    procs = launch(tmp_path, mnist_args(work, "--no-figures", "--resume"), tag="b")
    assert wait_all(procs) == [0, 0], (tmp_path / "b0.err").read_text()[-2000:]
    assert "resumed from step 11" in (tmp_path / "b0.out").read_text()
    assert_close(metrics(work), metrics(one_process))


def test_a_killed_process_ends_the_other_with_one_line(tmp_path):
    work = tmp_path / "run"
    args = ["train", "--epochs", "40", "--batch-size", "8", "--no-figures", "--no-progress", "--workdir", str(work)]
    procs = launch(tmp_path, args)
    try:
        deadline = time.monotonic() + 300
        # inside epoch 2's steps (188 of 8 images, ~2 s): past the start-up and epoch 1's checkpoint, so the
        # kill lands in a collective (a kill during a checkpoint's barrier ends the survivor through JAX's
        # coordination service instead: a C++ abort, see docs/scale.md)
        while not (work / "checkpoints" / "188").is_dir():
            assert all(p.poll() is None for p in procs), (tmp_path / "run0.err").read_text()[-2000:]
            assert time.monotonic() < deadline, "no epoch finished"
            time.sleep(0.05)
        time.sleep(0.5)
        procs[1].send_signal(signal.SIGKILL)
        t0 = time.monotonic()
        code = procs[0].wait(timeout=120)
        took = time.monotonic() - t0
    finally:
        for p in procs:
            p.kill()
    err = (tmp_path / "run0.err").read_text().strip().splitlines()
    assert code == 2 and took < 60, (code, took)
    assert len(err) == 1 and "another process of this multi-process run failed" in err[0], err
    assert "--resume" in err[0]


def test_half_given_multiprocess_options_are_one_error(tmp_path, capsys):
    from vae_jax import cli

    code = cli.main(["train", "--coordinator-address", "127.0.0.1:1234", "--workdir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--num-processes" in err[0], err
    assert not (tmp_path / "w").exists()
