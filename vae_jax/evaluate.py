"""Evaluation: importance-sampled log-likelihood (IWAE bound), the chapter's figures, and what the
exercises measure of a trained model (the posterior, active units, reconstruction scores)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm  # the console bar: bars are drawn only on a terminal (tqdm.auto warns in a notebook)

from vae_jax import losses
from vae_jax.errors import ConfigError
from vae_jax.models import model_inputs, one_hot

IWAE_MAX_SECONDS = 24 * 3600  # an importance-sampled NLL estimated to take longer is refused up front
PROGRESS_AFTER_SECONDS = 30  # an estimate longer than this says a line per tenth off a terminal


def _iwae_checks(model, recon, k):
    if recon not in ("bce", "bce_logits"):
        raise ConfigError(f"the importance-sampled likelihood needs a Bernoulli decoder (recon bce), got {recon!r}")
    if not hasattr(model, "reparameterize"):
        raise ConfigError("the importance-sampled likelihood needs a VAE (a model with q(z|x)), not an Autoencoder")
    if k < 1:
        raise ConfigError(f"--iwae-k must be >= 1, got {k}")


def _chunk_fn(graphdef, key, chunk):
    """The jitted log-sum-exp of one chunk of importance weights per image of a batch."""

    @jax.jit
    def chunk_logw(st, x, y, index, ci, valid):
        m = nnx.merge(graphdef, st)
        xin, cond = model_inputs(m, x, y)
        mu, logvar = m.encode(xin, *cond)

        # eps of image i, chunk ci comes from fold_in(fold_in(key, i), ci): batching does not change it
        def draw(i):
            return jax.random.normal(
                jax.random.fold_in(jax.random.fold_in(key, i), ci), (chunk, mu.shape[-1]), mu.dtype
            )

        eps = jnp.swapaxes(jax.vmap(draw)(index), 0, 1)
        logw, _ = losses.importance_log_weights(m.decode_logits, xin, cond, mu, logvar, eps, fast=True)
        logw = jnp.where(jnp.arange(chunk)[:, None] < valid, logw, -jnp.inf)  # last chunk may be partial
        return jax.nn.logsumexp(logw, axis=0)

    return chunk_logw


def _seconds(fn, st, images, labels, *, k, chunk, batch_size) -> float:
    """The estimated seconds of the whole estimate: one chunk of the first batch timed once compiled,
    times the chunks of every batch."""
    x, y = images[:batch_size], labels[:batch_size]
    index = jnp.arange(x.shape[0])
    jax.block_until_ready(fn(st, x, y, index, 0, chunk))  # compiles
    t0 = time.perf_counter()
    jax.block_until_ready(fn(st, x, y, index, 0, chunk))
    return (time.perf_counter() - t0) * -(-images.shape[0] // batch_size) * -(-k // chunk)


def iwae_seconds(model, images, labels, *, k, key, recon="bce_logits", batch_size=100, chunk=250) -> float:
    """The seconds iwae_nll would take here with these arguments, from one timed chunk (about a
    second: its compile and two calls).

    Returns:
        the estimate in seconds (a float, however large k is)."""
    _iwae_checks(model, recon, k)
    chunk = min(chunk, k)
    graphdef, st = nnx.split(model)
    return _seconds(_chunk_fn(graphdef, key, chunk), st, images, labels, k=k, chunk=chunk, batch_size=batch_size)


def check_iwae_cost(seconds: float, k: int, n: int, *, max_seconds: float = IWAE_MAX_SECONDS) -> str:
    """ConfigError past max_seconds, naming an --iwae-k that fits; else the cost in one line.

    Returns:
        `NLL (k=K): N test images x K samples, about T here` (and how to shorten it past a minute)."""
    if seconds > max_seconds:
        fit = _round_down(k * max_seconds / seconds)
        raise ConfigError(
            f"--iwae-k {k} would take about {_duration(seconds)} here ({n} test images x {k} samples) -- "
            f"use --iwae-k {fit} or less (about {_duration(max_seconds)}), or fewer test images (--test-limit)"
        )
    line = f"NLL (k={k}): {n} test images x {k} samples, about {_duration(seconds)} here"
    return line + (" (a lower --iwae-k or --test-limit shortens it)" if seconds > 60 else "")


def _round_down(v: float) -> int:
    """v rounded down to one significant digit (at least 1): 31234 -> 30000."""
    if v < 1:
        return 1
    scale = 10 ** int(math.log10(v))
    return int(v // scale * scale)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.3g} days"


def iwae_nll(
    model,
    images,
    labels,
    *,
    k=5000,
    key,
    recon="bce_logits",
    batch_size=100,
    chunk=250,
    binarize_key=None,
    progress=False,
    say=None,
    brief=False,
):
    """Mean over images of -log p(x), estimated with k importance samples from q(z|x):

        log p(x) ~= logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k

    (the IWAE bound; it tightens as k grows). Batched over images and over the k samples
    (running logsumexp), so memory is bounded by batch_size * chunk decoder outputs whatever k is.
    The noise of image i depends only on (key, i, chunk index): batch_size does not change the result.
    Bernoulli likelihood only (recon 'bce' or 'bce_logits').

    say: a function of one line. Given, the cost is timed first (check_iwae_cost: refused past
    IWAE_MAX_SECONDS) and said in one line; with progress, off a terminal, a line per tenth of the
    chunks of an estimate over PROGRESS_AFTER_SECONDS. brief: the cost line too only for such an
    estimate.
    """
    _iwae_checks(model, recon, k)
    model.eval()
    graphdef, st = nnx.split(model)
    chunk = min(chunk, k)
    chunk_logw = _chunk_fn(graphdef, key, chunk)
    n = images.shape[0]
    starts = range(0, n, batch_size)
    tenths: dict[int, int] = {}  # chunk calls done -> tenths done, where a line is said
    if say is not None:
        seconds = _seconds(chunk_logw, st, images, labels, k=k, chunk=chunk, batch_size=batch_size)
        line = check_iwae_cost(seconds, k, n)
        if not brief or seconds > PROGRESS_AFTER_SECONDS:
            say(line)
        if progress and seconds > PROGRESS_AFTER_SECONDS and not sys.stdout.isatty():
            calls = len(starts) * -(-k // chunk)
            tenths = {calls * t // 10: t for t in range(1, 10)}
    if progress and sys.stderr.isatty():  # no bar in a log
        starts = tqdm(starts, desc=f"NLL (k={k})", unit="batch", leave=False, dynamic_ncols=True)
    total = 0.0
    t0 = time.perf_counter()
    done = 0
    for bi, a in enumerate(starts):
        x, y = images[a : a + batch_size], labels[a : a + batch_size]
        if binarize_key is not None:
            x = jax.random.bernoulli(jax.random.fold_in(binarize_key, bi), x).astype(x.dtype)
        lse = jnp.full((x.shape[0],), -jnp.inf)
        index = jnp.arange(a, a + x.shape[0])
        for ci, c0 in enumerate(range(0, k, chunk)):
            lse = jnp.logaddexp(lse, chunk_logw(st, x, y, index, ci, min(chunk, k - c0)))
            done += 1
            if done in tenths and say is not None:
                jax.block_until_ready(lse)
                say(f"NLL (k={k}): {10 * tenths[done]}% done ({time.perf_counter() - t0:.0f} s)")
        total += float(jnp.sum(lse - math.log(k)))
    return -total / n


def summary_images(model, images, labels, key, n: int = 8) -> dict[str, np.ndarray]:
    """Two HWC pictures for TensorBoard: the first n test images above their reconstructions, and a 4x4
    grid of samples decoded from z ~ N(0, I) drawn with `key` (labels 0, 1, ... for a conditional model)."""
    from vae_jax.figures import to_images  # figures loads matplotlib and scipy, slow to import

    model.eval()
    x = jnp.asarray(images[:n], jnp.float32)
    y = jnp.asarray(labels[:n], jnp.int32)
    xin, cond = model_inputs(model, x, y)
    enc = model.encode(xin, *cond)
    mu = enc[0] if isinstance(enc, tuple) else enc  # Autoencoder.encode returns z
    shape = tuple(x.shape[1:]) if x.ndim == 4 else None
    pair = to_images(np.concatenate([np.asarray(xin), np.asarray(model.decode(mu, *cond))]), shape)
    z = jax.random.normal(key, (16, mu.shape[-1]), mu.dtype)
    samples = model.decode(z, one_hot(model, jnp.arange(16) % 10, z.dtype)) if model.conditional else model.decode(z)
    return {"reconstruction": _tile(pair, 2), "samples": _tile(to_images(np.asarray(samples), shape), 4)}


def _tile(images: np.ndarray, rows: int) -> np.ndarray:
    """(N, H, W, C) -> one (rows*H, cols*W, C) picture, row by row."""
    n, h, w, c = images.shape
    cols = -(-n // rows)
    padded = np.concatenate([images, np.zeros((rows * cols - n, h, w, c), images.dtype)])
    return padded.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def make_figures(model, test_ds, history, outdir, *, key, n_scatter=5000, batch_size=500):
    """The chapter's figures for a trained model, as PNGs in outdir; returns {name: path}.

    Reads only the first n_scatter test images (encoded batch_size at a time)."""
    from vae_jax import figures  # loads matplotlib and scipy, slow to import: only a run that draws

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    model.eval()
    part = test_ds.take(n_scatter)
    image_shape = tuple(part.image_shape)
    imgs = jnp.asarray(part.images, jnp.float32)
    has_labels = test_ds.has_labels and part.labels is not None
    labels = jnp.asarray(part.labels, jnp.int32) if has_labels else jnp.zeros((imgs.shape[0],), jnp.int32)
    xin, cond = model_inputs(model, imgs, labels)

    def encode(a):
        enc = model.encode(xin[a : a + batch_size], *(c[a : a + batch_size] for c in cond))
        return enc if isinstance(enc, tuple) else (enc, None)  # Autoencoder.encode returns z

    encoded = [encode(a) for a in range(0, imgs.shape[0], batch_size)]
    mu = jnp.concatenate([e[0] for e in encoded])
    logvar = None if encoded[0][1] is None else jnp.concatenate([e[1] for e in encoded])

    def decode_fn(z, c=None):
        z = jnp.asarray(z, mu.dtype)
        if model.conditional:
            y = jnp.zeros((z.shape[0],), jnp.int32) if c is None else c
            return np.asarray(model.decode(z, one_hot(model, y, z.dtype)))
        return np.asarray(model.decode(z))

    out = {}
    n = min(10, imgs.shape[0])
    recon = model.decode(mu[:n], *(c[:n] for c in cond))
    out["reconstruction"] = figures.save_reconstructions(
        np.asarray(imgs[:n]), np.asarray(recon), outdir / "reconstruction.png", image_shape=image_shape
    )
    z = jax.random.normal(key, (16, mu.shape[-1]), mu.dtype)
    out["samples"] = figures.save_sample_grid(
        decode_fn(z, jnp.arange(16) % 10), outdir / "samples.png", image_shape=image_shape
    )
    out["latent"] = figures.save_latent_scatter(
        np.asarray(mu), np.asarray(labels) if has_labels else None, outdir / "latent.png"
    )
    out["manifold"] = figures.save_manifold(
        decode_fn,
        outdir / "manifold.png",
        n=20,
        image_shape=image_shape,
        mu=np.asarray(mu),
        logvar=None if logvar is None else np.asarray(logvar),
    )
    pairs = [(np.asarray(mu[2 * i]), np.asarray(mu[2 * i + 1])) for i in range(min(3, mu.shape[0] // 2))]
    if pairs:
        for mode in ("linear", "spherical"):
            out[f"interpolation_{mode}"] = figures.save_interpolation(
                decode_fn, pairs, outdir / f"interpolation_{mode}.png", mode=mode, image_shape=image_shape
            )
    if history:
        out["loss_curves"] = figures.save_loss_curves(history, outdir / "loss_curves.png")
    return {k: str(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# what the exercises measure of a trained model (vae_jax.experiments)

ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016): unit d is active when Cov_x(E_q[z_d]) > 0.01


def posterior(model, x, y, batch_size=1000):
    """(mu, logvar) of q(z|x) for every image, as numpy arrays."""
    mus, lvs = [], []
    for a in range(0, x.shape[0], batch_size):
        xin, cond = model_inputs(model, x[a : a + batch_size], y[a : a + batch_size])
        mu, lv = model.encode(xin, *cond)
        mus.append(np.asarray(mu))
        lvs.append(np.asarray(lv))
    return np.concatenate(mus), np.concatenate(lvs)


def kl_per_dim(mu, logvar):
    """Mean over the test set of KL(q(z_d|x) || N(0, 1)) for each latent dimension d: (D,)."""
    return np.mean(0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar), axis=0)


def active_units(mu, threshold=ACTIVE_THRESHOLD):
    """Number of dims whose posterior mean varies over the data: Var_x(E_q[z_d]) > threshold."""
    return int(np.sum(np.var(mu, axis=0) > threshold))


def recon_scores(model, x, y, key, batch_size=1000):
    """Per-sample means over the test set of the Bernoulli NLL (nats) and the squared error of
    decode(z), z ~ q(z|x) drawn once from `key`, plus the KL: both models on one scale."""
    bce = sse = kl = 0.0
    for i, a in enumerate(range(0, x.shape[0], batch_size)):
        xin, cond = model_inputs(model, x[a : a + batch_size], y[a : a + batch_size])
        logits, mu, lv = model.forward_logits(xin, jax.random.fold_in(key, i), *cond)
        bce += float(jnp.sum(losses.reconstruction_per_sample(logits, xin, "bce_logits")))
        sse += float(jnp.sum(losses.reconstruction_per_sample(jax.nn.sigmoid(logits), xin, "gaussian")))
        kl += float(jnp.sum(losses.kl_divergence_gaussian(mu, lv)))
    n = x.shape[0]
    return {"bce": bce / n, "sse": sse / n, "kl": kl / n}
