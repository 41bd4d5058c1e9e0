"""One converter between every vae_jax model and the chapter's PyTorch state_dicts.

The torch key of a Flax layer is its attribute path with nnx.Sequential's `layers` dropped
(`decoder_conv.layers.0` -> `decoder_conv.0`), so the chapter's attribute names carry over.
Per layer type:

  nnx.Linear         kernel (in, out)         <-> weight (out, in)          transpose
  nnx.Conv           kernel (kh, kw, in, out) <-> weight (out, in, kh, kw)  HWIO <-> OIHW
  nnx.ConvTranspose  kernel (kh, kw, in, out) <-> weight (in, out, kh, kw)  + spatial flip
  BatchNorm2d        scale, bias, mean, var, count <-> weight, bias, running_mean, running_var,
                                                      num_batches_tracked (int64)

The fc layers next to the conv stacks need no permutation: the models flatten in torch's NCHW
order (see vae_jax.layers).
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vae_jax.errors import ConversionError
from vae_jax.files import atomic_write
from vae_jax.layers import BatchNorm2d

# (flax attribute, torch name, flax->torch, torch->flax)
_T = lambda a: a.T  # noqa: E731
_Rule = tuple[str, str, Callable[[Any], Any] | None, Callable[[Any], Any] | None]
_RULES: dict[type, list[_Rule]] = {
    nnx.Linear: [("kernel", "weight", _T, _T), ("bias", "bias", None, None)],
    nnx.Conv: [
        ("kernel", "weight", lambda k: k.transpose(3, 2, 0, 1), lambda w: w.transpose(2, 3, 1, 0)),
        ("bias", "bias", None, None),
    ],
    nnx.ConvTranspose: [
        (
            "kernel",
            "weight",
            lambda k: k[::-1, ::-1].transpose(2, 3, 0, 1),
            lambda w: w.transpose(2, 3, 0, 1)[::-1, ::-1],
        ),
        ("bias", "bias", None, None),
    ],
    BatchNorm2d: [
        ("scale", "weight", None, None),
        ("bias", "bias", None, None),
        ("mean", "running_mean", None, None),
        ("var", "running_var", None, None),
        ("count", "num_batches_tracked", lambda c: c.astype(np.int64), None),
    ],
}


def _rules_for(module):
    """The rules of the first _RULES type `module` is an instance of (subclasses such as
    SubPixelConvTranspose map like their base class)."""
    rules = _RULES.get(type(module))
    if rules is None:
        for cls, r in _RULES.items():
            if isinstance(module, cls):
                return r
    return rules


def _entries(model):
    """Yield (torch key, module, flax attribute, to_torch, from_torch) for every tensor."""
    for path, module in nnx.iter_modules(model):
        rules = _rules_for(module)
        if rules is None:
            continue
        prefix = ".".join(str(p) for p in path if p != "layers")
        for attr, name, to_t, from_t in rules:
            if getattr(module, attr, None) is not None:
                yield f"{prefix}.{name}", module, attr, to_t, from_t


def to_numpy_state_dict(model) -> OrderedDict[str, np.ndarray]:
    """The torch state_dict of `model` as numpy arrays (torch's keys, shapes and layouts)."""
    sd = OrderedDict()
    for key, module, attr, to_t, _ in _entries(model):
        v = np.asarray(getattr(module, attr)[...])
        sd[key] = np.array(to_t(v) if to_t else v, order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
    return OrderedDict(sorted(sd.items()))


def to_torch_state_dict(model):
    """dict[str, torch.Tensor] with the chapter's keys and shapes; loads strict=True in torch."""
    import torch  # optional: the [torch] extra

    return OrderedDict((k, torch.from_numpy(v.copy())) for k, v in to_numpy_state_dict(model).items())


def load_torch_state_dict(model, state_dict) -> None:
    """Load a torch state_dict (torch tensors or numpy arrays) into `model`, in place, strictly.

    Any missing key, unexpected key or shape mismatch raises one ConversionError naming the key
    and both shapes; the model is left unchanged in that case.
    """
    given = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state_dict.items()}
    expected = to_numpy_state_dict(model)
    name = type(model).__name__
    for k, v in expected.items():
        if k not in given:
            raise ConversionError(
                f"state_dict does not fit {name}: missing key {k!r} (model expects shape {tuple(v.shape)}, "
                f"state_dict has none) -- is it a checkpoint of another model?"
            )
        if tuple(given[k].shape) != tuple(v.shape):
            raise ConversionError(
                f"state_dict does not fit {name}: key {k!r} has shape {tuple(given[k].shape)}, "
                f"model expects {tuple(v.shape)} -- check the model type and its dimensions"
            )
    extra = sorted(set(given) - set(expected))
    if extra:
        raise ConversionError(
            f"state_dict does not fit {name}: unexpected key {extra[0]!r} with shape "
            f"{tuple(given[extra[0]].shape)} (model has no such tensor) -- is it a checkpoint of another model?"
        )
    for key, module, attr, _, from_t in _entries(model):
        var = getattr(module, attr)
        v = given[key]
        var[...] = jnp.asarray(np.array(from_t(v) if from_t else v, order="C"), dtype=var.dtype)


def pt_bytes(model) -> bytes:
    """The model's torch state_dict as the bytes of a `.pt` file (torch.save)."""
    import torch  # optional: the [torch] extra

    buffer = io.BytesIO()
    torch.save(to_torch_state_dict(model), buffer)
    return buffer.getvalue()


def save_pt(model, path) -> None:
    """Write the model's torch state_dict to a `.pt` file (torch.save), atomically."""
    atomic_write(path, pt_bytes(model))


def load_pt(model, path) -> None:
    """Read a `.pt` state_dict file (torch.load, weights only) into `model`, strictly."""
    import torch  # optional: the [torch] extra

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConversionError(f"state_dict file not found: {path} -- pass the path of a .pt file") from None
    except Exception as e:  # noqa: BLE001 -- torch raises many types for a bad file
        raise ConversionError(
            f"cannot read state_dict file {path}: {type(e).__name__} -- is it a torch.save'd state_dict?"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ConversionError(f"{path} holds a {type(sd).__name__}, not a state_dict -- save model.state_dict()")
    load_torch_state_dict(model, sd)
