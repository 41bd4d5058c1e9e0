"""The sub-pixel transposed conv and the space-to-depth conv equal the lax forms they replace,
and vae_jax.convert maps them like their base classes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vae_jax import convert
from vae_jax import models as M


@pytest.fixture(params=["matmul", "lax"])
def s1_impl(request, monkeypatch):
    """Both ways the sub-pixel / space-to-depth forms compute their stride-1 convolution."""
    monkeypatch.setattr(M, "CONV_S1_IMPL", request.param)
    return request.param


@pytest.mark.parametrize("kh,kw,pad", [(3, 3, ((1, 1), (1, 1))), (3, 3, ((1, 2), (1, 2))), (2, 2, ((0, 0), (0, 0))),
                                       (2, 3, ((0, 1), (2, 0)))])
def test_conv_s1_matmul_equals_lax_convolution(kh, kw, pad):
    x = jax.random.normal(jax.random.key(0), (3, 6, 5, 4))
    k = jax.random.normal(jax.random.key(1), (kh, kw, 4, 7))
    with jax.default_matmul_precision("highest"):
        a = M.conv_s1(x, k, pad, impl="lax")
        b = M.conv_s1(x, k, pad, impl="matmul")
        ga = jax.grad(lambda x, k: jnp.sum(jnp.sin(M.conv_s1(x, k, pad, impl="lax"))), (0, 1))(x, k)
        gb = jax.grad(lambda x, k: jnp.sum(jnp.sin(M.conv_s1(x, k, pad, impl="matmul"))), (0, 1))(x, k)
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)
    for u, v in zip(gb, ga):
        np.testing.assert_allclose(u, v, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cin,cout,h,op", [(5, 3, 7, 0), (5, 3, 3, 1), (4, 6, 8, 0), (2, 1, 14, 0), (3, 2, 4, 1)])
def test_subpixel_equals_conv_transpose(cin, cout, h, op, s1_impl):
    a = M.ConvTranspose2d(cin, cout, output_padding=op, rngs=nnx.Rngs(0), impl="lax")
    b = M.ConvTranspose2d(cin, cout, output_padding=op, rngs=nnx.Rngs(0), impl="subpixel")
    assert isinstance(b, M.SubPixelConvTranspose)
    ya, yb = _assert_same_layer(a, b, (2, h, h, cin))
    assert ya.shape == (2, 2 * h + op, 2 * h + op, cout)


@pytest.mark.parametrize("cin,cout,h", [(1, 4, 28), (3, 5, 14), (4, 6, 7), (2, 3, 64), (2, 3, 8), (2, 3, 5)])
def test_space_to_depth_equals_conv(cin, cout, h, s1_impl):
    a = M.Conv2d(cin, cout, rngs=nnx.Rngs(0), impl="lax")
    b = M.Conv2d(cin, cout, rngs=nnx.Rngs(0), impl="s2d")
    assert isinstance(b, M.SpaceToDepthConv)
    _assert_same_layer(a, b, (2, h, h, cin))


def _assert_same_layer(a, b, shape):
    """Layers a and b (same parameters) give the same output and the same gradients; returns both outputs."""
    x = jax.random.normal(jax.random.key(1), shape)
    with jax.default_matmul_precision("highest"):
        ya, yb = a(x), b(x)
        ga = _grads(a, x)
        gb = _grads(b, x)
    assert ya.shape == yb.shape
    np.testing.assert_allclose(yb, ya, atol=1e-5, rtol=1e-5)
    for u, v in zip(gb, ga):
        np.testing.assert_allclose(u, v, atol=1e-4, rtol=1e-4)
    return ya, yb


def _grads(layer, x):
    """Gradients of a nonlinear function of the output w.r.t. (kernel, bias, input)."""
    graphdef, params = nnx.split(layer, nnx.Param)
    gp, gx = jax.grad(lambda p, x: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(x))), (0, 1))(params, x)
    return gp["kernel"][...], gp["bias"][...], gx


def test_convert_maps_subclasses():
    class Both(nnx.Module):
        def __init__(self):
            self.t = M.ConvTranspose2d(5, 3, rngs=nnx.Rngs(0), impl="subpixel")
            self.c = M.Conv2d(2, 3, rngs=nnx.Rngs(0), impl="s2d")

    sd = convert.to_numpy_state_dict(Both())
    assert {k: v.shape for k, v in sd.items()} == {"c.bias": (3,), "c.weight": (3, 2, 4, 4),
                                                   "t.bias": (3,), "t.weight": (5, 3, 4, 4)}
