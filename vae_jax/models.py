"""The chapter's models in Flax NNX, beside the PyTorch reference in `vae_torch_ref/models.py`.

Each model has the chapter's constructor arguments, defaults and attribute names (so
`vae_jax.convert` maps every parameter to the torch key of the same name), and one interface:

    encode(x[, y])                     -> (mu, logvar)      (Autoencoder: z)
    reparameterize(mu, logvar, key)    -> z = mu + exp(logvar / 2) * eps
    decode_logits(z[, y])              -> pre-sigmoid decoder output
    decode(z[, y])                     -> sigmoid(decode_logits(z))
    __call__(x, key[, y], eps=None)    -> (x_recon, mu, logvar)   (Autoencoder: (x_recon, z))
    sample(num_samples, key[, y])      -> decode(z), z ~ N(0, I) drawn from `key`

Randomness enters only through explicit `jax.random` keys (or an injected `eps`). MLP models take
(B, D); conv models take and return NHWC. The torch-compatible layers, the NCHW flatten order and
the conv forms (`ConvForm`) are in `vae_jax.layers`. `REGISTRY` says how each model is built from
a training config and the data's image shape; `model_spec` resolves a run's model name, the chapter's
or one's own (vae_jax.user_models).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vae_jax.layers import (
    BatchNorm2d,
    Conv2d,
    ConvForm,
    ConvTranspose2d,
    Linear,
    default_conv_form,
    named_conv_form,
    nchw_flatten,
    nchw_unflatten,
)


def draw_eps(key, shape, dtype, eps):
    if eps is not None:
        return eps
    if key is None:
        raise ValueError("a jax.random key is required to draw eps: pass key=jax.random.key(seed) (or eps=...)")
    return jax.random.normal(key, shape, dtype)


class _Gaussian(nnx.Module):
    """What every VAE shares: the reparameterization, the forward pass and sampling."""

    conditional = False
    latent_dim: int  # each model sets these and defines the two methods
    _param_dtype: Any
    encode: Callable[..., tuple[jax.Array, jax.Array]]
    decode_logits: Callable[..., jax.Array]

    def reparameterize(self, mu, logvar, key=None, eps=None):
        std = jnp.exp(0.5 * logvar)
        return mu + std * draw_eps(key, std.shape, std.dtype, eps)

    def decode(self, z, *cond):
        return jax.nn.sigmoid(self.decode_logits(z, *cond))

    def forward_logits(self, x, key=None, *cond, eps=None):
        """(decoder logits, mu, logvar): the training path (logits-stable losses)."""
        mu, logvar = self.encode(x, *cond)
        z = self.reparameterize(mu, logvar, key, eps)
        return self.decode_logits(z, *cond), mu, logvar

    def __call__(self, x, key=None, *cond, eps=None):
        logits, mu, logvar = self.forward_logits(x, key, *cond, eps=eps)
        return jax.nn.sigmoid(logits), mu, logvar

    def sample(self, num_samples, key, *cond):
        dtype = self._param_dtype
        z = jax.random.normal(key, (num_samples, self.latent_dim), dtype)
        return self.decode(z, *cond)


class Autoencoder(nnx.Module):
    """Standard (deterministic) Autoencoder: 784-400-20-400-784."""

    conditional = False
    flat_input = True

    def __init__(self, input_dim=784, hidden_dim=400, latent_dim=20, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.input_dim, self.latent_dim = input_dim, latent_dim
        self.hidden_dim = hidden_dim
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.fc1 = Linear(input_dim, hidden_dim, **kw)
        self.fc2 = Linear(hidden_dim, latent_dim, **kw)
        self.fc3 = Linear(latent_dim, hidden_dim, **kw)
        self.fc4 = Linear(hidden_dim, input_dim, **kw)

    def encode(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))

    def decode_logits(self, z):
        return self.fc4(jax.nn.relu(self.fc3(z)))

    def decode(self, z):
        return jax.nn.sigmoid(self.decode_logits(z))

    def forward_logits(self, x, key=None, eps=None):
        z = self.encode(x)
        return self.decode_logits(z), z, None

    def __call__(self, x, key=None, eps=None):
        z = self.encode(x)
        return self.decode(z), z


class VAE(_Gaussian):
    """The chapter's MLP VAE: 784-400-(20, 20)-400-784."""

    flat_input = True

    def __init__(self, input_dim=784, hidden_dim=400, latent_dim=20, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.input_dim, self.latent_dim, self._param_dtype = input_dim, latent_dim, param_dtype
        self.hidden_dim = hidden_dim
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.encoder_fc1 = Linear(input_dim, hidden_dim, **kw)
        self.encoder_fc_mu = Linear(hidden_dim, latent_dim, **kw)
        self.encoder_fc_logvar = Linear(hidden_dim, latent_dim, **kw)
        self.decoder_fc1 = Linear(latent_dim, hidden_dim, **kw)
        self.decoder_fc2 = Linear(hidden_dim, input_dim, **kw)

    def encode(self, x):
        h = jax.nn.relu(self.encoder_fc1(x))
        return self.encoder_fc_mu(h), self.encoder_fc_logvar(h)

    def decode_logits(self, z):
        return self.decoder_fc2(jax.nn.relu(self.decoder_fc1(z)))


class CVAE(_Gaussian):
    """Conditional VAE (exercise 3): VAE with the one-hot label concatenated to x and to z."""

    conditional = True
    flat_input = True

    def __init__(
        self, input_dim=784, hidden_dim=400, latent_dim=20, num_classes=10, *, rngs: nnx.Rngs, param_dtype=jnp.float32
    ):
        self.input_dim, self.latent_dim, self.num_classes = input_dim, latent_dim, num_classes
        self.hidden_dim = hidden_dim
        self._param_dtype = param_dtype
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.encoder_fc1 = Linear(input_dim + num_classes, hidden_dim, **kw)
        self.encoder_fc_mu = Linear(hidden_dim, latent_dim, **kw)
        self.encoder_fc_logvar = Linear(hidden_dim, latent_dim, **kw)
        self.decoder_fc1 = Linear(latent_dim + num_classes, hidden_dim, **kw)
        self.decoder_fc2 = Linear(hidden_dim, input_dim, **kw)

    def encode(self, x, y_onehot):
        h = jax.nn.relu(self.encoder_fc1(jnp.concatenate([x, y_onehot], axis=-1)))
        return self.encoder_fc_mu(h), self.encoder_fc_logvar(h)

    def decode_logits(self, z, y_onehot):
        h = jax.nn.relu(self.decoder_fc1(jnp.concatenate([z, y_onehot], axis=-1)))
        return self.decoder_fc2(h)


class ConvVAE(_Gaussian):
    """The chapter's convolutional VAE, as it really behaves.

    Encoder 28 -> 14 -> 7 -> 3 (k4 s2 p1 convs); decoder 3 -> 6 -> 12 -> 24: for a 28x28 input it
    returns 24x24, not 28x28 as the chapter's comments say, so the chapter's BCE against the
    28x28 input fails. `ConvVAE28` is the corrected model with the same parameters.
    """

    output_padding = 0

    def __init__(
        self,
        input_channels=1,
        latent_dim=128,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
        conv_form: ConvForm | None = None,
    ):
        self.input_channels, self.latent_dim, self._param_dtype = input_channels, latent_dim, param_dtype
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        ckw = dict(
            kw, conv_form=conv_form or default_conv_form(param_dtype)
        )  # the conv layers: which form they compute in (vae_jax.layers)
        self.encoder_conv = nnx.Sequential(
            Conv2d(input_channels, 32, 4, stride=2, padding=1, **ckw),
            jax.nn.relu,
            Conv2d(32, 64, 4, stride=2, padding=1, **ckw),
            jax.nn.relu,
            Conv2d(64, 128, 4, stride=2, padding=1, **ckw),
            jax.nn.relu,
        )
        self.fc_mu = Linear(128 * 3 * 3, latent_dim, **kw)
        self.fc_logvar = Linear(128 * 3 * 3, latent_dim, **kw)
        self.decoder_fc = Linear(latent_dim, 128 * 3 * 3, **kw)
        # torch's nn.Sigmoid at index 5 is applied by `decode`; indices match torch's keys.
        self.decoder_conv = nnx.Sequential(
            ConvTranspose2d(128, 64, 4, stride=2, padding=1, output_padding=self.output_padding, **ckw),
            jax.nn.relu,
            ConvTranspose2d(64, 32, 4, stride=2, padding=1, **ckw),
            jax.nn.relu,
            ConvTranspose2d(32, input_channels, 4, stride=2, padding=1, **ckw),
        )

    def encode(self, x):
        h = nchw_flatten(self.encoder_conv(x))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z):
        return self.decoder_conv(nchw_unflatten(self.decoder_fc(z), 128, 3))


class ConvVAE28(ConvVAE):
    """Corrected ConvVAE: output_padding=1 on the first transposed conv (3 -> 7 -> 14 -> 28).

    Same parameters and state_dict keys/shapes as ConvVAE; decode returns 28x28.
    """

    output_padding = 1


class CelebAVAE(_Gaussian):
    """The chapter's 64x64 RGB VAE with BatchNorm (torch BatchNorm2d semantics)."""

    def __init__(
        self,
        input_channels=3,
        latent_dim=256,
        *,
        rngs: nnx.Rngs,
        param_dtype=jnp.float32,
        conv_form: ConvForm | None = None,
    ):
        self.input_channels, self.latent_dim, self._param_dtype = input_channels, latent_dim, param_dtype
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        form = conv_form or default_conv_form(param_dtype)
        ckw = dict(kw, conv_form=form)
        bn = dict(param_dtype=param_dtype, impl=form.norm)
        enc = []
        for cin, cout in [(input_channels, 32), (32, 64), (64, 128), (128, 256)]:
            enc += [Conv2d(cin, cout, 4, stride=2, padding=1, **ckw), BatchNorm2d(cout, **bn), jax.nn.relu]
        self.encoder = nnx.Sequential(*enc)
        self.fc_mu = Linear(256 * 4 * 4, latent_dim, **kw)
        self.fc_logvar = Linear(256 * 4 * 4, latent_dim, **kw)
        self.decoder_fc = Linear(latent_dim, 256 * 4 * 4, **kw)
        dec = []
        for cin, cout in [(256, 128), (128, 64), (64, 32)]:
            dec += [ConvTranspose2d(cin, cout, 4, stride=2, padding=1, **ckw), BatchNorm2d(cout, **bn), jax.nn.relu]
        dec.append(
            ConvTranspose2d(32, input_channels, 4, stride=2, padding=1, **ckw)
        )  # torch's nn.Sigmoid (index 10) -> decode
        self.decoder = nnx.Sequential(*dec)

    def encode(self, x):
        h = nchw_flatten(self.encoder(x))
        return self.fc_mu(h), self.fc_logvar(h)

    def decode_logits(self, z):
        return self.decoder(nchw_unflatten(self.decoder_fc(z), 256, 4))


def one_hot(model, y, dtype=jnp.float32):
    """The conditioning vector of a conditional model for integer labels y."""
    return jax.nn.one_hot(y, model.num_classes, dtype=dtype)


def model_inputs(model, x, y):
    """(x as the model takes it, the arguments after x): MLP models flatten the image; conditional
    models also take the one-hot label."""
    x = x.reshape(x.shape[0], -1) if getattr(model, "flat_input", False) else x
    return x, ((one_hot(model, y, x.dtype),) if model.conditional else ())


# ----------------------------------------------------------------------------------- registry


def _sizes(config, *names):
    """The sizes `config` sets among `names` (None there: the constructor's default)."""
    return {n: int(getattr(config, n)) for n in names if getattr(config, n) is not None}


def _mlp(cls, config, image_shape, num_classes, *, rngs, **kwargs):
    """An MLP model: input_dim from the image shape, hidden_dim and latent_dim from the config."""
    return cls(input_dim=int(np.prod(image_shape)), **_sizes(config, "hidden_dim", "latent_dim"), rngs=rngs, **kwargs)


def _conditional_mlp(cls, config, image_shape, num_classes, *, rngs, **kwargs):
    """An MLP model conditioned on one of `num_classes` labels."""
    return cls(
        input_dim=int(np.prod(image_shape)),
        num_classes=num_classes,
        **_sizes(config, "hidden_dim", "latent_dim"),
        rngs=rngs,
        **kwargs,
    )


def _conv(cls, config, image_shape, num_classes, *, rngs, **kwargs):
    """A conv model: input_channels from the image shape, latent_dim and the conv form from the config."""
    form = kwargs.pop("conv_form", None) or named_conv_form(getattr(config, "conv_form", "auto"))
    return cls(input_channels=int(image_shape[-1]), **_sizes(config, "latent_dim"), rngs=rngs, conv_form=form, **kwargs)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered model: its class and how it is built from a training config (its latent_dim,
    hidden_dim; None: the chapter's default) and the data's image shape (H, W, C)."""

    cls: type
    builder: Callable[..., nnx.Module]

    def build(self, config, image_shape, num_classes=10, *, rngs, **kwargs):
        """The model sized for the data; kwargs go to the constructor (param_dtype, conv_form)."""
        return self.builder(self.cls, config, image_shape, num_classes, rngs=rngs, **kwargs)


REGISTRY = {
    "ae": ModelSpec(Autoencoder, _mlp),
    "vae": ModelSpec(VAE, _mlp),
    "cvae": ModelSpec(CVAE, _conditional_mlp),
    "conv_vae": ModelSpec(ConvVAE, _conv),
    "conv_vae28": ModelSpec(ConvVAE28, _conv),
    "celeba_vae": ModelSpec(CelebAVAE, _conv),
}
MODELS = {name: spec.cls for name, spec in REGISTRY.items()}


def model_spec(name: str) -> ModelSpec:
    """How the model `name` (a run's config.model) is built: a registered name's ModelSpec, or a model
    of one's own, path/to/file.py:ClassName or package.module:ClassName (vae_jax.user_models). The one
    place a run's model class is resolved; a missing file, module or class is one ConfigError line."""
    if name in REGISTRY:
        return REGISTRY[name]
    from vae_jax import user_models  # it imports this module

    return user_models.spec(name)
