"""vae_jax.layers' torch-semantics layers for any sizes: each equals torch's layer given the same
weights (numpy in, both frameworks, through vae_jax.convert's mapping), in each form it can be built
in; their initialisation draws from torch's bounds (the fan-in formula); BatchNorm1d is torch's."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from vae_jax import convert, onednn_conv
from vae_jax import layers as L

_ONEDNN = pytest.mark.skipif(not onednn_conv.available(), reason=f"oneDNN library not built: {onednn_conv.REBUILD}")
FORMS = [
    pytest.param(L.ConvForm(conv="lax", tconv="lax"), id="lax"),
    pytest.param(L.ConvForm(), id="xla-auto"),  # s2d / sub-pixel where the arguments are the chapter's
    pytest.param(L.ONEDNN_CONV_FORM, id="onednn", marks=_ONEDNN),
]


class _One(nnx.Module):
    def __init__(self, layer):
        self.layer = layer


def _loaded(layer, tlayer):
    """`layer` with torch layer `tlayer`'s parameters, mapped by vae_jax.convert (strict)."""
    one = _One(layer)
    convert.load_torch_state_dict(one, {f"layer.{k}": v for k, v in tlayer.state_dict().items()})
    return one.layer


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _same(layer, tlayer, x):
    ref = tlayer(_nchw(x)).detach().numpy().transpose(0, 2, 3, 1)
    got = np.asarray(layer(x))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-5)


# (kernel_size, stride, padding, dilation, groups, bias, H)
CONVS = [
    (3, 1, 1, 1, 1, True, 9),
    (3, 2, 1, 1, 1, True, 10),
    (4, 2, 1, 1, 1, True, 9),  # the chapter's
    (5, 1, 2, 2, 1, True, 11),
    (1, 1, 0, 1, 1, False, 6),
    (3, 3, 0, 1, 2, True, 13),
    ((3, 5), (2, 1), (1, 2), 1, 1, True, 8),
    (4, 1, "same", 2, 1, True, 7),  # even kernel: torch pads one more at the high end
    (3, 2, "valid", 1, 1, True, 9),
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("k, s, p, d, g, bias, h", CONVS)
def test_conv2d_equals_torch(k, s, p, d, g, bias, h, form):
    torch.manual_seed(0)
    t = torch.nn.Conv2d(4, 6, k, stride=s, padding=p, dilation=d, groups=g, bias=bias)
    j = _loaded(L.Conv2d(4, 6, k, s, p, d, g, bias, rngs=nnx.Rngs(0), conv_form=form), t)
    onednn_ok = s in (1, 2, 3) and d == 1 and g == 1
    assert isinstance(j, L.OnednnConv) == (form.conv == "onednn" and onednn_ok)
    _same(j, t, np.random.default_rng(1).normal(size=(2, h, h, 4)).astype(np.float32))


# (kernel_size, stride, padding, output_padding, dilation, bias, H)
TCONVS = [
    (3, 2, 1, 1, 1, True, 4),  # 4 -> 8 (the usual 3x3 stride-2 upsampling)
    (3, 2, 1, 0, 1, True, 4),
    (4, 2, 1, 0, 1, True, 3),  # the chapter's
    (4, 2, 1, 1, 1, True, 3),  # ConvVAE28's first
    (5, 1, 2, 0, 1, False, 5),
    (3, 2, 0, 1, 1, True, 3),  # padding < output_padding: not oneDNN's
    (3, 3, 1, 2, 1, True, 3),
    (3, 2, 1, 1, 2, True, 4),  # dilation: XLA's
    ((2, 4), (2, 1), (0, 1), (1, 0), 1, True, 3),
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("k, s, p, op, d, bias, h", TCONVS)
def test_conv_transpose2d_equals_torch(k, s, p, op, d, bias, h, form):
    torch.manual_seed(0)
    t = torch.nn.ConvTranspose2d(6, 32, k, stride=s, padding=p, output_padding=op, dilation=d, bias=bias)
    j = _loaded(L.ConvTranspose2d(6, 32, k, s, p, op, 1, bias, d, rngs=nnx.Rngs(0), conv_form=form), t)
    onednn_ok = isinstance(s, int) and d == 1 and op <= p
    assert isinstance(j, L.OnednnConvTranspose) == (form.tconv == "onednn" and onednn_ok)
    assert isinstance(j, L.SubPixelConvTranspose) == (form.tconv == "auto" and (k, s, p) == (4, 2, 1))
    _same(j, t, np.random.default_rng(1).normal(size=(2, h, h, 6)).astype(np.float32))


def test_linear_equals_torch():
    torch.manual_seed(0)
    for bias in (True, False):
        t = torch.nn.Linear(7, 5, bias=bias)
        j = _loaded(L.Linear(7, 5, bias, rngs=nnx.Rngs(0)), t)
        x = np.random.default_rng(1).normal(size=(3, 7)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(j(x)), t(torch.from_numpy(x)).detach().numpy(), atol=1e-6)


@pytest.mark.parametrize("shape", [(64, 5), (16, 9, 5)])
def test_batchnorm1d_is_torchs(shape):
    """Train mode: output and running statistics (unbiased variance, momentum 0.1) as torch's
    BatchNorm1d, (B, C) and channels-last (B, L, C); eval mode uses them."""
    x = np.random.default_rng(2).normal(2.0, 3.0, size=shape).astype(np.float32)
    t, j = torch.nn.BatchNorm1d(5), L.BatchNorm1d(5, impl="xla")
    xt = torch.from_numpy(x if x.ndim == 2 else np.ascontiguousarray(x.transpose(0, 2, 1)))
    ref = t(xt).detach().numpy()
    ref = ref if x.ndim == 2 else ref.transpose(0, 2, 1)
    np.testing.assert_allclose(np.asarray(j(x)), ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(j.var[...]), t.running_var.numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(j.mean[...]), t.running_mean.numpy(), rtol=1e-5)
    j.use_running_average = True
    t.eval()
    ref = t(xt).detach().numpy()
    np.testing.assert_allclose(np.asarray(j(x)), ref if x.ndim == 2 else ref.transpose(0, 2, 1), atol=1e-5)


# (what, the vae_jax layer, the torch layer): the bounds of torch's default init
INITS = [
    ("Linear", lambda r: L.Linear(100, 50, rngs=r), lambda: torch.nn.Linear(100, 50)),
    ("Conv2d 3x3", lambda r: L.Conv2d(16, 32, 3, rngs=r), lambda: torch.nn.Conv2d(16, 32, 3)),
    ("Conv2d groups", lambda r: L.Conv2d(16, 32, 3, groups=4, rngs=r), lambda: torch.nn.Conv2d(16, 32, 3, groups=4)),
    ("Conv2d k4", lambda r: L.Conv2d(8, 64, 4, 2, 1, rngs=r), lambda: torch.nn.Conv2d(8, 64, 4, 2, 1)),
    ("ConvT 3x3", lambda r: L.ConvTranspose2d(32, 16, 3, rngs=r), lambda: torch.nn.ConvTranspose2d(32, 16, 3)),
    ("ConvT 5x5", lambda r: L.ConvTranspose2d(8, 24, 5, 2, rngs=r), lambda: torch.nn.ConvTranspose2d(8, 24, 5, 2)),
]


@pytest.mark.parametrize("what, make, make_torch", INITS, ids=[i[0] for i in INITS])
def test_init_bounds_are_torchs(what, make, make_torch):
    """Weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with torch's fan_in (a transposed
    conv's from its out_channels): inside the bound, reaching close to it, uniform's spread."""
    t = make_torch()
    fan_in = torch.nn.init._calculate_fan_in_and_fan_out(t.weight)[0]
    bound = 1 / math.sqrt(fan_in)
    layer = make(nnx.Rngs(0))
    for name, v in (("weight", layer.kernel[...]), ("bias", layer.bias[...])):
        v, tv = np.asarray(v), getattr(t, name).detach().numpy()
        assert v.size == tv.size, name
        assert np.abs(v).max() <= bound and np.abs(tv).max() <= bound, name
        assert np.abs(v).max() > bound * (1 - 4 / v.size**0.5 if v.size > 30 else 0.5), name
        if v.size > 1000:
            assert abs(v.std() - bound / math.sqrt(3)) < 0.05 * bound, name


def test_conv_form_scope_reaches_layers_built_without_one():
    with L.conv_form_scope(L.ConvForm(conv="lax", tconv="lax")):
        c, t, bn = (
            L.Conv2d(2, 3, 4, 2, 1, rngs=nnx.Rngs(0)),
            L.ConvTranspose2d(3, 32, 4, 2, 1, rngs=nnx.Rngs(0)),
            L.BatchNorm2d(3),
        )
    assert type(c) is nnx.Conv and type(t) is nnx.ConvTranspose and bn.impl == "xla"
    assert type(L.Conv2d(2, 3, 4, 2, 1, rngs=nnx.Rngs(0), conv_form=L.ConvForm(conv="s2d"))) is L.SpaceToDepthConv


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: L.ConvTranspose2d(2, 3, 3, stride=2, output_padding=2, rngs=nnx.Rngs(0)), "output_padding"),
        (lambda: L.ConvTranspose2d(2, 4, 3, groups=2, rngs=nnx.Rngs(0)), "groups"),
        (lambda: L.Conv2d(3, 4, 3, groups=2, rngs=nnx.Rngs(0)), "groups"),
        (lambda: L.Conv2d(3, 4, 3, stride=2, padding="same", rngs=nnx.Rngs(0)), "same"),
        (lambda: L.Conv2d(3, 4, (3, 3, 3), rngs=nnx.Rngs(0)), "kernel_size"),
    ],
)
def test_arguments_torch_refuses_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _grads(layer, x):
    """Gradients of a nonlinear function of the output w.r.t. (kernel, bias, input)."""
    graphdef, params = nnx.split(layer, nnx.Param)
    gp, gx = jax.grad(lambda p, x: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(x))), (0, 1))(params, x)
    return np.asarray(gp["kernel"][...]), np.asarray(gp["bias"][...]), np.asarray(gx)


@_ONEDNN
@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda form: L.Conv2d(4, 6, 3, 2, 1, rngs=nnx.Rngs(0), conv_form=form), (2, 9, 9, 4)),
        (lambda form: L.Conv2d(4, 6, 5, 1, 2, rngs=nnx.Rngs(0), conv_form=form), (2, 7, 7, 4)),
        (lambda form: L.ConvTranspose2d(6, 4, 3, 2, 1, 1, rngs=nnx.Rngs(0), conv_form=form), (2, 4, 4, 6)),
        (lambda form: L.ConvTranspose2d(6, 4, 5, 3, 2, 1, rngs=nnx.Rngs(0), conv_form=form), (2, 3, 3, 6)),
    ],
    ids=["conv-k3s2", "conv-k5s1", "tconv-k3s2op1", "tconv-k5s3op1"],
)
def test_onednn_gradients_equal_xlas_beyond_the_chapters_sizes(make, shape):
    """The oneDNN forms of other sizes than k4 s2 p1: the same gradients as XLA's (same parameters)."""
    a, b = make(L.ConvForm(conv="lax", tconv="lax")), make(L.ONEDNN_CONV_FORM)
    assert isinstance(b, (L.OnednnConv, L.OnednnConvTranspose)) and not isinstance(a, type(b))
    x = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(np.asarray(b(x)), np.asarray(a(x)), atol=1e-5)
    for u, v in zip(_grads(b, x), _grads(a, x), strict=True):
        np.testing.assert_allclose(u, v, atol=1e-4, rtol=1e-4)
