"""One converter between every vae_jax model and the chapter's PyTorch state_dicts.

The torch key of a Flax layer is its attribute path with nnx.Sequential's `layers` dropped
(`decoder_conv.layers.0` -> `decoder_conv.0`), so the chapter's attribute names carry over.
Per layer type:

  nnx.Linear         kernel (in, out)         <-> weight (out, in)          transpose
  nnx.Conv           kernel (kh, kw, in, out) <-> weight (out, in, kh, kw)  HWIO <-> OIHW
  nnx.ConvTranspose  kernel (kh, kw, in, out) <-> weight (in, out, kh, kw)  + spatial flip
    transpose_kernel=True: kernel (kh, kw, out, in) <-> weight (in, out, kh, kw), no flip (lax flips)
  BatchNorm2d        scale, bias, mean, var, count <-> weight, bias, running_mean, running_var,
                                                      num_batches_tracked (int64)
  nnx.BatchNorm      scale, bias, mean, var <-> weight, bias, running_mean, running_var (it keeps no
                     count: torch's num_batches_tracked has no Flax tensor, and nnx.BatchNorm's running
                     variance and momentum follow other conventions -- vae_jax.parity names them)

A module that holds parameters or batch statistics of its own and has no rule here raises one
ConversionError naming it (nothing is dropped silently). `layer_tensors` / `load_layer` convert one
layer (vae_jax.parity pairs layers by call order and uses them).

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
    nnx.BatchNorm: [
        ("scale", "weight", None, None),
        ("bias", "bias", None, None),
        ("mean", "running_mean", None, None),
        ("var", "running_var", None, None),
    ],
}
# nnx.ConvTranspose(transpose_kernel=True) stores (kh, kw, out, in) and lets lax flip it: torch's
# weight (in, out, kh, kw) maps by a transpose alone.
_TCONV_TRANSPOSED: list[_Rule] = [
    ("kernel", "weight", lambda k: k.transpose(3, 2, 0, 1), lambda w: w.transpose(2, 3, 1, 0)),
    ("bias", "bias", None, None),
]
# The torch classes each Flax layer type stands for (by class name: torch is not imported here).
TORCH_KINDS: dict[type, tuple[str, ...]] = {
    nnx.Linear: ("Linear",),
    nnx.Conv: ("Conv1d", "Conv2d", "Conv3d"),
    nnx.ConvTranspose: ("ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"),
    BatchNorm2d: ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
    nnx.BatchNorm: ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
}


def _rules_for(module):
    """The rules of the first _RULES type `module` is an instance of (subclasses such as
    SubPixelConvTranspose map like their base class)."""
    if isinstance(module, nnx.ConvTranspose) and getattr(module, "transpose_kernel", False):
        return _TCONV_TRANSPOSED
    rules = _RULES.get(type(module))
    if rules is None:
        for cls, r in _RULES.items():
            if isinstance(module, cls):
                return r
    return rules


def layer_kind(module) -> type | None:
    """The TORCH_KINDS type `module` maps as (its class or a base class), None for a container."""
    for cls in (type(module), *TORCH_KINDS):
        if cls in TORCH_KINDS and isinstance(module, cls):
            return cls
    return None


def _own_variables(module) -> list[str]:
    """The attributes of `module` that are nnx Variables (parameters, batch statistics) of its own."""
    return [k for k, v in vars(module).items() if isinstance(v, nnx.Variable)]


def _entries(model):
    """Yield (torch key, module, flax attribute, to_torch, from_torch) for every tensor."""
    for path, module in nnx.iter_modules(model):
        rules = _rules_for(module)
        if rules is None:
            own = _own_variables(module)
            if own:
                where = ".".join(str(p) for p in path) or "the model itself"
                raise ConversionError(
                    f"{where} ({type(module).__name__}) holds {', '.join(own)}, which no conversion rule maps "
                    f"-- build it from {', '.join(c.__name__ for c in TORCH_KINDS)} (vae_jax.convert)"
                )
            continue
        prefix = ".".join(str(p) for p in path if p != "layers")
        for attr, name, to_t, from_t in rules:
            if getattr(module, attr, None) is not None:
                yield f"{prefix}.{name}", module, attr, to_t, from_t


def layer_tensors(module) -> OrderedDict[str, np.ndarray]:
    """One layer's tensors under torch's names and layouts ({"weight": ..., "bias": ...})."""
    out = OrderedDict()
    for attr, name, to_t, _ in _rules_for(module) or ():
        if getattr(module, attr, None) is not None:
            v = np.asarray(getattr(module, attr)[...])
            out[name] = np.array(to_t(v) if to_t else v, order="C")
    return out


def load_layer(module, tensors: dict, where: str = "") -> None:
    """Load torch's tensors of one layer (torch's names, numpy arrays) into the Flax `module`, in place.

    A tensor the module expects and `tensors` lacks, or of another shape, raises ConversionError
    naming `where`; the module is unchanged then."""
    todo = []
    for attr, name, _, from_t in _rules_for(module) or ():
        if getattr(module, attr, None) is None:
            continue
        var = getattr(module, attr)
        if name not in tensors:
            raise ConversionError(f"{where}: torch has no {name} for Flax's {attr} -- check the layer's options")
        v = np.asarray(tensors[name])
        v = np.array(from_t(v) if from_t else v, order="C")
        if tuple(v.shape) != tuple(var[...].shape):
            raise ConversionError(
                f"{where}: torch's {name} {tuple(tensors[name].shape)} gives Flax {attr} {tuple(v.shape)}, "
                f"the layer holds {tuple(var[...].shape)} -- check its sizes"
            )
        todo.append((var, v))
    for var, v in todo:
        var[...] = jnp.asarray(v, dtype=var.dtype)


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
