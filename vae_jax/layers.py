"""torch-semantics layers for the chapter's models and for ports of one's own, and the exact forms
the conv layers compute in.

Each layer takes torch's arguments and has torch's parameters under Flax's names, so
`vae_jax.convert` maps a torch state_dict onto it with per-layer transposes:

  Linear           torch Linear(in_features, out_features, bias): nnx.Linear with torch's init
  Conv2d           torch Conv2d(cin, cout, kernel_size, stride, padding, dilation, groups, bias), NHWC
  ConvTranspose2d  torch ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding,
                   groups=1, bias, dilation), NHWC, kernel spatially flipped relative to torch's
  BatchNorm2d      torch BatchNorm2d semantics (momentum, unbiased running variance, eps 1e-5,
                   num_batches_tracked) on the channel (last) axis; BatchNorm1d is the same class

The chapter's layers are these called with the chapter's arguments (Conv2d(cin, cout, 4, stride=2,
padding=1), ...). Initialisation follows torch's defaults (`torch_uniform`: U(-1/sqrt(fan_in),
1/sqrt(fan_in)) for weights and biases, BatchNorm scale 1 and bias 0), so that both frameworks start
from the same distribution.

`nchw_flatten` / `nchw_unflatten` move NHWC activations to and from torch's (C, H, W) flatten
order, so the fully connected layers next to a conv stack take torch's fc weights unpermuted.

Conv forms. The conv layers can compute the same linear map in more than one form (same
parameters, float summation order aside); a `ConvForm`, a frozen (hashable) dataclass passed to
the layer's constructor (or set for a whole model by `conv_form_scope`) and kept on the layer as a
static attribute, says which. The sub-pixel and space-to-depth forms are for the chapter's k4 s2 p1
only, oneDNN's for any kernel, stride and padding without dilation; the others are XLA's own:

  tconv  "lax":      nnx.ConvTranspose (XLA's transposed convolution)
         "subpixel": SubPixelConvTranspose (stride-1 3x3 conv to 4*cout channels + depth-to-space)
         "auto":     sub-pixel for cout >= 32 (output_padding included), lax for the last (cout 1
                     or 3) layers
  conv   "lax":      nnx.Conv (XLA's strided convolution)
         "s2d":      SpaceToDepthConv (space-to-depth + stride-1 2x2 conv)
         "auto":     space-to-depth for inputs of odd height or width (ConvVAE's 7 -> 3 layer) or of
                     at least `s2d_min_size` rows (CelebA's first two: their lax weight gradients
                     dominated the profile), lax for the others; decided from the static input
                     shape at trace time
  s1     how the stride-1 convolutions of the sub-pixel and space-to-depth forms are computed:
         "matmul": im2col -- the kh*kw shifted windows concatenated on the channel axis -- and one
                   matmul with the (kh*kw*cin, cout) kernel; the backward pass is a matmul and pads
         "lax":    lax.conv_general_dilated (XLA's convolution)

  "onednn" (tconv and conv): oneDNN's convolution primitives called through the XLA FFI
         (vae_jax.onednn_conv; OnednnConv, OnednnConvTranspose), float32 on the CPU only.

ConvForm() = ("auto", "auto", "matmul") is the fastest of the XLA forms for a whole training step
(XLA:CPU's own transposed conv, and a strided conv's input gradient, which is one, are its slow
part); `default_conv_form()`, what a model gets when none is passed, is "onednn" on the CPU when the
library is built and ConvForm() otherwise. The measurements: docs/speed.md, scripts/bench.py.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Sequence
from typing import cast

import jax
import jax.numpy as jnp
from flax import nnx

from vae_jax import onednn_conv
from vae_jax.errors import ConfigError

# k4 s2 p1 transposed conv of torch == lax.conv_transpose with explicit padding k-1-p = 2 on each
# side and a spatially flipped kernel (the flip is done by `vae_jax.convert`). torch's
# output_padding=1 adds one row/column at the high end.
_TCONV_PAD = ((2, 2), (2, 2))
_TCONV_PAD_OUT1 = ((2, 3), (2, 3))

TCONV_FORMS = ("auto", "lax", "subpixel", "onednn")
CONV_FORMS = ("auto", "lax", "s2d", "onednn")
S1_FORMS = ("matmul", "lax")
NORM_FORMS = ("xla", "onednn")


@dataclasses.dataclass(frozen=True)
class ConvForm:
    """Which form the k4 s2 p1 layers compute with (see the module docstring); the parameters are
    the same whichever. Frozen and hashable: a layer keeps it as static data, so jit specialises
    on it and models of different forms can live in one process."""

    tconv: str = "auto"
    conv: str = "auto"
    s1: str = "matmul"
    norm: str = "xla"  # BatchNorm2d in train mode: "xla" (jnp) or "onednn" (vae_jax.onednn_conv)
    s2d_min_size: int = 32  # conv "auto": space-to-depth also for even inputs this large (CelebA's 64, 32)

    def __post_init__(self):
        for name, allowed in (("tconv", TCONV_FORMS), ("conv", CONV_FORMS), ("s1", S1_FORMS), ("norm", NORM_FORMS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"ConvForm {name}={getattr(self, name)!r}: use one of {', '.join(allowed)}")
        if not isinstance(self.s2d_min_size, int) or self.s2d_min_size < 1:
            raise ValueError(f"ConvForm s2d_min_size={self.s2d_min_size!r}: use a positive integer")

    def tconv_for(self, cout: int) -> str:
        """The form ("lax" or "subpixel") of a transposed conv with `cout` output channels."""
        if self.tconv == "auto":
            return "subpixel" if cout >= 32 else "lax"
        return self.tconv

    def conv_for(self, h: int, w: int) -> str:
        """The form ("lax" or "s2d") of a strided conv on an h x w input."""
        if self.conv == "auto":
            return "s2d" if (h % 2 or w % 2 or h >= self.s2d_min_size) else "lax"
        return self.conv


DEFAULT_CONV_FORM = ConvForm()  # the XLA forms: every backend
ONEDNN_CONV_FORM = ConvForm(tconv="onednn", conv="onednn", norm="onednn")


def default_conv_form(dtype=jnp.float32) -> ConvForm:
    """The form a model gets when none is given: oneDNN's kernels on the CPU when the install built
    them (vae_jax.onednn_conv), the XLA forms otherwise (GPU/TPU, or not built).
    Decided when the model is built, not at import (JAX's backend is not started by importing)."""
    if jnp.dtype(dtype) == jnp.float32 and jax.default_backend() == "cpu" and onednn_conv.available():
        return ONEDNN_CONV_FORM
    return DEFAULT_CONV_FORM


def named_conv_form(name: str, dtype=jnp.float32) -> ConvForm:
    """The form of `--conv-form NAME`: auto (default_conv_form), onednn, xla (the exact XLA forms), lax."""
    if name == "auto":
        return default_conv_form(dtype)
    why = onednn_conv.unavailable_reason() if name == "onednn" else None
    if why:
        raise ConfigError(f"--conv-form onednn: {why} -- pass --conv-form xla (or auto)")
    return {"onednn": ONEDNN_CONV_FORM, "xla": DEFAULT_CONV_FORM, "lax": ConvForm(tconv="lax", conv="lax")}[name]


def torch_uniform(fan_in: int):
    """torch's default init of Linear and Conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Weights: kaiming_uniform_(a=sqrt(5)), bound gain * sqrt(3 / fan_in) with gain sqrt(2 / (1 + 5)),
    which is 1/sqrt(fan_in); biases: the same bound. An init function (key, shape, dtype) for Flax.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


_torch_uniform = torch_uniform  # the name it had


def Linear(in_features, out_features, bias=True, *, rngs, param_dtype=jnp.float32):
    """torch.nn.Linear(in_features, out_features, bias) with torch's default initialisation: nnx.Linear,
    kernel (in, out) (torch's weight transposed), bias (out,)."""
    init = torch_uniform(in_features)
    kw: dict = {} if bias else dict(use_bias=False)
    return nnx.Linear(
        in_features, out_features, kernel_init=init, bias_init=init, param_dtype=param_dtype, rngs=rngs, **kw
    )


def conv_s1(x, kernel, padding, *, precision=None, preferred_element_type=None, impl="matmul"):
    """Stride-1 NHWC convolution with an HWIO kernel and explicit ((lo, hi), (lo, hi)) padding.

    impl: "matmul" (im2col + one matmul) or "lax" (lax.conv_general_dilated); see ConvForm.s1."""
    if impl not in S1_FORMS:
        raise ValueError(f"conv_s1 impl={impl!r}: use one of {', '.join(S1_FORMS)}")
    if impl == "lax":
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            (1, 1),
            padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    kh, kw, cin, cout = kernel.shape
    xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    cols = jnp.concatenate([xp[:, i : i + ho, j : j + wo, :] for i in range(kh) for j in range(kw)], axis=-1)
    return jnp.dot(
        cols, kernel.reshape(kh * kw * cin, cout), precision=precision, preferred_element_type=preferred_element_type
    )


def subpixel_kernel(kernel):
    """Flax ConvTranspose kernel (4, 4, cin, cout) (torch's, spatially flipped) -> the equivalent
    stride-1 kernel (3, 3, cin, 4 * cout), output channels ordered (row phase, col phase, cout).

    1-D, torch weight w, flipped kf[j] = w[3 - j]: y[2m] = x[m] w1 + x[m-1] w3 and
    y[2m+1] = x[m+1] w0 + x[m] w2, so over the window (x[m-1], x[m], x[m+1]) the taps are
    phase 0: (kf0, kf2, 0) and phase 1: (0, kf1, kf3).
    """
    cin, cout = kernel.shape[2], kernel.shape[3]
    z = jnp.zeros((cin, cout), kernel.dtype)
    taps = ((0, 2, None), (None, 1, 3))  # phase -> flipped-kernel index at window position 0, 1, 2
    phases = []
    for r in (0, 1):
        for c in (0, 1):
            phases.append(
                jnp.stack(
                    [
                        jnp.stack(
                            [
                                z if (taps[r][a] is None or taps[c][b] is None) else kernel[taps[r][a], taps[c][b]]
                                for b in range(3)
                            ]
                        )
                        for a in range(3)
                    ]
                )
            )  # (3, 3, cin, cout)
    return jnp.stack(phases, axis=-2).reshape(3, 3, cin, 4 * cout)


def subpixel_conv_transpose(
    x, kernel, bias=None, *, output_padding=0, precision=None, preferred_element_type=None, s1="matmul"
):
    """torch ConvTranspose2d(k=4, s=2, p=1, output_padding) on NHWC `x` with a Flax (flipped)
    kernel, as a stride-1 3x3 convolution producing 4*cout channels followed by depth-to-space.
    output_padding=1: one more zero row/column of input at the high end, output cropped to 2H+1.
    s1: how the stride-1 convolution is computed (conv_s1's impl)."""
    b, h, w, _ = x.shape
    cout = kernel.shape[-1]
    e = 1 if output_padding else 0
    y = conv_s1(
        x,
        subpixel_kernel(kernel),
        ((1, 1 + e), (1, 1 + e)),
        precision=precision,
        preferred_element_type=preferred_element_type,
        impl=s1,
    )
    ho, wo = y.shape[1], y.shape[2]
    y = y.reshape(b, ho, wo, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * ho, 2 * wo, cout)
    if e:
        y = y[:, : 2 * h + 1, : 2 * w + 1]
    return y if bias is None else y + bias


def space_to_depth_conv(x, kernel, bias=None, *, precision=None, preferred_element_type=None, s1="matmul"):
    """torch Conv2d(k=4, s=2, p=1) on NHWC `x` with a Flax HWIO kernel, as space-to-depth of the
    padded input followed by a stride-1 2x2 VALID convolution (kernel (2, 2, 4*cin, cout)).

    1-D: y[i] = sum_k xp[2i + k] w[k] = (xp[2i], xp[2i+1]).(w0, w1) + (xp[2i+2], xp[2i+3]).(w2, w3),
    xp the input padded by 1 low and to length 2 * out + 2 high (out = (H - 2) // 2 + 1).
    s1: how the stride-1 convolution is computed (conv_s1's impl).
    """
    b, h, w, cin = x.shape
    cout = kernel.shape[-1]
    oh, ow = (h - 2) // 2 + 1, (w - 2) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (1, 2 * oh + 1 - h), (1, 2 * ow + 1 - w), (0, 0)))
    s = xp.reshape(b, oh + 1, 2, ow + 1, 2, cin).transpose(0, 1, 3, 2, 4, 5).reshape(b, oh + 1, ow + 1, 4 * cin)
    k = kernel.reshape(2, 2, 2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * cin, cout)
    y = conv_s1(s, k, ((0, 0), (0, 0)), precision=precision, preferred_element_type=preferred_element_type, impl=s1)
    return y if bias is None else y + bias


class SubPixelConvTranspose(nnx.ConvTranspose):
    """nnx.ConvTranspose (k4 s2, padding _TCONV_PAD or _TCONV_PAD_OUT1) computed in sub-pixel form,
    its stride-1 convolution as `conv_form.s1` says.

    Same parameters (kernel (4, 4, cin, cout), bias) and state layout as nnx.ConvTranspose, so
    vae_jax.convert and checkpoints treat it as one; only __call__ differs.
    """

    def __init__(self, *args, conv_form: ConvForm = DEFAULT_CONV_FORM, **kwargs):
        super().__init__(*args, **kwargs)
        self.conv_form = conv_form

    def __call__(self, inputs):
        pad = tuple(tuple(p) for p in cast(Sequence[Sequence[int]], self.padding))
        if pad not in (_TCONV_PAD, _TCONV_PAD_OUT1) or inputs.ndim != 4:
            return super().__call__(inputs)
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        return subpixel_conv_transpose(
            inputs,
            kernel,
            bias,
            output_padding=int(pad == _TCONV_PAD_OUT1),
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
            s1=self.conv_form.s1,
        )


class SpaceToDepthConv(nnx.Conv):
    """nnx.Conv (k4 s2 p1) computed as space-to-depth + stride-1 2x2 conv; same parameters.

    conv_form.conv "s2d": always; "auto": where `ConvForm.conv_for` picks it for the static input
    shape (nnx.Conv's form otherwise). The stride-1 conv is computed as `conv_form.s1` says.
    """

    def __init__(self, *args, conv_form: ConvForm = ConvForm(conv="s2d"), **kwargs):
        super().__init__(*args, **kwargs)
        self.conv_form = conv_form

    def __call__(self, inputs, out_sharding=None):
        if inputs.ndim != 4 or self.conv_form.conv_for(*inputs.shape[1:3]) != "s2d":
            return super().__call__(inputs)
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        return space_to_depth_conv(
            inputs,
            kernel,
            bias,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
            s1=self.conv_form.s1,
        )


class OnednnConv(nnx.Conv):
    """nnx.Conv (float32, equal strides, no dilation or groups) computed by oneDNN's convolution
    (vae_jax.onednn_conv); same parameters."""

    def __call__(self, inputs, out_sharding=None):
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        stride = cast(Sequence[int], self.strides)[0]
        y = onednn_conv.conv2d(inputs, kernel, stride, cast(tuple, self.padding))
        return y if bias is None else y + bias


class OnednnConvTranspose(nnx.ConvTranspose):
    """nnx.ConvTranspose (float32, equal strides, no dilation, explicit padding of 0 .. k-1 on each
    side, output_padding included) computed by oneDNN (a strided conv's backward-data;
    vae_jax.onednn_conv); same parameters."""

    def __call__(self, inputs):
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        stride = cast(Sequence[int], self.strides)[0]
        y = onednn_conv.conv2d_transpose(inputs, kernel, stride, cast(tuple, self.padding))
        return y if bias is None else y + bias


def _pair(v, what: str) -> tuple[int, int]:
    """torch's int-or-pair argument as a pair of ints."""
    pair = (v, v) if isinstance(v, int) else tuple(v)
    if len(pair) != 2 or not all(isinstance(i, int) for i in pair):
        raise ValueError(f"{what}={v!r}: use an int or a pair of ints")
    return cast(tuple[int, int], pair)


def _conv_padding(padding, k, stride, dilation) -> tuple[tuple[int, int], tuple[int, int]]:
    """torch Conv2d's padding (int, pair, "valid", "same") as explicit ((lo, hi), (lo, hi))."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        if stride != (1, 1):
            raise ValueError("padding='same' is for stride 1 (as in torch)")
        total = [d * (kk - 1) for d, kk in zip(dilation, k, strict=True)]
        return ((total[0] // 2, total[0] - total[0] // 2), (total[1] // 2, total[1] - total[1] // 2))
    ph, pw = _pair(padding, "padding")
    return ((ph, ph), (pw, pw))


_FORM_SCOPE: contextvars.ContextVar[ConvForm | None] = contextvars.ContextVar("vae_jax_conv_form", default=None)


@contextlib.contextmanager
def conv_form_scope(form: ConvForm):
    """Layers built inside the block without a `conv_form` (or BatchNorm2d without `impl`) take `form`:
    how vae-jax's --conv-form reaches the layers of a model that does not pass it on."""
    token = _FORM_SCOPE.set(form)
    try:
        yield form
    finally:
        _FORM_SCOPE.reset(token)


def current_conv_form(dtype=jnp.float32) -> ConvForm:
    """The form of a layer built without one: conv_form_scope's, else default_conv_form(dtype)."""
    return _FORM_SCOPE.get() or default_conv_form(dtype)


def _chapter(k, stride, pad, dilation) -> bool:
    """Whether the arguments are the chapter's k4 s2 p1, the only ones of the s2d and sub-pixel forms."""
    return k == (4, 4) and stride == (2, 2) and pad == ((1, 1), (1, 1)) and dilation == (1, 1)


def Conv2d(
    in_channels,
    out_channels,
    kernel_size,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    bias=True,
    *,
    rngs,
    param_dtype=jnp.float32,
    conv_form: ConvForm | None = None,
):
    """torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
    in NHWC, with torch's default initialisation (`torch_uniform`, fan_in = in_channels / groups * kh * kw).

    Kernel (kh, kw, in_channels / groups, out_channels) (HWIO; torch's is OIHW), bias (out_channels,).
    padding: an int, a pair, "valid" or "same" (stride 1), zeros. Which form computes it (the
    parameters are the same whichever): conv_form.conv "onednn": OnednnConv where oneDNN takes the
    arguments (float32, equal strides, no dilation, groups 1), nnx.Conv elsewhere; "lax": nnx.Conv;
    "s2d" or "auto": SpaceToDepthConv for the chapter's k4 s2 p1 (which decides "auto" per input
    shape), nnx.Conv elsewhere. conv_form None: `current_conv_form(param_dtype)`.
    """
    k, s, d = _pair(kernel_size, "kernel_size"), _pair(stride, "stride"), _pair(dilation, "dilation")
    pad = _conv_padding(padding, k, s, d)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"groups={groups} must divide in_channels {in_channels} and out_channels {out_channels}")
    form = conv_form or current_conv_form(param_dtype)
    init = torch_uniform(in_channels // groups * k[0] * k[1])
    kw: dict = dict(padding=pad, kernel_init=init, bias_init=init, param_dtype=param_dtype, rngs=rngs)
    if d != (1, 1) or groups != 1 or not bias:
        kw.update(kernel_dilation=d, feature_group_count=groups, use_bias=bias)
    if form.conv == "onednn" and s[0] == s[1] and d == (1, 1) and groups == 1 and _f32(param_dtype):
        return OnednnConv(in_channels, out_channels, k, strides=s, **kw)
    if form.conv in ("s2d", "auto") and _chapter(k, s, pad, d) and groups == 1:
        return SpaceToDepthConv(in_channels, out_channels, k, strides=s, conv_form=form, **kw)
    return nnx.Conv(in_channels, out_channels, k, strides=s, **kw)


def ConvTranspose2d(
    in_channels,
    out_channels,
    kernel_size,
    stride=1,
    padding=0,
    output_padding=0,
    groups=1,
    bias=True,
    dilation=1,
    *,
    rngs,
    param_dtype=jnp.float32,
    conv_form: ConvForm | None = None,
):
    """torch.nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, output_padding,
    groups=1, bias, dilation) in NHWC, with torch's default initialisation (torch computes a transposed
    conv's fan_in from weight.size(1) = out_channels: fan_in = out_channels * kh * kw).

    Kernel (kh, kw, in_channels, out_channels), spatially flipped relative to torch's (in, out, kh, kw)
    (vae_jax.convert flips it). Output size (H - 1) * stride - 2 * padding + dilation * (k - 1) +
    output_padding + 1, as torch's: lax.conv_transpose with explicit padding dilation * (k - 1) - padding
    on each side, output_padding more at the high end. Which form computes it: conv_form.tconv "onednn":
    OnednnConvTranspose where oneDNN takes the arguments (float32, equal strides, no dilation,
    0 <= padding - output_padding, padding <= k - 1), nnx.ConvTranspose elsewhere; "subpixel" (or
    "auto" for out_channels >= 32): SubPixelConvTranspose for the chapter's k4 s2 p1, nnx.ConvTranspose
    elsewhere; "lax": nnx.ConvTranspose. conv_form None: `current_conv_form(param_dtype)`.
    """
    if groups != 1:
        raise ValueError(f"ConvTranspose2d groups={groups}: vae_jax.layers has groups=1 only")
    k, s, d = _pair(kernel_size, "kernel_size"), _pair(stride, "stride"), _pair(dilation, "dilation")
    p, op = _pair(padding, "padding"), _pair(output_padding, "output_padding")
    if any(o >= max(si, di) for o, si, di in zip(op, s, d, strict=True)):
        raise ValueError(f"output_padding={output_padding!r} must be smaller than stride or dilation (as in torch)")
    lo = [di * (ki - 1) - pi for di, ki, pi in zip(d, k, p, strict=True)]
    pad = ((lo[0], lo[0] + op[0]), (lo[1], lo[1] + op[1]))
    form = conv_form or current_conv_form(param_dtype)
    init = torch_uniform(out_channels * k[0] * k[1])
    kw: dict = dict(padding=pad, kernel_init=init, bias_init=init, param_dtype=param_dtype, rngs=rngs)
    if d != (1, 1) or not bias:
        kw.update(kernel_dilation=d, use_bias=bias)
    fits = all(oi <= pi <= ki - 1 for pi, oi, ki in zip(p, op, k, strict=True))
    if form.tconv == "onednn" and s[0] == s[1] and d == (1, 1) and fits and _f32(param_dtype):
        return OnednnConvTranspose(in_channels, out_channels, k, strides=s, **kw)
    chapter = _chapter(k, s, ((p[0], p[0]), (p[1], p[1])), d) and op[0] == op[1]
    if chapter and form.tconv_for(out_channels) == "subpixel":
        return SubPixelConvTranspose(in_channels, out_channels, k, strides=s, conv_form=form, **kw)
    return nnx.ConvTranspose(in_channels, out_channels, k, strides=s, **kw)


def _f32(dtype) -> bool:
    return jnp.dtype(dtype) == jnp.float32


class BatchNorm2d(nnx.Module):
    """torch.nn.BatchNorm2d(num_features, eps, momentum) semantics on the last (channel) axis.

    Train mode normalises with the batch's statistics over every axis but the last (batch, height,
    width) and updates the running statistics with torch's rule: running = (1 - momentum) * running +
    momentum * batch, where the batch variance used for running_var is the UNBIASED one (n / (n - 1))
    while the output is normalised with the biased one; momentum 0.1, eps 1e-5. `count` is torch's
    num_batches_tracked. `model.eval()` / `model.train()` switch `use_running_average` as for
    nnx.BatchNorm. A port of torch's BatchNorm1d ((B, C) or, channels last, (B, L, C)) uses it too:
    the statistics are over every axis but the last (`BatchNorm1d` is this class).

    Why not nnx.BatchNorm: its `momentum` is the weight of the OLD running value (0.99 by default;
    torch's momentum=0.1 is Flax's momentum=0.9), it keeps the BIASED batch variance as the running
    variance (torch the unbiased: a port's running_var would be off by n / (n - 1)), its variance is
    E[x^2] - E[x]^2 by default (use_fast_variance; torch's is E[(x - mean)^2]), its eps is named
    `epsilon` (1e-5 as torch's eps, both added to the variance under the square root), and it has no
    num_batches_tracked, so a torch state_dict does not map onto it one to one.

    impl: "xla" (jnp) or "onednn" (oneDNN's batch norm, train mode, 4-D float32 input; jnp for others);
    None: `current_conv_form().norm`.
    """

    def __init__(
        self,
        num_features,
        *,
        eps=1e-5,
        momentum=0.1,
        use_running_average=False,
        param_dtype=jnp.float32,
        rngs=None,
        impl=None,
    ):
        impl = current_conv_form(param_dtype).norm if impl is None else impl
        if impl not in NORM_FORMS:
            raise ValueError(f"BatchNorm2d impl={impl!r}: use one of {', '.join(NORM_FORMS)}")
        self.impl = impl  # static: "onednn" computes train mode with oneDNN's batch norm
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.use_running_average = use_running_average
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), param_dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), param_dtype))
        self.count = nnx.BatchStat(jnp.zeros((), jnp.int32))

    def __call__(self, x):
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            n = x.size // x.shape[-1]
            if self.impl == "onednn" and x.ndim == 4 and x.dtype == jnp.float32:
                y, mean, var = onednn_conv.batch_norm_train(x, self.scale[...], self.bias[...], self.eps)
            else:
                axes = tuple(range(x.ndim - 1))
                mean = jnp.mean(x, axes)
                var = jnp.mean(jnp.square(x - mean), axes)
                y = None
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(var) * (n / max(n - 1, 1))
            self.count[...] = self.count[...] + 1
            if y is not None:
                return y
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


BatchNorm1d = BatchNorm2d  # the same statistics over every axis but the last (features)


def nchw_flatten(h):
    """(B, H, W, C) -> (B, C*H*W) in torch's NCHW flatten order."""
    return jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)


def nchw_unflatten(h, c, hw):
    """(B, C*H*W) in torch's order -> (B, H, W, C)."""
    return jnp.transpose(h.reshape(h.shape[0], c, hw, hw), (0, 2, 3, 1))
