"""What a file given as a torch checkpoint is, in words, when it cannot be read or used: not a
regular file (a directory, a FIFO, a device), a zip that is not a torch file, a truncated one, a
pickle a weights-only load refuses, a tensor that is sparse or holds NaN. Each is one line for a
ConversionError/ConfigError (vae_jax.torch_import). torch is not imported here."""

from __future__ import annotations

import os
import re
import stat
import zipfile
from pathlib import Path

import numpy as np

from vae_jax.errors import ConfigError, ConversionError

_FIX = "pass the path of a torch .pt file (torch.save(model.state_dict(), path))"
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)")
_TOO_FEW_BYTES = ("Trying to resize storage that is not resizable", "out of bounds for storage", "storage of size")


def check_regular_file(path: Path) -> None:
    """ConfigError unless path is a regular file (or a link to one), saying what it is instead."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file -- {_FIX}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror} -- {_FIX}") from None
    what = next((w for test, w in _KINDS if test(mode)), None if stat.S_ISREG(mode) else "not a regular file")
    if what:
        raise ConfigError(f"cannot read {path}: it is {what}, not a file -- {_FIX}")


def unreadable(path: Path, e: BaseException) -> str:
    """The one line for torch.load(path, weights_only=True) failing with e: what the file is."""
    text = " ".join(str(e).split())
    found = _GLOBAL.search(text)
    if found:
        return (
            f"{path} holds a pickled {found.group(1)} object, which a weights-only load refuses "
            "(vae-jax never runs a pickle's code) -- save the tensors alone: torch.save(model.state_dict(), path)"
        )
    if any(t in text for t in _TOO_FEW_BYTES):
        return (
            f"cannot read {path}: a tensor's header declares more elements than the file holds (a damaged "
            "or hand-made file) -- save it again with torch.save"
        )
    with open(path, "rb") as f:
        head = f.read(4)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            torch_file = any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
        if not torch_file:
            return f"cannot read {path}: it is a zip but not a torch file (no data.pkl inside) -- {_FIX}"
        return f"cannot read {path}: a torch file whose pickle a weights-only load refuses ({text[-120:]}) -- {_FIX}"
    if head == b"PK\x03\x04":
        return f"cannot read {path}: a truncated file (a zip's start without its end) -- copy or save it again whole"
    if head[:1] == b"\x80":
        return f"cannot read {path}: a plain pickle, not a torch.save'd file -- {_FIX}"
    return f"cannot read {path}: not a torch.save'd file ({type(e).__name__}) -- {_FIX}"


def check_tensor(path, key: str, t) -> None:
    """ConfigError for a tensor vae-jax cannot use: sparse (or another non-strided layout)."""
    import torch

    if t.layout != torch.strided:
        raise ConversionError(
            f"{path}: tensor {key!r} is {str(t.layout).replace('torch.', '')}, not dense -- save it dense "
            f"(state_dict entries .to_dense())"
        )


def check_finite(path, tensors: dict) -> None:
    """ConfigError naming the first tensor with NaN or inf values: such weights train nothing."""
    for key, a in tensors.items():
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            bad = int((~np.isfinite(a)).sum())
            raise ConversionError(
                f"{path}: tensor {key!r} holds {bad} NaN or inf values -- start from a file with finite "
                "weights (the run that wrote it diverged?)"
            )
