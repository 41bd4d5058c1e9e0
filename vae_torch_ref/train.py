"""The chapter's training loop (verbatim) plus a generalized one for the exercises."""
import torch
import torch.nn.functional as F

from .losses import decode_logits, elbo_loss, vae_loss


def train_epoch(model, train_loader, optimizer, device):
    """Train for one epoch"""
    model.train()
    train_loss = 0
    train_recon_loss = 0
    train_kl_loss = 0

    for batch_idx, (data, _) in enumerate(train_loader):
        data = data.to(device)
        # Flatten images (for fully-connected VAE)
        data_flat = data.view(data.size(0), -1)

        # Forward
        optimizer.zero_grad()
        x_recon, mu, logvar = model(data_flat)

        # Calculate loss
        total_loss, recon_loss, kl_loss = vae_loss(x_recon, data_flat, mu, logvar)

        # Backward
        total_loss.backward()
        optimizer.step()

        # Accumulate
        train_loss += total_loss.item()
        train_recon_loss += recon_loss.item()
        train_kl_loss += kl_loss.item()

    # Average loss
    num_samples = len(train_loader.dataset)
    avg_loss = train_loss / num_samples
    avg_recon = train_recon_loss / num_samples
    avg_kl = train_kl_loss / num_samples

    return avg_loss, avg_recon, avg_kl


def test_epoch(model, test_loader, device):
    """Evaluate on test data"""
    model.eval()
    test_loss = 0
    test_recon_loss = 0
    test_kl_loss = 0

    with torch.no_grad():
        for data, _ in test_loader:
            data = data.to(device)
            data_flat = data.view(data.size(0), -1)

            x_recon, mu, logvar = model(data_flat)
            total_loss, recon_loss, kl_loss = vae_loss(x_recon, data_flat, mu, logvar)

            test_loss += total_loss.item()
            test_recon_loss += recon_loss.item()
            test_kl_loss += kl_loss.item()

    num_samples = len(test_loader.dataset)
    avg_loss = test_loss / num_samples
    avg_recon = test_recon_loss / num_samples
    avg_kl = test_kl_loss / num_samples

    return avg_loss, avg_recon, avg_kl


def batch_loss(model, data, labels, device, *, flatten=True, conditional=False,
               recon='bce', beta=1.0, kl_weight=1.0):
    """(total, recon, kl) for one batch, as train_epoch computes it by default.

    flatten: view(size(0), -1) first (MLP models); False for conv models.
    conditional: pass one_hot(labels, model.num_classes) to the model (CVAE).
    recon='bce_logits' decodes with decode_logits (same random draws as forward).
    """
    data = data.to(device)
    if flatten:
        data = data.view(data.size(0), -1)
    extra = ()
    if conditional:
        extra = (F.one_hot(labels.to(device), model.num_classes).to(data.dtype),)
    if recon == 'bce_logits':
        mu, logvar = model.encode(data, *extra)
        z = model.reparameterize(mu, logvar)
        x_recon = decode_logits(model, z, *extra)
    else:
        x_recon, mu, logvar = model(data, *extra)
    return elbo_loss(x_recon, data, mu, logvar, recon=recon, beta=beta, kl_weight=kl_weight)


def train_epoch_general(model, train_loader, optimizer, device, **loss_kwargs):
    """train_epoch for any model/loss; loss_kwargs as batch_loss. Defaults = train_epoch."""
    model.train()
    totals = [0.0, 0.0, 0.0]
    for data, labels in train_loader:
        optimizer.zero_grad()
        losses = batch_loss(model, data, labels, device, **loss_kwargs)
        losses[0].backward()
        optimizer.step()
        for k in range(3):
            totals[k] += losses[k].item()
    num_samples = len(train_loader.dataset)
    return tuple(t / num_samples for t in totals)


def test_epoch_general(model, test_loader, device, **loss_kwargs):
    """test_epoch for any model/loss; loss_kwargs as batch_loss. Defaults = test_epoch."""
    model.eval()
    totals = [0.0, 0.0, 0.0]
    with torch.no_grad():
        for data, labels in test_loader:
            losses = batch_loss(model, data, labels, device, **loss_kwargs)
            for k in range(3):
                totals[k] += losses[k].item()
    num_samples = len(test_loader.dataset)
    return tuple(t / num_samples for t in totals)
