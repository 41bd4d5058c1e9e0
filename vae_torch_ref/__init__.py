"""The chapter's PyTorch VAE code as an exact reference (plus small additions)."""
from .models import Autoencoder, VAE, ConvVAE, CelebAVAE, ConvVAE28, CVAE, reparameterize, MODELS
from .noise import inject_eps
from .losses import kl_divergence_gaussian, vae_loss, elbo_loss, decode_logits, RECON_KINDS
from .train import (train_epoch, test_epoch, batch_loss, train_epoch_general,
                    test_epoch_general)
from .data import read_idx, mnist_datasets, mnist_loaders
from .chapter_source import (chapter_namespace, chapter_sources, chapter_tokens,
                             object_tokens, source_tokens, default_chapter_path)

__all__ = [
    'Autoencoder', 'VAE', 'ConvVAE', 'CelebAVAE', 'ConvVAE28', 'CVAE', 'reparameterize', 'MODELS', 'inject_eps',
    'kl_divergence_gaussian', 'vae_loss', 'elbo_loss', 'decode_logits', 'RECON_KINDS',
    'train_epoch', 'test_epoch', 'batch_loss', 'train_epoch_general', 'test_epoch_general',
    'read_idx', 'mnist_datasets', 'mnist_loaders',
    'chapter_namespace', 'chapter_sources', 'chapter_tokens', 'object_tokens',
    'source_tokens', 'default_chapter_path',
]
