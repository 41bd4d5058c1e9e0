"""The chapter's PyTorch VAE code as an exact reference (plus small additions)."""
from .chapter_source import (
                    chapter_namespace,
                    chapter_sources,
                    chapter_tokens,
                    default_chapter_path,
                    object_tokens,
                    source_tokens,
)
from .data import mnist_datasets, mnist_loaders, read_idx
from .losses import RECON_KINDS, decode_logits, elbo_loss, kl_divergence_gaussian, vae_loss
from .models import CVAE, MODELS, VAE, Autoencoder, CelebAVAE, ConvVAE, ConvVAE28, reparameterize
from .noise import inject_eps
from .train import batch_loss, test_epoch, test_epoch_general, train_epoch, train_epoch_general

__all__ = [
    'Autoencoder', 'VAE', 'ConvVAE', 'CelebAVAE', 'ConvVAE28', 'CVAE', 'reparameterize', 'MODELS', 'inject_eps',
    'kl_divergence_gaussian', 'vae_loss', 'elbo_loss', 'decode_logits', 'RECON_KINDS',
    'train_epoch', 'test_epoch', 'batch_loss', 'train_epoch_general', 'test_epoch_general',
    'read_idx', 'mnist_datasets', 'mnist_loaders',
    'chapter_namespace', 'chapter_sources', 'chapter_tokens', 'object_tokens',
    'source_tokens', 'default_chapter_path',
]
