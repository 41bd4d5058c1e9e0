"""vae-jax: the chapter's VAE family in JAX/Flax NNX."""

__version__ = "0.1.0"
