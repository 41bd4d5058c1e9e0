"""The conversion pitfalls, each layer on its own: what the converter does matches torch, and the
naive alternative does NOT (so each test would catch the mistake it names)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from parity_tests import harness as H
from vae_jax import convert, layers, losses, onednn_conv

FWD = H.tol("float32", "forward").bound
_NEEDS_ONEDNN = pytest.mark.skipif(
    not onednn_conv.available(), reason=f"the oneDNN conv library is not built: {onednn_conv.REBUILD}"
)
# vae_jax computes the k4 s2 p1 layers in more than one form (same parameters, layers.ConvForm):
# each form, and the class it must give, is a case of its own.
_CONV_FORMS = [
    pytest.param(layers.ConvForm(conv="lax"), nnx.Conv, id="lax"),
    pytest.param(layers.ConvForm(conv="s2d", s1="matmul"), layers.SpaceToDepthConv, id="s2d-matmul"),
    pytest.param(layers.ConvForm(conv="s2d", s1="lax"), layers.SpaceToDepthConv, id="s2d-lax"),
    pytest.param(layers.ConvForm(), layers.SpaceToDepthConv, id="default"),  # auto: s2d on 9x9
    pytest.param(layers.ONEDNN_CONV_FORM, layers.OnednnConv, id="onednn", marks=_NEEDS_ONEDNN),
]
_TCONV_FORMS = [
    pytest.param(layers.ConvForm(tconv="lax"), nnx.ConvTranspose, id="lax"),
    pytest.param(layers.ConvForm(tconv="subpixel", s1="matmul"), layers.SubPixelConvTranspose, id="subpixel-matmul"),
    pytest.param(layers.ConvForm(tconv="subpixel", s1="lax"), layers.SubPixelConvTranspose, id="subpixel-lax"),
    pytest.param(layers.ConvForm(), nnx.ConvTranspose, id="default"),  # auto: lax for cout 4
    pytest.param(layers.ONEDNN_CONV_FORM, layers.OnednnConvTranspose, id="onednn", marks=_NEEDS_ONEDNN),
]


class _One(nnx.Module):
    """One vae_jax layer under the attribute `layer`, so that the converter's key is layer.*"""

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, x):
        return self.layer(x)


class _TOne(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def _pair(jlayer, tlayer):
    """(jax, torch) one-layer modules with torch's parameters loaded through the converter."""
    jm, tm = _One(jlayer), _TOne(tlayer)
    convert.load_torch_state_dict(jm, tm.state_dict())
    return jm, tm


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def _nchw(x):
    return torch.from_numpy(np.array(x.transpose(0, 3, 1, 2), order="C"))


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


# ------------------------------------------------------------------------------------ Linear


def test_linear_out_in_vs_in_out():
    torch.manual_seed(0)
    jm, tm = _pair(layers.Linear(8, 8, rngs=nnx.Rngs(0)), torch.nn.Linear(8, 8))  # square: shapes can't tell
    assert jm.layer.kernel.shape == (8, 8)
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    ref = tm(torch.from_numpy(x)).detach().numpy()
    H.assert_close({"linear": jm(x)}, {"linear": ref}, dtype="float32", quantity="forward", context="Linear 8x8")
    naive = x @ tm.layer.weight.detach().numpy() + tm.layer.bias.detach().numpy()  # kernel = weight, untransposed
    assert _max_diff(naive, ref) > 100 * FWD
    # non-square: torch (out, in) = (3, 5) <-> Flax (in, out) = (5, 3)
    jm, tm = _pair(layers.Linear(5, 3, rngs=nnx.Rngs(0)), torch.nn.Linear(5, 3))
    assert jm.layer.kernel.shape == (5, 3) and tuple(tm.layer.weight.shape) == (3, 5)
    np.testing.assert_array_equal(np.asarray(jm.layer.kernel[...]), tm.layer.weight.detach().numpy().T)


# ------------------------------------------------------------------------------------ Conv2d


@pytest.mark.parametrize("form, cls", _CONV_FORMS)
def test_conv2d_oihw_vs_hwio(form, cls):
    torch.manual_seed(1)
    jm, tm = _pair(
        layers.Conv2d(3, 5, 4, stride=2, padding=1, rngs=nnx.Rngs(0), conv_form=form),
        torch.nn.Conv2d(3, 5, kernel_size=4, stride=2, padding=1),
    )
    assert type(jm.layer) is cls
    assert jm.layer.kernel.shape == (4, 4, 3, 5) and tuple(tm.layer.weight.shape) == (5, 3, 4, 4)
    x = np.random.default_rng(1).uniform(size=(2, 9, 9, 3)).astype(np.float32)  # odd size: padding matters
    ref = _nhwc(tm(_nchw(x)))
    assert ref.shape == (2, 4, 4, 5)
    H.assert_close(
        {"conv": jm(x)},
        {"conv": ref},
        dtype="float32",
        quantity="forward",
        context=f"Conv2d k4 s2 p1 ({type(jm.layer).__name__})",
    )
    w = tm.layer.weight.detach().numpy()
    naive = (
        jax.lax.conv_general_dilated(
            x, w.reshape(4, 4, 3, 5), (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        + tm.layer.bias.detach().numpy()
    )
    assert _max_diff(naive, ref) > 100 * FWD  # a reshape is not a transpose


# --------------------------------------------------------------------------- ConvTranspose2d


@pytest.mark.parametrize("form, cls", _TCONV_FORMS)
@pytest.mark.parametrize("output_padding, out_hw", [(0, 6), (1, 7)])
def test_conv_transpose2d_flip(output_padding, out_hw, form, cls):
    """torch ConvTranspose2d(k4, s2, p1[, output_padding]) = lax.conv_transpose with explicit padding
    (2, 2) [(2, 3)] and the kernel (in, out, kh, kw) -> (kh, kw, in, out) SPATIALLY FLIPPED."""
    torch.manual_seed(2)
    jm, tm = _pair(
        layers.ConvTranspose2d(
            6, 4, 4, stride=2, padding=1, output_padding=output_padding, rngs=nnx.Rngs(0), conv_form=form
        ),
        torch.nn.ConvTranspose2d(6, 4, kernel_size=4, stride=2, padding=1, output_padding=output_padding),
    )
    assert type(jm.layer) is cls
    assert tuple(tm.layer.weight.shape) == (6, 4, 4, 4) and jm.layer.kernel.shape == (4, 4, 6, 4)
    x = np.random.default_rng(2).normal(size=(2, 3, 3, 6)).astype(np.float32)
    ref = _nhwc(tm(_nchw(x)))
    assert ref.shape == (2, out_hw, out_hw, 4)
    H.assert_close(
        {"tconv": jm(x)},
        {"tconv": ref},
        dtype="float32",
        quantity="forward",
        context=f"ConvTranspose2d output_padding={output_padding} ({type(jm.layer).__name__})",
    )
    unflipped = np.asarray(jm.layer.kernel[...])[::-1, ::-1]  # transpose without the flip
    naive = jax.lax.conv_transpose(
        x, unflipped, (2, 2), jm.layer.padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    ) + np.asarray(jm.layer.bias[...])
    assert naive.shape == ref.shape and _max_diff(naive, ref) > 100 * FWD


# --------------------------------------------------------------------- flatten order (ConvVAE)


def test_convvae_fc_layers_see_the_nchw_flatten_order():
    jm, tm = H.make_pair("ConvVAE", "torch->flax", 0, "float32")
    jm.eval(), tm.eval()
    x = np.random.default_rng(3).uniform(size=(2, 28, 28, 1)).astype(np.float32)
    with torch.no_grad():
        mu_t = tm.encode(_nchw(x))[0].numpy()
        h_t = tm.decoder_fc(torch.from_numpy(np.ones((2, 128), np.float32))).view(2, 128, 3, 3)
    h = jm.encoder_conv(x)  # (2, 3, 3, 128) NHWC
    H.assert_close(
        {"mu": jm.fc_mu(layers.nchw_flatten(h))},
        {"mu": mu_t},
        dtype="float32",
        quantity="forward",
        context="ConvVAE fc_mu after the NCHW flatten",
    )
    assert _max_diff(jm.fc_mu(h.reshape(2, -1)), mu_t) > 100 * FWD  # naive HWC flatten
    dec = jm.decoder_fc(jnp.ones((2, 128)))
    H.assert_close(
        {"h": layers.nchw_unflatten(dec, 128, 3)},
        {"h": _nhwc(h_t)},
        dtype="float32",
        quantity="forward",
        context="ConvVAE decoder_fc un-flatten",
    )
    assert _max_diff(dec.reshape(2, 3, 3, 128), _nhwc(h_t)) > 100 * FWD


# ------------------------------------------------------------------------------------ BatchNorm


@pytest.mark.parametrize("impl", ["xla", pytest.param("onednn", marks=_NEEDS_ONEDNN)])
def test_batchnorm_momentum_unbiased_var_eps_count(impl):
    """torch: running = 0.9 running + 0.1 batch (Flax's momentum would be 0.9), running_var from the
    UNBIASED batch variance (n / (n - 1)), normalisation with the biased one, eps 1e-5 inside the
    sqrt, num_batches_tracked += 1 per train-mode call."""
    rng = np.random.default_rng(4)
    bn_t = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn_t.weight.copy_(torch.tensor([0.5, 1.5, -1.0]))
        bn_t.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    bn_j = _One(layers.BatchNorm2d(3, impl=impl))
    convert.load_torch_state_dict(bn_j, {f"layer.{k}": v for k, v in bn_t.state_dict().items()})
    bn_j.train(), bn_t.train()
    naive_biased, naive_flax_momentum = np.zeros(3), np.zeros(3)
    for step in range(3):
        x = rng.normal(2.0, 3.0, size=(2, 2, 2, 3)).astype(np.float32)  # n = 8 per channel: n/(n-1) = 8/7
        H.assert_close(
            {"y": bn_j(x)},
            {"y": _nhwc(bn_t(_nchw(x)))},
            dtype="float32",
            quantity="forward",
            context=f"BatchNorm train step {step}",
        )
        sd_j = convert.to_numpy_state_dict(bn_j)
        sd_t = {k: v.numpy() for k, v in bn_t.state_dict().items()}
        H.assert_close(
            {k: sd_j[f"layer.{k}"] for k in ("running_mean", "running_var")},
            {k: sd_t[k] for k in ("running_mean", "running_var")},
            dtype="float32",
            quantity="forward",
            context=f"BatchNorm running stats after step {step}",
        )
        assert int(sd_j["layer.num_batches_tracked"]) == int(sd_t["num_batches_tracked"]) == step + 1
        assert sd_j["layer.num_batches_tracked"].dtype == np.int64
        # the mistakes this catches: biased running var, Flax-style momentum (0.1 on the old value)
        var_b = x.reshape(-1, 3).var(axis=0)
        naive_biased = 0.9 * (naive_biased if step else np.ones(3)) + 0.1 * var_b
        naive_flax_momentum = 0.1 * (naive_flax_momentum if step else np.zeros(3)) + 0.9 * x.reshape(-1, 3).mean(0)
        assert _max_diff(naive_biased, sd_t["running_var"]) > 1e-3
        assert _max_diff(naive_flax_momentum, sd_t["running_mean"]) > 1e-1
    # eval: running statistics, eps = 1e-5 inside the sqrt (a running_var of 1e-5 makes eps matter;
    # weight 0.01 keeps that channel's output O(1))
    with torch.no_grad():
        bn_t.running_mean.zero_()
        bn_t.running_var.copy_(torch.tensor([1e-5, 1.0, 4.0]))
        bn_t.weight.copy_(torch.tensor([0.01, 1.5, -1.0]))
    convert.load_torch_state_dict(bn_j, {f"layer.{k}": v for k, v in bn_t.state_dict().items()})
    bn_j.eval(), bn_t.eval()
    x = rng.normal(size=(2, 2, 2, 3)).astype(np.float32)
    ref = _nhwc(bn_t(_nchw(x)))
    H.assert_close({"y": bn_j(x)}, {"y": ref}, dtype="float32", quantity="forward", context="BatchNorm eval")
    assert int(convert.to_numpy_state_dict(bn_j)["layer.num_batches_tracked"]) == 3  # eval does not count
    m, v = bn_t.running_mean.numpy(), bn_t.running_var.numpy()
    w, b = bn_t.weight.detach().numpy(), bn_t.bias.detach().numpy()
    assert _max_diff((x - m) / np.sqrt(v + 1e-3) * w + b, ref) > 1e-2  # Keras' eps 1e-3 would not match


# ------------------------------------------------------------------------------------ BCE clamp

P_GRID = [0.0, 1e-30, 1e-10, 1e-3, 0.5, 1 - 1e-7, 1.0]
X_GRID = [0.0, 0.3, 1.0]


@pytest.mark.parametrize("dtype", list(H.DTYPES))
def test_bce_clamps_log_at_minus_100(dtype):
    """losses.torch_bce == F.binary_cross_entropy elementwise, values and gradients (w.r.t. p: torch's
    (p - x) / max(p (1 - p), 1e-12); w.r.t. x), including p = 0 and 1 where log is clamped at -100."""
    npdt = H.DTYPES[dtype][2]
    p, x = (np.array(a, npdt) for a in np.meshgrid(P_GRID, X_GRID, indexing="ij"))
    with H.precision(dtype):
        jv = np.asarray(losses.torch_bce(jnp.asarray(p), jnp.asarray(x)))
        gp, gx = (
            np.asarray(g)
            for g in jax.grad(lambda a, b: jnp.sum(losses.torch_bce(a, b)), argnums=(0, 1))(
                jnp.asarray(p), jnp.asarray(x)
            )
        )
    tp, tx = torch.from_numpy(p).requires_grad_(True), torch.from_numpy(x).requires_grad_(True)
    tv = F.binary_cross_entropy(tp, tx, reduction="none")
    tv.sum().backward()
    H.assert_close({"bce": jv}, {"bce": tv.detach().numpy()}, dtype=dtype, quantity="loss", context="BCE elementwise")
    inner = slice(1, -1)  # d/dx (the target's gradient; data in a VAE) at p = 0, 1: torch's is unclamped
    H.assert_close(
        {"d/dp": gp, "d/dx": gx[inner]},
        {"d/dp": tp.grad.numpy(), "d/dx": tx.grad.numpy()[inner]},
        dtype=dtype,
        quantity="grad",
        context="BCE gradients",
    )
    assert np.all(np.isinf(tx.grad.numpy()[[0, -1]])) and np.all(np.abs(gx[[0, -1]]) == 100.0)
    assert float(jv[0, 2]) == 100.0 and float(jv[-1, 0]) == 100.0  # p = 0, x = 1 and p = 1, x = 0: clamped
    assert float(jv[0, 1]) == pytest.approx(30.0, rel=1e-6)  # 0.3 * 100 + 0.7 * 0 at p = 0, x = 0.3


# ------------------------------------------------------------------- float32 summation order


def test_float32_jit_sum_order():
    """Why (float32, "loss_jit") exists: identical float32 terms (a BCE row of 784 pixels x 4), summed
    by torch (pairwise), eager jnp.sum, and jitted loss code (XLA:CPU fuses the elementwise BCE into
    a sequential float32 reduction). Eager and torch stay within the headline 1e-6 of the exact sum
    (math.fsum); the jitted sum needs the named bound."""
    rng = np.random.default_rng(6)
    worst = {"torch": 0.0, "eager": 0.0, "jit": 0.0}
    jitted = jax.jit(lambda p, x: jnp.sum(losses.reconstruction_per_sample(p, x, "bce")))
    for _ in range(5):
        p = (1 / (1 + np.exp(-rng.normal(0, 0.5, (4, 784))))).astype(np.float32)
        x = rng.uniform(size=(4, 784)).astype(np.float32)
        terms = np.asarray(losses.torch_bce(jnp.asarray(p), jnp.asarray(x)))
        exact = math.fsum(terms.astype(np.float64).ravel())
        got = {
            "torch": F.binary_cross_entropy(torch.from_numpy(p), torch.from_numpy(x), reduction="sum").item(),
            "eager": float(jnp.sum(jnp.asarray(terms))),
            "jit": float(jitted(jnp.asarray(p), jnp.asarray(x))),
        }
        for k, v in got.items():
            worst[k] = max(worst[k], abs(v - exact) / exact)
    assert worst["torch"] <= H.tol("float32", "loss").bound, worst
    assert worst["eager"] <= H.tol("float32", "loss").bound, worst
    assert worst["jit"] <= H.tol("float32", "loss_jit").bound, worst


# --------------------------------------------------------------------- torch's 1-channel strides


def test_one_channel_nhwc_to_nchw_needs_a_real_copy():
    """permute(0, 3, 1, 2).contiguous() is a no-op for C = 1 (size-1 dims are ignored by
    is_contiguous), the strides stay channels-last, conv2d returns channels-last activations and the
    chapter's `h.view(B, -1)` raises. harness.to_torch_x makes a real C-order copy."""
    x = np.random.default_rng(7).uniform(size=(2, 28, 28, 1)).astype(np.float32)
    tm = H.torch_model("ConvVAE", "float32", 0)
    bad = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    assert bad.stride() == (784, 1, 28, 1)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        tm.encode(bad)
    good = H.to_torch_x(H.SPECS["ConvVAE"], x)
    assert good.stride() == (784, 784, 28, 1) and torch.equal(good, bad)
    tm.encode(good)


# --------------------------------------------------------------------------- Adam's update rule


@pytest.mark.parametrize("dtype", list(H.DTYPES))
def test_adam_update_rule_with_identical_gradients(dtype):
    """optax.adam vs torch.optim.Adam (lr 1e-3, betas (0.9, 0.999), eps 1e-8) fed the SAME gradients
    for 5 steps -- zero, sub-eps, ordinary and huge elements: only the update formula's rounding
    differs, so the parameters agree to rounding (the end-to-end runs differ by more only because
    each framework's gradients carry their own rounding; see tolerances.py)."""
    npdt = H.DTYPES[dtype][2]
    rng = np.random.default_rng(8)
    p0 = rng.normal(size=(6, 40)).astype(npdt)
    scales = np.array([0.0, 1e-12, 1e-9, 1e-8, 1.0, 1e3]).reshape(6, 1)
    grads = [(rng.normal(size=(6, 40)) * scales).astype(npdt) for _ in range(H.ADAM_STEPS)]
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.Adam([tp], lr=H.ADAM_LR, betas=(0.9, 0.999), eps=1e-8)
    with H.precision(dtype):
        tx = optax.adam(H.ADAM_LR, b1=0.9, b2=0.999, eps=1e-8)
        jp = jnp.asarray(p0)
        state = tx.init(jp)
        for g in grads:
            upd, state = tx.update(jnp.asarray(g), state, jp)
            jp = optax.apply_updates(jp, upd)
            tp.grad = torch.from_numpy(g.copy())
            opt.step()
        jp = np.asarray(jp)
    H.assert_close(
        {"params": jp},
        {"params": tp.detach().numpy()},
        dtype=dtype,
        quantity="adam_rule",
        context="Adam update rule, identical gradients",
    )
    assert np.array_equal(jp[0], p0[0])  # zero gradients: no move in either
    assert np.abs(jp[5] - p0[5]).max() > 4e-3  # ordinary steps did move (~lr per step)
