"""Reliability of a training run: a non-finite loss, a SIGKILL in the middle of an epoch, a SIGKILL
while a checkpoint is being written. After each, the last good checkpoint is intact (export works)
and `vae-jax train --resume` with the same arguments ends bit-identical to an uninterrupted run.

The runs are tiny (200 digits, 4 steps of 64 per epoch, 3 epochs). The mid-epoch kill runs the CLI
from a small driver (`_SLOW_STEPS`) that sleeps after each batch the trainer takes, so that the process
is reliably inside epoch 2 when it is killed; the package itself has no test hook.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import snapshot
from vae_jax import cli, convert, train

pytestmark = pytest.mark.slow  # end-to-end runs: `make test-fast` leaves this module out

ARGS = [
    "--train-limit",
    "200",
    "--test-limit",
    "50",
    "--batch-size",
    "64",
    "--epochs",
    "3",
    "--seed",
    "0",
    "--no-figures",
    "--no-progress",
]
STEPS_PER_EPOCH = 4  # 200 images by 64: 64, 64, 64, 8


def train_args(workdir, *extra):
    return ["train", "--workdir", str(workdir), *ARGS, *extra]


def metrics(workdir):
    """metrics.jsonl without the wall-clock field."""
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in ("train_time_s", "test_time_s")} for r in rows]


def params(workdir):
    model, _, _ = train.restore_run(workdir)
    return convert.to_numpy_state_dict(model)


def assert_same_run(workdir, reference):
    assert metrics(workdir) == metrics(reference)
    got, want = params(workdir), params(reference)
    assert got.keys() == want.keys()
    for k in want:
        assert np.array_equal(got[k], want[k]), k


def env(**extra):
    return dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"), **extra)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 3-epoch run every interrupted run must reproduce exactly."""
    work = tmp_path_factory.mktemp("reference") / "run"
    assert cli.main(train_args(work)) == 0
    return work


def export_ok(workdir, out):
    before = snapshot(workdir)
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert snapshot(workdir) == before  # export only reads the run


# ------------------------------------------------------------------------------------ non-finite loss


def test_nonfinite_loss_names_epoch_and_step_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch, reference):
    """The 6th step (epoch 2, step 2) diverges: its loss and every float in the new state become NaN."""
    work = tmp_path / "run"
    poison_at = STEPS_PER_EPOCH + 1  # 0-based global step
    original = train.Trainer._train_step

    def diverging_step(self, state, *args):
        new, m = original(self, state, *args)
        bad = state["step"] == poison_at
        nan = lambda a: jnp.where(bad, jnp.nan, a) if jnp.issubdtype(a.dtype, jnp.floating) else a
        return jax.tree.map(nan, new), dict(m, loss=nan(m["loss"]))

    monkeypatch.setattr(train.Trainer, "_train_step", diverging_step)
    capsys.readouterr()
    code = cli.main(train_args(work))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("vae-jax: error: non-finite training loss at epoch 2, step 2 of 4"), lines[0]
    assert "lower --lr" in lines[0] and "last good checkpoint (step 4)" in lines[0], lines[0]
    assert [r["epoch"] for r in metrics(work)] == [1]
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["4"]  # named by optimizer step
    assert metrics(work) == metrics(reference)[:1]

    monkeypatch.undo()  # the cause is gone (e.g. the data was fixed): the run is usable and resumable
    export_ok(work, tmp_path / "epoch1.pt")
    assert cli.main(train_args(work, "--resume")) == 0
    assert_same_run(work, reference)


def test_nonfinite_loss_in_the_first_epoch_says_no_checkpoint(tmp_path, capsys, monkeypatch):
    """Through the real optimizer: Adam with lr 1e30 moves every weight by ~1e30 in one step."""
    capsys.readouterr()
    code = cli.main(train_args(tmp_path / "run", "--lr", "1e30", "--epochs", "1"))
    line = capsys.readouterr().err.strip()
    assert code == 3 and "\n" not in line, line
    assert "non-finite training loss at epoch 1, step 2 of 4" in line and "no checkpoint was written" in line, line
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


# ------------------------------------------------------------------------------------------ SIGKILL


def _wait_for(predicate, proc, what, timeout=300):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


_SLOW_STEPS = """
import sys, time
from vae_jax import cli, input_pipeline
blocks = input_pipeline.Feed.blocks

def slow_blocks(self, *args, **kwargs):  # 0.5 s after each dispatch: an epoch of 4 steps takes >= 2 s
    for block in blocks(self, *args, **kwargs):
        yield block
        time.sleep(0.5)

input_pipeline.Feed.blocks = slow_blocks
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigkill_in_the_middle_of_an_epoch_then_resume(tmp_path, reference):
    work = tmp_path / "run"
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SLOW_STEPS, *train_args(work)], env=env(), stdout=log, stderr=subprocess.STDOUT
        )
        try:
            ckpt1 = work / "checkpoints" / "4"
            _wait_for(lambda: ckpt1.is_dir() and (work / "metrics.jsonl").is_file(), proc, "epoch 1's checkpoint")
            time.sleep(0.7)  # into epoch 2, whose 4 steps take >= 2 s with the driver
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert [r["epoch"] for r in metrics(work)] == [1], "not killed inside epoch 2"
    assert not (work / "checkpoints" / "8").exists() and not (work / "summary.json").exists()

    export_ok(work, tmp_path / "epoch1.pt")
    assert cli.main(train_args(work, "--resume")) == 0
    assert_same_run(work, reference)


_KILL_IN_CHECKPOINT_WRITE = """
import os, signal, sys
from orbax.checkpoint._src.path import atomicity
rename = atomicity.async_path.rename

async def killed_before_rename(src, dst, *args, **kwargs):
    # orbax has written every file of the checkpoint into <epoch>.orbax-checkpoint-tmp and is about to
    # rename it to <epoch>: the process dies here, as under a SIGKILL or a power cut.
    if os.path.basename(str(dst)) == "8":  # epoch 2 ends at step 8
        os.kill(os.getpid(), signal.SIGKILL)
    return await rename(src, dst, *args, **kwargs)

atomicity.async_path.rename = killed_before_rename
from vae_jax import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigkill_while_a_checkpoint_is_written_then_resume(tmp_path, reference):
    work = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_IN_CHECKPOINT_WRITE, *train_args(work)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    names = sorted(p.name for p in (work / "checkpoints").iterdir())
    assert names == ["4", "8.orbax-checkpoint-tmp"], names  # the complete epoch 1, the incomplete epoch 2
    assert [r["epoch"] for r in metrics(work)] == [1, 2]  # appended before the checkpoint: dropped on resume

    _model, _, _ = train.restore_run(work)  # the incomplete folder is ignored
    export_ok(work, tmp_path / "epoch1.pt")
    assert cli.main(train_args(work, "--resume")) == 0
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["12", "8"]
    assert_same_run(work, reference)
