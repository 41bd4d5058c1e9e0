"""vae_jax.onednn_conv (oneDNN convolutions through the XLA FFI) against the lax convolutions the
layers use: forward values and gradients w.r.t. input and kernel, eagerly and under jax.jit, for
the k4 s2 p1 layer shapes of the chapter's conv models (batch 128). Skips when the library is not
in this install (it is built by `pip install` where a C++ compiler is: CMakeLists.txt)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import onednn_conv as oc

pytestmark = [
    pytest.mark.skipif(not oc.available(), reason=f"oneDNN conv library not built: {oc.REBUILD}"),
    pytest.mark.slow,  # the kernels at the chapter's layer shapes, batch 128, eager and jit
]

DN = ("NHWC", "HWIO", "NHWC")
B = 128
TCONV_PAD = ((2, 2), (2, 2))  # vae_jax.layers._TCONV_PAD; output_padding=1 -> _TCONV_PAD_OUT1 ((2, 3), (2, 3))

# (cin, cout, H): torch Conv2d(cin, cout, 4, 2, 1) on H x H
CONVS = [
    (1, 32, 28),
    (32, 64, 14),
    (64, 128, 7),  # ConvVAE28's encoder
    (3, 32, 64),
    (32, 64, 32),
    (64, 128, 16),
    (128, 256, 8),
]  # CelebAVAE's
# (cin, cout, H, output_padding): torch ConvTranspose2d(cin, cout, 4, 2, 1, output_padding) on H x H
TCONVS = [
    (128, 64, 3, 1),
    (128, 64, 3, 0),
    (64, 32, 7, 0),
    (64, 32, 12, 0),
    (32, 1, 14, 0),  # ConvVAE(28)'s
    (256, 128, 4, 0),
    (128, 64, 8, 0),
    (64, 32, 16, 0),
    (32, 3, 32, 0),
]  # CelebAVAE's


def lax_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN)


def lax_tconv(op):
    pad = ((2, 2 + op), (2, 2 + op))
    return lambda x, w: jax.lax.conv_transpose(x, w, (2, 2), pad, dimension_numbers=DN)


def onednn_conv(x, w):
    return oc.conv2d(x, w, 2, ((1, 1), (1, 1)))


def onednn_tconv(op):
    return lambda x, w: oc.conv2d_transpose(x, w, 2, TCONV_PAD, output_padding=op)


def data(cin, cout, h, seed=0):
    k = jax.random.split(jax.random.key(seed), 2)
    x = jax.random.normal(k[0], (B, h, h, cin), jnp.float32)
    w = jax.random.normal(k[1], (4, 4, cin, cout), jnp.float32) / np.sqrt(16 * cin)
    return x, w


def assert_close(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    # rtol on the values plus an atol relative to the array's scale (a sum of products cancels)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()), err_msg=what)


def check(mine, ref, x, w, jit):
    rng = np.random.default_rng(1)
    y_ref = ref(x, w)
    g = jnp.asarray(rng.standard_normal(y_ref.shape, np.float32))

    def grads(f):
        return jax.grad(lambda x, w: jnp.vdot(f(x, w), g), argnums=(0, 1))

    fwd, grd = (jax.jit(mine), jax.jit(grads(mine))) if jit else (mine, grads(mine))
    assert_close(fwd(x, w), y_ref, "forward")
    dx, dw = grd(x, w)
    dx_ref, dw_ref = grads(ref)(x, w)
    assert_close(dx, dx_ref, "d/dx")
    assert_close(dw, dw_ref, "d/dw")


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("cin,cout,h", CONVS)
def test_conv2d_matches_lax(cin, cout, h, jit):
    x, w = data(cin, cout, h)
    check(onednn_conv, lax_conv, x, w, jit)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("cin,cout,h,op", TCONVS)
def test_conv2d_transpose_matches_lax(cin, cout, h, op, jit):
    x, w = data(cin, cout, h)
    assert onednn_tconv(op)(x, w).shape == (B, 2 * h + op, 2 * h + op, cout)
    check(onednn_tconv(op), lax_tconv(op), x, w, jit)


def test_other_stride_and_padding():
    """Not only k4 s2 p1: a 3x3 stride-1 conv with asymmetric padding, and a stride-3 one."""
    x, w = data(8, 16, 11)
    w3 = w[:3, :3]
    for s, pad in ((1, ((1, 0), (2, 1))), (3, ((0, 2), (1, 1)))):

        def ref(x, w, s=s, pad=pad):
            return jax.lax.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=DN)

        def mine(x, w, s=s, pad=pad):
            return oc.conv2d(x, w, s, pad)

        check(mine, ref, x[:4], w3, jit=True)


def test_lax_drop_ins():
    """conv_general_dilated / conv_transpose with lax's signatures, as nnx.Conv and nnx.ConvTranspose
    call them (the ConvDimensionNumbers object, the default dimension numbers)."""
    x, w = data(16, 8, 7)
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, DN)
    assert_close(oc.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=dn), lax_conv(x, w), "conv")
    pad = ((2, 3), (2, 3))
    assert_close(oc.conv_transpose(x, w, (2, 2), pad), lax_tconv(1)(x, w), "tconv")
    # what oneDNN does not take falls back to lax
    assert_close(
        oc.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn),
        jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn),
        "SAME",
    )


def test_rejects_bad_input():
    x, w = data(4, 8, 8)
    with pytest.raises(TypeError):
        oc.conv2d(x.astype(jnp.float16), w, 2, 1)
    with pytest.raises(ValueError, match="channels"):
        oc.conv2d(x, w[:, :, :3], 2, 1)


# Batch normalization (training mode): the CelebAVAE's BatchNorm2d inputs (batch 128), and a small
# odd shape (C not a multiple of the SIMD width).
BN_SHAPES = [(B, 32, 32, 32), (B, 16, 16, 64), (B, 8, 8, 128), (B, 4, 4, 256), (3, 5, 7, 6)]
BN_EPS = 1e-5


def bn_ref(x, scale, shift, eps=BN_EPS):
    m = jnp.mean(x, (0, 1, 2))
    v = jnp.mean(jnp.square(x - m), (0, 1, 2))  # biased
    return (x - m) * jax.lax.rsqrt(v + eps) * scale + shift, m, v


def bn_data(shape, seed=0):
    c = shape[3]
    k = jax.random.split(jax.random.key(seed), 5)
    # per-channel offsets and scales, so that the statistics matter
    x = jax.random.normal(k[0], shape) * jax.random.uniform(k[1], (c,), minval=0.5, maxval=3.0)
    x = x + jax.random.normal(k[2], (c,))
    return x, 1.0 + 0.5 * jax.random.normal(k[3], (c,)), 0.5 * jax.random.normal(k[4], (c,))


def bn_close(got, want, what):
    # rtol 1e-4, atol 1e-5 relative to the array's scale: dscale/dshift are sums over N*H*W (up to
    # 131072) terms of magnitude ~1 (values in the hundreds), and oneDNN sums them sequentially per
    # thread, not pairwise as XLA: ~1e-5 of the largest value off, so an entry near 0 fails a bare
    # atol of 1e-5 (measured against a float64 reference: oneDNN's error ~7e-6 of max|dscale|, XLA's ~2e-7).
    got, want = np.asarray(got), np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(want).max())), err_msg=what)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_batch_norm_train_matches_reference(shape, jit):
    x, scale, shift = bn_data(shape)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(shape, np.float32))

    def mine(x, scale, shift):
        return oc.batch_norm_train(x, scale, shift, BN_EPS)

    def grads(f):  # as a BatchNorm layer uses it: the statistics only under stop_gradient
        def loss(x, scale, shift):
            y, m, v = f(x, scale, shift)
            return jnp.vdot(y, g) + jnp.sum(jax.lax.stop_gradient(m) + jax.lax.stop_gradient(v))

        return jax.grad(loss, argnums=(0, 1, 2))

    fwd, grd = (jax.jit(mine), jax.jit(grads(mine))) if jit else (mine, grads(mine))
    for got, want, what in zip(fwd(x, scale, shift), bn_ref(x, scale, shift), ("y", "mean", "var"), strict=True):
        assert got.shape == want.shape and got.dtype == jnp.float32, what
        bn_close(got, want, what)
    for got, want, what in zip(
        grd(x, scale, shift), grads(bn_ref)(x, scale, shift), ("d/dx", "d/dscale", "d/dshift"), strict=True
    ):
        bn_close(got, want, what)


def test_batch_norm_train_statistics_gradients():
    """Differentiated through mean and var too (not how a layer uses them), the gradients still match."""
    x, scale, shift = bn_data((4, 6, 5, 24))

    def grads(f):
        def loss(x, scale, shift):
            y, m, v = f(x, scale, shift)
            return jnp.sum(jnp.sin(y)) + jnp.sum(jnp.cos(m)) + jnp.sum(v * v)

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

    mine = grads(lambda x, s, b: oc.batch_norm_train(x, s, b, BN_EPS))
    for got, want, what in zip(
        mine(x, scale, shift), grads(bn_ref)(x, scale, shift), ("d/dx", "d/dscale", "d/dshift"), strict=True
    ):
        bn_close(got, want, what)


def test_batch_norm_train_eps_and_bad_input():
    x, scale, shift = bn_data((2, 3, 3, 8))
    for eps in (1e-3, 0.1):  # eps is part of the primitive cache's key
        for got, want in zip(oc.batch_norm_train(x, scale, shift, eps), bn_ref(x, scale, shift, eps), strict=True):
            bn_close(got, want, f"eps={eps}")
    with pytest.raises(TypeError):
        oc.batch_norm_train(x.astype(jnp.float16), scale, shift)
    with pytest.raises(ValueError, match="must be"):
        oc.batch_norm_train(x, scale[:4], shift)
