"""vae_jax.losses.elbo vs the reference's elbo_loss on identical inputs (op by op), every variant,
float32 and float64, values and gradients; and the saturated sigmoid, where the clamped 'bce'
and the logits form part ways while each agrees across the frameworks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import vae_torch_ref as R
from parity_tests import harness as H
from vae_jax import losses


def _inputs(dtype, seed, recon, b=6, d=784, latent=20):
    rng = np.random.default_rng([seed, 11])
    npdt = H.DTYPES[dtype][2]
    logits = rng.normal(0, 3, (b, d))
    out = logits if recon == "bce_logits" else 1 / (1 + np.exp(-logits))
    return (
        out.astype(npdt),
        rng.uniform(0, 1, (b, d)).astype(npdt),
        rng.normal(0, 1, (b, latent)).astype(npdt),
        rng.normal(0, 1, (b, latent)).astype(npdt),
    )


@pytest.mark.parametrize("dtype", list(H.DTYPES))
@pytest.mark.parametrize("recon", H.RECONS)
@pytest.mark.parametrize("seed", H.SEEDS)
def test_elbo_matches_elbo_loss(dtype, recon, seed):
    beta, kl_weight = H.LOSS_WEIGHTS[seed]
    out, x, mu, logvar = _inputs(dtype, seed, recon)
    with H.precision(dtype):

        def f(out, mu, logvar):
            total, rec, kl = losses.elbo(out, jnp.asarray(x), mu, logvar, recon=recon, beta=beta, kl_weight=kl_weight)
            return total, (rec, kl)

        (jt, (jr, jk)), jg = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(
            jnp.asarray(out), jnp.asarray(mu), jnp.asarray(logvar)
        )
        jg = [np.asarray(g) for g in jg]
    t_in = [torch.from_numpy(a).requires_grad_(True) for a in (out, mu, logvar)]
    tt, tr, tk = R.elbo_loss(
        t_in[0], torch.from_numpy(x), t_in[1], t_in[2], recon=recon, beta=beta, kl_weight=kl_weight
    )
    tt.backward()
    ctx = f"elbo {recon} beta={beta} kl_weight={kl_weight} {dtype}"
    H.assert_close(
        {"total": jt, "recon": jr}, {"total": tt.item(), "recon": tr.item()}, dtype=dtype, quantity="loss", context=ctx
    )
    scale = 0.5 * float(np.sum(1 + np.abs(logvar) + mu.astype(np.float64) ** 2 + np.exp(logvar.astype(np.float64))))
    H.assert_close({"kl": jk}, {"kl": tk.item()}, dtype=dtype, quantity="kl", context=ctx, scales={"kl": scale})
    H.assert_close(
        {"d/dx_out": jg[0], "d/dmu": jg[1], "d/dlogvar": jg[2]},
        {"d/dx_out": t_in[0].grad.numpy(), "d/dmu": t_in[1].grad.numpy(), "d/dlogvar": t_in[2].grad.numpy()},
        dtype=dtype,
        quantity="grad",
        context=ctx + " gradients",
    )


LOGITS = np.array([-200.0, -120.0, -90.0, -50.0, -10.0, 0.0, 10.0, 50.0, 90.0, 120.0, 200.0])


@pytest.mark.parametrize("dtype", list(H.DTYPES))
@pytest.mark.parametrize("target", [0.0, 1.0])
def test_saturated_sigmoid_clamped_vs_logits(dtype, target):
    """One pixel per example, mu = logvar = 0 (KL 0). Both frameworks agree on each form; the forms
    part where sigmoid saturates: logit -200 with x = 1 costs 100 nats per pixel with the clamped
    BCE on probabilities (log p clamped at -100, zero gradient) and the true 200 from logits
    (gradient -1)."""
    npdt, tdt = H.DTYPES[dtype][2], H.DTYPES[dtype][1]
    logits = LOGITS.astype(npdt)[:, None]
    x = np.full_like(logits, target)
    zeros = np.zeros((len(logits), 1), npdt)
    per_form = {}
    for recon in ("bce", "bce_logits"):
        with H.precision(dtype):

            def f(l):
                out = l if recon == "bce_logits" else jax.nn.sigmoid(l)
                return losses.reconstruction_per_sample(out, jnp.asarray(x), recon)

            jv = np.asarray(f(jnp.asarray(logits)))
            jg = np.asarray(jax.grad(lambda l: jnp.sum(f(l)))(jnp.asarray(logits)))
            jtotal = float(
                losses.elbo(
                    logits if recon == "bce_logits" else jax.nn.sigmoid(jnp.asarray(logits)),
                    jnp.asarray(x),
                    zeros,
                    zeros,
                    recon=recon,
                )[0]
            )
        tl = torch.from_numpy(logits).requires_grad_(True)
        tout = tl if recon == "bce_logits" else torch.sigmoid(tl)
        tv = torch.stack(
            [
                R.elbo_loss(
                    tout[i : i + 1],
                    torch.from_numpy(x[i : i + 1]),
                    torch.zeros(1, 1, dtype=tdt),
                    torch.zeros(1, 1, dtype=tdt),
                    recon=recon,
                )[0]
                for i in range(len(logits))
            ]
        )
        tv.sum().backward()
        ttotal = R.elbo_loss(tout, torch.from_numpy(x), torch.from_numpy(zeros), torch.from_numpy(zeros), recon=recon)[
            0
        ].item()
        H.assert_close(
            {f"{recon} per pixel": jv, f"{recon} total": jtotal},
            {f"{recon} per pixel": tv.detach().numpy(), f"{recon} total": ttotal},
            dtype=dtype,
            quantity="loss",
            context=f"saturated {recon} x={target} {dtype}",
        )
        H.assert_close(
            {f"{recon} d/dlogit": jg},
            {f"{recon} d/dlogit": tl.grad.numpy()},
            dtype=dtype,
            quantity="grad",
            context=f"saturated {recon} x={target} {dtype}",
        )
        per_form[recon] = (jv, jg[:, 0])
    # logit -200 with x = 1 (or +200 with x = 0): 100 vs 200 nats, gradient 0 vs -1 (+1)
    i = 0 if target == 1.0 else len(LOGITS) - 1
    assert float(per_form["bce"][0][i]) == 100.0 and float(per_form["bce_logits"][0][i]) == 200.0
    assert (
        abs(float(per_form["bce"][1][i])) < 1e-60
    )  # 0 in float32; sigmoid'(-200) ~ 1e-87 times the clamped 1e12 in float64
    assert per_form["bce_logits"][1][i] == (-1.0 if target == 1.0 else 1.0)
    # Where the sigmoid is not saturated the two forms agree, up to what each form loses: the
    # probability form 1 - sigmoid(l) keeps a relative eps * e^|l| (float32, l = 10: ~1e-3); the
    # logits form as vae_jax writes it, softplus(l) - x * l, cancels for x = 1, l >> 0 (absolute
    # error ~ eps * |l|; torch's max(l, 0) - x * l + log1p(exp(-|l|)) does not -- see the report).
    ok = np.abs(LOGITS) <= 10
    eps = float(np.finfo(npdt).eps)
    np.testing.assert_allclose(
        per_form["bce"][0][ok], per_form["bce_logits"][0][ok], rtol=2 * eps * np.exp(10), atol=4 * eps * 10
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fast_softplus_is_jax_softplus_to_the_bit(dtype):
    """losses.softplus (the NLL's) drops jax.nn.softplus's isnan select: the same values and the same
    derivative, bit for bit, over the whole range, infinities and NaN included."""
    npdt = H.DTYPES[dtype][2]
    rng = np.random.default_rng(3)
    edge = [0.0, -0.0, 1e-30, -1e-30, 17.0, -17.0, 88.0, -88.0, 1e4, -1e4, np.inf, -np.inf]
    with H.precision(dtype):
        x = jnp.asarray(np.concatenate([rng.normal(0, 20, 5000), edge]).astype(npdt))
        want, got = jax.jit(jax.nn.softplus)(x), jax.jit(losses.softplus)(x)
        np.testing.assert_array_equal(np.asarray(got).view(np.uint8), np.asarray(want).view(np.uint8))
        assert bool(jnp.isnan(losses.softplus(jnp.asarray([np.nan], x.dtype)))[0])

        def grad(f):
            return jax.jit(jax.grad(lambda v: jnp.sum(f(v) * jnp.arange(v.size, dtype=v.dtype))))(x)

        np.testing.assert_array_equal(np.asarray(grad(losses.softplus)), np.asarray(grad(jax.nn.softplus)))
