"""Reliability of the data and of the optional kernels (issue #19, items 4 and 5): the CelebA
partition file, batches larger than a split, special files in an image folder, an image damaged
mid-run, a killed data worker, a stale oneDNN library. Every case goes through the CLI and ends in
one line (an error, exit 2; or a warning, and the run goes on)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run
from vae_jax import onednn_conv, readers

TINY = ["--test-limit", "20", "--epochs", "1", "--batch-size", "50", "--no-progress", "--no-figures"]


def one_line(code, err, *words, exit_code=2, prefix="vae-jax: error: "):
    assert code == exit_code and len(err) == 1, (code, err)
    assert err[0].startswith(prefix), err
    for w in words:
        assert w in err[0], (w, err[0])
    assert "internal error" not in err[0] and "Traceback" not in err[0]
    return err[0]


def summary(work):
    return json.loads((Path(work) / "summary.json").read_text())


# ---------------------------------------------------------------------------------------- the data

SPLITS = {"0": 30, "1": 5, "2": 10}  # train, valid, test images of the tiny CelebA layout


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory):
    """A tiny CelebA layout: img_align_celeba/000001.jpg ... (small JPEGs of varied colour) and
    list_eval_partition.txt ("000001.jpg 0", the splits in the original's order)."""
    root = tmp_path_factory.mktemp("celeba") / "celeba"
    (root / readers.CELEBA_IMAGES).mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for part, n in SPLITS.items():
        for _ in range(n):
            name = f"{len(lines) + 1:06d}.jpg"
            Image.fromarray(rng.integers(0, 256, (22, 18, 3), np.uint8)).save(root / readers.CELEBA_IMAGES / name)
            lines.append(f"{name} {part}")
    (root / readers.CELEBA_PARTITION).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def celeba(celeba_root, tmp_path):
    """A copy of the tiny CelebA layout this test may damage."""
    return Path(shutil.copytree(celeba_root, tmp_path / "celeba"))


def celeba_train(data, work, *extra):
    """A tiny run on the CelebA layout; the MLP VAE (any image shape, a quick compile)."""
    return ["train", "--workdir", work, "--dataset", "celeb_a", "--data-dir", data, "--model", "vae", *TINY, *extra]


# ------------------------------------------------------------------------------- the partition file


@pytest.mark.parametrize("extra_line, where", [("000003.jpg 0", "(train) and line"), ("000003.jpg 2", "(test)")])
def test_a_partition_naming_a_file_twice_or_in_two_splits_is_refused(celeba, tmp_path, capsys, extra_line, where):
    with (celeba / readers.CELEBA_PARTITION).open("a") as f:
        f.write(extra_line + "\n")
    code, err, _ = run(celeba_train(celeba, tmp_path / "run"), capsys)
    one_line(code, err, "000003.jpg", "more than once", readers.CELEBA_PARTITION, where, "test set", "CelebA download")
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.slow
def test_a_partition_with_a_bom_and_crlf_line_ends_is_read_as_the_plain_one(celeba, tmp_path, capsys):
    partition = celeba / readers.CELEBA_PARTITION
    plain = {split: readers.celeba_files(celeba, split) for split in ("train", "valid", "test")}
    partition.write_bytes(b"\xef\xbb\xbf" + partition.read_bytes().replace(b"\n", b"\r\n"))
    assert {split: readers.celeba_files(celeba, split) for split in plain} == plain
    code, err, _ = run(celeba_train(celeba, tmp_path / "run"), capsys)
    assert code == 0 and err == [], err
    assert summary(tmp_path / "run")["steps"] == 1  # the 30 training images: one batch of 50


# ------------------------------------------------------------------------------ batch above the split


def test_a_batch_larger_than_the_split_is_one_full_data_batch(tmp_path, capsys):
    # 10**8 images of 28x28 would need far more memory than any machine has: the estimate must use
    # the batch the run makes, min(--batch-size, the split)
    args = ["train", "--workdir", tmp_path / "run", "--train-limit", "100", *TINY, "--batch-size", str(10**8)]
    code, err, _ = run(args, capsys)
    assert code == 0 and err == [], err
    s = summary(tmp_path / "run")
    assert s["steps"] == 1 and s["epochs"] == 1, s
    assert s["config"]["batch_size"] == 10**8


# ------------------------------------------------------------------------ special files in a folder


def test_special_files_named_as_images_are_skipped_with_one_warning(tmp_path, capsys):
    for split in ("train", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(tmp_path / "data" / split / f"{i}.png")
    os.mkfifo(tmp_path / "data" / "train" / "00.png")  # would block a reader forever
    (tmp_path / "data" / "train" / "01.jpg").mkdir()
    args = ["train", "--workdir", tmp_path / "run", "--dataset", "image_folder", "--data-dir", tmp_path / "data"]
    code, err, _ = run([*args, "--model", "vae", *TINY, "--batch-size", "4"], capsys)
    one_line(
        code, err, "skipped 2 entries", "e.g. 00.png", "not a regular file", exit_code=0, prefix="vae-jax: warning: "
    )
    assert summary(tmp_path / "run")["steps"] == 1  # the 4 regular images


# ------------------------------------------------------------------------------- damaged mid-run


@pytest.mark.slow
def test_a_damaged_celeba_image_names_the_kept_checkpoint_and_the_command_that_continues(celeba, tmp_path, capsys):
    work = tmp_path / "run"
    assert run(celeba_train(celeba, work, "--batch-size", "10", "--data-mode", "stream"), capsys)[0] == 0  # 3 steps
    image = celeba / readers.CELEBA_IMAGES / "000007.jpg"  # a training image
    intact = image.read_bytes()
    image.write_bytes(intact[:200])  # cut short, as by a failed copy
    code, err, _ = run(["train", "--workdir", work, "--resume", "--epochs", "2"], capsys)
    line = one_line(code, err, "cannot read image", "000007.jpg", "CelebA download", "removing it does not help")
    assert "remove or replace" not in line
    command = f"vae-jax train --workdir {work} --resume"
    assert f"`{command}` (the checkpoint of step 3 is kept)" in line
    assert (work / "checkpoints" / "3").is_dir()
    image.write_bytes(intact)  # the fix the line names, then its command
    assert run([*command.split()[1:], "--epochs", "2"], capsys)[0] == 0
    assert summary(work)["steps"] == 6


def _console():
    exe = Path(sys.executable).with_name("vae-jax")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "vae_jax.cli"]


def _workers_of(pid: int) -> list[int]:
    """The multiprocessing (spawned) children of process `pid`: Grain's workers."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat, cmdline = (entry / "stat").read_text(), (entry / "cmdline").read_bytes()
        except (OSError, NotADirectoryError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_a_killed_data_worker_is_one_line_naming_the_kept_checkpoint(celeba, tmp_path):
    work = tmp_path / "run"
    # batches of 1: each epoch has 30 steps, so a worker killed after the second step's checkpoint
    # still has batches to read (Grain's workers hold one batch ahead)
    args = celeba_train(celeba, work, "--epochs", "100", "--batch-size", "1", "--checkpoint-every", "1")
    args += ["--data-mode", "stream", "--data-workers", "2", "--no-tensorboard"]
    p = subprocess.Popen([*_console(), *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        killed, deadline = None, time.monotonic() + 300
        while killed is None and p.poll() is None and time.monotonic() < deadline:
            workers = _workers_of(p.pid)
            if workers and max(_steps(work), default=0) >= 2:  # inside epoch 1, checkpoints kept
                os.kill(workers[0], signal.SIGKILL)  # as the out-of-memory killer would
                killed = workers[0]
            time.sleep(0.05)
        _, err = p.communicate(timeout=300)
    finally:
        p.kill()
    assert killed, "no data worker to kill while the run trained"
    err = err.strip().splitlines()
    line = one_line(p.returncode, err, "a data worker process died", "SIGKILL", "--data-workers")
    kept = max(_steps(work))
    assert f"`vae-jax train --workdir {work} --resume` (the checkpoint of step {kept} is kept)" in line


def _steps(work) -> list[int]:
    folder = Path(work) / "checkpoints"
    return [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []


# --------------------------------------------------------------------------------- oneDNN library


def _fault(kind, tmp_path) -> tuple[str, str]:
    """(VAE_ONEDNN_CONV_LIB, a word of the warning) for a library that is missing, not a library,
    or a stale build (a real shared library without the expected symbols)."""
    import _ctypes

    if kind == "missing":
        return str(tmp_path / "libvae_onednn_conv.so"), "is missing"
    if kind == "garbage":
        (tmp_path / "garbage.so").write_bytes(b"not an ELF file\n" * 64)
        return str(tmp_path / "garbage.so"), "cannot be loaded"
    return _ctypes.__file__, "is stale"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["stale", "garbage", "missing"])
def test_an_unusable_onednn_library_is_one_warning_and_the_xla_forms(kind, tmp_path, capsys, monkeypatch):
    path, word = _fault(kind, tmp_path)
    monkeypatch.setenv(onednn_conv.LIB_ENV, path)
    for name, fresh in (("_lib", None), ("_failure", None), ("_warned", False)):  # a new process's state
        monkeypatch.setattr(onednn_conv, name, fresh)
    args = ["train", "--workdir", tmp_path / "run", "--model", "conv_vae28", "--train-limit", "100", *TINY]
    code, err, _ = run(args, capsys)  # 6 conv layers: the library is asked for each, warned about once
    one_line(
        code,
        err,
        path,
        word,
        "`make onednn`",
        "pip install -e .",
        "XLA",
        exit_code=0,
        prefix="vae-jax: warning: ",
    )
    assert summary(tmp_path / "run")["conv_form"] == "xla"
    assert not onednn_conv.available()  # and no second warning
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_the_conv_form_that_ran_is_in_the_summary(tmp_path, capsys):
    args = ["train", "--workdir", tmp_path / "run", "--model", "conv_vae28", "--train-limit", "100", *TINY]
    code, err, _ = run(args, capsys)
    assert code == 0 and err == [], err
    assert summary(tmp_path / "run")["conv_form"] == ("onednn" if onednn_conv.available() else "xla")
