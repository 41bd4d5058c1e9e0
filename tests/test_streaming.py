"""The streaming input pipeline (Grain), the original CelebA layout, --max-steps and --train-limit.

Small generated data: a CelebA-like folder of 120 synthetic 178x218 JPEGs built by
scripts/make_celeba_like.py (the script the benchmarks use for the 202,599-image folder).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vae_jax import cli, datasets, input_pipeline, readers, train

pytestmark = pytest.mark.slow  # end-to-end runs: `make test-fast` leaves this module out

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    out = tmp_path_factory.mktemp("celeba") / "celeba"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "make_celeba_like.py"),
            "--out",
            str(out),
            "--num",
            "120",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return out


def _trainer(cfg, shape):
    from flax import nnx

    return train.Trainer(train.build_model(cfg, shape, rngs=nnx.Rngs(0)), cfg)


def _epoch_batches(ds, cfg, mode, epoch=1, **kw):
    cfg = train.Config(**{**cfg.__dict__, "data_mode": mode, **kw})
    feed = input_pipeline.Feed(ds, _trainer(cfg, ds.image_shape), cfg)
    assert feed.streamed == (mode == "stream")
    order = train.epoch_order(cfg.seed, epoch, len(ds))
    return list(feed.host_batches(order, cfg.batch_size))


def test_the_split_of_the_original_layout_in_the_partition_order(celeba):
    sizes = {split: len(datasets.load_dataset("celeb_a", split, celeba)) for split in ("train", "valid", "test")}
    assert sizes == {"train": 96, "valid": 12, "test": 12}  # 120 scaled from 162,770 / 19,867 / 19,962
    files = readers.celeba_files(celeba, "test")
    assert [f.name for f in files] == [f"{i:06d}.jpg" for i in range(109, 121)]
    ds = datasets.load_dataset("celeb_a", "test", celeba)
    assert ds.image_shape == (64, 64, 3) and not ds.has_labels
    assert ds.source[0][0].dtype == np.uint8  # records stay uint8 until the step
    assert ds.images.dtype == np.float32 and ds.images.shape == (12, 64, 64, 3)


@pytest.mark.parametrize("dataset", ["digits", "celeb_a"])
def test_memory_and_stream_give_identical_batches(celeba, dataset):
    ds = datasets.load_dataset(dataset, "train", None if dataset == "digits" else celeba).take(90)
    cfg = train.Config(model="vae" if dataset == "digits" else "celeba_vae", batch_size=32, seed=3)
    memory = _epoch_batches(ds, cfg, "memory", epoch=2)
    for streamed in (
        _epoch_batches(ds, cfg, "stream", epoch=2),
        _epoch_batches(ds, cfg, "stream", epoch=2, data_workers=1),
    ):  # a Grain worker process
        assert [len(b[0]) for b in streamed] == [32, 32, 26]
        for (mx, my), (sx, sy) in zip(memory, streamed, strict=True):
            assert mx.dtype == sx.dtype and np.array_equal(mx, sx) and np.array_equal(my, sy)
    other_epoch = _epoch_batches(ds, cfg, "stream", epoch=3)
    assert not np.array_equal(other_epoch[0][0], memory[0][0])  # each epoch its own shuffle


def test_auto_mode_chooses_by_size():
    ds = datasets.load_dataset("digits", "train")
    cfg = train.Config()
    assert not input_pipeline.Feed(ds, _trainer(cfg, ds.image_shape), cfg).streamed
    small_limit = input_pipeline.MEMORY_BYTES
    try:
        input_pipeline.MEMORY_BYTES = ds.nbytes - 1
        assert input_pipeline.Feed(ds, _trainer(cfg, ds.image_shape), cfg).streamed
    finally:
        input_pipeline.MEMORY_BYTES = small_limit


def _run(work, *args):
    base = [
        "train",
        "--workdir",
        str(work),
        "--train-limit",
        "200",
        "--test-limit",
        "50",
        "--batch-size",
        "64",
        "--seed",
        "1",
        "--no-figures",
        "--no-progress",
    ]
    return cli.main(base + list(args))


def _metrics(work):
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("train_time_s", "test_time_s")} for r in rows]


def _params(work):
    from vae_jax import convert

    return convert.to_numpy_state_dict(train.restore_run(work)[0])


def test_stream_and_memory_train_the_same_run(tmp_path):
    assert _run(tmp_path / "m", "--epochs", "2", "--data-mode", "memory") == 0
    assert _run(tmp_path / "s", "--epochs", "2", "--data-mode", "stream") == 0
    for a, b in zip(_metrics(tmp_path / "m"), _metrics(tmp_path / "s"), strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-6), k


def test_max_steps_stops_inside_an_epoch_and_resumes_exactly(tmp_path, capsys):
    assert _run(tmp_path / "full", "--epochs", "2") == 0  # 4 steps per epoch: 64, 64, 64, 8
    work = tmp_path / "cut"
    assert _run(work, "--epochs", "2", "--max-steps", "6", "--data-mode", "stream") == 0
    summary = json.loads((work / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["final"]["partial_epoch"] and summary["final"]["epoch"] == 2
    assert np.isfinite(summary["final"]["test_loss"])
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["4", "6"]
    # epoch 1, and where it stopped inside epoch 2 (marked partial; the resume replaces it)
    assert [(r["epoch"], r.get("partial_epoch", False)) for r in _metrics(work)] == [(1, False), (2, True)]
    assert "stopped at step 6" in capsys.readouterr().out
    assert _run(work, "--epochs", "2", "--resume") == 0  # the rest of epoch 2, from batch 2
    assert _metrics(work) == _metrics(tmp_path / "full")
    full, cut = _params(tmp_path / "full"), _params(work)
    for k in full:
        assert np.array_equal(full[k], cut[k]), k


def test_checkpoint_every_keeps_the_run_identical(tmp_path):
    assert _run(tmp_path / "a", "--epochs", "1") == 0
    assert _run(tmp_path / "b", "--epochs", "1", "--checkpoint-every", "3") == 0
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["3", "4"]
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")


def test_train_limit_selects_images_before_decoding(celeba, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(celeba, data)
    (data / "img_align_celeba" / "000050.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # train image 50
    args = [
        "--model",
        "celeba_vae",
        "--dataset",
        "celeb_a",
        "--data-dir",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--test-limit",
        "8",
        "--no-figures",
        "--no-progress",
    ]
    assert cli.main(["train", "--workdir", str(tmp_path / "ok"), "--train-limit", "32", *args]) == 0


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no_partition", "partition file not found"),
        ("bad_line", "line 3 of"),
        ("no_test", "lists no image of split 'test'"),
        ("missing_image", "are missing from"),
        ("empty_image", "are empty files"),
    ],
)
def test_celeba_layout_errors_are_one_line_before_training(celeba, tmp_path, capsys, damage, message):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(celeba, data)
    partition = data / "list_eval_partition.txt"
    lines = partition.read_text().splitlines()
    if damage == "no_partition":
        partition.unlink()
    elif damage == "bad_line":
        partition.write_text("\n".join(lines[:2] + ["000003.jpg train"] + lines[3:]) + "\n")
    elif damage == "no_test":
        partition.write_text("\n".join(line for line in lines if not line.endswith(" 2")) + "\n")
    elif damage == "missing_image":
        (data / "img_align_celeba" / "000117.jpg").unlink()
    else:
        (data / "img_align_celeba" / "000010.jpg").write_bytes(b"")
    capsys.readouterr()
    code = cli.main(
        [
            "train",
            "--model",
            "celeba_vae",
            "--dataset",
            "celeb_a",
            "--data-dir",
            str(data),
            "--workdir",
            str(tmp_path / "w"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "w" / "config.json").exists()


def test_a_corrupt_image_found_while_streaming_is_one_line(celeba, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(celeba, data)
    (data / "img_align_celeba" / "000077.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    capsys.readouterr()
    code = cli.main(
        [
            "train",
            "--model",
            "celeba_vae",
            "--dataset",
            "celeb_a",
            "--data-dir",
            str(data),
            "--workdir",
            str(tmp_path / "w"),
            "--batch-size",
            "16",
            "--epochs",
            "1",
            "--data-mode",
            "stream",
            "--no-figures",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "cannot read image" in err[0] and "000077.jpg" in err[0] and "CelebA download" in err[0], err
