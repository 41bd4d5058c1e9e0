"""Checks before anything is allocated or trained: the model fits the images, the run fits in memory,
the figures at its end can be drawn. Each failure is one ConfigError naming the fix."""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
from flax import nnx

from vae_jax import models
from vae_jax.config import Config
from vae_jax.errors import ConfigError
from vae_jax.trainer import loss_terms


def build_model(config: Config, image_shape, num_classes=10, *, rngs):
    """The model named by config, sized for the data (as its vae_jax.models.model_spec says)."""
    return models.model_spec(config.model).build(config, image_shape, num_classes, rngs=rngs)


def _fit_error(config: Config, image_shape):
    """None when the model runs on images of `image_shape`, else the exception.

    Traced with abstract values only (jax.eval_shape): nothing is initialized or computed.
    """

    def loss():
        model = build_model(config, image_shape, rngs=nnx.Rngs(0))
        model.eval()
        x, y = jnp.zeros((1, *image_shape), jnp.float32), jnp.zeros((1,), jnp.int32)
        return loss_terms(model, x, y, jax.random.key(0), recon=config.recon, beta=config.beta, kl_weight=1.0)[0]

    models.model_spec(config.model)  # a missing file, module or class is its own line, not a misfit
    try:
        jax.eval_shape(loss)
    except ConfigError:  # an option the model cannot take (vae_jax.user_models)
        raise
    except (TypeError, ValueError) as e:
        return e
    return None


def check_model_fits(config: Config, image_shape):
    """ConfigError unless the model runs on images of `image_shape`; the message names the registered
    models that do."""
    e = _fit_error(config, image_shape)
    if e is None:
        return
    detail = (str(e).strip().splitlines() or [""])[0][:160]
    fitting = [
        name
        for name in models.REGISTRY
        if _fit_error(dataclasses.replace(config, model=name, latent_dim=None, hidden_dim=None), image_shape) is None
    ]
    raise ConfigError(
        f"--model {config.model} does not fit the {config.dataset} images of shape {tuple(image_shape)} "
        f"({type(e).__name__}: {detail}) -- use a model that does: {', '.join(fitting) or 'none is registered'}"
    )


def device_memory_bytes() -> int:
    """Memory of the first device: the accelerator's limit, or the host's RAM for the CPU."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 -- backends without memory statistics
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(config: Config, image_shape, *, training: bool = True, examples: int | None = None) -> None:
    """ConfigError, before anything is allocated, for a run that cannot fit in memory: the weights
    with their gradients and Adam's two moments (4 copies), and a batch's activations (estimated as
    8 float32 copies of input, hidden and latent sizes per sample and importance sample).
    examples: the size of the largest split, which bounds the batch (a --batch-size above it is one
    full-data batch). training=False: only the weights and Adam's state (reading a trained run)."""
    abstract = nnx.eval_shape(lambda: build_model(config, image_shape, rngs=nnx.Rngs(0)))
    params = sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    width = math.prod(image_shape) + int(config.hidden_dim or 400) + int(getattr(abstract, "latent_dim", 0))
    weights = 4 * 4 * params
    batch = min(int(config.batch_size), int(examples)) if examples is not None else int(config.batch_size)
    activations = 8 * 4 * batch * int(config.train_k) * width if training else 0
    have = device_memory_bytes()
    if weights + activations > 0.8 * have:
        lower = "--latent-dim or --hidden-dim" if weights > activations else "--batch-size or --train-k"
        raise ConfigError(
            f"out of memory: this run needs about {(weights + activations) / 2**30:.1f} GiB "
            f"({params:,} parameters with Adam's state, and a batch's activations), the device has "
            f"{have / 2**30:.1f} GiB -- lower {lower}"
        )


def check_figures_fit(config: Config, model, test_ds) -> None:
    """ConfigError, before any training, for a run whose figures would fail at its end."""
    if not config.figures:
        return
    if getattr(model, "latent_dim", 2) < 2:
        raise ConfigError(
            f"--latent-dim {model.latent_dim}: the latent figures (scatter, manifold) need 2 or more "
            "dimensions -- pass --latent-dim 2 or more, or --no-figures"
        )
    if len(test_ds) < 2:
        raise ConfigError(
            f"the figures need at least 2 test images, the test set has {len(test_ds)} -- raise "
            "--test-limit or pass --no-figures"
        )


def check_iwae_cost(config: Config, model, test_ds) -> None:
    """ConfigError, before any training, for an --iwae-k whose NLL at the end would take past
    evaluate.IWAE_MAX_SECONDS here (one chunk timed on the test images: about a second)."""
    if not config.iwae_k:
        return
    from vae_jax import evaluate  # loads tqdm: only a run that estimates the NLL

    rows = min(100, len(test_ds))  # a batch of iwae_nll's: its time does not depend on the pixels
    x, y = jnp.zeros((rows, *test_ds.image_shape), jnp.float32), jnp.zeros((rows,), jnp.int32)
    seconds = evaluate.iwae_seconds(model, x, y, k=config.iwae_k, key=jax.random.key(0), recon=config.recon)
    evaluate.check_iwae_cost(seconds * len(test_ds) / rows, config.iwae_k, len(test_ds))
