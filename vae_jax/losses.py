"""One ELBO for every model and exercise.

    total = recon + beta * kl_weight * kl          (all summed over the batch, as in the chapter;
                                                    per-sample figures are sum / N)

Reconstruction terms (`recon=`):
  'bce'        -- Bernoulli NLL on probabilities, torch's F.binary_cross_entropy exactly: each log is
                  clamped at -100. The chapter's `vae_loss`; parity compares against it.
  'bce_logits' -- the same Bernoulli NLL from decoder logits, softplus(l) - x*l: stable for any
                  logit. TRAINING USES THIS FORM: in float32 sigmoid rounds to exactly 0 or 1 beyond
                  |logit| ~ 17 (0 at ~ -88), where the clamped form plateaus at 100 nats per pixel
                  with zero gradient; the logits form keeps the true value and gradient. Where the
                  sigmoid is not saturated the two agree to float rounding (parity_tests show both).
  'gaussian'   -- sum of squared errors on probabilities (unit-variance Gaussian up to constants);
                  the MSE side of exercise 4.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vae_jax.config import RECON_KINDS


def kl_divergence_gaussian(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, summed over the latent axis: (B,)."""
    return -0.5 * jnp.sum(1 + logvar - jnp.square(mu) - jnp.exp(logvar), axis=-1)


@jax.custom_jvp
def softplus(x):
    """log(1 + e^x), elementwise: jax.nn.softplus (logaddexp(x, 0)) to the bit, value and derivative.

    jax.nn.softplus selects on isnan(x) (logaddexp's guard for two equal infinities, which cannot
    happen against 0); that select stops XLA's CPU backend from vectorizing the loop, which then runs
    several times slower. Without it NaN still gives NaN and +-inf give inf and 0. The NLL's
    k-sample decoder outputs use it. The ELBO keeps jax.nn.softplus: its values are the same, but a
    vectorized loop sums a row in another order, which would move runs' losses at float rounding.
    """
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    y = softplus(x)
    finite = lambda v: jnp.where(v == jnp.inf, 0, v)  # noqa: E731  (as logaddexp's _replace_inf)
    return y, t * jnp.exp(finite(x) - finite(y))  # logaddexp's derivative: sigmoid(x)


_BCE_EPS = 9.999999960041972e-13  # torch's EPSILON in binary_cross_entropy_backward: float32(1e-12), also in float64


@jax.custom_vjp
def torch_bce(p, x):
    """Elementwise F.binary_cross_entropy(p, x, reduction='none'), forward and backward.

    Forward: -(x * max(log p, -100) + (1 - x) * max(log(1 - p), -100)).
    Backward as torch's: d/dp = (p - x) / max(p * (1 - p), 1e-12) (autodiff of the clamped logs
    differs from torch where p is tiny but non-zero).
    """
    return -(x * jnp.maximum(jnp.log(p), -100.0) + (1 - x) * jnp.maximum(jnp.log1p(-p), -100.0))


def _torch_bce_fwd(p, x):
    return torch_bce(p, x), (p, x)


def _torch_bce_bwd(res, g):
    p, x = res
    dp = (p - x) / jnp.maximum(p * (1 - p), _BCE_EPS)
    dx = jnp.maximum(jnp.log1p(-p), -100.0) - jnp.maximum(jnp.log(p), -100.0)
    return g * dp, g * dx


torch_bce.defvjp(_torch_bce_fwd, _torch_bce_bwd)


def _sum_per_sample(v):
    return jnp.sum(v.reshape(v.shape[0], -1), axis=-1)


def reconstruction_per_sample(x_out, x, recon="bce"):
    """-log p(x|z) (up to the Gaussian's constant) per sample: (B,).

    x_out: probabilities for 'bce' and 'gaussian', logits for 'bce_logits'.
    """
    if recon == "bce":
        return _sum_per_sample(torch_bce(x_out, x))
    if recon == "bce_logits":
        return _sum_per_sample(jax.nn.softplus(x_out) - x * x_out)
    if recon == "gaussian":
        return _sum_per_sample(jnp.square(x_out - x))
    raise ValueError(f"unknown reconstruction loss {recon!r}: use one of {', '.join(RECON_KINDS)}")


def elbo(x_out, x, mu, logvar, *, recon="bce", beta=1.0, kl_weight=1.0):
    """(total, recon_loss, kl_loss), each summed over the batch (the chapter's `vae_loss`).

    logvar=None means a deterministic autoencoder: kl_loss is 0.
    kl_loss is the unweighted KL; total weighs it by beta * kl_weight.
    """
    rec = jnp.sum(reconstruction_per_sample(x_out, x, recon))
    kl = jnp.zeros((), rec.dtype) if logvar is None else jnp.sum(kl_divergence_gaussian(mu, logvar))
    return rec + beta * kl_weight * kl, rec, kl


def vae_loss(x_recon, x, mu, logvar):
    """The chapter's vae_loss: BCE on probabilities (clamped) + analytic KL, summed."""
    return elbo(x_recon, x, mu, logvar, recon="bce")


_LOG2PI = math.log(2 * math.pi)


def importance_log_weights(decode_logits, x, cond, mu, logvar, eps, *, fast=False):
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x) for z_i = mu + exp(logvar/2) * eps_i.

    Bernoulli decoder; x: (B, ...) as the model takes it, cond: its extra inputs (B, ...) each,
    eps: (k, B, D). Returns (log_w, log_px_z), each (k, B). The IWAE bound of an image is
    logsumexp_i(log w_i) - log k: the ELBO for k = 1, log p(x) as k grows.

    fast=True (the NLL's evaluation): x broadcast over the samples rather than tiled, and the
    vectorized `softplus`; the same values, summed in another order. Training (--train-k) keeps
    the tiled form, so that its runs stay bit-identical to earlier ones; the fast form is no faster there.
    """
    k = eps.shape[0]
    z = mu + jnp.exp(0.5 * logvar) * eps  # (k, B, D)
    condf = tuple(jnp.tile(c, (k,) + (1,) * (c.ndim - 1)) for c in cond)
    logits = decode_logits(z.reshape(-1, z.shape[-1]), *condf)
    if fast:
        logits = logits.reshape(k, *x.shape)
        log_px_z = -jnp.sum((softplus(logits) - x * logits).reshape(k, x.shape[0], -1), axis=-1)
    else:
        xf = jnp.tile(x, (k,) + (1,) * (x.ndim - 1))
        log_px_z = -reconstruction_per_sample(logits, xf, "bce_logits").reshape(k, -1)
    log_pz = -0.5 * jnp.sum(jnp.square(z) + _LOG2PI, -1)
    log_qz = -0.5 * jnp.sum(jnp.square(eps) + logvar + _LOG2PI, -1)
    return log_px_z + log_pz - log_qz, log_px_z
