"""Models of one's own, outside the package, for tests/test_your_model.py (`--model
tests/byom_models.py:ClassName`, or `--model byom_models:ClassName` with tests/ on the path)."""

import jax
import jax.numpy as jnp
from flax import nnx

from vae_jax import layers


class MLPVAE(nnx.Module):
    """Two hidden layers with LeakyReLU; no decode_logits (vae-jax recovers the logits from decode)."""

    def __init__(self, input_dim=784, hidden_dim=256, latent_dim=8, *, rngs: nnx.Rngs):
        self.latent_dim = latent_dim
        self.enc1 = layers.Linear(input_dim, hidden_dim, rngs=rngs)
        self.enc2 = layers.Linear(hidden_dim, hidden_dim // 2, rngs=rngs)
        self.mu = layers.Linear(hidden_dim // 2, latent_dim, rngs=rngs)
        self.logvar = layers.Linear(hidden_dim // 2, latent_dim, rngs=rngs)
        self.dec1 = layers.Linear(latent_dim, hidden_dim // 2, rngs=rngs)
        self.dec2 = layers.Linear(hidden_dim // 2, hidden_dim, rngs=rngs)
        self.out = layers.Linear(hidden_dim, input_dim, rngs=rngs)

    def encode(self, x):
        h = jax.nn.leaky_relu(self.enc2(jax.nn.leaky_relu(self.enc1(x))))
        return self.mu(h), self.logvar(h)

    def decode(self, z):
        h = jax.nn.leaky_relu(self.dec2(jax.nn.leaky_relu(self.dec1(z))))
        return jax.nn.sigmoid(self.out(h))

    def __call__(self, x, key, eps=None):
        mu, logvar = self.encode(x)
        eps = jax.random.normal(key, mu.shape) if eps is None else eps
        return self.decode(mu + jnp.exp(0.5 * logvar) * eps), mu, logvar


class ConvVAE3x3(nnx.Module):
    """3x3 stride-2 convs with BatchNorm and LeakyReLU, 28 -> 14 -> 7 and back (output_padding=1)."""

    def __init__(self, input_channels=1, latent_dim=16, *, rngs: nnx.Rngs):
        self.latent_dim = latent_dim
        c = input_channels
        self.encoder = nnx.Sequential(
            layers.Conv2d(c, 16, 3, stride=2, padding=1, rngs=rngs),
            layers.BatchNorm2d(16),
            jax.nn.leaky_relu,
            layers.Conv2d(16, 32, 3, stride=2, padding=1, rngs=rngs),
            layers.BatchNorm2d(32),
            jax.nn.leaky_relu,
        )
        self.fc_mu = layers.Linear(32 * 7 * 7, latent_dim, rngs=rngs)
        self.fc_logvar = layers.Linear(32 * 7 * 7, latent_dim, rngs=rngs)
        self.decoder_fc = layers.Linear(latent_dim, 32 * 7 * 7, rngs=rngs)
        self.decoder = nnx.Sequential(
            layers.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1, rngs=rngs),
            layers.BatchNorm2d(16),
            jax.nn.leaky_relu,
            layers.ConvTranspose2d(16, c, 3, stride=2, padding=1, output_padding=1, rngs=rngs),
        )

    def encode(self, x):
        h = layers.nchw_flatten(self.encoder(x))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z):
        return self.decoder(layers.nchw_unflatten(self.decoder_fc(z), 32, 7))

    def decode(self, z):
        return jax.nn.sigmoid(self.decode_logits(z))

    def __call__(self, x, key, eps=None):
        mu, logvar = self.encode(x)
        eps = jax.random.normal(key, mu.shape) if eps is None else eps
        return self.decode(mu + jnp.exp(0.5 * logvar) * eps), mu, logvar


class NoDecode(nnx.Module):
    """Not a model: no decode."""

    def __init__(self, input_dim=784, *, rngs: nnx.Rngs):
        self.fc = layers.Linear(input_dim, 4, rngs=rngs)

    def encode(self, x):
        return self.fc(x), self.fc(x)

    def __call__(self, x, key, eps=None):
        return x, *self.encode(x)
