"""Bad-input corpus: every case runs through the CLI and must end with

* exactly one line on stderr, `vae-jax: error: ...`, naming the problem and the fix,
* a non-zero exit code (2 for bad input),
* no traceback,
* every file that existed before the command unchanged, byte for byte, and no new files
  (so a failed fresh run leaves nothing that would block a retry).

Cases run in-process (`vae_jax.cli.main` with capsys) to stay fast; two run the real console
script as a subprocess to check that nothing else (logging, warnings) reaches stderr.
"""

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import snapshot
from vae_jax import cli, datasets, readers, train

TINY = [
    "--train-limit",
    "200",
    "--test-limit",
    "50",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--no-figures",
    "--no-progress",
]
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801


# ------------------------------------------------------------------------------------------ helpers


def run_cli(args, capsys):
    """(exit code, stderr) of `vae-jax args`, argparse's SystemExit included."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def assert_one_line_error(code, err, problem, fix, *, exit_code=2):
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("vae-jax: error: "), line
    assert code == exit_code, (code, line)
    for words in (problem, fix):
        for w in [words] if isinstance(words, str) else words:
            assert w in line, (w, line)
    return line


def check_case(tmp_path, capsys, args, problem, fix, *, exit_code=2):
    """Run one case; everything under tmp_path must be unchanged afterwards."""
    before = snapshot(tmp_path)
    code, err = run_cli(args, capsys)
    line = assert_one_line_error(code, err, problem, fix, exit_code=exit_code)
    assert snapshot(tmp_path) == before, "a failed command changed or added files"
    return line


def idx_bytes(array, magic=None) -> bytes:
    array = np.asarray(array, np.uint8)
    magic = (IMAGE_MAGIC if array.ndim == 3 else LABEL_MAGIC) if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def write_mnist(folder: Path, n_train=8, n_test=4):
    """The 4 original MNIST file names, gzipped, with random content."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for (images, labels), n in zip(readers._IDX_FILES.values(), (n_train, n_test), strict=False):
        (folder / f"{images}.gz").write_bytes(gzip.compress(idx_bytes(rng.integers(0, 256, (n, 28, 28)))))
        (folder / f"{labels}.gz").write_bytes(gzip.compress(idx_bytes(rng.integers(0, 10, n))))
    return folder


def amat(rows) -> bytes:
    return b"".join(b" ".join(b"%d" % v for v in r) + b"\n" for r in rows)


def write_binarized(folder: Path, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        (folder / f"binarized_mnist_{split}.amat.gz").write_bytes(gzip.compress(amat(rng.integers(0, 2, (n, 784)))))
    return folder


def write_images(folder: Path, n=3, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def train_args(tmp_path, *extra):
    return ["train", "--workdir", tmp_path / "run", *TINY, *extra]


# ------------------------------------------------------------------------------ data files (MNIST)

MNIST_IMAGES = "train-images-idx3-ubyte.gz"
MNIST_LABELS = "train-labels-idx1-ubyte.gz"


def _truncate_gz(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_gz(path):
    data = bytearray(path.read_bytes())
    data[20:60] = b"\xff" * 40
    path.write_bytes(bytes(data))


def _truncate_idx(path):  # a valid gzip stream of an IDX file that lost its last bytes
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))


def _wrong_magic(path):
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[:4] = struct.pack(">I", 0x00000804)
    path.write_bytes(gzip.compress(bytes(raw)))


def _wrong_dims(path):  # well-formed IDX, but 27x28 images
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((8, 27, 28)))))


def _labels_are_images(path):
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((8, 28, 28)))))


def _label_out_of_range(path):
    path.write_bytes(gzip.compress(idx_bytes(np.full(8, 12))))


def _count_mismatch(path):
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(7))))


def _not_gzip(path):  # an HTML error page saved under the .gz name
    path.write_bytes(b"<html><body>404 Not Found</body></html>\n")


MNIST_CASES = [
    ("truncated_gz", MNIST_IMAGES, _truncate_gz, "cannot read", "intact copy"),
    ("corrupted_gz", MNIST_IMAGES, _corrupt_gz, "cannot read", "intact copy"),
    ("html_instead_of_gz", MNIST_IMAGES, _not_gzip, "cannot read", "intact copy"),
    ("truncated_idx", MNIST_IMAGES, _truncate_idx, "IDX file truncated", "original IDX file"),
    ("wrong_magic", MNIST_IMAGES, _wrong_magic, "bad magic 00000804", "original IDX file"),
    ("wrong_image_dims", MNIST_IMAGES, _wrong_dims, "want images (n, 28, 28)", "original MNIST files"),
    ("labels_file_holds_images", MNIST_LABELS, _labels_are_images, "one label 0..9 per image", "original MNIST files"),
    ("label_out_of_range", MNIST_LABELS, _label_out_of_range, "max 12", "original MNIST files"),
    ("image_label_count_mismatch", MNIST_LABELS, _count_mismatch, "for 8 images", "original MNIST files"),
]


@pytest.mark.parametrize("name, filename, damage, problem, fix", MNIST_CASES, ids=[c[0] for c in MNIST_CASES])
def test_damaged_mnist_file(tmp_path, capsys, name, filename, damage, problem, fix):
    data = write_mnist(tmp_path / "data")
    damage(data / filename)
    line = check_case(tmp_path, capsys, train_args(tmp_path, "--dataset", "mnist", "--data-dir", data), problem, fix)
    assert filename in line


def test_mnist_file_missing(tmp_path, capsys):
    data = write_mnist(tmp_path / "data")
    (data / "t10k-labels-idx1-ubyte.gz").unlink()
    check_case(
        tmp_path,
        capsys,
        train_args(tmp_path, "--dataset", "mnist", "--data-dir", data),
        ["file not found", "t10k-labels-idx1-ubyte"],
        "--data-dir",
    )


def test_missing_data_directory_says_how_to_get_the_data(tmp_path, capsys):
    check_case(
        tmp_path,
        capsys,
        train_args(tmp_path, "--dataset", "mnist", "--data-dir", tmp_path / "nope"),
        ["data directory", "does not exist"],
        ["train-images-idx3-ubyte.gz", "https://", "--data-dir", "vae-jax prepare"],
    )


# ------------------------------------------------------------------- data files (binarized, images)


def _amat_cut_line(path):  # the last line lost its end
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-200]))


def _amat_bad_value(path):
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[10] = ord("7")
    path.write_bytes(gzip.compress(bytes(raw)))


AMAT_CASES = [
    ("truncated_amat", _amat_cut_line, "values, want 784", "original binarized MNIST"),
    ("amat_bad_value", _amat_bad_value, "bad value b'7", "original binarized MNIST"),
    ("truncated_amat_gz", _truncate_gz, "cannot read", "intact copy"),
]


@pytest.mark.parametrize("name, damage, problem, fix", AMAT_CASES, ids=[c[0] for c in AMAT_CASES])
def test_damaged_amat_file(tmp_path, capsys, name, damage, problem, fix):
    data = write_binarized(tmp_path / "data")
    damage(data / "binarized_mnist_train.amat.gz")
    line = check_case(
        tmp_path, capsys, train_args(tmp_path, "--dataset", "binarized_mnist", "--data-dir", data), problem, fix
    )
    assert "binarized_mnist_train.amat.gz" in line


@pytest.mark.slow
def test_image_folder_with_a_corrupt_image(tmp_path, capsys):
    data = write_images(tmp_path / "data" / "train")
    write_images(tmp_path / "data" / "test")
    (data / "1.png").write_bytes((data / "1.png").read_bytes()[:60])  # cut inside the PNG
    check_case(
        tmp_path,
        capsys,
        train_args(tmp_path, "--dataset", "image_folder", "--data-dir", tmp_path / "data", "--model", "celeba_vae"),
        ["cannot read image", "1.png"],
        "remove or replace the file",
    )


def test_image_folder_without_images(tmp_path, capsys):
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "train" / "notes.txt").write_text("no images here")
    check_case(
        tmp_path,
        capsys,
        train_args(tmp_path, "--dataset", "image_folder", "--data-dir", tmp_path / "data"),
        "no .png/.jpg images",
        "--data-dir",
    )


# ------------------------------------------------ values no file format can hold: NaN, Inf, range, dtype
# IDX and amat hold integers and PNG/JPEG 8-bit pixels, so NaN/Inf/out-of-range/float64 pixels can only
# come from a loader; the loader of the embedded digits is replaced to check the CLI path end to end.


@pytest.mark.parametrize(
    "bad, problem",
    [
        (np.nan, "NaN or Inf"),
        (np.inf, "NaN or Inf"),
        (255.0, "outside [0, 1]"),
        (-0.5, "outside [0, 1]"),
        ("float64", "want float32"),
        ("flat", "want float32 (N>0, H, W, C)"),
    ],
    ids=["nan", "inf", "above_1", "negative", "float64", "flat_images"],
)
def test_bad_pixel_values_from_a_loader(tmp_path, capsys, monkeypatch, bad, problem):
    original = datasets._load_digits

    def bad_digits(split):
        images, labels = original(split)
        if bad == "float64":
            return images.astype(np.float64), labels
        if bad == "flat":
            return images.reshape(len(images), -1), labels
        images = images.copy()
        images[3, 10, 10, 0] = bad
        return images, labels

    monkeypatch.setattr(datasets, "_load_digits", bad_digits)
    check_case(tmp_path, capsys, train_args(tmp_path), ["digits train", problem], "intact copy")


# ------------------------------------------------------------------- model and data that do not fit


@pytest.mark.parametrize(
    "model, dataset, shape, fitting",
    [
        ("conv_vae", "digits", "(28, 28, 1)", "ae, vae, cvae, conv_vae28"),  # the chapter's ConvVAE decodes 24x24
        ("celeba_vae", "digits", "(28, 28, 1)", "ae, vae, cvae, conv_vae28"),
        ("conv_vae28", "image_folder", "(64, 64, 3)", "ae, vae, cvae, celeba_vae"),
    ],
)
def test_model_does_not_fit_the_images(tmp_path, capsys, model, dataset, shape, fitting):
    extra = []
    if dataset == "image_folder":
        write_images(tmp_path / "data" / "train")
        write_images(tmp_path / "data" / "test")
        extra = ["--data-dir", tmp_path / "data"]
    check_case(
        tmp_path,
        capsys,
        train_args(tmp_path, "--model", model, "--dataset", dataset, *extra),
        [f"--model {model} does not fit", shape],
        f"use a model that does: {fitting}",
    )


def test_cvae_on_data_without_labels(tmp_path, capsys):
    data = write_binarized(tmp_path / "data")
    check_case(
        tmp_path,
        capsys,
        train_args(tmp_path, "--model", "cvae", "--dataset", "binarized_mnist", "--data-dir", data),
        "needs labels",
        "use mnist or digits",
    )


# ---------------------------------------------------------------- run directories and checkpoints


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished 1-epoch run on the embedded digits (copied by each test before it is touched)."""
    work = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main([str(a) for a in ["train", "--workdir", work, *TINY]]) == 0
    return work


@pytest.fixture
def run_copy(trained_run, tmp_path):
    shutil.copytree(trained_run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, problem",
    [
        (["--model", "ae"], "--model 'ae' differs from the run's 'vae'"),
        (["--hidden-dim", "32"], "--hidden-dim 32 differs from the run's 400"),  # the size it used
        (["--batch-size", "32"], "--batch-size 32 differs from the run's 64"),
    ],
    ids=["model", "hidden_dim", "batch_size"],
)
def test_resume_with_other_options(run_copy, tmp_path, capsys, extra, problem):
    args = ["train", "--workdir", run_copy, *TINY, "--epochs", "2", "--resume", *extra]
    check_case(tmp_path, capsys, args, ["cannot resume", problem], "drop those options")


@pytest.mark.slow
def test_resume_names_every_differing_option_at_once(run_copy, tmp_path, capsys):
    args = [
        "train",
        "--workdir",
        run_copy,
        "--epochs",
        "2",
        "--resume",
        "--model",
        "ae",
        "--seed",
        "7",
        "--train-limit",
        "100",
    ]
    check_case(tmp_path, capsys, args, ["--model 'ae'", "--seed 7", "--train-limit 100"], "drop those options")


@pytest.mark.slow
def test_resume_needs_only_the_workdir(run_copy, capsys):
    """The run directory is the source of truth: options it was trained with need not be repeated."""
    code, err = run_cli(["train", "--workdir", run_copy, "--epochs", "2", "--resume"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert json.loads((run_copy / "config.json").read_text())["train_limit"] == 200


def test_resume_of_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    check_case(
        tmp_path,
        capsys,
        ["train", "--workdir", tmp_path / "empty", *TINY, "--resume"],
        "nothing to resume",
        "drop --resume",
    )


def test_export_of_a_run_whose_config_was_tampered_with(run_copy, tmp_path, capsys):
    cfg = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps(dict(cfg, latent_dim=5)))
    check_case(
        tmp_path,
        capsys,
        ["export", "--workdir", run_copy, "--out", tmp_path / "x.pt"],
        ["does not fit this model", "'params.", "(20,", "(5,"],
        "use the options it was trained with",
    )
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow
def test_export_of_a_run_whose_checkpoint_data_is_damaged(run_copy, tmp_path):
    blobs = sorted((run_copy / "checkpoints").rglob("ocdbt.process_0/d/*"), key=lambda p: p.stat().st_size)
    data = blobs[-1].read_bytes()  # the largest blob holds the weights
    blobs[-1].write_bytes(data[: len(data) // 2])  # cut short (a bit flip inside an uncompressed zstd
    # block would go unnoticed: orbax/tensorstore keep no checksums of the array data)
    # A fresh process: tensorstore caches what this one already read of the (copied) checkpoint.
    before = snapshot(tmp_path)
    p = _console(["export", "--workdir", run_copy, "--out", tmp_path / "x.pt"], tmp_path)
    assert_one_line_error(p.returncode, p.stderr, ["is damaged", "differs from the one written with it"], "restore")
    assert snapshot(tmp_path) == before
    for sums in (run_copy / "checkpoints").rglob(".vae-jax-sha256"):  # a step from before checksums
        sums.unlink()
    before = snapshot(tmp_path)
    p = _console(["export", "--workdir", run_copy, "--out", tmp_path / "x.pt"], tmp_path)
    assert_one_line_error(p.returncode, p.stderr, ["is damaged", "arrays cannot be read"], "restore the folder")
    assert snapshot(tmp_path) == before


def test_console_stays_silent_after_a_failed_read_whatever_threads_print_later():
    """The mechanism behind the test above, made deterministic: after a read fails inside
    _held_stderr, in the console script, output printed late to fd 2 (as tensorstore's threads do)
    goes nowhere, and the one error line still reaches the real stderr."""
    script = (
        "import os\n"
        "from vae_jax import checkpoints\n"
        "from vae_jax.errors import ConsoleStderr\n"
        "ConsoleStderr.console = True\n"
        "try:\n"
        "    with checkpoints._held_stderr():\n"
        "        os.write(2, b'during the read\\n')\n"
        "        raise OSError('damaged')\n"
        "except OSError:\n"
        "    pass\n"
        "os.write(2, b'Traceback: call_soon_threadsafe\\n')\n"
        "os.write(ConsoleStderr.saved_fd, b'vae-jax: error: the one line\\n')\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert p.returncode == 0 and p.stderr == "vae-jax: error: the one line\n", p.stderr


def test_export_of_a_run_with_a_damaged_config_json(run_copy, tmp_path, capsys):
    (run_copy / "config.json").write_text('{"model": "vae", "latent')
    check_case(
        tmp_path,
        capsys,
        ["export", "--workdir", run_copy, "--out", tmp_path / "x.pt"],
        ["cannot read", "config.json"],
        "restore the run's original config.json",
    )


def test_export_of_a_run_without_checkpoints(run_copy, tmp_path, capsys):
    shutil.rmtree(run_copy / "checkpoints")
    check_case(
        tmp_path, capsys, ["export", "--workdir", run_copy, "--out", tmp_path / "x.pt"], "no checkpoint", "train first"
    )


def test_export_into_a_missing_folder(run_copy, tmp_path, capsys):
    check_case(
        tmp_path,
        capsys,
        ["export", "--workdir", run_copy, "--out", tmp_path / "no" / "x.pt"],
        "does not exist",
        "create it",
    )


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    check_case(
        tmp_path,
        capsys,
        ["eval", "--workdir", tmp_path, "--iwae-k", "5"],
        "config.json is missing",
        "--workdir of a `vae-jax train` run",
    )


def test_resume_with_damaged_metrics(run_copy, tmp_path, capsys):
    (run_copy / "metrics.jsonl").write_text('{"epoch": 1, "train_lo\n{"epoch": 2}\n')
    check_case(
        tmp_path,
        capsys,
        ["train", "--workdir", run_copy, *TINY, "--epochs", "2", "--resume"],
        ["line 1 of", "metrics.jsonl is damaged"],
        "restore the file",
    )


def test_metrics_line_cut_by_a_crash_is_dropped_on_resume(run_copy, capsys):
    """The only damage a crash can do to metrics.jsonl (a cut last line) is repaired, not an error."""
    with open(run_copy / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "kl_wei')
    code, err = run_cli(["train", "--workdir", run_copy, *TINY, "--epochs", "2", "--resume"], capsys)
    assert code == 0, err
    assert [json.loads(line)["epoch"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()] == [1, 2]


# ----------------------------------------------------------------------------- unwritable workdirs


@pytest.fixture
def unwritable_workdir(tmp_path):
    """A --workdir that cannot be created: under a read-only folder, or (as root, whom chmod does not
    stop) under a regular file."""
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        folder = tmp_path / "readonly"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder / "run"
        folder.chmod(0o700)
    else:
        (tmp_path / "file.txt").write_text("a file, not a folder")
        yield tmp_path / "file.txt" / "run"


def test_unwritable_workdir(unwritable_workdir, tmp_path, capsys):
    check_case(
        tmp_path,
        capsys,
        ["train", "--workdir", unwritable_workdir, *TINY],
        "cannot write to workdir",
        "choose a writable --workdir",
    )


def test_workdir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "run").write_text("precious")
    check_case(
        tmp_path,
        capsys,
        ["train", "--workdir", tmp_path / "run", *TINY],
        "cannot write to workdir",
        "choose a writable --workdir",
    )


# ----------------------------------------------------------------------------- names and values


BAD_VALUES = [
    (["--model", "nope"], "invalid choice: 'nope'"),
    (["--recon", "mse"], "invalid choice: 'mse'"),
    (["--binarize", "static"], "invalid choice: 'static'"),
    (["--epochs", "-1"], "--epochs: expected a positive integer, got -1"),
    (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
    (["--epochs", "2.5"], "--epochs: expected a positive integer, got '2.5'"),
    (["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
    (["--lr", "0"], "--lr: expected a positive number, got 0"),
    (["--lr", "-0.001"], "--lr: expected a positive number, got -0.001"),
    (["--lr", "nan"], "--lr: expected a positive number, got nan"),
    (["--lr", "inf"], "--lr: expected a positive number, got inf"),
    (["--lr", "fast"], "--lr: expected a positive number, got 'fast'"),
    (["--latent-dim", "0"], "--latent-dim: expected a positive integer"),
    (["--beta", "-1"], "--beta: expected a number >= 0"),
    (["--train-limit", "0"], "--train-limit: expected a positive integer"),
    (["--seed", "-3"], "--seed: expected an integer >= 0"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
]


@pytest.mark.parametrize("extra, problem", BAD_VALUES, ids=[" ".join(c[0]) for c in BAD_VALUES])
def test_bad_cli_value(tmp_path, capsys, extra, problem):
    check_case(tmp_path, capsys, train_args(tmp_path, *extra), problem, "--help`")
    assert not (tmp_path / "run").exists()


def test_unknown_dataset(tmp_path, capsys):
    check_case(
        tmp_path,
        capsys,
        train_args(tmp_path, "--dataset", "cifar10"),
        "unknown dataset 'cifar10'",
        "use one of digits, mnist",
    )
    assert not (tmp_path / "run").exists()  # refused before the workdir is made


def test_iwae_on_an_autoencoder_is_refused_before_training(tmp_path, capsys):
    check_case(
        tmp_path,
        capsys,
        train_args(tmp_path, "--model", "ae", "--iwae-k", "10"),
        "--iwae-k needs a VAE",
        "drop --iwae-k",
    )
    assert not (tmp_path / "run").exists()


def test_unknown_subcommand(tmp_path, capsys):
    check_case(tmp_path, capsys, ["fit", "--workdir", tmp_path], "invalid choice: 'fit'", "vae-jax --help")


def test_batch_larger_than_the_dataset_is_one_batch(tmp_path, capsys):
    """Decision: --batch-size above the number of images is not an error; the epoch is one batch."""
    code, err = run_cli(["train", "--workdir", tmp_path / "run", *TINY, "--batch-size", "100000"], capsys)
    assert code == 0 and "Traceback" not in err, err
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and np.isfinite(rows[0]["train_loss"])


# ------------------------------------------------------------------------- state_dict (library)


def test_state_dict_of_another_size_names_key_and_both_shapes(tmp_path):
    """No CLI command loads a .pt, so convert.load_pt is checked directly: one line, key and shapes."""
    from flax import nnx

    from vae_jax import convert
    from vae_jax.errors import ConversionError

    small = train.build_model(train.Config(latent_dim=5), (28, 28, 1), rngs=nnx.Rngs(0))
    convert.save_pt(small, tmp_path / "small.pt")
    model = train.build_model(train.Config(), (28, 28, 1), rngs=nnx.Rngs(1))
    before = convert.to_numpy_state_dict(model)
    with pytest.raises(ConversionError) as info:
        convert.load_pt(model, tmp_path / "small.pt")
    message = str(info.value)
    assert (
        "\n" not in message and "'decoder_fc1.weight'" in message and "(400, 5)" in message and "(400, 20)" in message
    ), message
    after = convert.to_numpy_state_dict(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # left unchanged

    ae = train.build_model(train.Config(model="ae"), (28, 28, 1), rngs=nnx.Rngs(0))
    convert.save_pt(ae, tmp_path / "ae.pt")
    with pytest.raises(ConversionError, match="missing key 'decoder_fc1.bias'"):
        convert.load_pt(model, tmp_path / "ae.pt")


# ------------------------------------------------------------------------- the last-resort handler


def test_unexpected_exception_is_one_line_with_a_bug_hint(tmp_path, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("something nobody planned for\nsecond line")

    monkeypatch.setattr(train, "train_and_evaluate", boom)
    monkeypatch.delenv("VAE_JAX_DEBUG", raising=False)
    code, err = run_cli(train_args(tmp_path), capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "internal error: RuntimeError: something nobody planned for second line" in lines[0]
    assert "please report it" in lines[0] and "VAE_JAX_DEBUG=1" in lines[0]


# ----------------------------------------------------------------------- the real console script


def _console(args, tmp_path):
    exe = Path(sys.executable).with_name("vae-jax")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "vae_jax.cli"]
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    return subprocess.run(
        cmd + [str(a) for a in args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )


@pytest.mark.parametrize("case", ["bad_value", "missing_data"])
def test_console_script_prints_only_one_line(tmp_path, case):
    if case == "bad_value":
        args, problem = train_args(tmp_path, "--lr", "-1"), "--lr"
    else:
        args, problem = train_args(tmp_path, "--dataset", "mnist", "--data-dir", tmp_path / "nope"), "does not exist"
    p = _console(args, tmp_path)
    assert_one_line_error(p.returncode, p.stderr, problem, "--")
    assert snapshot(tmp_path) == {}
