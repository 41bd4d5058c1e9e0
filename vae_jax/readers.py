"""The original dataset files, read without TensorFlow: MNIST's IDX files, binarized MNIST's .amat
files, CelebA's download (its images and partition file) and folders of images.

The IDX and .amat readers return uint8 arrays; an image folder or CelebA's layout becomes an
`ImageFileSource` whose images are decoded only when a record is read. A file that is missing,
damaged or not the original raises `DataError` with one line naming the problem and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import re
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vae_jax.errors import DataError, ReadError, warn

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_IDX_MAGIC = {0x00000801: 1, 0x00000803: 3}  # magic -> number of dimensions (uint8 data)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_AMAT_SPLITS = {"train": "train", "valid": "valid", "validation": "valid", "test": "test"}
PREPARE_HINT = "or prepare tfds with `vae-jax prepare`"
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


# --------------------------------------------------------------------------- original file formats


def read_bytes(path, fix: str) -> bytes:
    """The file's bytes, gunzipped when the name ends in .gz; any failure is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path} -- {fix}")
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e} -- replace it with an intact copy of the original file") from None


def read_idx(path) -> np.ndarray:
    """An IDX file (gz or plain) of uint8 data: images (n, rows, cols) or labels (n,)."""
    raw = read_bytes(path, "pass the path of an IDX file (e.g. train-images-idx3-ubyte.gz)")
    fix = "replace it with the original IDX file"
    magic = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if magic not in _IDX_MAGIC:
        raise DataError(
            f"not a uint8 IDX file (bad magic {raw[:4].hex() or 'none'}, want 00000803 "
            f"for images or 00000801 for labels): {path} -- {fix}"
        )
    ndim = _IDX_MAGIC[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX header truncated: {path} -- {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if ndim == 3 and 0 in dims[1:]:
        raise DataError(f"IDX images of size {dims[1]}x{dims[2]}: {path} -- {fix}")
    size, got = math.prod(dims), len(raw) - header
    if got != size:
        what = "truncated" if got < size else "has trailing bytes"
        raise DataError(f"IDX file {what}: {path} holds {got} data bytes, its header {dims} says {size} -- {fix}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_amat(path) -> np.ndarray:
    """A binarized MNIST .amat(.gz) text file (784 values 0/1 per line) -> uint8 (n, 28, 28)."""
    data = read_bytes(path, "pass the path of a binarized_mnist_*.amat(.gz) file")
    fix = "replace it with the original binarized MNIST .amat file (784 values 0/1 per line)"
    zeros = data.translate(bytes.maketrans(b"1", b"0"))
    bad = re.search(rb"[^01 \t\r\n]", data) if data.translate(None, b"01 \t\r\n") else None
    at = bad.start() if bad else zeros.find(b"00")  # a character, or a multi-digit value like 10
    if at >= 0:
        lineno = data.count(b"\n", 0, at) + 1
        raise DataError(f"bad value {data[at : at + 2]!r} on line {lineno} of {path} -- {fix}")
    for number, line in enumerate(zeros.split(b"\n"), 1):
        if line.count(b"0") not in (0, 784):  # blank lines are skipped
            raise DataError(f"line {number} of {path} has {line.count(b'0')} values, want 784 -- {fix}")
    digits = np.frombuffer(data.translate(None, b" \t\r\n"), np.uint8)
    if not len(digits):
        raise DataError(f"no images in {path} -- {fix}")
    return (digits - ord("0")).reshape(-1, 28, 28)


# ------------------------------------------------------------------------------ the MNIST family


def split_error(name: str, split: str, splits) -> DataError:
    return DataError(f"{name} has no split {split!r} -- use one of {', '.join(splits)}")


def _find_file(data_dir, name: str, filename: str, what: str) -> Path:
    """data_dir[/name]/filename[.gz], the first that exists."""
    if not Path(data_dir).is_dir():
        raise DataError(
            f"data directory {data_dir} does not exist -- put {_SOURCES[name]} in a folder "
            f"and pass it as --data-dir, {PREPARE_HINT}"
        )
    for folder in (Path(data_dir) / name, Path(data_dir)):
        for candidate in (folder / f"{filename}.gz", folder / filename):
            if candidate.is_file():
                return candidate
    raise DataError(
        f"{what} file not found: {Path(data_dir) / filename}.gz (nor in {name}/, nor "
        f"uncompressed) -- pass --data-dir pointing at a folder with the original "
        f"{what} files, {PREPARE_HINT}"
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


def load_idx(name: str, data_dir, split: str):
    if split not in _IDX_FILES:
        raise split_error(name, split, _IDX_FILES)
    what = "MNIST" if name == "mnist" else "Fashion-MNIST"
    image_path, label_path = (_find_file(data_dir, name, f, what) for f in _IDX_FILES[split])
    for path in (image_path, label_path):
        _check_identity(name, path)
    images, labels = read_idx(image_path), read_idx(label_path)
    fix = f"use the 4 original {what} files"
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{image_path} holds {images.shape}, want images (n, 28, 28) -- {fix}")
    if labels.ndim != 1 or len(labels) != len(images) or (labels > 9).any():
        raise DataError(
            f"{label_path} holds {labels.shape} labels (max {labels.max(initial=0)}) "
            f"for {len(images)} images in {image_path}, want one label 0..9 per image "
            f"-- {fix}"
        )
    return images[..., None], labels.astype(np.int32)


def load_amat(data_dir, split: str):
    if split not in _AMAT_SPLITS:
        raise split_error("binarized_mnist", split, _AMAT_SPLITS)
    path = _find_file(data_dir, "binarized_mnist", f"binarized_mnist_{_AMAT_SPLITS[split]}.amat", "binarized MNIST")
    return read_amat(path)[..., None]


# ------------------------------------------------------------------------- image folders and CelebA


# What to do about an image that cannot be read: in an image folder it may go; the CelebA partition
# file names every image, so there it must be replaced.
FOLDER_IMAGE_FIX = "remove or replace the file"
CELEBA_IMAGE_FIX = (
    "replace it with the original file from the CelebA download (removing it does not help: "
    "list_eval_partition.txt names it)"
)


class ImageFileSource:
    """One image file per record, decoded when read: center crop to a square, resize to `size`,
    uint8 RGB (size, size, 3). Nothing is decoded before a record is asked for."""

    def __init__(self, files, size: int, fix: str = FOLDER_IMAGE_FIX):
        self.files, self.size, self.fix = list(files), int(size), fix

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image, UnidentifiedImageError  # Pillow (matplotlib's dependency): only image datasets need it

        path = self.files[i]
        try:
            with Image.open(path) as image:
                if image.mode not in _8BIT_MODES:
                    raise ReadError(
                        f"{path} is a {image.mode} image (not 8 bits per channel), which would be clipped",
                        "convert it to 8-bit RGB or grayscale",
                    )
                return square_resize(image, self.size), np.int32(0)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise ReadError(f"cannot read image {path}: {e}", self.fix) from None

    def take(self, n: int) -> ImageFileSource:
        return ImageFileSource(self.files[:n], self.size, self.fix)

    def read_all(self):
        return read_records(self, range(len(self))), None


_8BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "La")


def square_resize(image, size: int) -> np.ndarray:
    """A PIL image -> center crop to a square -> resize -> uint8 RGB (size, size, 3)."""
    from PIL import Image  # Pillow (matplotlib's dependency): only image datasets need it

    image = image.convert("RGB")
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    image = image.crop((left, top, left + s, top + s))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.uint8)


def read_records(source, indices, *, with_labels=False, threads=8):
    """Stack the records at `indices` (decoded in threads: PIL releases the GIL while decoding)."""
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


def image_files(data_dir, split: str) -> list[Path]:
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
            f"no .png/.jpg images in {folder} -- pass --data-dir pointing at a folder "
            f"of images (split {split!r} reads <data-dir>/{split}/"
            f"{' or <data-dir> itself' if split == 'train' else ''})"
        )
    return files


# The original CelebA download: DIR/img_align_celeba/*.jpg and DIR/list_eval_partition.txt, whose
# lines "000001.jpg 0" put each image in train (0), valid (1) or test (2).
CELEBA_IMAGES, CELEBA_PARTITION = "img_align_celeba", "list_eval_partition.txt"
_CELEBA_SPLITS = {"train": "0", "valid": "1", "validation": "1", "test": "2"}


def is_celeba_layout(data_dir) -> bool:
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
        raise split_error("celeb_a", split, ("train", "valid", "test"))
    partition, folder = root / CELEBA_PARTITION, root / CELEBA_IMAGES
    if not partition.is_file():
        raise DataError(f"CelebA partition file not found: {partition} -- {fix}")
    if not folder.is_dir():
        raise DataError(f"CelebA image folder not found: {folder} -- {fix}")
    wanted = _CELEBA_SPLITS[split]
    names = [name for name, part in _read_partition(partition, fix).items() if part == wanted]
    if not names:
        raise DataError(f"{partition} lists no image of split {split!r} (partition {wanted}) -- {fix}")
    present = {e.name: e for e in os.scandir(folder)}
    missing = [n for n in names if n not in present]
    if missing:
        raise DataError(
            f"{len(missing)} images of split {split!r} listed in {partition} are missing from "
            f"{folder}, e.g. {missing[0]} -- {fix}"
        )
    irregular = [n for n in names if not present[n].is_file()]
    if irregular:
        raise DataError(f"{folder / irregular[0]} is not a regular file -- replace it with the original image")
    empty = [n for n in names if present[n].stat().st_size == 0]
    if empty:
        raise DataError(
            f"{len(empty)} images of split {split!r} are empty files, e.g. {folder / empty[0]} -- "
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
        raise DataError(f"cannot read {partition}: {e} -- {fix}") from None
    parts: dict[str, str] = {}
    lines: dict[str, int] = {}
    repeated: list[tuple[str, int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"line {number} of {partition} is {line.strip()[:60]!r}, want '<file>.jpg 0|1|2' -- {fix}")
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
