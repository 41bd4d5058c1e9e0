"""A port of your own in `make parity`: the `parity` fixture (vae_jax.pytest_plugin, imported by
conftest.py) runs vae_jax.parity.check, and the report's checks land in parity-report/parity.md beside
the chapter's models. The pair is tests/parity_pairs.py's MLP VAE (BatchNorm1d, LeakyReLU)."""

import numpy as np
import torch
from flax import nnx

from tests.parity_pairs import FlaxMLP, TorchMLP


def test_an_mlp_vae_of_your_own(parity):
    torch.manual_seed(0)
    x = np.random.default_rng(0).uniform(0, 1, (8, 48)).astype(np.float32)
    report = parity(TorchMLP(), FlaxMLP(rngs=nnx.Rngs(0)), x, steps=5, seeds=2)
    assert report.passed, report.to_markdown()
