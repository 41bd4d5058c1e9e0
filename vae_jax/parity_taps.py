"""What vae_jax.parity taps in both frameworks: the noise, each layer's output and the gradient there.

  inject_eps      torch.randn_like / torch.randn return a given eps inside a `with` block (JAX cannot
                  reproduce torch's random stream); the block checks the number of draws
  torch_taps      forward hooks on torch's parameter-holding leaf modules: (named_modules() name,
                  module, input, output) in call order, and the gradient at each output after backward
  flax_taps       the same for a Flax model: the `__call__` of each layer class in the model is wrapped
                  for the block, recording (path, module, input, output) in call order; given probes,
                  each output gets `+ probe` so that d loss / d probe is the gradient at that output
  bn_fed_biases   the biases that feed a BatchNorm directly, from the graph of one forward (a
                  BatchNorm's input is the previous layer's output tensor itself), not from names
  precision       float64 (jax.enable_x64) for a block only, JAX matmuls at "highest" precision and
                  torch's TF32 off for the block: nothing global is changed outside it

torch is imported inside functions only (it is an optional extra).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
from typing import Any

import jax
import numpy as np
from flax import nnx

from vae_jax import convert
from vae_jax.errors import ConversionError


class DrawCountError(ConversionError):
    """The torch model drew its noise another number of times than the Flax model takes eps."""


@contextlib.contextmanager
def inject_eps(eps, expected_draws: int | None = 1, shapes: list | None = None):
    """Within the block torch.randn_like(t) and torch.randn(*shape) return `eps` (shape and dtype
    must match); on exit, exactly `expected_draws` draws must have been made (None: any number).

    eps None: the real draws are made and their shapes appended to `shapes` (the probe run).

    Args:
        eps: a torch tensor, or None to record the draws.
        expected_draws: how many draws the model must make.
        shapes: a list to which the shape of every draw is appended.
    Raises:
        DrawCountError: another number of draws, or a draw of another shape or dtype.
    """
    import torch  # optional: the [torch] extra

    real_like, real_randn = torch.randn_like, torch.randn
    draws = [] if shapes is None else shapes

    def give(shape, dtype, real):
        draws.append(tuple(shape))
        if eps is None:
            return real()
        if tuple(shape) != tuple(eps.shape) or (dtype is not None and dtype != eps.dtype):
            raise DrawCountError(
                f"the torch model drew noise of shape {tuple(shape)} {dtype}, the Flax model's eps is "
                f"{tuple(eps.shape)} {eps.dtype} -- draw eps once, with mu's shape, in reparameterize"
            )
        return eps.clone()

    def like(t, *args, **kwargs):
        return give(t.shape, kwargs.get("dtype", t.dtype), lambda: real_like(t, *args, **kwargs))

    def randn(*size, **kwargs):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        return give(shape, kwargs.get("dtype"), lambda: real_randn(*size, **kwargs))

    torch.randn_like, torch.randn = like, randn  # type: ignore[assignment]
    try:
        yield draws
    finally:
        torch.randn_like, torch.randn = real_like, real_randn
    if expected_draws is not None and len(draws) != expected_draws:
        raise DrawCountError(
            f"the torch model drew noise {len(draws)} times in one forward pass, the Flax model takes one eps "
            "-- draw eps once (torch.randn_like(std)) in reparameterize, as the chapter's models do"
        )


@dataclasses.dataclass
class Tap:
    """One call of a layer: its name, the module, its input's shape, its output (numpy, the
    framework's own layout) and, after a backward pass, the gradient of the loss at that output."""

    name: str
    module: Any
    in_shape: tuple
    out: Any
    grad: Any = None
    input_is_previous: bool = False  # its input is the previous tap's output tensor itself


def torch_leaves(model) -> list[tuple[str, Any]]:
    """(name, module) of each torch module holding parameters or buffers of its own."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if list(m.parameters(recurse=False)) or [b for b in m.buffers(recurse=False) if b is not None]
    ]


@contextlib.contextmanager
def torch_taps(model, grads: bool = False):
    """Record every call of `model`'s parameter-holding modules (torch_leaves) in call order.

    Args:
        model: a torch.nn.Module.
        grads: also record the gradient at each output (filled in by a later backward()).
    Returns:
        (as the `with` target) the list of Tap, filled as the model runs.
    """
    taps: list[Tap] = []
    last: list[Any] = [None]
    handles = []

    def hook(name):
        def fn(module, inputs, output):
            x = inputs[0] if inputs else None
            tap = Tap(name, module, tuple(x.shape) if x is not None else (), output.detach().cpu().numpy().copy())
            tap.input_is_previous = x is not None and x is last[0]
            last[0] = output
            if grads and output.requires_grad:
                output.register_hook(lambda g, tap=tap: setattr(tap, "grad", g.detach().cpu().numpy().copy()))
            taps.append(tap)

        return fn

    for name, mod in torch_leaves(model):
        handles.append(mod.register_forward_hook(hook(name)))
    try:
        yield taps
    finally:
        for h in handles:
            h.remove()


_FLAX: list[Any] = [None]  # the active flax_taps recorder, if any


class _Recorder:
    def __init__(self, model, probes):
        self.names = {id(m): ".".join(str(p) for p in path) for path, m in nnx.iter_modules(model)}
        self.probes = probes
        self.taps: list[Tap] = []
        self.active: set[int] = set()
        self.last: Any = None


def _wrapped(orig):
    def call(self, *args, **kwargs):
        rec = _FLAX[0]
        if rec is None or id(self) in rec.active or id(self) not in rec.names:
            return orig(self, *args, **kwargs)
        rec.active.add(id(self))
        try:
            out = orig(self, *args, **kwargs)
        finally:
            rec.active.discard(id(self))
        x = args[0] if args else None
        i = len(rec.taps)
        if rec.probes is not None and i < len(rec.probes):
            out = out + rec.probes[i]
        tap = Tap(rec.names[id(self)], self, tuple(getattr(x, "shape", ())), out)
        tap.input_is_previous = x is not None and x is rec.last
        rec.last = out
        rec.taps.append(tap)
        return out

    call.__wrapped_parity__ = orig  # type: ignore[attr-defined]
    return call


def flax_leaves(model) -> list[tuple[str, Any]]:
    """(path, module) of each layer of `model` that vae_jax.convert maps (a ConversionError for a
    module holding variables that no rule maps)."""
    out = []
    for path, m in nnx.iter_modules(model):
        if convert.layer_kind(m) is not None:
            out.append((".".join(str(p) for p in path), m))
        elif [k for k, v in vars(m).items() if isinstance(v, nnx.Variable)]:
            list(convert._entries(model))  # raises the converter's one-line error naming it
    return out


@contextlib.contextmanager
def flax_taps(model, probes=None):
    """Record every call of `model`'s layers (flax_leaves) in call order, during the block.

    The `__call__` of each layer class is wrapped for the block only (restored after). Outputs are
    kept as JAX values (tracers under a transform: read them inside it).

    Args:
        model: the flax.nnx.Module whose layers are recorded (a merged copy inside a transform).
        probes: None, or one array per call, added to that call's output (zeros: values unchanged;
            differentiate with respect to them for the gradient at each output).
    Returns:
        (as the `with` target) the list of Tap.
    """
    classes = {type(m) for _, m in flax_leaves(model)}
    saved = {cls: cls.__dict__.get("__call__") for cls in classes}
    rec = _Recorder(model, probes)
    prev = _FLAX[0]
    for cls in classes:
        cls.__call__ = _wrapped(cls.__call__)
    _FLAX[0] = rec
    try:
        yield rec.taps
    finally:
        _FLAX[0] = prev
        for cls, orig in saved.items():
            if orig is None:
                del cls.__call__
            else:
                cls.__call__ = orig


def bn_fed(ttaps) -> dict[str, str]:
    """{torch name of a layer whose bias feeds a train-mode BatchNorm directly (its input is that
    layer's output tensor itself): the BatchNorm's name}. Those biases have a zero gradient in exact
    arithmetic (BatchNorm subtracts the batch mean, so a per-channel shift cancels)."""
    out = {}
    for a, b in itertools.pairwise(ttaps):
        bn = b.input_is_previous and type(b.module).__name__.startswith("BatchNorm") and b.module.training
        if bn and getattr(a.module, "bias", None) is not None:
            out[a.name] = b.name
    return out


def bn_fed_biases(torch_model, x) -> dict[str, str]:
    """The biases of `torch_model` that feed a BatchNorm directly, found from the graph of one
    train-mode forward on `x` (not from names): {state_dict key of the bias: the BatchNorm's name}.

    Args:
        torch_model: a torch.nn.Module (a copy is run; the model and its statistics are unchanged).
        x: a torch tensor or numpy array the model takes.
    Returns:
        e.g. {"encoder.0.bias": "encoder.1"}.
    """
    import torch  # optional: the [torch] extra

    tm = copy.deepcopy(torch_model).train()
    x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, order="C", copy=True))
    with torch.no_grad(), inject_eps(None, None), torch_taps(tm) as taps:
        tm(x)
    return {f"{k}.bias": v for k, v in bn_fed(taps).items()}


@contextlib.contextmanager
def precision(dtype: str):
    """float64 (jax.enable_x64) for the block when dtype is "float64"; JAX matmuls and convolutions at
    "highest" precision and torch's TF32 off (CUDA matmul and cuDNN) within the block only.

    Returns:
        (as the `with` target) a one-line description of the device and precision.
    """
    import torch  # optional: the [torch] extra

    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with jax.enable_x64(dtype == "float64"), jax.default_matmul_precision("highest"):
            dev = jax.devices()[0]
            yield (
                f"JAX on {dev.platform} ({dev.device_kind}), matmul precision highest; torch on cpu, TF32 off; {dtype}"
            )
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
