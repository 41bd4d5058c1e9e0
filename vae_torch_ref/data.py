"""MNIST without torchvision: the original IDX files -> TensorDatasets / the chapter's loaders."""
import gzip
import math
import os
import zlib

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

IDX_IMAGES_MAGIC = 0x00000803   # uint8, 3 dims (n, rows, cols)
IDX_LABELS_MAGIC = 0x00000801   # uint8, 1 dim (n,)

MNIST_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}


def read_idx(path):
    """Read an IDX file of uint8 images (magic 0x00000803) or labels (0x00000801),
    gzip-compressed or plain (told apart by content). Returns a uint8 numpy array of shape
    (n, rows, cols) or (n,). Raises ValueError naming the file for a missing file, a bad
    gzip stream, a bad magic number, or a size that does not match the header."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError('%s: file not found' % path)
    with open(path, 'rb') as f:
        raw = f.read()
    if raw[:2] == b'\x1f\x8b':
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError('%s: bad or truncated gzip data (%s)' % (path, e)) from None
    if len(raw) < 4:
        raise ValueError('%s: truncated: %d bytes, no IDX header' % (path, len(raw)))
    magic = int.from_bytes(raw[:4], 'big')
    if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        raise ValueError('%s: bad magic 0x%08x (expected 0x%08x images or 0x%08x labels)'
                         % (path, magic, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC))
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError('%s: truncated: %d bytes, header needs %d' % (path, len(raw), header))
    shape = tuple(int.from_bytes(raw[4 + 4 * k:8 + 4 * k], 'big') for k in range(ndim))
    expected = header + math.prod(shape)  # Python ints: np.prod overflows on a corrupt header
    if len(raw) < expected:
        raise ValueError('%s: truncated: %d bytes, header %s needs %d'
                         % (path, len(raw), shape, expected))
    if len(raw) > expected:
        raise ValueError('%s: %d bytes after the data of shape %s'
                         % (path, len(raw) - expected, shape))
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _mnist_file(data_dir, name):
    for candidate in (name + '.gz', name):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    raise ValueError('%s: file not found (nor %s)' % (os.path.join(data_dir, name + '.gz'), name))


def _dataset(data_dir, split):
    images_name, labels_name = MNIST_FILES[split]
    images_path = _mnist_file(data_dir, images_name)
    labels_path = _mnist_file(data_dir, labels_name)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError('%s / %s: expected images (n, rows, cols) and labels (n,), got %s and %s'
                         % (images_path, labels_path, images.shape, labels.shape))
    if len(images) != len(labels):
        raise ValueError('%s: %d images but %s has %d labels'
                         % (images_path, len(images), labels_path, len(labels)))
    # like transforms.ToTensor: uint8 -> float32 / 255, with a channel axis
    x = torch.from_numpy(images).unsqueeze(1).to(torch.float32).div(255)
    y = torch.from_numpy(labels.astype(np.int64))
    return TensorDataset(x, y)


def mnist_datasets(data_dir):
    """(train_dataset, test_dataset): TensorDatasets of ((N,1,28,28) float32 in [0,1], int64).

    data_dir holds the four MNIST files (.gz or plain), or is a folder with them in
    data_dir/mnist (e.g. $VAE_DATA_DIR)."""
    data_dir = os.fspath(data_dir)
    if os.path.isdir(os.path.join(data_dir, 'mnist')):
        data_dir = os.path.join(data_dir, 'mnist')
    return _dataset(data_dir, 'train'), _dataset(data_dir, 'test')


def mnist_loaders(data_dir, batch_size=128, num_workers=2):
    """The chapter's DataLoaders: (train_loader shuffled, test_loader in order)."""
    train_dataset, test_dataset = mnist_datasets(data_dir)
    train_loader = DataLoader(train_dataset, batch_size=batch_size, shuffle=True,
                              num_workers=num_workers)
    test_loader = DataLoader(test_dataset, batch_size=batch_size, shuffle=False,
                             num_workers=num_workers)
    return train_loader, test_loader
