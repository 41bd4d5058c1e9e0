"""Reliability, round two: one writer per run, nothing written through a link or over the user's
files, interrupted outputs leave the old state, every failure of the machine is one line, and
what would fail late is refused before the first step. Every case goes through the CLI."""

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import TINY, one_line, run, snapshot, tensorboard_scalars
from vae_jax import checkpoints, cli, evaluate, files

pytestmark = pytest.mark.slow  # end-to-end runs: `make test-fast` leaves this module out

DATA = os.environ.get("VAE_DATA_DIR")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(["train", "--workdir", str(work), *TINY, "--no-figures"]) == 0
    return work


def copy_run(trained, tmp_path):
    import shutil

    shutil.copytree(trained, tmp_path / "run", symlinks=True)
    return tmp_path / "run"


# ------------------------------------------------------------------------------- one writer per run


def test_a_second_writer_is_refused_naming_the_first(tmp_path, capsys):
    work = tmp_path / "run"
    work.mkdir()
    fd = os.open(work, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running `vae-jax train` holds it
    try:
        line = one_line(*run(["train", "--workdir", work, *TINY], capsys)[:2], "in use by another vae-jax process")
        assert f"pid {os.getpid()}" in line
        assert not any(work.iterdir())
    finally:
        os.close(fd)
    assert run(["train", "--workdir", work, *TINY, "--no-figures"], capsys)[0] == 0  # released: it runs


def test_two_writers_started_together_leave_one_consistent_run(tmp_path):
    work = tmp_path / "run"
    exe = Path(sys.executable).with_name("vae-jax")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vae_jax.cli"]
    procs = [
        subprocess.Popen(
            [*cmd, "train", "--workdir", str(work), *TINY, "--epochs", "2", "--no-figures", "--seed", str(seed)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    results = []
    for p in procs:
        with p:  # closes the pipe
            _, err = p.communicate(timeout=600)
            results.append((p.returncode, err))
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2).strip().splitlines()
    assert len(loser) == 1 and ("in use by another" in loser[0] or "already holds a run" in loser[0]), loser
    winner_seed = json.loads((work / "config.json").read_text())["seed"]
    assert winner_seed in (1, 2)
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_a_running_writer_does_not_block_readers(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path)
    fd = os.open(work, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a writer is running: export, eval and plot still read the run
    try:
        assert run(["export", "--workdir", work, "--out", tmp_path / "m.pt"], capsys)[0] == 0
    finally:
        os.close(fd)


# -------------------------------------------------------------- nothing written through links or over files


def test_a_fresh_run_refuses_a_folder_with_the_users_files(tmp_path, capsys):
    work = tmp_path / "mine"
    work.mkdir()
    (work / "summary.json").write_text("my own summary")
    (work / "figures").mkdir()
    (work / "figures" / "plot.png").write_bytes(b"mine")
    before = snapshot(tmp_path)
    one_line(*run(["train", "--workdir", work, *TINY], capsys)[:2], "already holds files", "nothing was changed")
    assert snapshot(tmp_path) == before


def test_links_in_a_resumed_run_are_replaced_never_written_through(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("the user's file")
    (work / "summary.json").unlink()
    (work / "summary.json").symlink_to(outside)
    metrics = (work / "metrics.jsonl").read_text()
    (work / "metrics.jsonl").unlink()
    (work / "metrics.jsonl").symlink_to(tmp_path / "nowhere.jsonl")  # dangling
    assert run(["train", "--workdir", work, *TINY, "--epochs", "2", "--no-figures", "--resume"], capsys)[0] == 0
    assert outside.read_text() == "the user's file" and not (tmp_path / "nowhere.jsonl").exists()
    assert not (work / "summary.json").is_symlink() and not (work / "metrics.jsonl").is_symlink()
    # epoch 1's row was only behind the dangling link: recomputed from the checkpoint that ends epoch 1
    rows = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["restored_from_step"] == 2
    assert json.loads(metrics.splitlines()[0])["epoch"] == 1


def test_export_through_a_dangling_link_is_refused(trained, tmp_path, capsys):
    out = tmp_path / "model.pt"
    out.symlink_to(tmp_path / "target.pt")
    one_line(*run(["export", "--workdir", trained, "--out", out], capsys)[:2], "already exists")
    assert not (tmp_path / "target.pt").exists() and out.is_symlink()


def test_a_full_disk_during_export_leaves_nothing_and_the_retry_works(trained, tmp_path, capsys, monkeypatch):
    out = tmp_path / "model.pt"
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    one_line(*run(["export", "--workdir", trained, "--out", out], capsys)[:2], "no space left on the device")
    assert not os.path.lexists(out) and sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    assert run(["export", "--workdir", trained, "--out", out], capsys)[0] == 0
    import torch

    assert "decoder_fc1.bias" in torch.load(out, weights_only=True)  # a whole, loadable state_dict


def test_an_interrupted_plot_leaves_nothing_and_the_retry_works(trained, tmp_path, capsys, monkeypatch):
    out = tmp_path / "plots"
    real = evaluate.make_figures

    def interrupted(model, test_ds, history, outdir, **kw):
        (Path(outdir) / "reconstruction.png").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "make_figures", interrupted)
    code, err, _ = run(["plot", "--workdir", trained, "--out", out], capsys)
    one_line(code, err, "interrupted", "nothing was written", exit_code=130)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setattr(evaluate, "make_figures", real)
    assert run(["plot", "--workdir", trained, "--out", out], capsys)[0] == 0
    first = sorted(p.name for p in out.iterdir())
    assert len(first) >= 6
    one_line(*run(["plot", "--workdir", trained, "--out", out], capsys)[:2], "already exists")
    assert run(["plot", "--workdir", trained, "--out", out, "--force"], capsys)[0] == 0  # redrawn in place
    assert sorted(p.name for p in out.iterdir()) == first
    assert [p.name for p in tmp_path.iterdir()] == ["plots"]  # no temporary folder left


def test_eval_prints_its_result_even_when_it_cannot_be_written(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only")))
    code, err, out = run(
        [
            "eval",
            "--workdir",
            trained,
            "--iwae-k",
            "3",
            "--test-limit",
            "10",
            "--no-progress",
            "--json",
            "--out",
            tmp_path / "e.json",
        ],
        capsys,
    )
    one_line(code, err, "read-only")
    result = json.loads(out.strip().splitlines()[-1])
    assert result["num_test"] == 10 and np.isfinite(result["iwae_nll"]) and np.isfinite(result["test_loss"])
    assert {"test_loss", "test_recon", "test_kl"} <= result.keys()
    assert not (tmp_path / "e.json").exists()


# --------------------------------------------------------------------------- failures of the machine


def test_a_full_disk_while_checkpointing_is_one_line(tmp_path, capsys, monkeypatch):
    def full(self, step, state):  # orbax wraps the OSError in its own exception
        raise ValueError("Error writing checkpoint: OSError: [Errno 28] No space left on device: 'ocdbt'")

    monkeypatch.setattr(checkpoints.RunDir, "save", full)
    one_line(
        *run(["train", "--workdir", tmp_path / "run", *TINY, "--no-figures"], capsys)[:2],
        "no space left on the device",
        "free some space",
    )


def test_a_name_too_long_is_one_line(tmp_path, capsys):
    work = tmp_path / ("x" * 300) / "run"
    one_line(*run(["train", "--workdir", work, *TINY], capsys)[:2], "too long")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--seed", str(2**64)], "--seed must be an integer in 0 .. 2**63-1"),
        (["--lr", "1e39"], "float32 can hold"),
        (["--latent-dim", "100000000"], "out of memory"),
        (["--train-k", "10000000"], "lower --batch-size or --train-k"),
    ],
)
def test_numbers_out_of_range_are_one_line_before_anything(tmp_path, capsys, args, words):
    one_line(*run(["train", "--workdir", tmp_path / "run", *TINY, *args], capsys)[:2], words)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_no_such_backend_is_one_line(tmp_path):
    exe = Path(sys.executable).with_name("vae-jax")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vae_jax.cli"]
    r = subprocess.run(
        [*cmd, "train", "--workdir", str(tmp_path / "run"), *TINY],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cuda"),
        timeout=300,
    )
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "JAX_PLATFORMS=cuda: no such backend" in err[0], r.stderr


def test_damaged_numbers_in_config_json_are_one_line(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path)
    cfg = json.loads((work / "config.json").read_text())
    (work / "config.json").write_text(
        json.dumps(cfg).replace(f'"latent_dim": {json.dumps(cfg["latent_dim"])}', '"latent_dim": 1e400')
    )
    one_line(
        *run(["export", "--workdir", work, "--out", tmp_path / "m.pt"], capsys)[:2],
        "'latent_dim' is Infinity, not an integer",
        "restore",
    )


# ----------------------------------------------------------------------------------- bad image files


def _folder(tmp_path, bad_name, bad_writer):
    for split in ("train", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(tmp_path / "data" / split / f"{i}.png")
    bad_writer(tmp_path / "data" / "train" / bad_name)
    return [
        "train",
        "--workdir",
        tmp_path / "run",
        "--dataset",
        "image_folder",
        "--data-dir",
        tmp_path / "data",
        "--model",
        "celeba_vae",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--no-figures",
        "--no-progress",
        "--data-mode",
        "memory",
    ]


def test_a_16_bit_png_is_refused_not_clipped(tmp_path, capsys):
    args = _folder(tmp_path, "00.png", lambda p: Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(p))
    one_line(*run(args, capsys)[:2], "00.png", "not 8 bits per channel", "convert it")


def test_a_decompression_bomb_is_one_line(tmp_path, capsys):
    args = _folder(tmp_path, "00.png", lambda p: Image.new("1", (20000, 20000)).save(p))
    one_line(*run(args, capsys)[:2], "cannot read image", "00.png", "remove or replace")


def test_a_fifo_named_png_is_skipped_not_read(tmp_path, capsys):
    args = _folder(tmp_path, "00.png", os.mkfifo)
    assert run(args, capsys)[0] == 0  # would block forever if opened


@pytest.mark.skipif(
    not DATA or not (Path(DATA) / "mnist").is_dir(), reason="VAE_DATA_DIR not set: real MNIST files absent"
)
def test_mnist_files_given_as_fashion_mnist_are_refused(tmp_path, capsys):
    one_line(
        *run(
            [
                "train",
                "--workdir",
                tmp_path / "run",
                "--dataset",
                "fashion_mnist",
                "--data-dir",
                Path(DATA) / "mnist",
                *TINY,
            ],
            capsys,
        )[:2],
        "is the original mnist file, not fashion_mnist",
        "--dataset mnist",
    )


# ------------------------------------------------------------------------- fail early, recover


@pytest.mark.parametrize(
    "args, words",
    [
        (["--latent-dim", "1"], "--latent-dim 1: the latent figures"),
        (["--test-limit", "1"], "at least 2 test images"),
    ],
)
def test_figures_that_would_fail_are_refused_before_training(tmp_path, capsys, args, words):
    one_line(*run(["train", "--workdir", tmp_path / "run", *TINY, *args], capsys)[:2], words, "--no-figures")
    assert not (tmp_path / "run").exists()  # the folder the run made is removed again


def test_a_diverged_run_restarts_or_resumes_with_a_lower_lr(tmp_path, capsys):
    work = tmp_path / "run"
    line = one_line(
        *run(["train", "--workdir", work, *TINY, "--lr", "1e30", "--no-figures"], capsys)[:2],
        "non-finite",
        "--restart",
        exit_code=3,
    )
    assert "no checkpoint" in line
    one_line(*run(["train", "--workdir", work, *TINY, "--no-figures"], capsys)[:2], "already holds a run")
    code, err, _ = run(["train", "--workdir", work, *TINY, "--no-figures", "--restart"], capsys)
    assert code == 0, err
    rows = (work / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["epoch"] == 1
    # a later divergence: resume from the last good checkpoint with a lower --lr
    assert (
        run(["train", "--workdir", work, *TINY, "--epochs", "2", "--lr", "5e-4", "--no-figures", "--resume"], capsys)[0]
        == 0
    )
    saved = json.loads((work / "config.json").read_text())  # the record says what ran, part by part
    assert saved["lr"] == 5e-4 and [p["options"]["lr"] for p in saved["parts"]] == [1e-3, 5e-4]


def test_restart_never_deletes_what_vae_jax_did_not_write(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path)
    (work / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    one_line(*run(["train", "--workdir", work, *TINY, "--restart"], capsys)[:2], "notes.txt", "nothing was deleted")
    assert snapshot(tmp_path) == before


def test_interrupted_train_names_the_kept_checkpoint(trained, tmp_path, capsys, monkeypatch):
    from vae_jax import train

    work = copy_run(trained, tmp_path)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train_part", interrupted)
    code, err, _ = run(["train", "--workdir", work, *TINY, "--epochs", "3", "--no-figures", "--resume"], capsys)
    one_line(code, err, "interrupted", "checkpoint of step 2", "--resume", exit_code=130)


def test_sigint_of_eval_says_nothing_was_written(trained, tmp_path):
    exe = Path(sys.executable).with_name("vae-jax")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vae_jax.cli"]
    import time

    with subprocess.Popen(
        [
            *cmd,
            "eval",
            "--workdir",
            str(trained),
            "--iwae-k",
            "10000000",
            "--no-progress",
            "--out",
            str(tmp_path / "e.json"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    ) as p:  # closes the pipe
        time.sleep(8)  # inside the importance sampling
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    err = err.strip().splitlines()
    assert p.returncode == 130 and err == [
        "vae-jax: interrupted; nothing was written (outputs appear only when complete)"
    ], err
    assert not (tmp_path / "e.json").exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 600 KB tmpfs: a real full disk (and, remounted, a real read-only one). Needs root."""
    disk = tmp_path / "small"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()[:100]}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_real_full_disk_and_a_real_read_only_disk_are_one_line(small_disk, trained):
    exe = Path(sys.executable).with_name("vae-jax")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vae_jax.cli"]
    r = subprocess.run(
        [*cmd, "train", "--workdir", str(small_disk / "run"), *TINY, "--epochs", "2", "--no-figures"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr[-3000:]  # orbax's thread tracebacks held back
    assert "checkpoint 2" in err[0] and "no space left on the device" in err[0], err
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    r = subprocess.run(
        [*cmd, "export", "--workdir", str(trained), "--out", str(small_disk / "m.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "read-only" in err[0], r.stderr[-3000:]


FIELDS = [
    "model",
    "latent_dim",
    "hidden_dim",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "recon",
    "beta",
    "image_shape",
    "train_k",
    "devices",
    "dataset",
    "binarize",
    "kl_anneal_epochs",
    "max_steps",
]


def _values():
    from hypothesis import strategies as st

    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=True),
        st.text(max_size=6),
        st.lists(st.integers(-3, 3), max_size=3),
        st.just(1e400),
    )


def test_any_damaged_config_field_is_one_line_or_works(trained, tmp_path_factory):
    """Property: whatever one field of config.json holds, export succeeds or ends with one line, exit 2."""
    import contextlib
    import io
    import shutil

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(field=st.sampled_from(FIELDS), value=_values())
    def check(field, value):
        tmp = tmp_path_factory.mktemp("damaged")
        work = tmp / "run"
        shutil.copytree(trained, work)
        cfg = json.loads((work / "config.json").read_text())
        cfg[field] = value
        (work / "config.json").write_text(json.dumps(cfg))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli.main(["export", "--workdir", str(work), "--out", str(tmp / "m.pt")])
        lines = err.getvalue().strip().splitlines()
        assert code == 0 or (code == 2 and len(lines) == 1 and lines[0].startswith("vae-jax: error: ")), (
            field,
            value,
            code,
            lines,
        )

    check()


# ------------------------------------------------------------- round three: only what vae-jax wrote goes


@pytest.fixture
def plotted(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path)
    assert run(["plot", "--workdir", work], capsys)[0] == 0
    return work


def test_plot_force_onto_a_run_directory_is_one_line_and_deletes_nothing(plotted, tmp_path, capsys):
    before = snapshot(tmp_path)
    for out in (plotted, tmp_path):  # the run itself, and a folder above it
        one_line(*run(["plot", "--workdir", plotted, "--out", out, "--force"], capsys)[:2], "run directory")
    assert snapshot(tmp_path) == before


def test_plot_force_keeps_a_folder_with_the_users_files(plotted, tmp_path, capsys):
    figs = tmp_path / "figs"
    figs.mkdir()
    (figs / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    one_line(*run(["plot", "--workdir", plotted, "--out", figs, "--force"], capsys)[:2], "notes.txt", "nothing was")
    (plotted / "plots" / "notes.txt").write_text("mine too")  # beside vae-jax's own figures
    one_line(*run(["plot", "--workdir", plotted, "--force"], capsys)[:2], "notes.txt", "move it away")
    assert (plotted / "plots" / "notes.txt").read_text() == "mine too"
    assert {k: v for k, v in snapshot(tmp_path).items() if k != "run/plots/notes.txt"} == before


def test_plot_force_replaces_its_own_figures_with_the_folders_mode(plotted, capsys):
    out = plotted / "plots"
    mode = os.stat(plotted / "checkpoints").st_mode & 0o777  # as mkdir makes a folder here
    assert run(["plot", "--workdir", plotted, "--force"], capsys)[0] == 0
    assert os.stat(out).st_mode & 0o777 == mode
    assert (out / files.MANIFEST).is_file() and "samples.png" in (out / files.MANIFEST).read_text()


def test_plot_into_a_run_being_trained_waits_for_nothing_and_deletes_nothing(plotted, tmp_path, capsys):
    fd = os.open(plotted, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a `vae-jax train` of this run holds its writer lock
    try:
        before = snapshot(tmp_path)
        one_line(*run(["plot", "--workdir", plotted, "--force"], capsys)[:2], "in use by another vae-jax process")
        assert snapshot(tmp_path) == before
        assert run(["plot", "--workdir", plotted, "--out", tmp_path / "elsewhere"], capsys)[0] == 0  # a reader
    finally:
        os.close(fd)


def test_restart_keeps_the_users_file_inside_a_folder_vae_jax_writes(plotted, tmp_path, capsys):
    (plotted / "figures").mkdir(exist_ok=True)
    (plotted / "figures" / "notes.txt").write_text("mine")
    saved = json.loads((plotted / "config.json").read_text())
    (plotted / "config.json").write_text(json.dumps(dict(saved, figures=True)))  # a run that draws its figures
    before = snapshot(tmp_path)
    one_line(*run(["train", "--workdir", plotted, *TINY, "--restart"], capsys)[:2], "figures/notes.txt")
    one_line(*run(["train", "--workdir", plotted, *TINY, "--epochs", "2", "--resume"], capsys)[:2], "notes.txt")
    assert snapshot(tmp_path) == before  # refused before training: nothing trained, nothing replaced


def test_restart_removes_exactly_what_the_run_wrote(plotted, capsys):
    (plotted / "eval_k5_seed0.json").write_text("{}")
    assert run(["train", "--workdir", plotted, *TINY, "--no-figures", "--restart"], capsys)[0] == 0
    assert sorted(p.name for p in plotted.iterdir() if not p.name.startswith(".")) == [
        "checkpoints",
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "tensorboard",
    ]


# --------------------------------------------------------------------------- the record says what ran


def test_options_of_a_resume_are_the_runs_from_then_on(tmp_path, capsys):
    work = tmp_path / "run"
    assert run(["train", "--workdir", work, *TINY, "--no-figures"], capsys)[0] == 0
    args = ["train", "--workdir", work, "--no-progress", "--no-figures", "--resume"]
    assert run([*args, "--epochs", "2", "--lr", "1e-5"], capsys)[0] == 0
    assert run([*args, "--epochs", "3"], capsys)[0] == 0  # a plain resume keeps the lower --lr
    saved = json.loads((work / "config.json").read_text())
    summary = json.loads((work / "summary.json").read_text())
    assert saved["lr"] == summary["config"]["lr"] == 1e-5 and saved["epochs"] == summary["config"]["epochs"] == 3
    parts = [(p["from_step"], p["resumed"], p["options"]["lr"], p["options"]["epochs"]) for p in saved["parts"]]
    assert parts == [(0, False, 1e-3, 1), (2, True, 1e-5, 2), (4, True, 1e-5, 3)]
    assert summary["parts"] == saved["parts"]


# ----------------------------------------------------------------------------------------- quiet logs


def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path, capsys):
    args = [a for a in TINY if a != "--no-progress"]
    code, err, out = run(["train", "--workdir", tmp_path / "run", *args, "--no-figures", "--iwae-k", "2"], capsys)
    assert code == 0 and err == [], err  # captured stderr is no terminal: the epoch line only, on stdout
    assert "Epoch 1/1" in out and "\r" not in out


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path, capsys):
    one_line(*run(["train", "--workdir", tmp_path / "a" / "run", *TINY, "--dataset", "mnist"], capsys)[:2])
    assert not (tmp_path / "a" / "run").exists()
    mine = tmp_path / "mine"
    mine.mkdir()  # a folder the user made stays
    one_line(*run(["train", "--workdir", mine, *TINY, "--dataset", "mnist"], capsys)[:2])
    assert mine.is_dir()


# ------------------------------------------------------------------------------- eval, export, plot


def test_eval_prints_a_table_or_json_of_a_chosen_checkpoint(tmp_path, capsys):
    work = tmp_path / "run"
    assert run(["train", "--workdir", work, *TINY, "--epochs", "2", "--no-figures"], capsys)[0] == 0
    code, err, out = run(["eval", "--workdir", work, "--iwae-k", "3", "--out", tmp_path / "a.json"], capsys)
    assert code == 0 and err == [], err
    assert "test loss (ELBO)" in out and "NLL (k=3)" in out and "{" not in out  # a table for a person
    latest = json.loads((tmp_path / "a.json").read_text())
    args = ["eval", "--workdir", work, "--iwae-k", "3", "--json", "--step", "2", "--out", tmp_path / "b.json"]
    code, err, out = run(args, capsys)
    first = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and first["step"] == 2 and first["test_loss"] != latest["test_loss"]  # epoch 1's weights
    code, err, _ = run(["eval", "--workdir", work, "--step", "3", "--out", tmp_path / "c.json"], capsys)
    one_line(code, err, "--step 3", "2, 4")  # the checkpoints there are named
    assert not (tmp_path / "c.json").exists()


def test_export_writes_the_sizes_that_import_reads(trained, tmp_path, capsys):
    config = json.loads((trained / "config.json").read_text())
    assert config["latent_dim"] == 20 and config["hidden_dim"] == 400  # the sizes used, not null
    code, err, _ = run(["export", "--workdir", trained, "--out", tmp_path / "m.pt"], capsys)
    assert code == 0, err
    sizes = json.loads((tmp_path / "m.json").read_text())
    assert (sizes["model"], sizes["latent_dim"], sizes["hidden_dim"]) == ("vae", 20, 400)
    from vae_jax import torch_import

    assert torch_import.read_pt(tmp_path / "m.pt")[1] == {"model": "vae", "latent_dim": 20, "hidden_dim": 400}
    one_line(*run(["export", "--workdir", trained, "--out", tmp_path / "m.pt"], capsys)[:2], "already exists")


# ---------------------------------------------------------------------------------- what the console says


def test_the_first_line_comes_before_jax_is_loaded(tmp_path):
    script = (
        "import sys\n"
        "first = []\n"
        "class Out:\n"
        "    def write(self, s):\n"
        "        if s.strip() and not first:\n"
        "            first.append(('jax' in sys.modules, s.strip()))\n"
        "        return sys.__stdout__.write(s)\n"
        "    def flush(self):\n"
        "        sys.__stdout__.flush()\n"
        "sys.stdout = Out()\n"
        "from vae_jax import cli\n"
        f"code = cli.main(['train', '--workdir', {str(tmp_path / 'run')!r}, '--max-steps', '1', '--no-figures',"
        " '--train-limit', '100', '--test-limit', '20', '--batch-size', '50', '--no-progress'])\n"
        "sys.stdout = sys.__stdout__\n"
        "print(repr((code, first[0])))\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    code, (jax_loaded, line) = eval(p.stdout.strip().splitlines()[-1])
    assert code == 0 and not jax_loaded, (p.stdout, p.stderr)
    assert line.startswith("training vae on digits in") and "loading JAX" in line


def test_a_max_steps_ending_says_where_it_stopped_and_records_it(tmp_path, capsys):
    work = tmp_path / "run"
    code, err, out = run(
        ["train", "--workdir", work, *TINY, "--epochs", "3", "--max-steps", "3", "--no-figures"], capsys
    )
    assert code == 0, err
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("first step done"))
    assert first < next(i for i, line in enumerate(lines) if line.startswith("Epoch 1/3"))  # before epoch 1 ends
    assert "done: 3 steps (1 epochs and 1 steps of epoch 2)" in lines[-1]
    rows = checkpoints.read_metrics(work)
    assert [(r["epoch"], r.get("partial_epoch", False), r.get("step")) for r in rows] == [
        (1, False, None),
        (2, True, 3),
    ]
    assert [s for s, _ in tensorboard_scalars(work / "tensorboard")["test/loss"]] == [2, 3]
    args = ["train", "--workdir", work, "--resume", "--no-progress", "--max-steps", "4"]
    assert run(args, capsys)[0] == 0
    assert [(r["epoch"], r.get("partial_epoch", False)) for r in checkpoints.read_metrics(work)] == [
        (1, False),
        (2, False),
    ]
