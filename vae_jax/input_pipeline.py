"""Datasets as random-access sources of uint8 records, read lazily, plus the streaming pipeline.

Every loader returns a `Dataset`: a source of (image, label) records -- images uint8 HWC ((28, 28, 1)
for the MNIST family, (S, S, 3) for CelebA and image folders; float32 in [0, 1] only for the embedded
digits), labels int32 (zeros when the data has none). Files are listed and checked when a split is
loaded; images are decoded only when a record is read. Pixels become float32 in the train step
(`to_float`: x / 255). Bad or missing data raises `DataError` with one line naming the problem and the fix.

Sources, for `load_dataset(name, split, data_dir)`:

* 'digits'          scikit-learn's bundled 8x8 digits, upsampled to 28x28 (no data_dir needed);
                    the last 297 images are the test split.
* 'mnist', 'fashion_mnist'
                    the 4 original IDX .gz files (in data_dir or data_dir/<name>), read directly
                    without TensorFlow, or a tfds data_dir where the dataset was prepared.
* 'binarized_mnist' binarized_mnist_{train,valid,test}.amat(.gz), or a prepared tfds data_dir.
* 'celeb_a'         the original download (data_dir/img_align_celeba/*.jpg and
                    data_dir/list_eval_partition.txt), a prepared tfds data_dir, or a folder of
                    images like 'image_folder'; 218x178 -> center crop 178x178 -> resize to 64x64.
* 'image_folder'    .png/.jpg images, center-cropped to a square and resized to image_size (RGB);
                    split 'train' reads data_dir/train/ if present, else data_dir itself, any other
                    split reads data_dir/<split>/.

A tfds data_dir is recognised by <data_dir>/<name>/<version>/dataset_info.json; `source='tfds'`
forces the tfds path (as with `tfds.testing.mock_data`), `source='files'` the direct readers.
tfds stores its examples shuffled, so the tfds order differs from the original files' order.

`stream_batches` is the Grain pipeline that training uses for large splits: the epoch's shuffled
order (from the run's seed) cut into batches, each batch read by a thread or worker process ahead
of the step, each JAX process reading only its rows of every global batch.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import os
import re
import struct
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.config import DATASETS, TFDS_DATASETS
from vae_jax.errors import DataError, warn

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_IDX_MAGIC = {0x00000801: 1, 0x00000803: 3}  # magic -> number of dimensions (uint8 data)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
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


class ReadError(DataError):
    """Data that failed while being read for a step (a damaged image, a data worker that died): the
    run so far is kept. args: (problem, fix), so it crosses from a worker process intact; training
    adds how to continue (vae_jax.train)."""

    def __str__(self) -> str:
        return " — ".join(self.args)


# What to do about an image that cannot be read: in an image folder it may go; the CelebA partition
# file names every image, so there it must be replaced.
FOLDER_IMAGE_FIX = "remove or replace the file"
CELEBA_IMAGE_FIX = (
    "replace it with the original file from the CelebA download (removing it does not help: "
    "list_eval_partition.txt names it)"
)


class ArraySource:
    """Records from arrays already in memory (the IDX/amat readers, the embedded digits).

    images: uint8 (N, H, W, C) (pixels 0..255) or float32 in [0, 1]; labels int32 (N,) or None.
    A random-access source in Grain's sense: len() and [i] -> (image, label).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], np.int32(0 if self.labels is None else self.labels[i])

    def take(self, n: int) -> ArraySource:
        return ArraySource(self.images[:n], None if self.labels is None else self.labels[:n])

    def read_all(self):
        return self.images, self.labels


class ImageFileSource:
    """One image file per record, decoded when read: center crop to a square, resize to `size`,
    uint8 RGB (size, size, 3). Nothing is decoded before a record is asked for."""

    def __init__(self, files, size: int, fix: str = FOLDER_IMAGE_FIX):
        self.files, self.size, self.fix = list(files), int(size), fix

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image, UnidentifiedImageError

        path = self.files[i]
        try:
            with Image.open(path) as image:
                if image.mode not in _8BIT_MODES:
                    raise ReadError(
                        f"{path} is a {image.mode} image (not 8 bits per channel), which would be clipped",
                        "convert it to 8-bit RGB or grayscale",
                    )
                return _square_resize(image, self.size), np.int32(0)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise ReadError(f"cannot read image {path}: {e}", self.fix) from None

    def take(self, n: int) -> ImageFileSource:
        return ImageFileSource(self.files[:n], self.size, self.fix)

    def read_all(self):
        return _read_records(self, range(len(self))), None


class TfdsSource:
    """Records of a prepared tfds dataset (`tfds.data_source`, random access), decoded when read."""

    def __init__(self, source, name: str, size: int, limit: int | None = None):
        self.source, self.name, self.size = source, name, size
        self.limit = len(source) if limit is None else min(limit, len(source))
        self.has_labels = "label" in source[0] if self.limit else False

    def __len__(self) -> int:
        return self.limit

    def __getitem__(self, i):
        if not 0 <= i < self.limit:
            raise IndexError(i)
        ex = self.source[int(i)]
        image = np.asarray(ex["image"])
        if self.name == "celeb_a":
            from PIL import Image

            image = _square_resize(Image.fromarray(image), self.size)
        elif self.name == "binarized_mnist":  # stored as 0/1: the pixel scale of every other source
            if image.max(initial=0) > 1:
                raise DataError(
                    f"tfds binarized_mnist record {i} holds values up to {image.max()}, want 0/1 "
                    "— prepare the dataset again with `vae-jax prepare`"
                )
            image = image * np.uint8(255)
        return image, np.int32(ex.get("label", 0))

    def take(self, n: int) -> TfdsSource:
        return TfdsSource(self.source, self.name, self.size, min(n, self.limit))

    def read_all(self):
        images, labels = _read_records(self, range(len(self)), with_labels=True)
        return images, labels if self.has_labels else None


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One split: a random-access `source` of (image, label) records, images uint8 (or float32 for
    the embedded digits) HWC. Nothing is decoded until a record is read; `images`/`labels` decode the
    whole split (small splits, tests and figures); training streams large splits (`stream_batches`)."""

    source: Any
    name: str
    image_shape: tuple
    has_labels: bool

    def __len__(self) -> int:
        return len(self.source)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole split as stored (uint8 pixels): what holding it in memory costs."""
        itemsize = 4 if isinstance(self.source, ArraySource) and self.source.images.dtype != np.uint8 else 1
        return len(self) * math.prod(self.image_shape) * itemsize

    def take(self, n: int | None) -> Dataset:
        """The first n records (all when n is None): selected before anything is decoded."""
        return self if n is None or n >= len(self) else dataclasses.replace(self, source=self.source.take(n))

    @functools.cached_property
    def _arrays(self):
        images, labels = self.source.read_all()
        return images, (labels.astype(np.int32) if labels is not None and self.has_labels else None)

    def stored_arrays(self):
        """(images as stored: uint8 or float32, labels int32 -- zeros when the data has none)."""
        images, labels = self._arrays
        return images, labels if labels is not None else np.zeros(len(images), np.int32)

    @property
    def images(self) -> np.ndarray:
        """The whole split as float32 NHWC in [0, 1] (decodes every record)."""
        return to_float(self._arrays[0])

    @property
    def labels(self) -> np.ndarray | None:
        return self._arrays[1]


def to_float(images):
    """uint8 pixels -> float32 in [0, 1] (x / 255, the same values on host and device); float as is."""
    if images.dtype != np.uint8:
        return images
    if isinstance(images, np.ndarray):
        return _U8_TO_FLOAT[images]
    return jnp.asarray(_U8_TO_FLOAT)[images]  # a 256-entry table: XLA's x / 255 differs by an ulp


_U8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255)


def _read_records(source, indices, *, with_labels=False, threads=8):
    """Stack the records at `indices` (decoded in threads: PIL releases the GIL while decoding)."""
    from concurrent.futures import ThreadPoolExecutor

    indices = list(indices)
    if len(indices) > 64 and threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            records = list(pool.map(source.__getitem__, indices))
    else:
        records = [source[i] for i in indices]
    images = np.stack([r[0] for r in records]) if records else None
    if with_labels:
        return images, np.array([r[1] for r in records], np.int32)
    return images


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
        raise DataError(f"cannot read {path}: {e} — replace it with an intact copy of the original file") from None


def read_idx(path) -> np.ndarray:
    """An IDX file (gz or plain) of uint8 data: images (n, rows, cols) or labels (n,)."""
    raw = _read_bytes(path, "pass the path of an IDX file (e.g. train-images-idx3-ubyte.gz)")
    fix = "replace it with the original IDX file"
    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if magic not in _IDX_MAGIC:
        raise DataError(
            f"not a uint8 IDX file (bad magic {raw[:4].hex() or 'none'}, want 00000803 "
            f"for images or 00000801 for labels): {path} — {fix}"
        )
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
        raise DataError(f"IDX file {what}: {path} holds {got} data bytes, its header {dims} says {size} — {fix}")
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
        raise DataError(f"bad value {data[at : at + 2]!r} on line {lineno} of {path} — {fix}")
    for number, line in enumerate(zeros.split(b"\n"), 1):
        if line.count(b"0") not in (0, 784):  # blank lines are skipped
            raise DataError(f"line {number} of {path} has {line.count(b'0')} values, want 784 — {fix}")
    digits = np.frombuffer(data.translate(None, b" \t\r\n"), np.uint8)
    if not len(digits):
        raise DataError(f"no images in {path} — {fix}")
    return (digits - ord("0")).reshape(-1, 28, 28)


# ------------------------------------------------------------------------------------ load_dataset


def load_dataset(name: str, split: str, data_dir=None, *, image_size: int = 64, source: str = "auto") -> Dataset:
    """One split of a dataset (see the module docstring for names and sources).

    Files are listed and checked here (missing files, partition, the first record); images are
    decoded only when read.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} — use one of {', '.join(DATASETS)}")
    if source not in ("auto", "files", "tfds"):
        raise DataError(f"unknown source {source!r} — use 'auto', 'files' or 'tfds'")
    auto_tfds = data_dir is None or _is_tfds_dir(data_dir, name)
    use_tfds = name in TFDS_DATASETS and (source == "tfds" or (source == "auto" and auto_tfds))
    if data_dir is None and not use_tfds and name != "digits":
        raise DataError(
            f"{name} needs a data_dir — pass --data-dir pointing at a folder with the original files, {_PREPARE_HINT}"
        )
    records: ArraySource | ImageFileSource | TfdsSource
    if name == "digits":
        records = ArraySource(*_load_digits(split))
    elif use_tfds:
        records = _load_tfds(name, split, data_dir, image_size)
    elif name == "celeb_a" and _is_celeba_layout(data_dir):
        records = ImageFileSource(celeba_files(data_dir, split), image_size, CELEBA_IMAGE_FIX)
    elif name in ("celeb_a", "image_folder"):
        records = ImageFileSource(_image_files(data_dir, split), image_size)
    elif name == "binarized_mnist":
        records = ArraySource(_load_amat(data_dir, split) * np.uint8(255), None)
    else:
        records = ArraySource(*_load_idx(name, data_dir, split))
    if isinstance(records, ArraySource):
        _check(records.images, records.labels, f"{name} {split}")
    if not len(records):
        raise DataError(f"{name} {split} is empty — replace the data with an intact copy of the original files")
    first = np.asarray(records[0][0])  # one record read now: a broken format fails before training
    has_labels = (
        records.labels is not None if isinstance(records, ArraySource) else getattr(records, "has_labels", False)
    )
    return Dataset(source=records, name=name, image_shape=tuple(first.shape), has_labels=has_labels)


def _check(images: np.ndarray, labels: np.ndarray | None, where: str) -> None:
    fix = "replace the data with an intact copy of the original files"
    if images.ndim != 4 or images.dtype not in (np.float32, np.uint8) or len(images) == 0:
        raise DataError(
            f"{where}: images {images.dtype}{images.shape}, want float32 (N>0, H, W, C) in [0, 1] or uint8 — {fix}"
        )
    if images.dtype == np.float32:
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
        raise DataError(
            f"data directory {data_dir} does not exist — put {_SOURCES[name]} in a folder "
            f"and pass it as --data-dir, {_PREPARE_HINT}"
        )
    for folder in (Path(data_dir) / name, Path(data_dir)):
        for candidate in (folder / f"{filename}.gz", folder / filename):
            if candidate.is_file():
                return candidate
    raise DataError(
        f"{what} file not found: {Path(data_dir) / filename}.gz (nor in {name}/, nor "
        f"uncompressed) — pass --data-dir pointing at a folder with the original "
        f"{what} files, {_PREPARE_HINT}"
    )


# md5 of the original .gz files: MNIST (LeCun et al.) and Fashion-MNIST (Zalando), which share file names.
_ORIGINAL_MD5 = {
    "mnist": {
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3",
        "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79",
        "bb300cfdad3c16e7a12a480ee83cd310",
    },
}


def _check_identity(name: str, path: Path) -> None:
    """DataError when an original .gz file of the other dataset (same file names) is given for `name`."""
    import hashlib

    if path.suffix != ".gz":
        return
    other = "fashion_mnist" if name == "mnist" else "mnist"
    try:
        digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    except OSError:
        return  # read_idx reports it
    if digest in _ORIGINAL_MD5[other]:
        raise DataError(
            f"{path} is the original {other} file, not {name} (same file name, other content) -- "
            f"pass --dataset {other}, or a --data-dir with the {name} files"
        )


def _load_idx(name: str, data_dir, split: str):
    if split not in _IDX_FILES:
        raise _split_error(name, split, _IDX_FILES)
    what = "MNIST" if name == "mnist" else "Fashion-MNIST"
    image_path, label_path = (_find_file(data_dir, name, f, what) for f in _IDX_FILES[split])
    for path in (image_path, label_path):
        _check_identity(name, path)
    images, labels = read_idx(image_path), read_idx(label_path)
    fix = f"use the 4 original {what} files"
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{image_path} holds {images.shape}, want images (n, 28, 28) — {fix}")
    if labels.ndim != 1 or len(labels) != len(images) or (labels > 9).any():
        raise DataError(
            f"{label_path} holds {labels.shape} labels (max {labels.max(initial=0)}) "
            f"for {len(images)} images in {image_path}, want one label 0..9 per image "
            f"— {fix}"
        )
    return images[..., None], labels.astype(np.int32)


def _load_amat(data_dir, split: str):
    if split not in _AMAT_SPLITS:
        raise _split_error("binarized_mnist", split, _AMAT_SPLITS)
    path = _find_file(data_dir, "binarized_mnist", f"binarized_mnist_{_AMAT_SPLITS[split]}.amat", "binarized MNIST")
    return read_amat(path)[..., None]


def _square_resize(image, size: int) -> np.ndarray:
    """A PIL image -> center crop to a square -> resize -> uint8 RGB (size, size, 3)."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    image = image.crop((left, top, left + s, top + s))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.uint8)


def _image_files(data_dir, split: str) -> list[Path]:
    """The images of a split of an image folder, sorted. Only regular files are read (a FIFO named
    *.png would block the reader); other entries with an image's name are skipped with one warning."""
    root = Path(data_dir)
    folder = root / split if (root / split).is_dir() or split != "train" else root
    named = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
    files = [p for p in named if p.is_file()]
    skipped = [p.name for p in named if not p.is_file()]
    if skipped:
        warn(
            f"skipped {_count(skipped, 'entry', 'entries')} of {folder} named as an image but not a regular file "
            f"(a FIFO, socket, device, folder or broken link), e.g. {skipped[0]} -- remove them or put "
            "image files there"
        )
    if not files:
        raise DataError(
            f"no .png/.jpg images in {folder} — pass --data-dir pointing at a folder "
            f"of images (split {split!r} reads <data-dir>/{split}/"
            f"{' or <data-dir> itself' if split == 'train' else ''})"
        )
    return files


_8BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La")


# The original CelebA download: DIR/img_align_celeba/*.jpg and DIR/list_eval_partition.txt, whose
# lines "000001.jpg 0" put each image in train (0), valid (1) or test (2).
CELEBA_IMAGES, CELEBA_PARTITION = "img_align_celeba", "list_eval_partition.txt"
_CELEBA_SPLITS = {"train": "0", "valid": "1", "validation": "1", "test": "2"}


def _is_celeba_layout(data_dir) -> bool:
    root = Path(data_dir)
    return (root / CELEBA_IMAGES).is_dir() or (root / CELEBA_PARTITION).is_file()


def celeba_files(data_dir, split: str) -> list[Path]:
    """The image files of one split of the original CelebA layout, in the partition file's order.

    Checked here, before any image is decoded: the partition file (present, well-formed), the split
    (not empty) and every listed file (present in img_align_celeba/, not empty).
    """
    root = Path(data_dir)
    fix = (
        "put the original CelebA files there: img_align_celeba/ (202,599 .jpg) and "
        "list_eval_partition.txt (from the CelebA download)"
    )
    if split not in _CELEBA_SPLITS:
        raise _split_error("celeb_a", split, ("train", "valid", "test"))
    partition, folder = root / CELEBA_PARTITION, root / CELEBA_IMAGES
    if not partition.is_file():
        raise DataError(f"CelebA partition file not found: {partition} — {fix}")
    if not folder.is_dir():
        raise DataError(f"CelebA image folder not found: {folder} — {fix}")
    wanted = _CELEBA_SPLITS[split]
    names = [name for name, part in _read_partition(partition, fix).items() if part == wanted]
    if not names:
        raise DataError(f"{partition} lists no image of split {split!r} (partition {wanted}) — {fix}")
    present = {e.name: e for e in os.scandir(folder)}
    missing = [n for n in names if n not in present]
    if missing:
        raise DataError(
            f"{len(missing)} images of split {split!r} listed in {partition} are missing from "
            f"{folder}, e.g. {missing[0]} — {fix}"
        )
    irregular = [n for n in names if not present[n].is_file()]
    if irregular:
        raise DataError(f"{folder / irregular[0]} is not a regular file -- replace it with the original image")
    empty = [n for n in names if present[n].stat().st_size == 0]
    if empty:
        raise DataError(
            f"{len(empty)} images of split {split!r} are empty files, e.g. {folder / empty[0]} — "
            "replace them with the original files"
        )
    return [folder / n for n in names]


def _read_partition(partition: Path, fix: str) -> dict[str, str]:
    """{file name: "0"|"1"|"2"} of list_eval_partition.txt, in its order. A UTF-8 BOM and CRLF line
    ends are accepted; a name listed twice (in one split or two) is refused, since an image in two
    splits would put training images in the test set."""
    try:
        text = partition.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {partition}: {e} — {fix}") from None
    parts: dict[str, str] = {}
    lines: dict[str, int] = {}
    repeated: list[tuple[str, int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"line {number} of {partition} is {line.strip()[:60]!r}, want '<file>.jpg 0|1|2' — {fix}")
        name, part = fields
        if name in parts:
            repeated.append((name, number, part))
        else:
            parts[name], lines[name] = part, number
    if repeated:
        name, number, part = repeated[0]
        raise DataError(
            f"{partition} lists {_count({r[0] for r in repeated}, 'file')} more than once, e.g. {name} on line "
            f"{lines[name]} ({_SPLIT_NAMES[parts[name]]}) and line {number} ({_SPLIT_NAMES[part]}): a file in two "
            "splits would put training images in the test set -- replace list_eval_partition.txt with the "
            "original from the CelebA download"
        )
    return parts


_SPLIT_NAMES = {"0": "train", "1": "valid", "2": "test"}


def _count(items, one: str, many: str | None = None) -> str:
    return f"{len(items)} {one if len(items) == 1 else many or one + 's'}"


# --------------------------------------------------------------------------------------------- tfds


def _tfds():
    """tensorflow_datasets, imported on first use (it is slow to import)."""
    try:
        import importlib_resources  # noqa: F401
    except ImportError:
        # tfds 4.9.10 imports importlib_resources but declares it only for Python < 3.9
        # (tensorflow/datasets#11212); the standard library module has the same API. tfds also
        # reads `importlib_resources.abc.Traversable`: in importlib.resources.abc from Python 3.11,
        # in importlib.abc before (3.10's importlib.resources is a module, with no .abc).
        import importlib.resources

        if sys.version_info >= (3, 11):
            import importlib.resources.abc  # makes importlib.resources.abc an attribute

            sys.modules["importlib_resources"] = importlib.resources
        else:
            import importlib.abc
            import types

            shim = types.ModuleType("importlib_resources")
            vars(shim).update({k: v for k, v in vars(importlib.resources).items() if not k.startswith("__")})
            vars(shim)["abc"] = importlib.abc
            sys.modules["importlib_resources"] = shim
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            "this data needs TensorFlow Datasets, which is not installed -- pip install 'vae-jax[tfds]', "
            "or pass --data-dir with the original files (MNIST IDX, CelebA's folder)"
        ) from None
    return tfds


def _is_tfds_dir(data_dir, name: str) -> bool:
    return any((Path(data_dir) / name).glob("*/dataset_info.json"))


def _load_tfds(name: str, split: str, data_dir, size: int) -> TfdsSource:
    """A prepared tfds dataset as a random-access source (`tfds.data_source`, array_record)."""
    tfds = _tfds()
    where = data_dir if data_dir is not None else "the default tfds data_dir"
    if data_dir is None:  # no files given: tfds's own download, as its users expect
        download_and_prepare(name)
    try:
        source = tfds.data_source(name, split=_TFDS_SPLITS.get(split, split), data_dir=data_dir, download=False)
        records = TfdsSource(source, name, size)
    except Exception as e:  # noqa: BLE001 -- tfds raises many kinds (AssertionError, FileNotFoundError, ...)
        message = (str(e).strip().splitlines() or [""])[0]
        raise DataError(
            f"cannot read tfds dataset {name!r} split {split!r} from {where}: "
            f"{type(e).__name__}: {message} — pass --data-dir pointing at the original "
            f"files, {_PREPARE_HINT} (array_record format)"
        ) from None
    if not len(records):
        raise DataError(
            f"tfds dataset {name!r} split {split!r} in {where} is empty — prepare it again with `vae-jax prepare`"
        )
    return records


def download_and_prepare(name: str, data_dir=None) -> None:
    """Download and prepare tfds dataset `name` (array_record) unless it is prepared already.

    Offline, one DataError at once (the download hosts are tried first, for 5 s) that says where
    the original files are and how to prepare them without network. Preparing needs TensorFlow.
    """
    import socket
    from urllib.parse import urlparse

    tfds = _tfds()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if builder.is_prepared():
            return
        urls = sorted(builder.url_infos or {})
    except Exception as e:  # noqa: BLE001 -- tfds raises many kinds for a bad name or folder
        raise DataError(
            f"no tfds dataset {name!r} ({type(e).__name__}) — use one of {', '.join(TFDS_DATASETS)}"
        ) from None
    get = (
        f"get the original files ({', '.join(urls) or 'see the dataset page on tensorflow.org/datasets'}) and "
        f"pass their folder as --data-dir, or prepare them with `vae-jax prepare --dataset {name} "
        "--manual-dir <files> --data-dir <tfds dir>`"
    )
    for host in sorted({urlparse(u).hostname for u in urls if urlparse(u).hostname}):
        try:
            socket.create_connection((host, 443), timeout=5).close()
        except OSError as e:
            raise DataError(
                f"{name} is not prepared in {builder.data_dir} and downloading it failed ({host}: "
                f"{e.strerror or e}) — {get}"
            ) from None
    try:
        import tensorflow  # noqa: F401 -- tfds writes prepared datasets with it
    except ImportError:
        raise DataError(f"preparing {name} needs TensorFlow — pip install 'vae-jax[tf]', or {get}") from None
    try:
        builder.download_and_prepare(
            file_format="array_record", download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    except Exception as e:  # noqa: BLE001 -- network and checksum errors of many kinds
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise DataError(f"downloading {name} failed ({detail}) — {get}") from None


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
    except Exception as e:  # noqa: BLE001 -- tfds raises many kinds for an unknown or damaged builder
        raise DataError(
            f"no tfds dataset {name!r}: {type(e).__name__} — use one of {', '.join(TFDS_DATASETS)}"
        ) from None
    if builder.is_prepared():
        return Path(builder.data_dir)
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise DataError(f"folder not found: {manual_dir} — pass the folder holding the original {name} files")
    wanted = sorted({info.filename for info in (builder.url_infos or {}).values() if info.filename})
    if not wanted:
        raise DataError(
            f"tfds dataset {name!r} registers no file names, so it cannot be prepared "
            "offline — download it with tfds on a machine with network access"
        )

    def no_network(dl_manager, resource):
        raise DataError(
            f"preparing {name} needs {resource.url}, which is not in {manual_dir} — put the original file there"
        )

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
            raise DataError(
                f"cannot prepare {name} offline: {', '.join(missing)} not in "
                f"{manual_dir} — put the original {name} files there"
            )
        config = tfds.download.DownloadConfig(manual_dir=os.fspath(staged), try_download_gcs=False)
        try:
            with mock.patch.object(tfds.download.DownloadManager, "_download", no_network):
                builder.download_and_prepare(
                    download_dir=os.fspath(Path(tmp, "downloads")), download_config=config, file_format="array_record"
                )
        except NonMatchingChecksumError as e:
            bad = [info.filename for url, info in builder.url_infos.items() if f"{url}," in str(e)]
            raise DataError(
                f"{manual_dir / bad[0] if bad else manual_dir} is not the original "
                f"{name} file (checksum mismatch) — replace it with the original "
                "download"
            ) from None
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
        raise DataError(f"cannot batch {num_examples} examples by {batch_size} — both must be positive")
    return [(start, min(start + batch_size, num_examples)) for start in range(0, num_examples, batch_size)]


# ------------------------------------------------------------------------------------------ streaming


def read_batch(source, indices) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the records at `indices`, as stored (uint8 pixels)."""
    if isinstance(source, ArraySource):
        labels = source.labels[indices] if source.labels is not None else np.zeros(len(indices), np.int32)
        return source.images[indices], labels
    return _read_records(source, indices, with_labels=True, threads=1)


class _ReadBatch:
    """Grain map transform: a batch's record indices -> (images, labels); picklable for workers."""

    def __init__(self, source):
        self.source = source

    def __call__(self, indices):
        return read_batch(self.source, indices)


def process_rows(batch_rows: int, process_index: int, process_count: int) -> slice:
    """The rows of a global batch that one JAX process reads: an equal contiguous share when the
    batch divides by the process count, else all of them (the batch is then replicated)."""
    if process_count == 1 or batch_rows % process_count:
        return slice(None)
    share = batch_rows // process_count
    return slice(process_index * share, (process_index + 1) * share)


def stream_batches(
    ds: Dataset,
    order,
    batch_size: int,
    *,
    start: int = 0,
    stop: int | None = None,
    rows=lambda n: slice(None),
    threads: int = 2,
    prefetch: int = 4,
    workers: int = 0,
):
    """Iterate the batches [start, stop) of one epoch of `ds` in `order`, as numpy (images, labels).

    A Grain pipeline over the random-access source: the batches' record indices are the elements,
    each read (decoded, cropped, resized: uint8) by one of `threads` threads -- or `workers` worker
    processes -- up to `prefetch` batches ahead of the consumer. Each JAX process reads only its
    rows of every global batch (`rows(batch_rows)`, see `process_rows`): sharding by process, the
    global batch unchanged.
    """
    import grain

    order = np.asarray(order)
    slices = batch_slices(len(order), batch_size)[start:stop]
    index_lists = [order[a:b][rows(b - a)] for a, b in slices]
    if not index_lists:
        return iter(())
    data = grain.MapDataset.source(index_lists).map(_ReadBatch(ds.source))
    data = data.to_iter_dataset(grain.ReadOptions(num_threads=max(1, threads), prefetch_buffer_size=prefetch))
    if workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags (defaults suffice)
            flags.FLAGS.mark_as_parsed()
        _start_quiet_resource_tracker()
        _watch_workers()
        data = data.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return _worker_deaths_reported(iter(data))


_DEADLY = {9: "SIGKILL", 11: "SIGSEGV", 7: "SIGBUS"}  # how the out-of-memory killer or a crash ends a worker
_watch: dict[str, Any] = {}


def _watch_workers() -> None:
    """Once per process: a thread that checks this process's worker processes twice a second, and when
    one was killed (SIGKILL, as by the out-of-memory killer; SIGSEGV, SIGBUS) interrupts the main thread
    with a ReadError (signal SIGUSR1): Grain's iterator may otherwise wait forever for its batch."""
    import multiprocessing
    import signal
    import threading

    if _watch or threading.current_thread() is not threading.main_thread():
        return

    def interrupted(signum, frame):
        code = _watch.pop("died", None)
        if code is not None:
            raise _worker_death(code)

    signal.signal(signal.SIGUSR1, interrupted)

    main = threading.main_thread().ident
    assert main is not None  # the main thread has started: this is it

    def watch():
        seen = set()
        while True:
            for child in list(multiprocessing.process._children):  # type: ignore[attr-defined]
                code = child.exitcode
                if code is not None and -code in _DEADLY and child.pid not in seen:
                    seen.add(child.pid)
                    _watch["died"] = code
                    signal.pthread_kill(main, signal.SIGUSR1)
            threading.Event().wait(0.5)

    _watch["thread"] = threading.Thread(target=watch, name="vae-jax worker watch", daemon=True)
    _watch["thread"].start()


def _worker_death(code: int) -> ReadError:
    how = f"killed by {signal_name(-code)}" if code < 0 else f"exit code {code}"
    return ReadError(
        f"a data worker process died ({how}; the out-of-memory killer sends SIGKILL)",
        "if memory is short, pass a lower --data-workers (0: threads, no worker processes)",
    )


def _worker_deaths_reported(batches):
    """The batches of a Grain iterator; a worker process that died (killed by the out-of-memory
    killer, say) is one ReadError. When the batches end early, the iterator is closed and its
    queues and semaphores released at once: a process that exits right after (os._exit) then
    leaves none behind for multiprocessing's resource tracker to report."""
    died, finished = None, False
    try:
        yield from batches
        finished = True
        return
    except RuntimeError as e:
        died = re.search(r"Worker process was terminated unexpectedly with exit code (-?\d+)", str(e))
        if not died:
            raise
    finally:
        if not finished:
            _close(batches)
        del batches
    # raised here, not in the except clause: the ReadError must not hold Grain's error, whose
    # traceback holds the iterator (and its semaphores)
    raise _worker_death(int(died.group(1)))


def _start_quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker, before Grain's workers would, with its stderr on
    /dev/null. A worker that is killed leaves the shared memory it had filled; the tracker frees
    it when this process ends, and its report of that (a warning, sometimes tracebacks) would
    follow vae-jax's one line on the console. Nothing if the tracker already runs."""
    from multiprocessing import resource_tracker

    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        resource_tracker.ensure_running()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _close(batches) -> None:
    """Stop a Grain iterator's threads or worker processes now, and free what they held."""
    import gc

    close = getattr(batches, "close", None)
    if close is not None:
        close()
    gc.collect()


def signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
