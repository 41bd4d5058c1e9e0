"""vae_jax.readers, datasets, tfds_data and input_pipeline: file readers, load_dataset sources, tfds
prepare/mock, batch helpers.

Real-data tests read $VAE_DATA_DIR (the Makefile points it at ../shared/data) and skip without it.
"""

import gzip
import os
import struct
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vae_jax import datasets, input_pipeline, readers, tfds_data, train
from vae_jax.errors import DataError

IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801


def real_data(subfolder: str) -> Path:
    data_dir = os.environ.get("VAE_DATA_DIR")
    if not data_dir:
        pytest.skip(
            "VAE_DATA_DIR not set: these tests need the real MNIST files (`make test` sets it to ../shared/data)"
        )
    path = Path(data_dir) / subfolder
    if not path.is_dir():
        pytest.skip(f"VAE_DATA_DIR has no {subfolder}/ folder: {path}")
    return path


def idx_bytes(array: np.ndarray) -> bytes:
    magic = IMAGE_MAGIC if array.ndim == 3 else LABEL_MAGIC
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_mnist(folder: Path, n: int = 5, n_labels: int | None = None, split: str = "train"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n if n_labels is None else n_labels, dtype=np.uint8)
    image_name, label_name = readers._IDX_FILES[split]
    write(folder / f"{image_name}.gz", idx_bytes(images))
    write(folder / f"{label_name}.gz", idx_bytes(labels))
    return images, labels


def amat_line(values) -> bytes:
    return b" ".join(b"%d" % v for v in values) + b"\n"


def raises_data_error(path, func, *args, **kwargs) -> str:
    """func(*args) raises DataError with one line naming `path`; returns the message."""
    with pytest.raises(DataError) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and " -- " in message, message
    return message


# ------------------------------------------------------------------------------------ file readers


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_read_idx_round_trip(tmp_path, suffix):
    images = np.arange(3 * 28 * 28, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8)
    labels = np.array([7, 2, 1], np.uint8)
    got_images = readers.read_idx(write(tmp_path / f"img-idx3-ubyte{suffix}", idx_bytes(images)))
    got_labels = readers.read_idx(write(tmp_path / f"lab-idx1-ubyte{suffix}", idx_bytes(labels)))
    assert got_images.dtype == np.uint8 and np.array_equal(got_images, images)
    assert np.array_equal(got_labels, labels)


def test_read_amat_round_trip(tmp_path):
    rows = np.random.default_rng(0).integers(0, 2, (3, 784))
    path = write(tmp_path / "x.amat.gz", b"".join(amat_line(r) for r in rows) + b"\n")
    got = readers.read_amat(path)
    assert got.shape == (3, 28, 28) and np.array_equal(got.reshape(3, 784), rows)


def _gz_truncated(path):
    data = gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    path.write_bytes(data[: len(data) // 2])


def _gz_corrupted(path):
    data = bytearray(gzip.compress(np.random.default_rng(0).bytes(5000)))
    data[len(data) // 2 : len(data) // 2 + 40] = b"\xff" * 40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("reader", [readers.read_idx, readers.read_amat])
@pytest.mark.parametrize("make", [_gz_truncated, _gz_corrupted], ids=["truncated", "corrupted"])
def test_bad_gzip_is_data_error(tmp_path, reader, make):
    path = tmp_path / "bad.gz"
    make(path)
    raises_data_error(path, reader, path)


@pytest.mark.parametrize(
    "data, words",
    [
        (struct.pack(">4I", 0x00000804, 1, 28, 28) + bytes(784), "bad magic"),
        (b"\x00\x00", "bad magic"),
        (struct.pack(">4I", IMAGE_MAGIC, 2, 28, 28) + bytes(784), "truncated"),
        (struct.pack(">I", IMAGE_MAGIC) + b"\x00\x00\x00\x01", "header truncated"),
        (struct.pack(">2I", LABEL_MAGIC, 3) + bytes(4), "trailing bytes"),
    ],
)
def test_bad_idx_is_data_error(tmp_path, data, words):
    path = write(tmp_path / "bad-idx-ubyte.gz", data)
    assert words in raises_data_error(path, readers.read_idx, path)


@pytest.mark.parametrize(
    "text, words",
    [
        (amat_line([0] * 783 + [2]), "bad value"),
        (amat_line([0] * 783 + [10]), "bad value"),
        (amat_line([0] * 784).replace(b"0", b"0.5", 1), "bad value"),
        (amat_line([0] * 784) + amat_line([1] * 783), "has 783 values"),
        (b"\n\n", "no images"),
    ],
)
def test_bad_amat_is_data_error(tmp_path, text, words):
    path = write(tmp_path / "bad.amat", text)
    assert words in raises_data_error(path, readers.read_amat, path)


def test_missing_file_is_data_error(tmp_path):
    raises_data_error(tmp_path / "nope.gz", readers.read_idx, tmp_path / "nope.gz")


_HEADERS = st.sampled_from(
    [b"", struct.pack(">4I", IMAGE_MAGIC, 1, 28, 28), struct.pack(">2I", LABEL_MAGIC, 3), amat_line([1] * 784)]
)


@settings(max_examples=150, deadline=None)
@given(
    header=_HEADERS,
    tail=st.binary(max_size=3000),
    name=st.sampled_from(["f-idx3-ubyte", "f-idx3-ubyte.gz", "f.amat", "f.amat.gz"]),
    compress=st.booleans(),
)
def test_arbitrary_bytes_only_raise_data_error(header, tail, name, compress):
    data = header + tail
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, name)
        # .gz files hold either the arbitrary bytes themselves or their valid gzip compression
        path.write_bytes(gzip.compress(data) if compress and name.endswith(".gz") else data)
        for reader in (readers.read_idx, readers.read_amat):
            try:
                out = reader(path)
            except DataError as e:
                assert "\n" not in str(e)
            else:
                assert out.dtype == np.uint8


# ------------------------------------------------------------------------ load_dataset: files


def test_mnist_files_in_subfolder_and_plain(tmp_path):
    images, labels = write_mnist(tmp_path / "fashion_mnist", n=6, split="test")
    ds = datasets.load_dataset("fashion_mnist", "test", tmp_path)
    assert ds.name == "fashion_mnist" and len(ds) == 6
    assert ds.images.shape == (6, 28, 28, 1) and ds.images.dtype == np.float32
    assert np.array_equal(ds.images[..., 0], images / np.float32(255))
    assert ds.labels.dtype == np.int32 and np.array_equal(ds.labels, labels)
    for path in (tmp_path / "fashion_mnist").iterdir():  # uncompressed copies also work
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    assert np.array_equal(datasets.load_dataset("fashion_mnist", "test", tmp_path).images, ds.images)


def test_count_mismatch_is_data_error(tmp_path):
    write_mnist(tmp_path, n=5, n_labels=4)
    raises_data_error(tmp_path / "train-labels-idx1-ubyte.gz", datasets.load_dataset, "mnist", "train", tmp_path)


def test_missing_dir_is_data_error(tmp_path):
    message = raises_data_error(
        tmp_path / "nope", datasets.load_dataset, "mnist", "train", tmp_path / "nope", source="files"
    )
    assert "--data-dir" in message and "train-images-idx3-ubyte.gz" in message


def test_binarized_files(tmp_path):
    rows = np.random.default_rng(1).integers(0, 2, (3, 784))
    write(tmp_path / "binarized_mnist_valid.amat", b"".join(amat_line(r) for r in rows))
    ds = datasets.load_dataset("binarized_mnist", "validation", tmp_path)
    assert ds.images.shape == (3, 28, 28, 1) and ds.labels is None
    assert np.array_equal(ds.images.reshape(3, 784), rows)


@pytest.mark.parametrize(
    "args, words",
    [
        (("nope", "train"), "unknown dataset"),
        (("digits", "valid"), "no split"),
        (("mnist", "valid", "/x"), "no split"),
        (("mnist", "train", None), "needs a data_dir"),
    ],
)
def test_bad_arguments_are_data_errors(args, words):
    with pytest.raises(DataError, match=words):
        datasets.load_dataset(*args, source="files")


def test_check_rejects_nan_and_range():
    images = np.zeros((2, 28, 28, 1), np.float32)
    datasets._check(images, np.zeros(2, np.int32), "x")
    for bad, words in [(np.nan, "NaN"), (np.inf, "Inf"), (1.5, "outside"), (-0.1, "outside")]:
        images[0, 0, 0, 0] = bad
        with pytest.raises(DataError, match=words):
            datasets._check(images, None, "x")


def test_digits():
    train, test = datasets.load_dataset("digits", "train"), datasets.load_dataset("digits", "test")
    assert train.images.shape == (1500, 28, 28, 1) and test.images.shape == (297, 28, 28, 1)
    for ds in (train, test):
        assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int32
        assert ds.images.min() == 0.0 and 0.99 <= ds.images.max() <= 1.0
    assert np.array_equal(datasets.load_dataset("digits", "test").images, test.images)


# ------------------------------------------------------------------------ image folder / CelebA


def _save(path: Path, mode: str, size, fill=None):
    """An image of `mode` ('RGB', 'RGBA' or 'L') and size (w, h), white unless `fill` (h, w, c)."""
    w, h = size
    array = np.full((h, w, len(mode)), 255, np.uint8) if fill is None else fill
    image = Image.fromarray(array[..., 0] if mode == "L" else array)
    assert image.mode == mode
    image.save(path)


def test_image_folder_sizes_and_modes(tmp_path):
    _save(tmp_path / "a.png", "RGB", (40, 30))
    _save(tmp_path / "b.jpg", "RGB", (17, 23))
    _save(tmp_path / "c.PNG", "RGBA", (64, 64))
    tall = np.zeros((50, 30, 1), np.uint8)
    tall[10:40] = 255  # the centered 30x30 square is white, the 10-pixel bands above/below black
    _save(tmp_path / "d.png", "L", (30, 50), fill=tall)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = datasets.load_dataset("image_folder", "train", tmp_path, image_size=16)
    assert ds.images.shape == (4, 16, 16, 3) and ds.images.dtype == np.float32 and ds.labels is None
    assert ds.images.min() >= 0 and ds.images.max() <= 1
    assert np.all(ds.images[3] == 1.0)  # center crop kept only the white square


def test_image_folder_splits_and_errors(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        _save(tmp_path / split / "x.png", "RGB", (178, 218))
    ds = datasets.load_dataset("celeb_a", "test", tmp_path)  # CelebA as a folder: 218x178 -> 64x64
    assert ds.images.shape == (1, 64, 64, 3)
    raises_data_error(tmp_path / "valid", datasets.load_dataset, "image_folder", "valid", tmp_path)
    (tmp_path / "test" / "broken.jpg").write_bytes(b"not a jpeg")  # sorted first: read at load time
    raises_data_error(tmp_path / "test" / "broken.jpg", datasets.load_dataset, "image_folder", "test", tmp_path)


# ------------------------------------------------------------------------------------------ tfds


def test_tfds_mock_data(tmp_path):
    tfds = tfds_data._tfds()
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")  # looks prepared
    with tfds.testing.mock_data(num_examples=5):
        ds = datasets.load_dataset("mnist", "train", data_dir=tmp_path)  # detected as a tfds data_dir
        assert ds.images.shape == (5, 28, 28, 1) and ds.labels.shape == (5,)
        assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int32
        assert ds.images.max() <= 1.0 and ds.labels.max() <= 9
        ds = datasets.load_dataset("mnist", "test", data_dir=tmp_path / "empty", source="tfds")
        assert ds.images.shape == (5, 28, 28, 1)
        ds = datasets.load_dataset("celeb_a", "train", data_dir=tmp_path, source="tfds", image_size=32)
        assert ds.images.shape == (5, 32, 32, 3) and ds.labels is None
        # the mock draws 0..255 for binarized_mnist, whose real values are 0/1: caught
        with pytest.raises(DataError, match="want 0/1"):
            datasets.load_dataset("binarized_mnist", "test", data_dir=tmp_path, source="tfds")


def test_tfds_not_prepared_is_data_error(tmp_path):
    raises_data_error(tmp_path, datasets.load_dataset, "mnist", "train", tmp_path, source="tfds")


def _has_tensorflow() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorflow") is not None


needs_tf = pytest.mark.skipif(
    not _has_tensorflow(),
    reason="TensorFlow not installed: `vae-jax prepare` needs the [tf] extra (pip install 'vae-jax[tf]')",
)


def test_not_prepared_and_offline_is_one_data_error_at_once(tmp_path, monkeypatch):
    """No --data-dir and nothing prepared: tfds's download is tried; offline it fails in seconds with
    the original files' addresses and `vae-jax prepare`."""
    import socket
    import time

    def offline(address, timeout=None):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", offline)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    t0 = time.monotonic()
    message = raises_data_error("downloading it failed", datasets.load_dataset, "mnist", "train")
    assert time.monotonic() - t0 < 30
    assert "https://storage.googleapis.com/cvdf-datasets/mnist/train-images-idx3-ubyte.gz" in message
    assert "vae-jax prepare" in message and "--data-dir" in message


@needs_tf
def test_prepare_tfds_missing_files(tmp_path):
    write_mnist(tmp_path / "manual")  # train files only
    message = raises_data_error(
        tmp_path / "manual", tfds_data.prepare_tfds, "mnist", tmp_path / "manual", tmp_path / "tfds"
    )
    assert "t10k-images-idx3-ubyte.gz" in message and "train-images" not in message


@needs_tf
def test_prepare_tfds_checksum_mismatch(tmp_path):
    write_mnist(tmp_path, split="train")
    write_mnist(tmp_path, split="test")
    message = raises_data_error(tmp_path, tfds_data.prepare_tfds, "mnist", tmp_path, tmp_path / "tfds")
    assert "checksum" in message


@needs_tf
def test_prepare_tfds_never_downloads(tmp_path, monkeypatch):
    """A file that the manual dir lookup does not find is a DataError, not a download."""
    tfds = tfds_data._tfds()
    write_mnist(tmp_path, split="train")
    write_mnist(tmp_path, split="test")
    monkeypatch.setattr(tfds.download.DownloadManager, "_get_manually_downloaded_path", lambda self, url_info: None)
    message = raises_data_error(tmp_path, tfds_data.prepare_tfds, "mnist", tmp_path, tmp_path / "tfds")
    assert "https://" in message


# ----------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def mnist_files():
    folder = real_data("mnist")
    return {split: datasets.load_dataset("mnist", split, folder.parent) for split in ("train", "test")}


def test_real_mnist(mnist_files):
    train, test = mnist_files["train"], mnist_files["test"]
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert train.images.mean() == pytest.approx(0.1307, abs=5e-5)
    assert test.images.mean() == pytest.approx(0.1325, abs=5e-5)
    assert train.images.min() == 0.0 and train.images.max() == 1.0
    assert np.bincount(train.labels).tolist()[:3] == [5923, 6742, 5958]


def test_real_binarized_mnist():
    data_dir = real_data("binarized_mnist").parent
    sizes = {}
    for split in ("train", "valid", "test"):
        ds = datasets.load_dataset("binarized_mnist", split, data_dir)
        assert ds.images.shape[1:] == (28, 28, 1) and ds.labels is None
        assert np.array_equal(np.unique(ds.images), [0.0, 1.0])
        sizes[split] = len(ds)
    assert sizes == {"train": 50000, "valid": 10000, "test": 10000}


@pytest.mark.slow
@needs_tf
def test_real_prepare_tfds_mnist_matches_idx(tmp_path, mnist_files):
    """Prepare tfds 'mnist' offline from the original files (~40 s), read it back via data_source.

    tfds stores examples shuffled, so the splits are compared as multisets of (label, image).
    """
    folder = real_data("mnist")
    prepared = tfds_data.prepare_tfds("mnist", folder, tmp_path)
    assert (prepared / "dataset_info.json").is_file()
    for split, expected in mnist_files.items():
        got = datasets.load_dataset("mnist", split, tmp_path)  # auto-detected as a tfds data_dir
        assert got.images.shape == expected.images.shape and got.labels.dtype == np.int32

        def rows(ds):
            pixels = np.round(ds.images.reshape(len(ds), -1) * 255).astype(np.uint8)
            return sorted(bytes([label]) + row.tobytes() for label, row in zip(ds.labels, pixels, strict=False))

        assert rows(got) == rows(expected)
    assert tfds_data.prepare_tfds("mnist", tmp_path / "unused", tmp_path) == prepared  # reused as is


# ---------------------------------------------------------------------- binarization and batches


def test_binarize():
    images = np.full((4, 28, 28, 1), 0.3, np.float32)
    a = input_pipeline.binarize(jax.random.key(0), images)
    assert a.dtype == np.float32 and a.shape == images.shape
    assert set(np.unique(a).tolist()) == {0.0, 1.0} and abs(float(a.mean()) - 0.3) < 0.03
    assert np.array_equal(a, input_pipeline.binarize(jax.random.key(0), images))
    assert not np.array_equal(a, input_pipeline.binarize(jax.random.key(1), images))


def test_epoch_permutation():
    p = input_pipeline.epoch_permutation(jax.random.key(0), 1000)
    assert p.dtype == np.int32 and sorted(np.asarray(p).tolist()) == list(range(1000))
    assert np.array_equal(p, input_pipeline.epoch_permutation(jax.random.key(0), 1000))
    assert not np.array_equal(p, input_pipeline.epoch_permutation(jax.random.key(1), 1000))
    assert np.array_equal(input_pipeline.epoch_permutation(jax.random.key(0), 5, shuffle=False), np.arange(5))
    with pytest.raises(DataError):
        input_pipeline.epoch_permutation(jax.random.key(0), 0)


def test_batch_slices():
    slices = input_pipeline.batch_slices(60000, 128)
    assert len(slices) == 469 and slices[0] == (0, 128) and slices[-1] == (59904, 60000)
    assert input_pipeline.batch_slices(256, 128) == [(0, 128), (128, 256)]
    assert input_pipeline.batch_slices(3, 128) == [(0, 3)]
    for bad in [(0, 128), (10, 0)]:
        with pytest.raises(DataError):
            input_pipeline.batch_slices(*bad)


class _OnHost:
    """A Placement that leaves the arrays where they are: Feed.blocks's cuts, without a device."""

    def put(self, tree):
        return tree

    def put_batch(self, arrays, rows):
        return arrays

    def batch_rows(self, rows):
        return slice(None)


@pytest.mark.parametrize(
    "n, start, stop, k, sizes",
    [
        (60000, 0, None, 32, [32] * 14 + [20, 1]),  # MNIST by 128: 468 full batches, then one of 96
        (12800, 0, None, 8, [8] * 12 + [4]),  # 100 full batches, none smaller
        (60000, 5, 50, 32, [32, 13]),  # a part of an epoch (--checkpoint-every, a resume)
        (60000, 467, None, 32, [1, 1]),  # a lone full batch, then the last
        (60000, 0, 3, 1, [1, 1, 1]),
    ],
)
def test_blocks_take_k_full_batches_then_the_rest_of_them_in_one(n, start, stop, k, sizes):
    cfg = train.Config(data_mode="memory", batch_size=128)
    ds = datasets.Dataset(datasets.ArraySource(np.zeros((n, 1, 1, 1), np.uint8), None), "zeros", (1, 1, 1), False)
    order = np.random.default_rng(0).permutation(n).astype(np.int32)
    blocks = list(input_pipeline.Feed(ds, _OnHost(), cfg).blocks(order, 128, start, stop, k))
    assert [m for _, m, _ in blocks] == sizes
    assert [i for i, _, _ in blocks] == [start + sum(sizes[:j]) for j in range(len(sizes))]
    assert all(np.shape(idx) == ((m, 128) if m > 1 else np.shape(idx)) for _, m, (*_, idx) in blocks)
    slices = input_pipeline.batch_slices(n, 128)[start:stop]  # every index once, in the epoch's order
    assert np.array_equal(
        np.concatenate([np.ravel(idx) for *_, (*_, idx) in blocks]), order[slices[0][0] : slices[-1][1]]
    )
