# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A tour of vae-jax
#
# The chapter builds a variational autoencoder (VAE) in PyTorch: an encoder maps an image $x$ to the
# mean $\mu$ and log-variance $\log\sigma^2$ of $q(z \mid x)$, the reparameterization trick draws
# $z = \mu + \sigma \cdot \epsilon$ with $\epsilon \sim \mathcal{N}(0, I)$, and a decoder maps $z$ back
# to pixel probabilities. Training minimises the negative ELBO: reconstruction error plus
# $\mathrm{KL}(q(z \mid x) \,\|\, \mathcal{N}(0, I))$.
#
# This notebook walks through the same model in JAX/Flax NNX:
#
# 1. build the chapter's VAE in Flax and load its weights into the chapter's own PyTorch class;
# 2. check that both give the same outputs for the same input and the same noise $\epsilon$;
# 3. train a few epochs on the embedded digits and look at the figures;
# 4. export the trained weights as a PyTorch `state_dict` and load them in the chapter's class.
#
# It runs on a GPU when one is present (JAX picks it by default) and on the CPU otherwise.

# %%
import contextlib
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from IPython.display import Image, display

import vae_torch_ref.models as chapter
from vae_jax import convert, datasets, models, train

# GPUs may run float32 matmuls in reduced precision (TF32); full precision keeps the comparison exact.
jax.config.update("jax_default_matmul_precision", "highest")
torch_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print("JAX devices:", jax.devices())
print("torch device:", torch_device)

# %% [markdown]
# ## 1. The chapter's VAE in Flax, its weights in PyTorch
#
# `vae_jax.models.VAE` is the chapter's MLP VAE (784-400-(20, 20)-400-784) with the same attribute
# names (`encoder_fc1`, `encoder_fc_mu`, ...). Flax stores a dense layer's kernel as (in, out), PyTorch
# as (out, in); `convert.to_torch_state_dict` writes the chapter's keys and layouts, so the chapter's
# class loads them with `strict=True` (no key missing, none left over).

# %%
model = models.VAE(rngs=nnx.Rngs(0))
state_dict = convert.to_torch_state_dict(model)
for key, tensor in state_dict.items():
    print(f"{key:28s} {tuple(tensor.shape)}")

reference = chapter.VAE().to(torch_device)
print(reference.load_state_dict(state_dict, strict=True))

# %% [markdown]
# ## 2. Same input, same noise, same outputs
#
# The chapter's `reparameterize` draws $\epsilon$ with `torch.randn_like`; JAX cannot reproduce
# PyTorch's random stream. So we draw $\epsilon$ once from a JAX key and hand it to both: the Flax
# model takes `eps=`, and for PyTorch a small context manager swaps `torch.randn_like` for a
# function that returns our $\epsilon$ while the chapter's `forward` runs unchanged.


# %%
@contextlib.contextmanager
def given_eps(eps):
    """Within the block, torch.randn_like(t) returns `eps` (the chapter's reparameterize calls it once)."""
    real = torch.randn_like

    def fake_randn_like(t, *args, **kwargs):
        assert t.shape == eps.shape, f"randn_like{tuple(t.shape)}, but eps is {tuple(eps.shape)}"
        return eps.to(t.device, t.dtype)

    torch.randn_like = fake_randn_like
    try:
        yield
    finally:
        torch.randn_like = real


images = datasets.load_dataset("digits", "test").take(8).images  # (8, 28, 28, 1), in [0, 1]
x = images.reshape(len(images), -1)  # the MLP VAE takes flat 784-vectors
eps = jax.random.normal(jax.random.key(1), (len(x), model.latent_dim))

jax_out = model(jnp.asarray(x), eps=eps)  # (x_recon, mu, logvar)
with torch.no_grad(), given_eps(torch.tensor(np.asarray(eps))):
    torch_out = reference(torch.tensor(x, device=torch_device))

diffs = {
    name: float(np.max(np.abs(np.asarray(a) - b.cpu().numpy())))
    for name, a, b in zip(("x_recon", "mu", "logvar"), jax_out, torch_out, strict=True)
}
for name, diff in diffs.items():
    print(f"{name:8s} {diff:.2e}")
print(f"max abs difference between Flax and PyTorch: {max(diffs.values()):.2e}")

# %% [markdown]
# ## 3. Train on the embedded digits
#
# `train.train_and_evaluate` is what `vae-jax train` runs: Adam on the negative ELBO (the chapter's
# BCE reconstruction term, computed from the decoder's logits for stability, plus the KL term), one
# test pass per epoch, checkpoints, and the chapter's figures at the end. The `digits` dataset is
# scikit-learn's 8x8 digits upsampled to 28x28: it ships with scikit-learn, nothing is downloaded.
# A few epochs are enough to see digits appear; `epochs=` and `train_limit=` trade time for quality.

# %%
workdir = Path(tempfile.mkdtemp(prefix="vae-tour-")) / "run"
config = train.Config(dataset="digits", epochs=10, batch_size=64, progress=False, tensorboard=False)
summary = train.train_and_evaluate(config, workdir)

# %% [markdown]
# The run wrote its figures as PNGs in `workdir/figures`: test digits above their reconstructions,
# samples decoded from $z \sim \mathcal{N}(0, I)$, the latent space and the loss curves.

# %%
for name, path in summary["figures"].items():
    print(name)
    display(Image(filename=path))

# %% [markdown]
# ## 4. Export to PyTorch
#
# `train.restore_run` rebuilds the trained model from the run's latest checkpoint (what `vae-jax export`
# does); `convert.save_pt` writes its `state_dict` with `torch.save`. The chapter's `VAE` loads it
# strictly, and decodes the same latent vectors to the same images as the Flax model.

# %%
trained, _, _ = train.restore_run(workdir)
pt_path = workdir / "vae.pt"
convert.save_pt(trained, pt_path)

exported = chapter.VAE().to(torch_device)
print(exported.load_state_dict(torch.load(pt_path, map_location=torch_device, weights_only=True), strict=True))

z = jax.random.normal(jax.random.key(2), (16, trained.latent_dim))
with torch.no_grad():
    torch_samples = exported.decode(torch.tensor(np.asarray(z), device=torch_device)).cpu().numpy()
export_diff = float(np.max(np.abs(np.asarray(trained.decode(z)) - torch_samples)))
print(f"exported model, max abs difference between Flax and PyTorch samples: {export_diff:.2e}")
