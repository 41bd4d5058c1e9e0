"""vae_jax.parity's layer pairing: torch's and Flax's layers matched by call order and shape, the
weights copied through vae_jax.convert's per-layer rules, and the layers' conventions compared.

  pair_layers     the first call of each parameter-holding layer, in call order, in each framework,
                  paired one to one; a count, kind or shape that does not fit is one ConversionError
  copy_weights    torch -> Flax (convert.load_layer) or Flax -> torch (convert.layer_tensors)
  mapping_table   every pair and every tensor's layout, printable
  conventions     BatchNorm momentum / eps / affine / running statistics; conv and transposed-conv
                  kernel, stride, dilation, groups and padding (explicit vs SAME/VALID, for the input
                  size the layer saw) -- each difference with its fix
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from flax import nnx

from vae_jax import convert
from vae_jax.errors import ConversionError
from vae_jax.layers import BatchNorm2d


@dataclasses.dataclass
class Pair:
    """One torch layer and the Flax layer it was matched with (first calls, same position)."""

    torch_name: str
    flax_name: str
    torch_module: Any
    flax_module: Any
    torch_in: tuple  # the input shape of the first call (torch layout)
    flax_in: tuple

    @property
    def label(self) -> str:
        return f"{self.torch_name} ({type(self.torch_module).__name__}) / {self.flax_name} ({_cls(self.flax_module)})"


def _cls(m) -> str:
    return ("nnx." if type(m).__module__.startswith("flax") else "") + type(m).__name__


def _first_calls(taps) -> list:
    seen, out = set(), []
    for t in taps:
        if id(t.module) not in seen:
            seen.add(id(t.module))
            out.append(t)
    return out


def _torch_tensors(tmod) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in tmod.state_dict().items()}


def pair_layers(torch_taps, flax_taps, torch_leaves, flax_leaves) -> list[Pair]:
    """Pair the layers by the order of their first call; every layer of either model must be called
    and paired with one of its kind and shapes.

    Raises:
        ConversionError: one line naming the first layer that does not fit, or is never called.
    """
    tcalls, fcalls = _first_calls(torch_taps), _first_calls(flax_taps)
    called_t, called_f = {id(t.module) for t in tcalls}, {id(t.module) for t in fcalls}
    for name, m in torch_leaves:
        if id(m) not in called_t:
            raise ConversionError(
                f"torch layer {name} ({type(m).__name__}) holds tensors but is not called in forward(x) "
                "-- remove it, or call it, so that every tensor is compared"
            )
    for name, m in flax_leaves:
        if id(m) not in called_f:
            raise ConversionError(
                f"Flax layer {name} ({_cls(m)}) holds tensors but is not called in __call__ "
                "-- remove it, or call it, so that every tensor is compared"
            )
    pairs = []
    for i in range(max(len(tcalls), len(fcalls))):
        if i >= len(tcalls) or i >= len(fcalls):
            t, f = (tcalls[i], "torch") if i < len(tcalls) else (fcalls[i], "Flax")
            raise ConversionError(
                f"{f} layer {t.name} ({_cls(t.module)}) has no counterpart: torch calls {len(tcalls)} layers "
                f"with tensors, Flax {len(fcalls)} -- give both models the same layers in the same order"
            )
        t, f = tcalls[i], fcalls[i]
        pair = Pair(t.name, f.name, t.module, f.module, t.in_shape, f.in_shape)
        kinds = convert.TORCH_KINDS.get(convert.layer_kind(f.module) or object, ())
        if type(t.module).__name__ not in kinds:
            raise ConversionError(
                f"layer {i + 1} in call order: {pair.label} -- a {_cls(f.module)} stands for torch's "
                f"{' or '.join(kinds)}; is a layer missing or out of order?"
            )
        want, have = _torch_tensors(t.module), convert.layer_tensors(f.module)
        for k, v in have.items():
            if k in want and tuple(want[k].shape) != tuple(v.shape):
                raise ConversionError(
                    f"layer {i + 1} in call order: {pair.label}: torch's {k} is {tuple(want[k].shape)}, "
                    f"Flax's gives {tuple(v.shape)} in torch's layout -- check the layer's sizes"
                )
        pairs.append(pair)
    return pairs


def copy_weights(pairs, direction: str) -> None:
    """Copy every pair's tensors: "torch->flax" (torch's into the Flax layers) or "flax->torch"."""
    import torch  # optional: the [torch] extra

    for p in pairs:
        where = f"{p.torch_name} -> {p.flax_name}"
        if direction == "torch->flax":
            convert.load_layer(p.flax_module, _torch_tensors(p.torch_module), where)
            continue
        if direction != "flax->torch":
            raise ValueError(f"direction {direction!r}: use torch->flax or flax->torch")
        given = convert.layer_tensors(p.flax_module)
        own = dict(p.torch_module.named_parameters(recurse=False)) | dict(p.torch_module.named_buffers(recurse=False))
        missing = [k for k in own if k not in given and k != "num_batches_tracked"]
        if missing:
            raise ConversionError(f"{where}: Flax has no tensor for torch's {missing[0]} -- check the layer's options")
        with torch.no_grad():
            for k, v in given.items():
                if k in own and own[k] is not None:
                    own[k].copy_(torch.from_numpy(np.array(v)).to(own[k].dtype))


def mapping_table(pairs) -> str:
    """The mapping as a markdown table: one row per tensor, torch's name, shape and Flax's."""
    lines = ["| # | torch | shape | Flax | shape | layout |", "|---|---|---|---|---|---|"]
    for i, p in enumerate(pairs, 1):
        rules = {name: attr for attr, name, _, _ in convert._rules_for(p.flax_module) or ()}
        flax = {attr: getattr(p.flax_module, attr, None) for attr in rules.values()}
        for k, v in _torch_tensors(p.torch_module).items():
            attr = rules.get(k)
            var = flax.get(attr) if attr else None
            fshape = tuple(var[...].shape) if var is not None else "-"
            lines.append(
                f"| {i} | {p.torch_name}.{k} | {tuple(v.shape)} | "
                f"{p.flax_name + '.' + attr if var is not None else '(not held)'} | {fshape} | {_layout(p, k)} |"
            )
    return "\n".join(lines)


def _layout(p, k) -> str:
    f = p.flax_module
    if k != "weight" or isinstance(f, (BatchNorm2d, nnx.BatchNorm)):
        return "as is" if k != "num_batches_tracked" or isinstance(f, BatchNorm2d) else "no Flax tensor"
    if isinstance(f, nnx.ConvTranspose):
        return "(in,out,kh,kw) -> (kh,kw,out,in)" if f.transpose_kernel else "(in,out,kh,kw) -> flip, (kh,kw,in,out)"
    if isinstance(f, nnx.Conv):
        return "OIHW -> HWIO"
    return "(out,in) -> (in,out)"


# ------------------------------------------------------------------------------------ conventions


@dataclasses.dataclass
class Convention:
    """One setting in which a pair of layers differs, and the fix (on the Flax side)."""

    torch_name: str
    flax_name: str
    what: str
    fix: str

    def line(self) -> str:
        return f"{self.torch_name} / {self.flax_name}: {self.what} -- {self.fix}"


def _tup(v, n) -> tuple:
    if v is None:
        return (1,) * n
    return (v,) * n if isinstance(v, int) else tuple(v)


def _flax_conv_pad(f, spatial, transpose) -> tuple | None:
    """Flax's (lo, hi) padding per spatial axis for inputs of `spatial` size (None: CIRCULAR)."""
    k, s = _tup(f.kernel_size, len(spatial)), _tup(f.strides, len(spatial))
    d = _tup(f.kernel_dilation, len(spatial))
    pad = f.padding
    if isinstance(pad, str):
        if pad == "CIRCULAR":
            return None
        out = []
        for n, kk, ss, dd in zip(spatial, k, s, d, strict=True):
            ke = (kk - 1) * dd + 1
            if transpose:
                total = ke + ss - 2 + (max(ke - ss, 0) if pad == "VALID" else 0)
                lo = ke - 1 if (pad == "VALID" or ss > ke - 1) else math.ceil(total / 2)
                out.append((lo, total - lo))
            elif pad == "VALID":
                out.append((0, 0))
            else:
                total = max((math.ceil(n / ss) - 1) * ss + ke - n, 0)
                out.append((total // 2, total - total // 2))
        return tuple(out)
    if isinstance(pad, int):
        return ((pad, pad),) * len(spatial)
    return tuple((p, p) if isinstance(p, int) else tuple(p) for p in pad)


def _conv_conventions(p) -> list[Convention]:
    t, f = p.torch_module, p.flax_module
    n = len(t.kernel_size)
    out = []

    def diff(what, tv, fv, fix):
        if tuple(tv) != tuple(fv):
            out.append(Convention(p.torch_name, p.flax_name, f"{what}: torch {tuple(tv)}, Flax {tuple(fv)}", fix))

    diff("kernel size", t.kernel_size, _tup(f.kernel_size, n), f"pass kernel_size={tuple(t.kernel_size)}")
    diff("stride", t.stride, _tup(f.strides, n), f"pass strides={tuple(t.stride)}")
    diff("dilation", t.dilation, _tup(f.kernel_dilation, n), f"pass kernel_dilation={tuple(t.dilation)}")
    if t.groups != getattr(f, "feature_group_count", 1):
        groups = getattr(f, "feature_group_count", 1)
        out.append(
            Convention(p.torch_name, p.flax_name, f"groups: torch {t.groups}, Flax {groups}", "pass the same groups")
        )
    spatial = tuple(p.flax_in[1:-1])
    transpose = isinstance(f, nnx.ConvTranspose)
    have = _flax_conv_pad(f, spatial, transpose)
    k, d = t.kernel_size, t.dilation
    if transpose:
        op = t.output_padding
        want = tuple((d[i] * (k[i] - 1) - t.padding[i], d[i] * (k[i] - 1) - t.padding[i] + op[i]) for i in range(n))
        how = (
            f"torch's ConvTranspose padding={tuple(t.padding)} (output_padding={tuple(op)}) pads the dilated "
            f"input by dilation*(k-1)-p (+ output_padding at the high end)"
        )
    elif isinstance(t.padding, str):
        total = [d[i] * (k[i] - 1) for i in range(n)]
        want = tuple((0, 0) if t.padding == "valid" else (x // 2, x - x // 2) for x in total)
        how = f"torch's padding={t.padding!r}"
    else:
        want = tuple((q, q) for q in t.padding)
        how = f"torch pads {tuple(t.padding)} on each side"
    if have != want:
        got = f"Flax padding={f.padding!r}" + (
            f" pads {have} on inputs of {spatial}" if isinstance(f.padding, str) else ""
        )
        out.append(Convention(p.torch_name, p.flax_name, f"padding: {got}; {how}", f"pass padding={want}"))
    return out


def _bn_conventions(p) -> list[Convention]:
    t, f = p.torch_module, p.flax_module
    out = []

    def add(what, fix):
        out.append(Convention(p.torch_name, p.flax_name, what, fix))

    if isinstance(f, nnx.BatchNorm):
        add(
            "nnx.BatchNorm keeps the biased batch variance in its running variance (torch: unbiased, n/(n-1)) "
            f"and its momentum is the weight of the old statistics (momentum={f.momentum} is torch's "
            f"{1 - f.momentum:.3g}; torch's is {t.momentum})",
            f"use vae_jax.layers.BatchNorm2d(num_features, momentum={t.momentum}, eps={t.eps}), torch's "
            "semantics on the last axis (for BatchNorm1d too)",
        )
        eps, affine = f.epsilon, (f.scale is not None, f.bias is not None)
    else:
        if t.momentum is None:
            add("torch's momentum=None (a cumulative average) has no Flax counterpart", "pass a momentum to both")
        elif not math.isclose(f.momentum, t.momentum, rel_tol=1e-9):
            hint = " (0.9 is Flax's convention for torch's 0.1)" if math.isclose(f.momentum, 1 - t.momentum) else ""
            add(f"momentum: torch {t.momentum}, Flax {f.momentum}{hint}", f"pass momentum={t.momentum}")
        eps, affine = f.eps, (True, True)
    if not math.isclose(eps, t.eps, rel_tol=1e-9):
        add(f"eps: torch {t.eps}, Flax {eps}", f"pass eps={t.eps}")
    if affine != (t.affine, t.affine):
        add(f"affine: torch {t.affine}, Flax scale/bias {affine}", "give both the same affine setting")
    if not t.track_running_stats:
        add("torch's track_running_stats=False normalises with batch statistics in eval mode too", "track them")
    return out


def conventions(pairs) -> list[Convention]:
    """Every convention in which a pair differs, in call order (empty: none)."""
    out = []
    for p in pairs:
        if isinstance(p.flax_module, (nnx.Conv, nnx.ConvTranspose)):
            out += _conv_conventions(p)
        elif isinstance(p.flax_module, (BatchNorm2d, nnx.BatchNorm)):
            out += _bn_conventions(p)
    return out


def fan_in(f, in_shape) -> float:
    """The number of products each output of Flax layer `f` sums (see vae_jax.tolerances, S)."""
    if isinstance(f, (BatchNorm2d, nnx.BatchNorm)):
        return float(np.prod(in_shape[:-1]))
    if isinstance(f, nnx.ConvTranspose):
        return f.in_features * float(np.prod(f.kernel_size)) / float(np.prod(_tup(f.strides, len(f.kernel_size))))
    if isinstance(f, nnx.Conv):
        return f.in_features * float(np.prod(f.kernel_size)) / f.feature_group_count
    return float(f.in_features)
