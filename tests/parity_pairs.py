"""Hand-written PyTorch / Flax VAE pairs that are not the chapter's models (tests/test_parity_api.py,
docs/parity_your_model.md): an MLP VAE with BatchNorm1d and LeakyReLU, and a conv VAE with 3x3
stride-2 convs, a BatchNorm and a transposed-conv decoder. Each Flax class takes the porting bugs
that the tests plant, one at a time, as keyword arguments."""

import jax
import jax.numpy as jnp
import torch
from flax import nnx
from torch import nn

from vae_jax.layers import BatchNorm2d, nchw_flatten, nchw_unflatten


class TorchMLP(nn.Module):
    def __init__(self, d=48, h=32, z=6):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Linear(d, h), nn.BatchNorm1d(h), nn.LeakyReLU(0.2), nn.Linear(h, h), nn.LeakyReLU(0.2)
        )
        self.fc_mu, self.fc_logvar = nn.Linear(h, z), nn.Linear(h, z)
        self.dec = nn.Sequential(nn.Linear(z, h), nn.LeakyReLU(0.2), nn.Linear(h, d), nn.Sigmoid())

    def forward(self, x):
        h = self.enc(x)
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(logvar)
        return self.dec(z), mu, logvar


class FlaxMLP(nnx.Module):
    def __init__(self, d=48, h=32, z=6, *, rngs, slope=0.2, momentum=0.1, bn_eps=1e-5, plain_bn=False):
        self.slope = slope
        self.fc1 = nnx.Linear(d, h, rngs=rngs)
        self.bn = nnx.BatchNorm(h, rngs=rngs) if plain_bn else BatchNorm2d(h, momentum=momentum, eps=bn_eps)
        self.fc2 = nnx.Linear(h, h, rngs=rngs)
        self.fc_mu, self.fc_logvar = nnx.Linear(h, z, rngs=rngs), nnx.Linear(h, z, rngs=rngs)
        self.dec1, self.dec2 = nnx.Linear(z, h, rngs=rngs), nnx.Linear(h, d, rngs=rngs)

    def __call__(self, x, key=None, eps=None):
        act = lambda v: jax.nn.leaky_relu(v, self.slope)
        h = act(self.fc2(act(self.bn(self.fc1(x)))))
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        eps = jax.random.normal(key, mu.shape) if eps is None else eps
        z = mu + jnp.exp(0.5 * logvar) * eps
        return jax.nn.sigmoid(self.dec2(act(self.dec1(z)))), mu, logvar


class TorchConv(nn.Module):
    def __init__(self, z=6):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.2),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
        )  # fmt: skip
        self.fc_mu, self.fc_logvar = nn.Linear(16 * 4 * 4, z), nn.Linear(16 * 4 * 4, z)
        self.dec_fc = nn.Linear(z, 16 * 4 * 4)
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, x):
        h = self.enc(x).flatten(1)
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(logvar)
        return self.dec(self.dec_fc(z).view(-1, 16, 4, 4)), mu, logvar


class FlaxConv(nnx.Module):
    def __init__(self, z=6, *, rngs, same=False, nhwc_flatten=False, tconv_pad=2, transpose_kernel=False):
        p1 = "SAME" if same else ((1, 1), (1, 1))
        self.nhwc_flatten = nhwc_flatten
        self.c1 = nnx.Conv(1, 8, (3, 3), strides=(2, 2), padding=p1, rngs=rngs)
        self.bn = BatchNorm2d(8)
        self.c2 = nnx.Conv(8, 16, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), rngs=rngs)
        self.fc_mu, self.fc_logvar = nnx.Linear(256, z, rngs=rngs), nnx.Linear(256, z, rngs=rngs)
        self.dec_fc = nnx.Linear(z, 256, rngs=rngs)
        # torch's ConvTranspose2d(k=4, s=2, p=1) pads the dilated input by k - 1 - p = 2
        pad = ((tconv_pad, tconv_pad), (tconv_pad, tconv_pad))
        kw = dict(strides=(2, 2), transpose_kernel=transpose_kernel, rngs=rngs)
        self.t1 = nnx.ConvTranspose(16, 8, (4, 4), padding=pad, **kw)
        self.t2 = nnx.ConvTranspose(8, 1, (4, 4), padding=((2, 2), (2, 2)), **kw)

    def __call__(self, x, key=None, eps=None):
        act = lambda v: jax.nn.leaky_relu(v, 0.2)
        h = act(self.c2(act(self.bn(self.c1(x)))))
        h = h.reshape(h.shape[0], -1) if self.nhwc_flatten else nchw_flatten(h)
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        eps = jax.random.normal(key, mu.shape) if eps is None else eps
        z = mu + jnp.exp(0.5 * logvar) * eps
        h = nchw_unflatten(self.dec_fc(z), 16, 4)
        return jax.nn.sigmoid(self.t2(act(self.t1(h)))), mu, logvar
