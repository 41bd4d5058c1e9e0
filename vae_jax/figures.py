"""The chapter's figures (sections 2.5-2.6) as PNG files, on numpy arrays and plain callables.

Every function works for every model: images may be flat (B, D) (MLP models, reshaped with
``image_shape``, default 28x28x1) or NHWC (B, H, W, C) with C = 1 or 3 (conv models); decoders
are passed as ``decode_fn`` mapping a (M, latent_dim) float32 numpy array to images.
Each ``save_*`` function writes one PNG, closes its figure and returns the path it wrote
(the figure itself is built by a private ``_*_figure`` helper, which the tests inspect).
Bad input raises ``DataError`` / ``ConfigError`` (both ``ValueError``) with one line.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter
from scipy.stats import norm

from vae_jax.errors import ConfigError, DataError

DEFAULT_IMAGE_SHAPE = (28, 28, 1)
_RECON_KEYS = ("train_recon", "test_recon")
_KL_KEYS = ("train_kl", "test_kl")
_MARKER_MAX_POINTS = 30  # longer lines are drawn without a marker per point, so their styles stay visible
# loss-curve series: name and tab20 colour index (train that colour, test its lighter twin at index + 1)
_QUANTITIES = {"loss": ("loss", 0), "recon": ("reconstruction", 4), "kl": ("KL", 6)}
_MAX_LEGEND_CLASSES = 20  # tab20's colours; more classes get a colour bar


def _array(x, name, ndims=None):
    """``x`` as a finite, non-empty float64 array with ``ndim`` in ``ndims``."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name} is not a numeric array: {e}") from None
    if ndims is not None and a.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise DataError(f"{name} must be {want}, got shape {a.shape}")
    if a.size == 0:
        raise DataError(f"{name} is empty (shape {a.shape})")
    if not np.isfinite(a).all():
        raise DataError(f"{name} contains NaN or inf")
    return a


def _positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def to_images(x, image_shape=None):
    """(B, D) or (B, H, W, C) -> (B, H, W, C) float in [0, 1]; flat input is reshaped to
    ``image_shape`` (default (28, 28, 1)); NHWC input keeps its own shape."""
    a = _array(x, "images", ndims=(2, 4))
    if a.ndim == 2:
        shape = tuple(DEFAULT_IMAGE_SHAPE if image_shape is None else image_shape)
        if len(shape) != 3 or math.prod(shape) != a.shape[1]:
            raise DataError(f"flat images of size {a.shape[1]} do not fit image_shape {shape} (need (H, W, C))")
        a = a.reshape((a.shape[0],) + shape)
    if a.shape[-1] not in (1, 3):
        raise DataError(f"images must have 1 or 3 channels (NHWC), got shape {a.shape}")
    return np.clip(a, 0.0, 1.0)


def _show(ax, image):
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(image)
    ax.axis("off")


def _save(fig, path):
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _markers(n_points):
    """A small marker on each point of a short line; none on a long one."""
    return {"marker": "o", "markersize": 4} if n_points <= _MARKER_MAX_POINTS else {"marker": None}


def _decode(decode_fn, z, image_shape):
    images = to_images(np.asarray(decode_fn(z.astype(np.float32))), image_shape)
    if len(images) != len(z):
        raise DataError(f"decode_fn returned {len(images)} images for {len(z)} latent points")
    return images


def _reconstructions_figure(originals, recons, image_shape, n):
    originals, recons = to_images(originals, image_shape), to_images(recons, image_shape)
    if originals.shape != recons.shape:
        raise DataError(f"originals {originals.shape} and recons {recons.shape} must have the same shape")
    n = min(_positive_int(n, "n"), len(originals))
    fig, axes = plt.subplots(2, n, figsize=(n + 1.2, 2), squeeze=False)  # + room for the row names
    for i in range(n):
        _show(axes[0, i], originals[i])
        _show(axes[1, i], recons[i])
    for ax, name in zip(axes[:, 0], ("Original", "Reconstructed"), strict=True):
        ax.text(-0.08, 0.5, name, transform=ax.transAxes, ha="right", va="center", fontsize=10)
    fig.tight_layout()
    return fig


def save_reconstructions(originals, recons, path, image_shape=None, n=10):
    """Two rows of the first ``n`` images, 'Original' above 'Reconstructed' (each row named on its left)."""
    return _save(_reconstructions_figure(originals, recons, image_shape, n), path)


def _sample_grid_figure(samples, image_shape, title, ncols):
    images = to_images(samples, image_shape)
    ncols = math.ceil(math.sqrt(len(images))) if ncols is None else _positive_int(ncols, "ncols")
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.5 * ncols, 1.5 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < len(images):
            _show(ax, images[i])
        else:
            ax.axis("off")
    fig.suptitle(title, fontsize=14)
    fig.tight_layout()
    return fig


def save_sample_grid(samples, path, image_shape=None, title="Randomly Generated Samples", ncols=None):
    """All samples in a grid: ``ncols`` wide (default ceil(sqrt(B)), so 4x4 for 16)."""
    return _save(_sample_grid_figure(samples, image_shape, title, ncols), path)


def _scatter_by_class(fig, ax, xy, labels):
    """Points coloured by class, with a legend of one entry per class in increasing order (tab10;
    digit labels 0-9 keep their tab10 colour C0-C9; tab20 past 10 classes). Past 20 classes a
    colour bar with integer ticks instead."""
    classes = np.unique(labels)
    if len(classes) > _MAX_LEGEND_CLASSES:
        points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="viridis", alpha=0.6, s=5)
        fig.colorbar(points, ax=ax, label="Label").ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        return
    digits = bool(np.isin(classes, np.arange(10)).all())
    cmap = plt.get_cmap("tab10" if digits or len(classes) <= 10 else "tab20")
    colours = cmap(classes.astype(int) if digits else np.arange(len(classes)))
    ax.scatter(xy[:, 0], xy[:, 1], c=colours[np.searchsorted(classes, labels)], alpha=0.6, s=5)
    handles = [
        Line2D([], [], linestyle="", marker="o", markersize=8, color=colour, label=f"{c:g}")
        for c, colour in zip(classes, colours, strict=True)
    ]
    ax.legend(handles=handles, title="Label", loc="center left", bbox_to_anchor=(1.01, 0.5))


def _latent_scatter_figure(z, labels):
    z = _array(z, "z", ndims=(2,))
    if z.shape[1] < 2:
        raise DataError(f"z must have at least 2 latent dimensions, got shape {z.shape}")
    if labels is not None:
        labels = _array(labels, "labels", ndims=(1,))
        if len(labels) != len(z):
            raise DataError(f"labels has {len(labels)} entries but z has {len(z)} rows")
    if z.shape[1] == 2:
        xy, axis, title = z, "Latent Dimension", "2D Latent Space Visualization"
    else:
        centred = z - z.mean(axis=0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        explained = (s[:2] ** 2).sum() / max((s**2).sum(), np.finfo(float).tiny)
        axis = "Principal Component"
        title = f"PCA projection of {z.shape[1]}-D latent space ({explained:.0%} of variance)"
    fig, ax = plt.subplots(figsize=(10, 8))
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], alpha=0.6, s=5)
    else:
        _scatter_by_class(fig, ax, xy, labels)
    ax.set_xlabel(f"{axis} 1")
    ax.set_ylabel(f"{axis} 2")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig


def save_latent_scatter(z, labels, path):
    """Scatter of latent codes coloured by label, a legend entry per label (see ``_scatter_by_class``);
    ``labels=None`` (data without labels) draws one colour and no legend. For dim > 2 a 2-D PCA
    projection."""
    return _save(_latent_scatter_figure(z, labels), path)


def manifold_grid(n, grid_range=None):
    """(n*n, 2) latent grid; row-major so image (i, j) uses (x_j, y_i), top row = largest y.

    Default: Kingma & Welling's z = Phi^-1(linspace(0.05, 0.95, n)); with ``grid_range`` the
    chapter's evenly spaced linspace(-grid_range, grid_range, n).
    """
    n = _positive_int(n, "n", minimum=2)
    if grid_range is None:
        values = norm.ppf(np.linspace(0.05, 0.95, n))
    elif not (np.isfinite(grid_range) and grid_range > 0):
        raise ConfigError(f"grid_range must be a positive number, got {grid_range!r}")
    else:
        values = np.linspace(-grid_range, grid_range, n)
    xs, ys = np.meshgrid(values, values[::-1])
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def latent_activity(mu, logvar=None):
    """Per latent dim, how much the encoder uses it: the KL(q(z|x) || N(0, 1)) in nats averaged
    over the images, 0.5 * mean(mu^2 + exp(logvar) - 1 - logvar); without ``logvar`` (an
    Autoencoder's codes) the variance of ``mu`` over the images."""
    mu = _array(mu, "mu", ndims=(2,))
    if logvar is None:
        return mu.var(axis=0)
    logvar = _array(logvar, "logvar", ndims=(2,))
    if logvar.shape != mu.shape:
        raise DataError(f"mu {mu.shape} and logvar {logvar.shape} must have the same shape")
    return 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar).mean(axis=0)


def _manifold_figure(decode_fn, n, image_shape, latent_dim, mu, logvar):
    dims: tuple[int, ...]
    labels: tuple[str, ...]
    if mu is None:
        latent_dim = _positive_int(2 if latent_dim is None else latent_dim, "latent_dim", minimum=2)
        dims, base, labels = (0, 1), np.zeros(latent_dim), ("z[0]", "z[1]")
        extra = "" if latent_dim == 2 else f", dims 0-1 of {latent_dim}, others 0"
    else:
        activity = latent_activity(mu, logvar)
        if latent_dim is not None and latent_dim != len(activity):
            raise ConfigError(f"latent_dim {latent_dim} does not match mu's {len(activity)} dimensions")
        if len(activity) < 2:
            raise ConfigError(f"the manifold needs latent_dim >= 2, got {len(activity)}")
        dims = tuple(int(d) for d in np.argsort(-activity, kind="stable")[:2])
        # The other dims are held at the mean code, not the prior's 0: the mean is where the encoder
        # puts the test images, so the decoder gets codes like those it was trained on (an
        # Autoencoder has no prior and its codes need not centre on 0); where the aggregate
        # posterior matches the prior the two coincide.
        base = np.asarray(mu, dtype=np.float64).mean(axis=0)
        extra = "" if len(base) == 2 else f", 2 most active of {len(base)} dims, others at their mean"
        labels = tuple(
            f"z[{d}] (KL {activity[d]:.2f} nats)" if logvar is not None else f"z[{d}] (var {activity[d]:.2f})"
            for d in dims
        )
    grid = manifold_grid(n)
    z = np.tile(base, (len(grid), 1))
    z[:, dims] = grid
    images = _decode(decode_fn, z, image_shape)
    _, h, w, c = images.shape
    tiled = images.reshape(n, n, h, w, c).transpose(0, 2, 1, 3, 4).reshape(n * h, n * w, c)
    fig, ax = plt.subplots(figsize=(10, 10))
    _show(ax, tiled)
    ax.axis("on")
    values = grid[:n, 0]  # the top row: x values left to right; y values are the same, top row largest
    centres = np.arange(n)
    ax.set_xticks(centres * w + (w - 1) / 2, [f"{v:.2f}" for v in values], rotation=90, fontsize=7)
    ax.set_yticks(centres * h + (h - 1) / 2, [f"{v:.2f}" for v in values[::-1]], fontsize=7)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(f"Latent Space Manifold (2D{extra})", fontsize=14)
    return fig


def save_manifold(decode_fn, path, n=20, image_shape=DEFAULT_IMAGE_SHAPE, latent_dim=None, *, mu=None, logvar=None):
    """Decode the ``manifold_grid(n)`` in two latent dims and tile it, z values on the axes.

    Without ``mu``: dims 0 and 1 of ``latent_dim`` (default 2), the others 0. With the encoded test
    images' ``mu`` (N, D) (and ``logvar`` for a VAE): the two dims with the largest
    ``latent_activity``, the others held at the mean of ``mu``.
    """
    return _save(_manifold_figure(decode_fn, n, image_shape, latent_dim, mu, logvar), path)


def _endpoints(z0, z1):
    z0, z1 = _array(z0, "z0", ndims=(1,)), _array(z1, "z1", ndims=(1,))
    if z0.shape != z1.shape:
        raise DataError(f"z0 {z0.shape} and z1 {z1.shape} must have the same shape")
    return z0, z1


def lerp(z0, z1, t):
    """(1 - t) z0 + t z1; ``t`` scalar -> (D,), ``t`` of shape (T,) -> (T, D)."""
    z0, z1 = _endpoints(z0, z1)
    t = np.asarray(t, dtype=np.float64)[..., None]
    return (1.0 - t) * z0 + t * z1


def slerp(z0, z1, t):
    """Spherical interpolation (Shoemake); falls back to lerp for (anti)parallel or zero vectors."""
    z0, z1 = _endpoints(z0, z1)
    norms = np.linalg.norm(z0) * np.linalg.norm(z1)
    omega = np.arccos(np.clip(z0 @ z1 / norms, -1.0, 1.0)) if norms > 0 else 0.0
    sin_omega = np.sin(omega)
    if sin_omega < 1e-6:
        return lerp(z0, z1, t)
    t = np.asarray(t, dtype=np.float64)[..., None]
    return (np.sin((1.0 - t) * omega) * z0 + np.sin(t * omega) * z1) / sin_omega


def interpolation_path(z0, z1, num_steps, mode="linear"):
    """(num_steps, D) points from z0 to z1 (both included), ``mode`` 'linear' or 'spherical'."""
    functions = {"linear": lerp, "spherical": slerp}
    if mode not in functions:
        raise ConfigError(f"mode must be 'linear' or 'spherical', got {mode!r}")
    t = np.linspace(0.0, 1.0, _positive_int(num_steps, "num_steps", minimum=2))
    return functions[mode](z0, z1, t)


def _interpolation_figure(decode_fn, z_pairs, num_steps, mode, image_shape):
    pairs = _array(z_pairs, "z_pairs", ndims=(2, 3))
    if pairs.ndim == 2:
        pairs = pairs[None]
    if pairs.shape[1] != 2:
        raise DataError(f"z_pairs must have shape (P, 2, D) or (2, D), got {np.shape(z_pairs)}")
    z = np.concatenate([interpolation_path(a, b, num_steps, mode) for a, b in pairs])
    images = _decode(decode_fn, z, image_shape)
    fig, axes = plt.subplots(len(pairs), num_steps, figsize=(num_steps, len(pairs)), squeeze=False)
    for ax, image in zip(axes.flat, images, strict=False):
        _show(ax, image)
    fig.suptitle(f"Latent Space Interpolation ({mode})", fontsize=14)
    fig.tight_layout()
    return fig


def save_interpolation(decode_fn, z_pairs, path, num_steps=10, mode="linear", image_shape=None):
    """One row per (z_start, z_end) pair: the decoded ``interpolation_path``.

    ``z_pairs`` has shape (P, 2, D), or (2, D) for a single pair.
    """
    return _save(_interpolation_figure(decode_fn, z_pairs, num_steps, mode, image_shape), path)


def _loss_curves_figure(metrics):
    if not isinstance(metrics, (list, tuple)) or not metrics:
        raise DataError("metrics must be a non-empty list of per-epoch dicts")
    required = ("epoch", "train_loss", "test_loss")
    missing = [k for k in required if any(not isinstance(m, dict) or k not in m for m in metrics)]
    if missing:
        raise DataError(f"every metrics entry needs the keys {required}; missing {missing}")
    extra = [k for k in _RECON_KEYS + _KL_KEYS if all(k in m for m in metrics)]
    series = {k: _array([m[k] for m in metrics], k, ndims=(1,)) for k in required + tuple(extra)}
    epochs = series.pop("epoch")
    kl = [k for k in _KL_KEYS if k in series and np.any(series[k])]  # an Autoencoder's KL is 0
    loss_keys = ["train_loss", "test_loss"] + [k for k in _RECON_KEYS if k in series]
    fig, axes = plt.subplots(1, 2 if kl else 1, figsize=(12 if kl else 6, 4), squeeze=False)
    panels = [
        (loss_keys, "Loss (nats per sample)", "Loss and reconstruction"),
        (kl, "KL (nats per sample)", "KL divergence"),
    ]
    for ax, (keys, ylabel, title) in zip(axes.flat, panels, strict=False):
        for key in keys:
            split, quantity = key.split("_")
            ax.plot(
                epochs,
                series[key],
                label=f"{split} {_QUANTITIES[quantity][0]}",
                color=plt.get_cmap("tab20")(_QUANTITIES[quantity][1] + (split == "test")),
                linestyle="-" if split == "train" else "--",
                **_markers(len(epochs)),
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=11)
        ax.grid(True, alpha=0.3)
        ax.legend(title="solid: train, dashed: test")
    fig.suptitle("Training Curves", fontsize=14)
    fig.tight_layout()
    return fig


def save_loss_curves(metrics, path):
    """Per-epoch train/test loss and reconstruction (nats per sample), integer epoch ticks, and
    the train/test KL on a panel of its own when present (and not all 0). Colour = quantity,
    solid = train, dashed = test; a marker per epoch only for short runs (``_MARKER_MAX_POINTS``)."""
    return _save(_loss_curves_figure(metrics), path)


# Figures of the exercises (vae_jax.experiments)


def _lines_figure(series, *, xlabel, ylabels, title, xlog=False):
    fig, axes = plt.subplots(1, len(ylabels), figsize=(5.5 * len(ylabels), 4), squeeze=False)
    for j, (ax, ylabel) in enumerate(zip(axes.flat, ylabels, strict=False)):
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys[j], label=label, **_markers(len(xs)))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if xlog:
            ax.set_xscale("log")
            ax.set_xticks(next(iter(series.values()))[0])
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())  # only the given x values are labelled
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend()
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


def save_lines(series, path, *, xlabel, ylabels, title, xlog=False):
    """One panel per entry of `ylabels`; series = {label: (x, [y_panel0, y_panel1, ...])}, each a
    line of its own colour (a legend when more than one), a marker per point only on short lines."""
    return _save(_lines_figure(series, xlabel=xlabel, ylabels=ylabels, title=title, xlog=xlog), path)


def _bars_figure(values, *, xlabel, ylabel, title):
    labels = list(values)
    d = len(values[labels[0]])
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * d * len(labels) ** 0.5 + 2), 4))
    for i, label in enumerate(labels):
        ax.bar(np.arange(d) + (i - (len(labels) - 1) / 2) * width, values[label], width, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(np.arange(d))
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def save_bars(values, path, *, xlabel, ylabel, title):
    """Grouped bars: values = {label: 1-D array}, all the same length."""
    return _save(_bars_figure(values, xlabel=xlabel, ylabel=ylabel, title=title), path)


def _class_grid_figure(images, preds, *, image_shape, ncols, title, row_accuracy=None):
    imgs = to_images(images, image_shape)
    nrows = len(imgs) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.0 * ncols + 1.6, 1.0 * nrows + 0.8), squeeze=False)
    for i, ax in enumerate(axes.flat):
        r, c = divmod(i, ncols)
        _show(ax, imgs[i])
        if preds[i] != r:
            ax.add_patch(
                Rectangle(
                    (0, 0), 1, 1, transform=ax.transAxes, fill=False, edgecolor="red", linewidth=2.5, clip_on=False
                )
            )
            ax.text(
                0.95,
                0.95,
                str(int(preds[i])),
                transform=ax.transAxes,
                ha="right",
                va="top",
                color="red",
                fontsize=11,
                fontweight="bold",
            )
        if c == 0:
            ax.text(-0.12, 0.5, f"y={r}", transform=ax.transAxes, ha="right", va="center", fontsize=13)
        if c == ncols - 1 and row_accuracy is not None:
            ax.text(1.1, 0.5, f"{row_accuracy[r]:.0%}", transform=ax.transAxes, ha="left", va="center", fontsize=11)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


def save_class_grid(images, preds, path, *, image_shape, ncols, title, row_accuracy=None):
    """Row c = the label c given to the decoder, column = one z (the same z down a column).
    A cell the classifier labels as another class is framed in red with that class written in it;
    the right margin gives each row's accuracy over all the samples drawn for that class."""
    figure = _class_grid_figure(
        images, preds, image_shape=image_shape, ncols=ncols, title=title, row_accuracy=row_accuracy
    )
    return _save(figure, path)
