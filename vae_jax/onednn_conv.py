"""2-D convolutions on the CPU through oneDNN (the library PyTorch's CPU convolutions use), called
from JAX through the XLA FFI. The library, libvae_onednn_conv.so, is built from onednn_conv.cc
(beside this file) into the package by `pip install` (CMakeLists.txt, scikit-build-core); it is
optional: an install without a C++ compiler or oneDNN has none, and the conv models use XLA's forms.

Float32, NHWC activations and HWIO kernels, as Flax's layers:

  conv2d(x, w, stride, padding)
      == jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  conv2d_transpose(x, w, stride, padding, output_padding=0)
      == jax.lax.conv_transpose(x, w, (stride, stride), padding_with_output_padding,
                                dimension_numbers=("NHWC", "HWIO", "NHWC"))
         as nnx.ConvTranspose calls it (transpose_kernel=False: w is torch's kernel spatially
         flipped, shape (kh, kw, cin, cout)); output_padding adds to the high padding, so torch's
         ConvTranspose2d(k=4, s=2, p=1, output_padding=1) is padding ((2, 2), (2, 2)) with
         output_padding=1, i.e. vae_jax.layers' _TCONV_PAD_OUT1 ((2, 3), (2, 3)).

padding: ((lo_h, hi_h), (lo_w, hi_w)), or an int p for ((p, p), (p, p)). Both are jax.custom_vjp
functions: their forward and both gradients each run one oneDNN primitive (a transposed conv's
forward is the strided conv's backward-data, its input gradient is the conv's forward and its
kernel gradient the conv's backward-weights with the activations' roles swapped). No bias: add it.

Also training-mode batch normalization over NHWC float32 (batch_norm_train, see its docstring).

The library is loaded (after libdnnl.so.3 from the installed onednn-cpu-gomp), and its five targets
registered for platform "cpu", on the first call (or by `load()`); `available()` says whether it can
be, `unavailable_reason()` why not. It is found in the package's folders (`vae_jax.__path__`: the
installed package, and in an editable install the checkout too); VAE_ONEDNN_CONV_LIB overrides the path.
A library that is not built is the XLA forms, quietly here (a run says so in its log). One that is
there (or named by VAE_ONEDNN_CONV_LIB) but unloadable or stale (without the expected symbols) is one
warning line per process, naming the rebuild command, and the XLA forms.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import vae_jax
from vae_jax.errors import warn
from vae_jax.onednn_build import LIB_DIST, LIB_NAME, NotFoundError, installed_file

LIB_ENV = "VAE_ONEDNN_CONV_LIB"
_TARGETS = {
    "vae_onednn_conv_fwd": "VaeOnednnConvFwd",
    "vae_onednn_conv_bwd_data": "VaeOnednnConvBwdData",
    "vae_onednn_conv_bwd_weights": "VaeOnednnConvBwdWeights",
    "vae_onednn_bn_fwd": "VaeOnednnBnFwd",
    "vae_onednn_bn_bwd": "VaeOnednnBnBwd",
}
REBUILD = "reinstall vae-jax where a C++ compiler is (in a checkout: `make onednn`, or `pip install -e .`)"


class OnednnConvNotBuiltError(ImportError):
    """The oneDNN convolution library is missing, cannot be loaded or is stale. args: (the problem,)."""

    def __str__(self) -> str:
        return f"{self.args[0]} -- {REBUILD}"


_lib: ctypes.CDLL | None = None
_failure: OnednnConvNotBuiltError | None = None  # why it cannot be used, once found out: tried once
_warned = False


def packaged_lib() -> Path:
    """The library the install built: the first of the package's folders that holds it (an editable
    install has two, the installed package's and the checkout's), else where a wheel puts it."""
    for folder in vae_jax.__path__:
        if (Path(folder) / LIB_NAME).is_file():
            return Path(folder) / LIB_NAME
    return Path(__file__).resolve().parent / LIB_NAME


def lib_path() -> Path:
    return Path(os.environ.get(LIB_ENV) or packaged_lib())


def load() -> ctypes.CDLL:
    """Loads the library and registers its FFI targets (once). Raises OnednnConvNotBuiltError."""
    global _lib, _failure
    if _lib is None:
        if _failure is None:
            try:
                _lib = _open(lib_path())
            except OnednnConvNotBuiltError as e:
                _failure = e
        if _lib is None:
            assert _failure is not None
            raise _failure
    return _lib


def _open(path: Path) -> ctypes.CDLL:
    """The library at `path` with its FFI targets registered; every symbol is looked up before the
    first is registered, so a stale build registers nothing."""
    if not path.is_file() and not os.environ.get(LIB_ENV):
        raise OnednnConvNotBuiltError(
            f"this install has no oneDNN kernels ({path.name} is built by `pip install` where a C++ compiler "
            "and oneDNN are: Linux x86-64)"
        )
    if not path.is_file():
        raise OnednnConvNotBuiltError(f"the oneDNN library {path} is missing")
    # libdnnl.so.3 first, from the installed wheel, so the dynamic linker has it whatever the rpath;
    # without it, the library's rpath or the system's, and loading the library says if none is found
    with contextlib.suppress(NotFoundError, OSError):
        ctypes.CDLL(str(installed_file(LIB_DIST, "libdnnl.so.3")), mode=ctypes.RTLD_GLOBAL)
    try:
        lib = ctypes.cdll.LoadLibrary(str(path))
    except OSError as e:
        raise OnednnConvNotBuiltError(f"the oneDNN library {path} cannot be loaded ({str(e)[-120:]})") from None
    missing = [symbol for symbol in _TARGETS.values() if not hasattr(lib, symbol)]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise OnednnConvNotBuiltError(
            f"the oneDNN library {path} is stale (no symbol {missing[0]}{more}: built from an older "
            "vae_jax/onednn_conv.cc, or another library)"
        )
    for target, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return lib


def available() -> bool:
    """Whether the library can be used. When it cannot, though it is there or VAE_ONEDNN_CONV_LIB
    names it: one warning line (once per process) naming the rebuild command; the XLA forms run."""
    global _warned
    try:
        load()
    except OnednnConvNotBuiltError as e:
        if not _warned and (os.environ.get(LIB_ENV) or os.path.lexists(packaged_lib())):
            _warned = True
            warn(f"{e.args[0]}, so the convolutions run in XLA's forms -- {REBUILD}")
        return False
    return True


def unavailable_reason() -> str | None:
    """Why the conv models cannot use oneDNN's kernels in this process, in a phrase; None when they can."""
    if jax.default_backend() != "cpu":
        return f"they are for the CPU and JAX runs on {jax.default_backend()}"
    try:
        load()
    except OnednnConvNotBuiltError as e:
        return e.args[0]
    return None


def onednn_version() -> str:
    v = load().VaeOnednnVersion()
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"


Padding = tuple[tuple[int, int], tuple[int, int]]


def _pads(padding) -> Padding:
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    (lh, hh), (lw, hw) = padding
    return ((int(lh), int(hh)), (int(lw), int(hw)))


def _stride(stride) -> int:
    s = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if len(s) != 2 or s[0] != s[1] or s[0] < 1:
        raise ValueError(f"stride must be a positive int or a pair of equal ones, got {stride!r}")
    return int(s[0])


def _check(*arrays):
    for a in arrays:
        if a.ndim != 4 or a.dtype != jnp.float32:
            raise TypeError(f"oneDNN conv takes rank-4 float32 arrays, got {a.dtype}{list(a.shape)}")


def _call(target, out_shape, a, b, stride, pad):
    load()
    (lh, hh), (lw, hw) = pad
    f = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(tuple(out_shape), jnp.float32), vmap_method="sequential")
    i64 = np.int64
    return f(a, b, stride=i64(stride), pad_lh=i64(lh), pad_hh=i64(hh), pad_lw=i64(lw), pad_hw=i64(hw))


def _out_hw(x_shape, w_shape, stride, pad):
    return tuple((x_shape[1 + i] + pad[i][0] + pad[i][1] - w_shape[i]) // stride + 1 for i in range(2))


def _fwd(x, w, stride, pad):  # y = conv(x, w)
    oh, ow = _out_hw(x.shape, w.shape, stride, pad)
    return _call("vae_onednn_conv_fwd", (x.shape[0], oh, ow, w.shape[3]), x, w, stride, pad)


def _bwd_data(dy, w, x_shape, stride, pad):  # dx of conv(x, w), x of shape x_shape
    return _call("vae_onednn_conv_bwd_data", x_shape, dy, w, stride, pad)


def _bwd_weights(x, dy, w_shape, stride, pad):  # dw of conv(x, w), w of shape w_shape
    return _call("vae_onednn_conv_bwd_weights", w_shape, x, dy, stride, pad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, stride, pad):
    return _fwd(x, w, stride, pad)


def _conv_vjp_fwd(x, w, stride, pad):
    return _fwd(x, w, stride, pad), (x, w)


def _conv_vjp_bwd(stride, pad, res, g):
    x, w = res
    return _bwd_data(g, w, x.shape, stride, pad), _bwd_weights(x, g, w.shape, stride, pad)


_conv.defvjp(_conv_vjp_fwd, _conv_vjp_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_bwd_data(x, wc, y_shape, stride, pad):
    """y (y_shape) = the backward-data of conv(y, wc) applied to x, wc the conv's HWIO kernel."""
    return _bwd_data(x, wc, y_shape, stride, pad)


def _cbd_vjp_fwd(x, wc, y_shape, stride, pad):
    return _bwd_data(x, wc, y_shape, stride, pad), (x, wc)


def _cbd_vjp_bwd(y_shape, stride, pad, res, g):
    x, wc = res
    return _fwd(g, wc, stride, pad), _bwd_weights(g, x, wc.shape, stride, pad)


_conv_bwd_data.defvjp(_cbd_vjp_fwd, _cbd_vjp_bwd)


def conv2d(x, w, stride=1, padding=0):
    """NHWC x (N, H, W, C), HWIO w (KH, KW, C, O) -> (N, OH, OW, O); see the module docstring."""
    _check(x, w)
    if x.shape[3] != w.shape[2]:
        raise ValueError(f"x has {x.shape[3]} channels, the kernel expects {w.shape[2]}")
    return _conv(x, w, _stride(stride), _pads(padding))


def conv2d_transpose(x, w, stride=1, padding=0, output_padding=0):
    """jax.lax.conv_transpose(x, w, (stride, stride), padding + output_padding at the high ends,
    dimension_numbers=("NHWC", "HWIO", "NHWC")); w (KH, KW, cin, cout) as nnx.ConvTranspose's."""
    _check(x, w)
    if x.shape[3] != w.shape[2]:
        raise ValueError(f"x has {x.shape[3]} channels, the kernel expects {w.shape[2]}")
    s = _stride(stride)
    (lh, hh), (lw, hw) = _pads(padding)
    hh, hw = hh + output_padding, hw + output_padding
    kh, kw = w.shape[0], w.shape[1]
    # The strided conv whose backward-data this is: padding k-1-p, the kernel flipped with its
    # in/out channels swapped; output (H-1)*s + 1 + lo + hi - k + 1 rows, as lax's.
    pad = ((kh - 1 - lh, kh - 1 - hh), (kw - 1 - lw, kw - 1 - hw))
    if min(pad[0] + pad[1]) < 0:
        raise NotImplementedError(f"transposed-conv padding above kernel_size - 1: {padding!r}")
    y_shape = (
        x.shape[0],
        (x.shape[1] - 1) * s + 1 + lh + hh - kh + 1,
        (x.shape[2] - 1) * s + 1 + lw + hw - kw + 1,
        w.shape[3],
    )
    if min(y_shape[1:3]) < 1:
        raise ValueError(f"transposed conv of {x.shape} with {w.shape}, padding {padding!r}: empty output")
    wc = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
    return _conv_bwd_data(x, wc, y_shape, s, pad)


# Drop-ins with jax.lax's signatures: oneDNN where it applies (float32, NHWC/HWIO, equal strides,
# no dilation or groups, explicit padding), jax.lax otherwise. nnx.Conv takes the first as its
# `conv_general_dilated` argument; nnx.ConvTranspose calls jax.lax.conv_transpose directly, so a
# layer uses the second by overriding __call__ (as vae_jax.layers' SubPixelConvTranspose does).

_NHWC = ("NHWC", "HWIO", "NHWC")


def _plain(lhs, rhs, strides, dimension_numbers, dtype_ok):
    if lhs.ndim != 4 or rhs.ndim != 4 or lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32 or not dtype_ok:
        return False
    dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    want = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    return dn == want and len(set(strides)) == 1 and available()


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
    **kw,
):
    """jax.lax.conv_general_dilated, through conv2d when it applies."""
    if (
        _plain(lhs, rhs, window_strides, dimension_numbers, preferred_element_type in (None, jnp.float32))
        and not isinstance(padding, str)
        and set(lhs_dilation or (1,)) == {1}
        and set(rhs_dilation or (1,)) == {1}
        and feature_group_count == 1
        and batch_group_count == 1
    ):
        return conv2d(lhs, rhs, window_strides[0], padding)
    return jax.lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation,
        rhs_dilation,
        dimension_numbers,
        feature_group_count,
        batch_group_count,
        precision,
        preferred_element_type,
        **kw,
    )


def conv_transpose(
    lhs,
    rhs,
    strides,
    padding,
    rhs_dilation=None,
    dimension_numbers=None,
    transpose_kernel=False,
    precision=None,
    preferred_element_type=None,
):
    """jax.lax.conv_transpose, through conv2d_transpose when it applies."""
    if (
        _plain(lhs, rhs, strides, dimension_numbers or _NHWC, preferred_element_type in (None, jnp.float32))
        and not isinstance(padding, str)
        and set(rhs_dilation or (1,)) == {1}
        and not transpose_kernel
        and all(rhs.shape[i] - 1 - p >= 0 for i in range(2) for p in padding[i])
    ):
        return conv2d_transpose(lhs, rhs, strides[0], padding)
    return jax.lax.conv_transpose(
        lhs, rhs, strides, padding, rhs_dilation, dimension_numbers, transpose_kernel, precision, preferred_element_type
    )


# Batch normalization, training mode (the batch's statistics).


def _bn_fwd_call(x, scale, shift, eps):
    load()
    c = (x.shape[3],)
    out = (jax.ShapeDtypeStruct(x.shape, jnp.float32),) + (jax.ShapeDtypeStruct(c, jnp.float32),) * 2
    f = jax.ffi.ffi_call("vae_onednn_bn_fwd", out, vmap_method="sequential")
    return f(x, scale, shift, eps=np.float32(eps))


def _bn_bwd_call(x, dy, scale, mean, var, eps):
    load()
    c = (x.shape[3],)
    out = (jax.ShapeDtypeStruct(x.shape, jnp.float32),) + (jax.ShapeDtypeStruct(c, jnp.float32),) * 2
    f = jax.ffi.ffi_call("vae_onednn_bn_bwd", out, vmap_method="sequential")
    return f(x, dy, scale, mean, var, eps=np.float32(eps))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _bn_train(x, scale, shift, eps):
    return _bn_fwd_call(x, scale, shift, eps)


def _bn_vjp_fwd(x, scale, shift, eps):
    y, mean, var = _bn_fwd_call(x.value, scale.value, shift.value, eps)
    return (y, mean, var), (x.value, scale.value, mean, var)


def _bn_vjp_bwd(eps, res, g):
    x, scale, mean, var = res
    gy, gmean, gvar = g
    if isinstance(gy, jax.custom_derivatives.SymbolicZero):
        gy = jnp.zeros(x.shape, jnp.float32)
    dx, dscale, dshift = _bn_bwd_call(x, gy, scale, mean, var, eps)
    # The statistics' own cotangents: none (symbolically zero) when the caller uses them only under
    # stop_gradient, as a BatchNorm layer's running averages do, so this costs nothing there.
    # Otherwise they are added exactly: d mean / dx = 1/M, d var / dx = 2 (x - mean) / M.
    m = x.shape[0] * x.shape[1] * x.shape[2]
    if not isinstance(gmean, jax.custom_derivatives.SymbolicZero):
        dx = dx + gmean / m
    if not isinstance(gvar, jax.custom_derivatives.SymbolicZero):
        dx = dx + (2.0 / m) * gvar * (x - mean)
    return dx, dscale, dshift


_bn_train.defvjp(_bn_vjp_fwd, _bn_vjp_bwd, symbolic_zeros=True)


def batch_norm_train(x, scale, shift, eps=1e-5):
    """Training-mode batch normalization of NHWC float32 x (N, H, W, C) through oneDNN:

        y = (x - mean) * rsqrt(var + eps) * scale + shift,   returns (y, mean, var)

    mean and var (C,) are the batch mean and the BIASED variance over N, H, W (divided by N*H*W; a
    layer's running variance, as torch's, wants the unbiased one: var * M / (M - 1)). A
    jax.custom_vjp: the gradient w.r.t. x, scale and shift through y runs one oneDNN primitive.
    The statistics are meant as stop-gradient outputs (a BatchNorm layer uses them only under
    jax.lax.stop_gradient, for its running averages): their cotangents are then symbolic zeros
    and cost nothing. Should a caller differentiate through them anyway, their (exact) terms are
    added to dx in plain JAX.

    oneDNN runs it on VAE_ONEDNN_BN_THREADS threads (default 0: all cores): its multithreaded batch
    norm spins in a barrier, which stalls on a machine loaded past its cores, where
    VAE_ONEDNN_BN_THREADS=1 is faster (docs/speed.md).
    """
    for a, nd in ((x, 4), (scale, 1), (shift, 1)):
        if a.ndim != nd or a.dtype != jnp.float32:
            raise TypeError(
                f"oneDNN batch norm takes float32 x (N,H,W,C), scale, shift (C,); got {a.dtype}{list(a.shape)}"
            )
    if scale.shape != (x.shape[3],) or shift.shape != (x.shape[3],):
        raise ValueError(f"scale {scale.shape} and shift {shift.shape} must be ({x.shape[3]},) for x {x.shape}")
    if x.shape[0] * x.shape[1] * x.shape[2] == 0:
        raise ValueError(f"batch norm of an empty batch: {x.shape}")
    return _bn_train(x, scale, shift, float(eps))
