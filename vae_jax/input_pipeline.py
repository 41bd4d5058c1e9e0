"""Datasets as arrays, read from the original files or from tfds, plus the batching helpers.

Every loader returns a `Dataset`: images float32 NHWC in [0, 1] ((N, 28, 28, 1) for the MNIST
family, (N, S, S, 3) for CelebA and image folders), labels int32 (N,) or None. Bad or missing data
raises `DataError` with one line naming the problem and the fix.

Sources, for `load_dataset(name, split, data_dir)`:

* 'digits'          scikit-learn's bundled 8x8 digits, upsampled to 28x28 (no data_dir needed);
                    the last 297 images are the test split.
* 'mnist', 'fashion_mnist'
                    the 4 original IDX .gz files (in data_dir or data_dir/<name>), read directly
                    without TensorFlow, or a tfds data_dir where the dataset was prepared.
* 'binarized_mnist' binarized_mnist_{train,valid,test}.amat(.gz), or a prepared tfds data_dir.
* 'celeb_a'         a prepared tfds data_dir (image 218x178 -> center crop 178x178 -> resize),
                    or a folder of images like 'image_folder'.
* 'image_folder'    .png/.jpg images, center-cropped to a square and resized to image_size (RGB);
                    split 'train' reads data_dir/train/ if present, else data_dir itself, any other
                    split reads data_dir/<split>/.

A tfds data_dir is recognised by <data_dir>/<name>/<version>/dataset_info.json; `source='tfds'`
forces the tfds path (as with `tfds.testing.mock_data`), `source='files'` the direct readers.
tfds stores its examples shuffled, so the tfds order differs from the original files' order.
"""

from __future__ import annotations

import dataclasses
import gzip
import math
import os
import re
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.errors import DataError

DATASETS = ("digits", "mnist", "fashion_mnist", "binarized_mnist", "celeb_a", "image_folder")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_IDX_MAGIC = {0x00000801: 1, 0x00000803: 3}  # magic -> number of dimensions (uint8 data)
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_AMAT_SPLITS = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}
_TFDS_SPLITS = {"valid": "validation"}
_PREPARE_HINT = "or prepare tfds with `vae-jax prepare`"
# Where the original files come from, for the message about a missing data directory (_find_file).
_SOURCES = {
    "mnist": "the 4 MNIST files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
             "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (e.g. from "
             "https://storage.googleapis.com/cvdf-datasets/mnist/)",
    "fashion_mnist": "the 4 Fashion-MNIST files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                     "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (from "
                     "https://github.com/zalandoresearch/fashion-mnist)",
    "binarized_mnist": "binarized_mnist_{train,valid,test}.amat (from "
                       "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/)",
}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A whole split in memory: images float32 NHWC in [0, 1], labels int32 (N,) or None."""

    images: np.ndarray
    labels: np.ndarray | None
    name: str

    def __len__(self) -> int:
        return len(self.images)


# --------------------------------------------------------------------------- original file formats


def _read_bytes(path, fix: str) -> bytes:
    """The file's bytes, gunzipped when the name ends in .gz; any failure is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path} — {fix}")
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e} — replace it with an intact copy of the original "
                        "file") from None


def read_idx(path) -> np.ndarray:
    """An IDX file (gz or plain) of uint8 data: images (n, rows, cols) or labels (n,)."""
    raw = _read_bytes(path, "pass the path of an IDX file (e.g. train-images-idx3-ubyte.gz)")
    fix = "replace it with the original IDX file"
    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if magic not in _IDX_MAGIC:
        raise DataError(f"not a uint8 IDX file (bad magic {raw[:4].hex() or 'none'}, want 00000803 "
                        f"for images or 00000801 for labels): {path} — {fix}")
    ndim = _IDX_MAGIC[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX header truncated: {path} — {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if ndim == 3 and 0 in dims[1:]:
        raise DataError(f"IDX images of size {dims[1]}x{dims[2]}: {path} — {fix}")
    size, got = math.prod(dims), len(raw) - header
    if got != size:
        what = "truncated" if got < size else "has trailing bytes"
        raise DataError(f"IDX file {what}: {path} holds {got} data bytes, its header {dims} says "
                        f"{size} — {fix}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_amat(path) -> np.ndarray:
    """A binarized MNIST .amat(.gz) text file (784 values 0/1 per line) -> uint8 (n, 28, 28)."""
    data = _read_bytes(path, "pass the path of a binarized_mnist_*.amat(.gz) file")
    fix = "replace it with the original binarized MNIST .amat file (784 values 0/1 per line)"
    zeros = data.translate(bytes.maketrans(b"1", b"0"))
    bad = re.search(rb"[^01 \t\r\n]", data) if data.translate(None, b"01 \t\r\n") else None
    at = bad.start() if bad else zeros.find(b"00")  # a character, or a multi-digit value like 10
    if at >= 0:
        lineno = data.count(b"\n", 0, at) + 1
        raise DataError(f"bad value {data[at:at + 2]!r} on line {lineno} of {path} — {fix}")
    for number, line in enumerate(zeros.split(b"\n"), 1):
        if line.count(b"0") not in (0, 784):  # blank lines are skipped
            raise DataError(f"line {number} of {path} has {line.count(b'0')} values, want 784 — "
                            f"{fix}")
    digits = np.frombuffer(data.translate(None, b" \t\r\n"), np.uint8)
    if not len(digits):
        raise DataError(f"no images in {path} — {fix}")
    return (digits - ord("0")).reshape(-1, 28, 28)


# ------------------------------------------------------------------------------------ load_dataset


def load_dataset(name: str, split: str, data_dir=None, *, image_size: int = 64,
                 source: str = "auto") -> Dataset:
    """One split of a dataset as arrays (see the module docstring for names and sources)."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} — use one of {', '.join(DATASETS)}")
    if source not in ("auto", "files", "tfds"):
        raise DataError(f"unknown source {source!r} — use 'auto', 'files' or 'tfds'")
    auto_tfds = data_dir is None or _is_tfds_dir(data_dir, name)
    use_tfds = name not in ("digits", "image_folder") and (
        source == "tfds" or (source == "auto" and auto_tfds))
    if data_dir is None and not use_tfds and name != "digits":
        raise DataError(f"{name} needs a data_dir — pass --data-dir pointing at a folder with the "
                        f"original files, {_PREPARE_HINT}")
    if name == "digits":
        images, labels = _load_digits(split)
    elif use_tfds:
        images, labels = _load_tfds(name, split, data_dir, image_size)
    elif name in ("celeb_a", "image_folder"):
        images, labels = _load_image_folder(data_dir, split, image_size), None
    elif name == "binarized_mnist":
        images, labels = _load_amat(data_dir, split), None
    else:
        images, labels = _load_idx(name, data_dir, split)
    _check(images, labels, f"{name} {split}")
    return Dataset(images=images, labels=labels, name=name)


def _check(images: np.ndarray, labels: np.ndarray | None, where: str) -> None:
    fix = "replace the data with an intact copy of the original files"
    if images.ndim != 4 or images.dtype != np.float32 or len(images) == 0:
        raise DataError(f"{where}: images {images.dtype}{images.shape}, want float32 (N>0, H, W, C)"
                        f" — {fix}")
    if not np.isfinite(images).all():
        raise DataError(f"{where}: images contain NaN or Inf — {fix}")
    if images.min() < 0 or images.max() > 1:
        raise DataError(f"{where}: pixel values outside [0, 1] — {fix}")
    if labels is not None and labels.shape != (len(images),):
        raise DataError(f"{where}: {len(images)} images but labels of shape {labels.shape} — {fix}")


def _split_error(name: str, split: str, splits) -> DataError:
    return DataError(f"{name} has no split {split!r} — use one of {', '.join(splits)}")


def _load_digits(split: str):
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise _split_error("digits", split, ("train", "test"))
    digits = load_digits()
    images = digits.images.astype(np.float32)[..., None] / 16.0  # (1797, 8, 8, 1), values 0..16
    images = jax.image.resize(images, (len(images), 28, 28, 1), "bilinear")
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    labels = digits.target.astype(np.int32)
    part = slice(None, -297) if split == "train" else slice(-297, None)
    return images[part], labels[part]


def _find_file(data_dir, name: str, filename: str, what: str) -> Path:
    """data_dir[/name]/filename[.gz], the first that exists."""
    if not Path(data_dir).is_dir():
        raise DataError(f"data directory {data_dir} does not exist — put {_SOURCES[name]} in a folder "
                        f"and pass it as --data-dir, {_PREPARE_HINT}")
    for folder in (Path(data_dir) / name, Path(data_dir)):
        for candidate in (folder / f"{filename}.gz", folder / filename):
            if candidate.is_file():
                return candidate
    raise DataError(f"{what} file not found: {Path(data_dir) / filename}.gz (nor in {name}/, nor "
                    f"uncompressed) — pass --data-dir pointing at a folder with the original "
                    f"{what} files, {_PREPARE_HINT}")


def _load_idx(name: str, data_dir, split: str):
    if split not in _IDX_FILES:
        raise _split_error(name, split, _IDX_FILES)
    what = "MNIST" if name == "mnist" else "Fashion-MNIST"
    image_path, label_path = (_find_file(data_dir, name, f, what) for f in _IDX_FILES[split])
    images, labels = read_idx(image_path), read_idx(label_path)
    fix = f"use the 4 original {what} files"
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{image_path} holds {images.shape}, want images (n, 28, 28) — {fix}")
    if labels.ndim != 1 or len(labels) != len(images) or (labels > 9).any():
        raise DataError(f"{label_path} holds {labels.shape} labels (max {labels.max(initial=0)}) "
                        f"for {len(images)} images in {image_path}, want one label 0..9 per image "
                        f"— {fix}")
    return images[..., None].astype(np.float32) / 255.0, labels.astype(np.int32)


def _load_amat(data_dir, split: str):
    if split not in _AMAT_SPLITS:
        raise _split_error("binarized_mnist", split, _AMAT_SPLITS)
    path = _find_file(data_dir, "binarized_mnist", f"binarized_mnist_{_AMAT_SPLITS[split]}.amat",
                      "binarized MNIST")
    return read_amat(path)[..., None].astype(np.float32)


def _square_resize(image, size: int) -> np.ndarray:
    """A PIL image -> center crop to a square -> resize -> uint8 RGB (size, size, 3)."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    image = image.crop((left, top, left + s, top + s))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.uint8)


def _load_image_folder(data_dir, split: str, size: int):
    from PIL import Image, UnidentifiedImageError

    root = Path(data_dir)
    folder = root / split if (root / split).is_dir() or split != "train" else root
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS) \
        if folder.is_dir() else []
    if not files:
        raise DataError(f"no .png/.jpg images in {folder} — pass --data-dir pointing at a folder "
                        f"of images (split {split!r} reads <data-dir>/{split}/"
                        f"{' or <data-dir> itself' if split == 'train' else ''})")
    images = []
    for path in files:
        try:
            with Image.open(path) as image:
                images.append(_square_resize(image, size))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DataError(f"cannot read image {path}: {e} — remove or replace the file") from None
    return np.stack(images).astype(np.float32) / 255.0


# --------------------------------------------------------------------------------------------- tfds


def _tfds():
    """tensorflow_datasets, imported on first use (it is slow to import)."""
    try:
        import importlib_resources  # noqa: F401
    except ImportError:
        # tfds 4.9.10 imports importlib_resources but declares it only for Python < 3.9
        # (tensorflow/datasets#11212); the standard library module has the same API.
        import importlib.resources.abc

        sys.modules["importlib_resources"] = importlib.resources
    import tensorflow_datasets as tfds

    return tfds


def _is_tfds_dir(data_dir, name: str) -> bool:
    return any((Path(data_dir) / name).glob("*/dataset_info.json"))


def _load_tfds(name: str, split: str, data_dir, size: int):
    tfds = _tfds()
    where = data_dir if data_dir is not None else "the default tfds data_dir"
    try:
        source = tfds.data_source(name, split=_TFDS_SPLITS.get(split, split), data_dir=data_dir,
                                  download=False)
        keys = list(range(len(source)))
        try:
            examples = source.__getitems__(keys)  # batched: about 2x faster than one by one
        except TypeError:  # tfds.testing.mock_data (4.9.10) mocks __getitems__ without `self`
            examples = [source[i] for i in keys]
    except Exception as e:  # tfds raises many kinds (AssertionError, FileNotFoundError, ...)
        message = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"cannot read tfds dataset {name!r} split {split!r} from {where}: "
                        f"{type(e).__name__}: {message} — pass --data-dir pointing at the original "
                        f"files, {_PREPARE_HINT} (array_record format)") from None
    if not examples:
        raise DataError(f"tfds dataset {name!r} split {split!r} in {where} is empty — prepare it "
                        "again with `vae-jax prepare`")
    if name == "celeb_a":
        from PIL import Image

        images = np.stack([_square_resize(Image.fromarray(ex["image"]), size) for ex in examples])
    else:
        images = np.stack([ex["image"] for ex in examples])
    scale = 1.0 if name == "binarized_mnist" else 255.0  # binarized_mnist stores 0/1 as uint8
    labels = np.array([ex["label"] for ex in examples], np.int32) if "label" in examples[0] \
        else None
    return images.astype(np.float32) / scale, labels


def prepare_tfds(name: str, manual_dir, data_dir) -> Path:
    """Prepare tfds dataset `name` in data_dir (array_record) from the original files, offline.

    manual_dir holds the files named as in the dataset's registered download URLs (for
    binarized_mnist the .amat may also be gzipped). Nothing is downloaded: a file that is missing
    or is not the original (checksum) raises DataError. Returns the prepared dataset's folder.
    Needs TensorFlow to write the dataset.
    """
    tfds = _tfds()
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

    try:
        builder = tfds.builder(name, data_dir=os.fspath(data_dir))
    except Exception as e:
        raise DataError(f"no tfds dataset {name!r}: {type(e).__name__} — use one of mnist, "
                        "fashion_mnist, binarized_mnist, celeb_a") from None
    if builder.is_prepared():
        return Path(builder.data_dir)
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise DataError(f"folder not found: {manual_dir} — pass the folder holding the original "
                        f"{name} files")
    wanted = sorted({info.filename for info in (builder.url_infos or {}).values() if info.filename})
    if not wanted:
        raise DataError(f"tfds dataset {name!r} registers no file names, so it cannot be prepared "
                        "offline — download it with tfds on a machine with network access")

    def no_network(dl_manager, resource):
        raise DataError(f"preparing {name} needs {resource.url}, which is not in {manual_dir} — "
                        "put the original file there")

    with tempfile.TemporaryDirectory(prefix="vae_jax_prepare_") as tmp:
        staged = Path(tmp, "manual")
        staged.mkdir()
        missing = []
        for filename in wanted:
            if (manual_dir / filename).is_file():
                (staged / filename).symlink_to((manual_dir / filename).resolve())
            elif (manual_dir / f"{filename}.gz").is_file():
                (staged / filename).write_bytes(_read_bytes(manual_dir / f"{filename}.gz", "-"))
            else:
                missing.append(filename)
        if missing:
            raise DataError(f"cannot prepare {name} offline: {', '.join(missing)} not in "
                            f"{manual_dir} — put the original {name} files there")
        config = tfds.download.DownloadConfig(manual_dir=os.fspath(staged), try_download_gcs=False)
        try:
            with mock.patch.object(tfds.download.DownloadManager, "_download", no_network):
                builder.download_and_prepare(download_dir=os.fspath(Path(tmp, "downloads")),
                                             download_config=config, file_format="array_record")
        except NonMatchingChecksumError as e:
            bad = [info.filename for url, info in builder.url_infos.items() if f"{url}," in str(e)]
            raise DataError(f"{manual_dir / bad[0] if bad else manual_dir} is not the original "
                            f"{name} file (checksum mismatch) — replace it with the original "
                            "download") from None
    return Path(builder.data_dir)


# ------------------------------------------------------------------------ binarization and batches


def binarize(key: jax.Array, images) -> jax.Array:
    """Dynamic binarization: float32 0/1 drawn as Bernoulli(images) from `key`."""
    return jax.random.bernoulli(key, jnp.asarray(images)).astype(jnp.float32)


def epoch_permutation(key: jax.Array, num_examples: int, shuffle: bool = True) -> jax.Array:
    """The order of one epoch: a permutation drawn from `key`, or 0..n-1 when not shuffling."""
    if num_examples < 1:
        raise DataError(f"epoch of {num_examples} examples — the dataset is empty")
    if not shuffle:
        return jnp.arange(num_examples, dtype=jnp.int32)
    return jax.random.permutation(key, num_examples).astype(jnp.int32)


def batch_slices(num_examples: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch; the last, partial batch is kept (drop_last=False)."""
    if num_examples < 1 or batch_size < 1:
        raise DataError(f"cannot batch {num_examples} examples by {batch_size} — both must be "
                        "positive")
    return [(start, min(start + batch_size, num_examples))
            for start in range(0, num_examples, batch_size)]
