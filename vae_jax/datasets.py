"""Datasets as random-access sources of uint8 records, read lazily: `load_dataset` and `Dataset`.

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

The readers of the original files are in vae_jax.readers, prepared tfds datasets in
vae_jax.tfds_data; vae_jax.input_pipeline cuts a Dataset into the batches of an epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.config import DATASETS, TFDS_DATASETS
from vae_jax.errors import DataError
from vae_jax.readers import (
    CELEBA_IMAGE_FIX,
    PREPARE_HINT,
    ImageFileSource,
    celeba_files,
    image_files,
    is_celeba_layout,
    load_amat,
    load_idx,
    split_error,
)
from vae_jax.tfds_data import TfdsSource, is_tfds_dir, load_tfds


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


# ------------------------------------------------------------------------------------ load_dataset


def load_dataset(name: str, split: str, data_dir=None, *, image_size: int = 64, source: str = "auto") -> Dataset:
    """One split of a dataset (see the module docstring for names and sources).

    Files are listed and checked here (missing files, partition, the first record); images are
    decoded only when read.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} -- use one of {', '.join(DATASETS)}")
    if source not in ("auto", "files", "tfds"):
        raise DataError(f"unknown source {source!r} -- use 'auto', 'files' or 'tfds'")
    auto_tfds = data_dir is None or is_tfds_dir(data_dir, name)
    use_tfds = name in TFDS_DATASETS and (source == "tfds" or (source == "auto" and auto_tfds))
    if data_dir is None and not use_tfds and name != "digits":
        raise DataError(
            f"{name} needs a data_dir -- pass --data-dir pointing at a folder with the original files, {PREPARE_HINT}"
        )
    records: ArraySource | ImageFileSource | TfdsSource
    if name == "digits":
        records = ArraySource(*_load_digits(split))
    elif use_tfds:
        records = load_tfds(name, split, data_dir, image_size)
    elif name == "celeb_a" and is_celeba_layout(data_dir):
        records = ImageFileSource(celeba_files(data_dir, split), image_size, CELEBA_IMAGE_FIX)
    elif name in ("celeb_a", "image_folder"):
        records = ImageFileSource(image_files(data_dir, split), image_size)
    elif name == "binarized_mnist":
        records = ArraySource(load_amat(data_dir, split) * np.uint8(255), None)
    else:
        records = ArraySource(*load_idx(name, data_dir, split))
    if isinstance(records, ArraySource):
        _check(records.images, records.labels, f"{name} {split}")
    if not len(records):
        raise DataError(f"{name} {split} is empty -- replace the data with an intact copy of the original files")
    first = np.asarray(records[0][0])  # one record read now: a broken format fails before training
    has_labels = (
        records.labels is not None if isinstance(records, ArraySource) else getattr(records, "has_labels", False)
    )
    return Dataset(source=records, name=name, image_shape=tuple(first.shape), has_labels=has_labels)


def _check(images: np.ndarray, labels: np.ndarray | None, where: str) -> None:
    fix = "replace the data with an intact copy of the original files"
    if images.ndim != 4 or images.dtype not in (np.float32, np.uint8) or len(images) == 0:
        raise DataError(
            f"{where}: images {images.dtype}{images.shape}, want float32 (N>0, H, W, C) in [0, 1] or uint8 -- {fix}"
        )
    if images.dtype == np.float32:
        if not np.isfinite(images).all():
            raise DataError(f"{where}: images contain NaN or Inf -- {fix}")
        if images.min() < 0 or images.max() > 1:
            raise DataError(f"{where}: pixel values outside [0, 1] -- {fix}")
    if labels is not None and labels.shape != (len(images),):
        raise DataError(f"{where}: {len(images)} images but labels of shape {labels.shape} -- {fix}")


def _load_digits(split: str):
    from sklearn.datasets import load_digits  # slow to import: only the digits dataset needs it

    if split not in ("train", "test"):
        raise split_error("digits", split, ("train", "test"))
    digits = load_digits()
    images = digits.images.astype(np.float32)[..., None] / 16.0  # (1797, 8, 8, 1), values 0..16
    images = jax.image.resize(images, (len(images), 28, 28, 1), "bilinear")
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    labels = digits.target.astype(np.int32)
    part = slice(None, -297) if split == "train" else slice(-297, None)
    return images[part], labels[part]
