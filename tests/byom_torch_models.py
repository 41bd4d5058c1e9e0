"""The torch side of tests/byom_models.py's MLPVAE (`--torch-model tests/byom_torch_models.py:ClassName`):
the same layers in the same call order, so vae_jax.parity's pairing maps one into the other; and a
copy with a planted difference, which the parity check must name."""

import torch
from torch import nn


class TorchMLPVAE(nn.Module):
    """tests/byom_models.py's MLPVAE in torch: two hidden layers with LeakyReLU (slope 0.01, as JAX's)."""

    slope = 0.01

    def __init__(self, input_dim=784, hidden_dim=256, latent_dim=8):
        super().__init__()
        self.enc1, self.enc2 = nn.Linear(input_dim, hidden_dim), nn.Linear(hidden_dim, hidden_dim // 2)
        self.mu, self.logvar = nn.Linear(hidden_dim // 2, latent_dim), nn.Linear(hidden_dim // 2, latent_dim)
        self.dec1, self.dec2 = nn.Linear(latent_dim, hidden_dim // 2), nn.Linear(hidden_dim // 2, hidden_dim)
        self.out = nn.Linear(hidden_dim, input_dim)

    def forward(self, x):
        act = lambda v: nn.functional.leaky_relu(v, self.slope)
        h = act(self.enc2(act(self.enc1(x))))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(logvar)
        return torch.sigmoid(self.out(act(self.dec2(act(self.dec1(z)))))), mu, logvar


class SlopeTorchMLPVAE(TorchMLPVAE):
    """The planted difference: LeakyReLU's slope 0.2, not the Flax model's 0.01."""

    slope = 0.2
