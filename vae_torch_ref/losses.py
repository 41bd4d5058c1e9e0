"""The chapter's loss functions (verbatim) plus a general ELBO loss for the exercises."""
import torch
import torch.nn.functional as F


def kl_divergence_gaussian(mu, logvar):
    """
    Calculate KL divergence between Gaussian distributions

    Args:
        mu: (batch, latent_dim) - Mean output by Encoder
        logvar: (batch, latent_dim) - Log variance output by Encoder

    Returns:
        kl_loss: (batch,) - KL divergence for each sample
    """
    # KL(q(z|x) || N(0,I)) = -0.5 * sum(1 + log(σ²) - μ² - σ²)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    return kl


def vae_loss(x_recon, x, mu, logvar):
    """
    VAE loss function (ELBO)

    Args:
        x_recon: (batch, input_dim) - Reconstructed input
        x: (batch, input_dim) - Original input
        mu: (batch, latent_dim) - Mean
        logvar: (batch, latent_dim) - Log variance

    Returns:
        total_loss: Scalar - ELBO (negative value)
        recon_loss: Scalar - Reconstruction error
        kl_loss: Scalar - KL divergence
    """
    # Reconstruction error (Binary Cross Entropy)
    recon_loss = F.binary_cross_entropy(x_recon, x, reduction='sum')

    # KL divergence
    kl_loss = kl_divergence_gaussian(mu, logvar).sum()

    # ELBO = Reconstruction term - KL term (maximize = minimize negative)
    total_loss = recon_loss + kl_loss

    return total_loss, recon_loss, kl_loss


RECON_KINDS = ('bce', 'bce_logits', 'gaussian')


def elbo_loss(x_recon, x, mu, logvar, *, recon='bce', beta=1.0, kl_weight=1.0):
    """Negative ELBO for the exercises (β-VAE, KL annealing, MSE vs BCE).

    recon:
        'bce'        x_recon are probabilities: F.binary_cross_entropy, sum (torch clamps
                     each log at -100, so a saturated element costs at most 100)
        'bce_logits' x_recon are logits: F.binary_cross_entropy_with_logits, sum
        'gaussian'   sum of squared errors ((x_recon - x) ** 2).sum()
    Returns (total, recon_loss, kl_loss): total = recon_loss + beta * kl_weight * kl_loss,
    kl_loss unweighted (summed over the batch). With the defaults this is vae_loss.
    """
    if recon == 'bce':
        recon_loss = F.binary_cross_entropy(x_recon, x, reduction='sum')
    elif recon == 'bce_logits':
        recon_loss = F.binary_cross_entropy_with_logits(x_recon, x, reduction='sum')
    elif recon == 'gaussian':
        recon_loss = ((x_recon - x) ** 2).sum()
    else:
        raise ValueError('recon must be one of %s, got %r' % (', '.join(map(repr, RECON_KINDS)), recon))
    kl_loss = kl_divergence_gaussian(mu, logvar).sum()
    total_loss = recon_loss + beta * kl_weight * kl_loss
    return total_loss, recon_loss, kl_loss


def decode_logits(model, z, y_onehot=None):
    """Pre-sigmoid decoder output, so that torch.sigmoid(decode_logits(m, z)) == m.decode(z).

    Works by attribute names, so it serves vae_torch_ref's classes and the chapter's
    classes exec'd from the text alike: Autoencoder (fc3/fc4), VAE and CVAE
    (decoder_fc1/decoder_fc2; CVAE needs y_onehot), ConvVAE/ConvVAE28 (decoder_conv) and
    CelebAVAE (decoder), the conv decoders run without their final nn.Sigmoid.
    """
    if hasattr(model, 'decoder_conv'):          # ConvVAE, ConvVAE28
        h = model.decoder_fc(z)
        h = h.view(h.size(0), 128, 3, 3)
        return model.decoder_conv[:-1](h)
    if hasattr(model, 'decoder'):               # CelebAVAE
        h = model.decoder_fc(z)
        h = h.view(h.size(0), 256, 4, 4)
        return model.decoder[:-1](h)
    if hasattr(model, 'fc4'):                   # Autoencoder
        return model.fc4(F.relu(model.fc3(z)))
    if hasattr(model, 'decoder_fc2'):           # VAE, CVAE
        if hasattr(model, 'num_classes'):
            if y_onehot is None:
                raise ValueError('decode_logits: a conditional model needs y_onehot')
            z = torch.cat([z, y_onehot], dim=1)
        return model.decoder_fc2(F.relu(model.decoder_fc1(z)))
    raise TypeError('decode_logits: unknown model type %s' % type(model).__name__)
