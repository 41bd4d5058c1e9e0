"""Property-based tests: arbitrary or nearly valid bytes in the data files never make a reader raise
anything but the project's own error (DataError for vae_jax, ValueError for vae_torch_ref).

tests/test_input_pipeline.py already feeds arbitrary bytes to `read_idx` and `read_amat` one file at
a time; this adds `load_dataset` over a whole data directory (the dims, label and count checks behind
the readers), IDX files that are valid but for one field, and the PyTorch reference's reader, checked
against vae_jax's where both accept a file.
"""

import gzip
import math
import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vae_jax import datasets, readers
from vae_jax.errors import DataError
from vae_torch_ref import data as torch_data

SETTINGS = settings(max_examples=150, deadline=None)
MAGICS = [0x00000801, 0x00000803, 0x00000802, 0x00000804, 0x00000D03, 0x08030000]


@st.composite
def idx_files(draw):
    """Bytes of an IDX file that is valid or wrong in one field: magic, dims, length or values."""
    magic = draw(st.sampled_from(MAGICS) | st.integers(0, 2**32 - 1))
    ndim = magic & 0xFF if magic & 0xFF in (1, 3) else draw(st.integers(0, 4))
    dims = draw(st.lists(st.integers(0, 30) | st.sampled_from([28, 2**31, 2**32 - 1]), min_size=ndim, max_size=ndim))
    size = math.prod(dims) if math.prod(dims) <= 5000 else draw(st.integers(0, 64))
    size = max(0, size + draw(st.sampled_from([0, 0, 0, -1, 1, -7])))
    if draw(st.booleans()):
        body = draw(st.binary(min_size=size, max_size=size))
    else:  # one value throughout: labels in or just outside 0..9
        body = bytes([draw(st.integers(0, 12))]) * size
    raw = struct.pack(f">I{ndim}I", magic, *[d % 2**32 for d in dims]) + body
    return raw[: draw(st.sampled_from([len(raw)] * 4 + [len(raw) // 2, 3, 0]))]


def encode(raw: bytes, how: str) -> bytes:
    """How the bytes land in a file named *.gz: compressed, stored raw, a cut gzip stream, or a gzip
    stream with a damaged deflate block (zlib.error, which is neither OSError nor EOFError)."""
    if how == "gzip":
        return gzip.compress(raw)
    if how == "cut_gzip":
        data = gzip.compress(raw)
        return data[: max(1, len(data) - 9)]
    if how == "flip_gzip":
        data = bytearray(gzip.compress(raw))
        data[10] ^= 0xFF  # the first byte after the 10-byte gzip header
        return bytes(data)
    return raw


HOW = st.sampled_from(["gzip", "gzip", "raw", "cut_gzip", "flip_gzip"])


def _check_dataset(ds):
    assert ds.images.dtype == np.float32 and ds.images.ndim == 4 and ds.images.shape[1:] == (28, 28, 1)
    assert len(ds) > 0 and ds.images.min() >= 0 and ds.images.max() <= 1
    assert ds.labels.dtype == np.int32 and ds.labels.shape == (len(ds),) and ds.labels.max() <= 9


@SETTINGS
@given(
    which=st.sampled_from(sorted(f for pair in readers._IDX_FILES.values() for f in pair)),
    content=idx_files() | st.binary(max_size=2000),
    how=HOW,
)
def test_load_dataset_mnist_only_raises_data_error(which, content, how):
    """One of the 4 MNIST files replaced; both splits loaded through load_dataset from the folder."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for (images, labels), n in zip(readers._IDX_FILES.values(), (3, 2), strict=False):
            for name, array in ((images, rng.integers(0, 256, (n, 28, 28))), (labels, rng.integers(0, 10, n))):
                raw = (
                    struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape) + array.astype(np.uint8).tobytes()
                )
                Path(tmp, f"{name}.gz").write_bytes(gzip.compress(raw))
        Path(tmp, f"{which}.gz").write_bytes(encode(content, how))
        for split in ("train", "test"):
            try:
                ds = datasets.load_dataset("mnist", split, tmp, source="files")
            except DataError as e:
                assert "\n" not in str(e)
            else:
                _check_dataset(ds)


@SETTINGS
@given(
    lengths=st.lists(st.sampled_from([784, 784, 783, 785, 0]), max_size=3),
    seed=st.integers(0, 2**32 - 1),
    noise=st.binary(max_size=40),
    at=st.integers(0, 5000),
    how=HOW,
)
def test_load_dataset_binarized_only_raises_data_error(lengths, seed, noise, at, how):
    """Rows of 0/1 (some of the wrong length), with arbitrary bytes inserted anywhere."""
    rng = np.random.default_rng(seed)
    text = b"".join(b" ".join(b"%d" % v for v in rng.integers(0, 2, n)) + b"\n" for n in lengths)
    text = text[:at] + noise + text[at:]
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "binarized_mnist_test.amat.gz").write_bytes(encode(text, how))
        try:
            ds = datasets.load_dataset("binarized_mnist", "test", tmp, source="files")
        except DataError as e:
            assert "\n" not in str(e)
        else:
            assert ds.images.shape[1:] == (28, 28, 1) and set(np.unique(ds.images)) <= {0.0, 1.0}


@SETTINGS
@given(content=idx_files() | st.binary(max_size=2000), how=HOW)
def test_torch_reference_read_idx_only_raises_value_error_and_agrees(content, how):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "file-idx-ubyte.gz")
        path.write_bytes(encode(content, how))
        try:
            got = torch_data.read_idx(path)
        except ValueError as e:
            assert str(path) in str(e)
            return
        assert got.dtype == np.uint8
        try:
            want = readers.read_idx(path)
        except DataError:
            return  # vae_jax is stricter (e.g. images of 0 rows or columns)
        assert got.shape == want.shape and np.array_equal(got, want)
