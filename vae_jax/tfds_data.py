"""Prepared TensorFlow Datasets: read as random-access sources (`tfds.data_source`, array_record),
downloaded and prepared when asked for without a data_dir, or prepared offline from a folder of the
original files (`vae-jax prepare`). tensorflow_datasets is imported only when one of these is used.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

import numpy as np

from vae_jax.config import TFDS_DATASETS
from vae_jax.errors import DataError
from vae_jax.readers import PREPARE_HINT, read_bytes, read_records, square_resize

_TFDS_SPLITS = {"valid": "validation"}


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
            from PIL import Image  # Pillow (matplotlib's dependency): only image datasets need it

            image = square_resize(Image.fromarray(image), self.size)
        elif self.name == "binarized_mnist":  # stored as 0/1: the pixel scale of every other source
            if image.max(initial=0) > 1:
                raise DataError(
                    f"tfds binarized_mnist record {i} holds values up to {image.max()}, want 0/1 "
                    "-- prepare the dataset again with `vae-jax prepare`"
                )
            image = image * np.uint8(255)
        return image, np.int32(ex.get("label", 0))

    def take(self, n: int) -> TfdsSource:
        return TfdsSource(self.source, self.name, self.size, min(n, self.limit))

    def read_all(self):
        images, labels = read_records(self, range(len(self)), with_labels=True)
        return images, labels if self.has_labels else None


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
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)  # absl's warnings (OpenCV, dataset_info.json) are not ours
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(
            "this data needs TensorFlow Datasets, which is not installed -- pip install 'vae-jax[tfds]', "
            "or pass --data-dir with the original files (MNIST IDX, CelebA's folder)"
        ) from None
    tfds.disable_progress_bar()  # no third-party lines on the console
    return tfds


def is_tfds_dir(data_dir, name: str) -> bool:
    return any((Path(data_dir) / name).glob("*/dataset_info.json"))


def load_tfds(name: str, split: str, data_dir, size: int) -> TfdsSource:
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
            f"{type(e).__name__}: {message} -- pass --data-dir pointing at the original "
            f"files, {PREPARE_HINT} (array_record format)"
        ) from None
    if not len(records):
        raise DataError(
            f"tfds dataset {name!r} split {split!r} in {where} is empty -- prepare it again with `vae-jax prepare`"
        )
    return records


def download_and_prepare(name: str, data_dir=None) -> None:
    """Download and prepare tfds dataset `name` (array_record) unless it is prepared already.

    Offline, one DataError at once (the download hosts are tried first, for 5 s) that says where
    the original files are and how to prepare them without network. Preparing needs TensorFlow.
    """
    tfds = _tfds()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if builder.is_prepared():
            return
        urls = sorted(builder.url_infos or {})
    except Exception as e:  # noqa: BLE001 -- tfds raises many kinds for a bad name or folder
        raise DataError(
            f"no tfds dataset {name!r} ({type(e).__name__}) -- use one of {', '.join(TFDS_DATASETS)}"
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
                f"{e.strerror or e}) -- {get}"
            ) from None
    try:
        import tensorflow  # noqa: F401 -- tfds writes prepared datasets with it
    except ImportError:
        raise DataError(f"preparing {name} needs TensorFlow -- pip install 'vae-jax[tf]', or {get}") from None
    try:
        builder.download_and_prepare(
            file_format="array_record", download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    except Exception as e:  # noqa: BLE001 -- network and checksum errors of many kinds
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise DataError(f"downloading {name} failed ({detail}) -- {get}") from None


def prepare_tfds(name: str, manual_dir, data_dir) -> Path:
    """Prepare tfds dataset `name` in data_dir (array_record) from the original files, offline.

    manual_dir holds the files named as in the dataset's registered download URLs (for
    binarized_mnist the .amat may also be gzipped). Nothing is downloaded: a file that is missing
    or is not the original (checksum) raises DataError. Returns the prepared dataset's folder.
    Needs TensorFlow to write the dataset.
    """
    tfds = _tfds()
    from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError  # the [tfds] extra

    try:
        builder = tfds.builder(name, data_dir=os.fspath(data_dir))
    except Exception as e:  # noqa: BLE001 -- tfds raises many kinds for an unknown or damaged builder
        raise DataError(
            f"no tfds dataset {name!r}: {type(e).__name__} -- use one of {', '.join(TFDS_DATASETS)}"
        ) from None
    if builder.is_prepared():
        return Path(builder.data_dir)
    manual_dir = Path(manual_dir)
    if not manual_dir.is_dir():
        raise DataError(f"folder not found: {manual_dir} -- pass the folder holding the original {name} files")
    wanted = sorted({info.filename for info in (builder.url_infos or {}).values() if info.filename})
    if not wanted:
        raise DataError(
            f"tfds dataset {name!r} registers no file names, so it cannot be prepared "
            "offline -- download it with tfds on a machine with network access"
        )

    def no_network(dl_manager, resource):
        raise DataError(
            f"preparing {name} needs {resource.url}, which is not in {manual_dir} -- put the original file there"
        )

    with tempfile.TemporaryDirectory(prefix="vae_jax_prepare_") as tmp:
        staged = Path(tmp, "manual")
        staged.mkdir()
        missing = []
        for filename in wanted:
            if (manual_dir / filename).is_file():
                (staged / filename).symlink_to((manual_dir / filename).resolve())
            elif (manual_dir / f"{filename}.gz").is_file():
                (staged / filename).write_bytes(read_bytes(manual_dir / f"{filename}.gz", "-"))
            else:
                missing.append(filename)
        if missing:
            raise DataError(
                f"cannot prepare {name} offline: {', '.join(missing)} not in "
                f"{manual_dir} -- put the original {name} files there"
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
                f"{name} file (checksum mismatch) -- replace it with the original "
                "download"
            ) from None
    return Path(builder.data_dir)
