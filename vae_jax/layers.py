"""torch-compatible layers for the chapter's models, and the exact forms the conv layers compute in.

Each layer has torch's parameters under Flax's names, so `vae_jax.convert` maps a torch
state_dict onto it with per-layer transposes:

  Linear           nnx.Linear with torch's init
  Conv2d           torch Conv2d(cin, cout, kernel_size=4, stride=2, padding=1), NHWC
  ConvTranspose2d  torch ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1[,
                   output_padding=1]), NHWC, kernel spatially flipped relative to torch's
  BatchNorm2d      torch BatchNorm2d semantics (momentum, unbiased running variance, eps 1e-5,
                   num_batches_tracked) on the channel (last) axis

Initialisation follows torch's defaults (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and
biases, BatchNorm scale 1 and bias 0), so that both frameworks start from the same distribution.

`nchw_flatten` / `nchw_unflatten` move NHWC activations to and from torch's (C, H, W) flatten
order, so the fully connected layers next to a conv stack take torch's fc weights unpermuted.

Conv forms. The k4 s2 p1 layers can compute the same linear map in more than one form (same
parameters, float summation order aside); a `ConvForm`, a frozen (hashable) dataclass passed to
the layer's constructor and kept on the layer as a static attribute, says which:

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


def _torch_uniform(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def Linear(din, dout, *, rngs, param_dtype=jnp.float32):
    init = _torch_uniform(din)
    return nnx.Linear(din, dout, kernel_init=init, bias_init=init, param_dtype=param_dtype, rngs=rngs)


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
    """nnx.Conv (k4 s2 p1, float32) computed by oneDNN's convolution (vae_jax.onednn_conv); same
    parameters."""

    def __call__(self, inputs, out_sharding=None):
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        y = onednn_conv.conv2d(inputs, kernel, 2, ((1, 1), (1, 1)))
        return y if bias is None else y + bias


class OnednnConvTranspose(nnx.ConvTranspose):
    """nnx.ConvTranspose (k4 s2, padding _TCONV_PAD or _TCONV_PAD_OUT1, float32) computed by oneDNN
    (a strided conv's backward-data; vae_jax.onednn_conv); same parameters."""

    def __call__(self, inputs):
        pad = tuple(tuple(p) for p in cast(Sequence[Sequence[int]], self.padding))
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias), dtype=self.dtype)
        y = onednn_conv.conv2d_transpose(inputs, kernel, 2, _TCONV_PAD, output_padding=int(pad == _TCONV_PAD_OUT1))
        return y if bias is None else y + bias


def Conv2d(cin, cout, *, rngs, param_dtype=jnp.float32, conv_form: ConvForm = DEFAULT_CONV_FORM):
    """torch Conv2d(cin, cout, kernel_size=4, stride=2, padding=1) in NHWC.

    conv_form.conv "lax": nnx.Conv; "s2d" or "auto": SpaceToDepthConv (which decides "auto" per
    input shape). Same parameters whichever.
    """
    init = _torch_uniform(cin * 16)
    kw = dict(kernel_init=init, bias_init=init, param_dtype=param_dtype, rngs=rngs)
    if conv_form.conv == "lax":
        return nnx.Conv(cin, cout, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), **kw)
    if conv_form.conv == "onednn":
        return OnednnConv(cin, cout, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), **kw)
    return SpaceToDepthConv(cin, cout, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), conv_form=conv_form, **kw)


def ConvTranspose2d(
    cin, cout, *, output_padding=0, rngs, param_dtype=jnp.float32, conv_form: ConvForm = DEFAULT_CONV_FORM
):
    """torch ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1) in NHWC.

    Kernel layout (kh, kw, cin, cout), spatially flipped relative to torch's (cin, cout, kh, kw).
    torch computes fan_in of a transposed conv from weight.size(1) = cout, so does this init.
    conv_form.tconv_for(cout) "lax": nnx.ConvTranspose; "subpixel": SubPixelConvTranspose. Same
    parameters whichever.
    """
    init = _torch_uniform(cout * 16)
    pad = _TCONV_PAD_OUT1 if output_padding else _TCONV_PAD
    kw = dict(kernel_init=init, bias_init=init, param_dtype=param_dtype, rngs=rngs)
    if conv_form.tconv == "onednn":
        return OnednnConvTranspose(cin, cout, (4, 4), strides=(2, 2), padding=pad, **kw)
    if conv_form.tconv_for(cout) == "subpixel":
        return SubPixelConvTranspose(cin, cout, (4, 4), strides=(2, 2), padding=pad, conv_form=conv_form, **kw)
    return nnx.ConvTranspose(cin, cout, (4, 4), strides=(2, 2), padding=pad, **kw)


class BatchNorm2d(nnx.Module):
    """torch.nn.BatchNorm2d semantics on the last (channel) axis.

    Train mode normalises with the batch's biased variance and updates the running statistics
    with torch's rule: running = (1 - momentum) * running + momentum * batch, where the batch
    variance used for running_var is the UNBIASED one (n / (n - 1)); momentum 0.1 (= Flax 0.9),
    eps 1e-5. `count` is torch's num_batches_tracked. `model.eval()` / `model.train()` switch
    `use_running_average` as for nnx.BatchNorm.
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
        impl="xla",
    ):
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
            if self.impl == "onednn":
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


def nchw_flatten(h):
    """(B, H, W, C) -> (B, C*H*W) in torch's NCHW flatten order."""
    return jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)


def nchw_unflatten(h, c, hw):
    """(B, C*H*W) in torch's order -> (B, H, W, C)."""
    return jnp.transpose(h.reshape(h.shape[0], c, hw, hw), (0, 2, 3, 1))
