"""The sub-pixel transposed conv and the space-to-depth conv equal the lax forms they replace,
vae_jax.convert maps them like their base classes, and the form (layers.ConvForm) is a static
choice per model: two models of different forms live in one process, each jitted in its own."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vae_jax import convert, models
from vae_jax import layers as L
from vae_jax import onednn_conv as oc


@pytest.fixture(params=[pytest.param("matmul", marks=pytest.mark.slow), "lax"])  # matmul: an XLA compile each
def s1_impl(request):
    """Both ways the sub-pixel / space-to-depth forms compute their stride-1 convolution (ConvForm.s1)."""
    return request.param


@pytest.mark.slow
@pytest.mark.parametrize(
    "kh,kw,pad",
    [(3, 3, ((1, 1), (1, 1))), (3, 3, ((1, 2), (1, 2))), (2, 2, ((0, 0), (0, 0))), (2, 3, ((0, 1), (2, 0)))],
)
def test_conv_s1_matmul_equals_lax_convolution(kh, kw, pad):
    x = jax.random.normal(jax.random.key(0), (3, 6, 5, 4))
    k = jax.random.normal(jax.random.key(1), (kh, kw, 4, 7))
    with jax.default_matmul_precision("highest"):
        a = L.conv_s1(x, k, pad, impl="lax")
        b = L.conv_s1(x, k, pad, impl="matmul")
        ga = jax.grad(lambda x, k: jnp.sum(jnp.sin(L.conv_s1(x, k, pad, impl="lax"))), (0, 1))(x, k)
        gb = jax.grad(lambda x, k: jnp.sum(jnp.sin(L.conv_s1(x, k, pad, impl="matmul"))), (0, 1))(x, k)
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)
    for u, v in zip(gb, ga, strict=True):
        np.testing.assert_allclose(u, v, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cin,cout,h,op", [(5, 3, 7, 0), (5, 3, 3, 1), (4, 6, 8, 0), (2, 1, 14, 0), (3, 2, 4, 1)])
def test_subpixel_equals_conv_transpose(cin, cout, h, op, s1_impl):
    a = L.ConvTranspose2d(
        cin, cout, 4, stride=2, padding=1, output_padding=op, rngs=nnx.Rngs(0), conv_form=L.ConvForm(tconv="lax")
    )
    b = L.ConvTranspose2d(
        cin,
        cout,
        4,
        stride=2,
        padding=1,
        output_padding=op,
        rngs=nnx.Rngs(0),
        conv_form=L.ConvForm(tconv="subpixel", s1=s1_impl),
    )
    assert isinstance(b, L.SubPixelConvTranspose) and b.conv_form.s1 == s1_impl
    ya, _ = _assert_same_layer(a, b, (2, h, h, cin))
    assert ya.shape == (2, 2 * h + op, 2 * h + op, cout)


@pytest.mark.parametrize("cin,cout,h", [(1, 4, 28), (3, 5, 14), (4, 6, 7), (2, 3, 64), (2, 3, 8), (2, 3, 5)])
def test_space_to_depth_equals_conv(cin, cout, h, s1_impl):
    a = L.Conv2d(cin, cout, 4, stride=2, padding=1, rngs=nnx.Rngs(0), conv_form=L.ConvForm(conv="lax"))
    b = L.Conv2d(cin, cout, 4, stride=2, padding=1, rngs=nnx.Rngs(0), conv_form=L.ConvForm(conv="s2d", s1=s1_impl))
    assert isinstance(b, L.SpaceToDepthConv) and b.conv_form.s1 == s1_impl
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
    for u, v in zip(gb, ga, strict=True):
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
            self.t = L.ConvTranspose2d(
                5, 3, 4, stride=2, padding=1, rngs=nnx.Rngs(0), conv_form=L.ConvForm(tconv="subpixel")
            )
            self.c = L.Conv2d(2, 3, 4, stride=2, padding=1, rngs=nnx.Rngs(0), conv_form=L.ConvForm(conv="s2d"))

    sd = convert.to_numpy_state_dict(Both())
    assert {k: v.shape for k, v in sd.items()} == {
        "c.bias": (3,),
        "c.weight": (3, 2, 4, 4),
        "t.bias": (3,),
        "t.weight": (5, 3, 4, 4),
    }


# ------------------------------------------------------------------------------ ConvForm


@pytest.mark.parametrize(
    "kwargs", [dict(tconv="s2d"), dict(conv="subpixel"), dict(s1="auto"), dict(tconv=None), dict(s2d_min_size=0)]
)
def test_conv_form_rejects_unknown_values(kwargs):
    with pytest.raises(ValueError, match="ConvForm"):
        L.ConvForm(**kwargs)


def test_conv_s1_rejects_unknown_impl():
    with pytest.raises(ValueError, match="impl"):
        L.conv_s1(jnp.zeros((1, 3, 3, 1)), jnp.zeros((2, 2, 1, 1)), ((0, 0), (0, 0)), impl="auto")


def test_conv_form_is_static_and_hashable():
    """Equal forms are equal and hash alike; the form is graph (static) data of the layer, not state."""
    assert L.ConvForm() == L.ConvForm("auto", "auto", "matmul") and hash(L.ConvForm()) == hash(L.ConvForm())
    with pytest.raises(dataclasses.FrozenInstanceError):
        L.ConvForm().s1 = "lax"
    a = L.Conv2d(2, 3, 4, stride=2, padding=1, rngs=nnx.Rngs(0), conv_form=L.ConvForm(conv="s2d"))
    b = L.Conv2d(2, 3, 4, stride=2, padding=1, rngs=nnx.Rngs(0), conv_form=L.ConvForm(conv="s2d", s1="lax"))
    (ga, sa), (gb, sb) = nnx.split(a), nnx.split(b)
    assert {path for path, _ in nnx.to_flat_state(sa)} == {("kernel",), ("bias",)}  # no Variable for the form
    assert ga != gb  # ... but it is in the graphdef, which jit keys on
    assert jax.tree.all(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), sa, sb))


# Forms of ConvVAE28 and how many of its six k4 s2 p1 layers stay lax.conv_general_dilated calls
# (28 -> 14 -> 7 -> 3 convs, 3 -> 7 -> 14 -> 28 transposed convs with 64, 32, 1 output channels).
_FORMS = {
    "default": (L.ConvForm(), 3),  # lax: the convs on 28, 14 and the cout-1 tconv; s2d/subpixel in matmuls
    "s1-lax": (L.ConvForm(s1="lax"), 6),  # same forms, their stride-1 convs by lax
    "lax": (L.ConvForm(tconv="lax", conv="lax"), 6),
    "all-matmul": (L.ConvForm(tconv="subpixel", conv="s2d", s1="matmul"), 0),
}


def _conv_vae28(form):
    return models.ConvVAE28(latent_dim=8, rngs=nnx.Rngs(0), conv_form=form)


@pytest.mark.parametrize("name", list(_FORMS))
def test_conv_vae28_computes_in_its_form(name):
    """The form a model was built with is the one its traced computation uses."""
    form, n_lax = _FORMS[name]
    model = _conv_vae28(form)
    x, eps = jnp.zeros((2, 28, 28, 1)), jnp.zeros((2, 8))
    text = str(jax.make_jaxpr(lambda x: model(x, eps=eps))(x))
    assert text.count("conv_general_dilated[") == n_lax, name


@pytest.mark.slow
def test_two_conv_forms_in_one_process_agree():
    """ConvVAE28s of different forms, the same parameters, side by side: the same output within
    float tolerance, one jit trace per form (the form is static), and no retrace on reuse."""
    built = {name: _conv_vae28(form) for name, (form, _) in _FORMS.items() if name != "all-matmul"}
    states = {name: nnx.state(m) for name, m in built.items()}
    for name, st in states.items():  # the form does not change the parameters
        assert jax.tree.all(jax.tree.map(lambda u, v: bool(jnp.array_equal(u, v)), st, states["lax"])), name
    traces = []

    @nnx.jit
    def forward(model, x, eps):
        traces.append(1)
        return model(x, eps=eps)[0]

    x = jax.random.uniform(jax.random.key(2), (2, 28, 28, 1))
    eps = jax.random.normal(jax.random.key(3), (2, 8))
    with jax.default_matmul_precision("highest"):
        out = {name: np.asarray(forward(m, x, eps)) for name, m in built.items()}
        assert len(traces) == len(built)
        forward(built["default"], x, eps)
        assert len(traces) == len(built)  # the default form's trace is reused
    for name, y in out.items():
        assert y.shape == (2, 28, 28, 1)
        np.testing.assert_allclose(y, out["lax"], atol=1e-5, rtol=1e-5, err_msg=name)


@pytest.mark.slow
def test_batchnorm_impl_is_validated_and_follows_the_model_form():
    with pytest.raises(ValueError, match="use one of xla, onednn"):
        L.BatchNorm2d(3, impl="cudnn")
    with pytest.raises(ValueError, match="norm='fast'"):
        L.ConvForm(norm="fast")
    from vae_jax import models

    m = models.CelebAVAE(rngs=nnx.Rngs(0), conv_form=L.ConvForm())
    assert {layer.impl for layer in m.encoder.layers if isinstance(layer, L.BatchNorm2d)} == {"xla"}


@pytest.mark.slow  # trains a conv model twice
def test_the_conv_form_a_run_used_is_its_option_and_in_its_record(tmp_path, capsys):
    import json

    from tests.helpers import TINY, run

    for asked, expected in (("lax", "lax"), ("auto", "onednn" if oc.available() else "xla")):
        work = tmp_path / asked
        args = ["train", "--workdir", work, "--model", "conv_vae28", *TINY, "--no-figures", "--conv-form", asked]
        code, err, out = run(args, capsys)
        assert code == 0, err
        assert f"convolutions: {expected}" in out
        assert json.loads((work / "config.json").read_text())["conv_form"] == expected
        assert json.loads((work / "summary.json").read_text())["conv_form"] == expected
