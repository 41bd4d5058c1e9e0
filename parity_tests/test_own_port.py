"""A port of your own in `make parity`: the `parity` fixture (vae_jax.pytest_plugin, imported by
conftest.py) runs vae_jax.parity.check, and the report's checks land in parity-report/parity.md beside
the chapter's models. The pair is tests/parity_pairs.py's MLP VAE (BatchNorm1d, LeakyReLU)."""

import numpy as np
import pytest
import torch
from flax import nnx

from tests.parity_pairs import FlaxMLP, TorchMLP


def test_an_mlp_vae_of_your_own(parity):
    torch.manual_seed(0)
    x = np.random.default_rng(0).uniform(0, 1, (8, 48)).astype(np.float32)
    report = parity(TorchMLP(), FlaxMLP(rngs=nnx.Rngs(0)), x, steps=5, seeds=2)
    assert report.passed, report.to_markdown()


@pytest.mark.parametrize(
    "name, shape",
    [
        ("VAE", (4, 784)),
        ("ConvVAE28", (4, 1, 28, 28)),
        pytest.param("CelebAVAE", (2, 3, 64, 64), marks=pytest.mark.slow),
    ],
)
def test_the_chapters_models_through_the_public_check(parity, name, shape):
    """The chapter's own pairs pass vae_jax.parity.check too: layers paired by call order, and
    CelebAVAE's 7 BatchNorm-fed biases found from the graph."""
    import vae_torch_ref as R
    from vae_jax import models

    torch.manual_seed(0)
    x = np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)
    tm, fm = getattr(R, name)(), getattr(models, name)(rngs=nnx.Rngs(0))
    report = parity(tm, fm, x, steps=2, name=f"{name} (parity.check)")
    assert report.passed, report.to_markdown()
    fed = {c.name for c in report.checks if c.quantity.startswith("BatchNorm-fed") and c.name.startswith("torch")}
    assert len(fed) == (7 if name == "CelebAVAE" else 0)


def test_float64_through_the_public_check(parity):
    """float64 within the call only (conftest's _no_x64_leak checks the rest); a model on oneDNN's
    float32 kernels is one line saying so."""
    import vae_torch_ref as R
    from vae_jax import layers, models
    from vae_jax.errors import ConversionError

    torch.manual_seed(0)
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 28, 28))
    fm = models.ConvVAE28(rngs=nnx.Rngs(0), conv_form=layers.DEFAULT_CONV_FORM)
    report = parity(R.ConvVAE28(), fm, x, steps=2, dtype="float64", name="ConvVAE28 (parity.check)")
    assert report.passed and "float64" in report.device, report.to_markdown()
    onednn = models.ConvVAE28(rngs=nnx.Rngs(0), conv_form=layers.ONEDNN_CONV_FORM)
    with pytest.raises(ConversionError, match="oneDNN's float32 kernels, which float64 cannot use"):
        parity(R.ConvVAE28(), onednn, x, steps=0, dtype="float64")
