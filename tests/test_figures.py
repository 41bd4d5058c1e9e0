"""vae_jax.figures: every figure is a readable PNG; grid, slerp/lerp and input checks."""

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.ticker import MaxNLocator
from scipy.stats import norm

from vae_jax import figures

RNG = np.random.default_rng(0)
Z95 = norm.ppf(0.95)


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1024
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0


def flat_decoder(z):
    assert z.dtype == np.float32
    return np.tile(1 / (1 + np.exp(-z[:, :1])), (1, 784))


def rgb_decoder(z):
    assert z.dtype == np.float32
    return np.broadcast_to(1 / (1 + np.exp(-z[:, :3]))[:, None, None, :], (len(z), 8, 8, 3))


def test_to_images_shapes_and_range():
    out = figures.to_images(RNG.normal(size=(3, 784)))
    assert out.shape == (3, 28, 28, 1) and out.min() >= 0 and out.max() <= 1
    assert figures.to_images(np.zeros((2, 48)), image_shape=(4, 4, 3)).shape == (2, 4, 4, 3)
    assert figures.to_images(np.ones((2, 8, 8, 3))).shape == (2, 8, 8, 3)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros((2, 100)), "do not fit image_shape"),
        (np.zeros((2, 8, 8, 2)), "1 or 3 channels"),
        (np.zeros((2, 8, 8)), "must be 2-D or 4-D"),
        (np.zeros((0, 784)), "empty"),
        (np.full((1, 784), np.nan), "NaN"),
    ],
)
def test_to_images_rejects(x, message):
    with pytest.raises(ValueError, match=message):
        figures.to_images(x)


def test_save_reconstructions(tmp_path):
    x = RNG.uniform(size=(12, 784))
    path = figures.save_reconstructions(x, x[::-1], tmp_path / "sub" / "recon.png")
    assert path == tmp_path / "sub" / "recon.png"
    assert_png(path)
    assert_png(figures.save_reconstructions(x[:1], x[:1], tmp_path / "one.png"))
    with pytest.raises(ValueError, match="same shape"):
        figures.save_reconstructions(x, x[:5], tmp_path / "bad.png")


def test_save_sample_grid(tmp_path):
    assert_png(figures.save_sample_grid(RNG.uniform(size=(16, 784)), tmp_path / "s16.png"))
    assert_png(figures.save_sample_grid(RNG.uniform(size=(7, 8, 8, 3)), tmp_path / "s7.png", ncols=3))


def test_latent_scatter_legend_only_with_labels():
    z = RNG.normal(size=(50, 4))
    labelled = figures._latent_scatter_figure(z, RNG.integers(0, 10, size=50))
    unlabelled = figures._latent_scatter_figure(z, None)
    try:
        assert len(labelled.axes) == 1 and labelled.axes[0].get_legend() is not None  # a legend, no colour bar
        assert len(unlabelled.axes) == 1 and unlabelled.axes[0].get_legend() is None
    finally:
        plt.close(labelled)
        plt.close(unlabelled)


def test_save_latent_scatter(tmp_path):
    labels = RNG.integers(0, 10, size=200)
    assert_png(figures.save_latent_scatter(RNG.normal(size=(200, 2)), labels, tmp_path / "z2.png"))
    assert_png(figures.save_latent_scatter(RNG.normal(size=(200, 20)), None, tmp_path / "pca.png"))
    with pytest.raises(ValueError, match="at least 2 latent"):
        figures.save_latent_scatter(np.zeros((5, 1)), None, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="labels has 3 entries"):
        figures.save_latent_scatter(np.zeros((5, 2)), [0, 1, 2], tmp_path / "bad.png")


def test_manifold_grid_order_and_values():
    grid = figures.manifold_grid(3)
    assert grid.shape == (9, 2)
    np.testing.assert_allclose(grid[4], [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(grid[0], [-Z95, Z95])  # top-left: smallest x, largest y
    np.testing.assert_allclose(grid[2], [Z95, Z95])  # top-right
    np.testing.assert_allclose(grid[6], [-Z95, -Z95])  # bottom-left
    np.testing.assert_allclose(grid[8], [Z95, -Z95])  # bottom-right
    cells = grid.reshape(3, 3, 2)
    assert np.all(np.diff(cells[:, :, 0], axis=1) > 0)  # x grows along a row
    assert np.all(np.diff(cells[:, :, 1], axis=0) < 0)  # y falls down a column
    np.testing.assert_allclose(figures.manifold_grid(5, grid_range=3)[0], [-3, 3])
    with pytest.raises(ValueError, match="n must be"):
        figures.manifold_grid(1)


def test_save_manifold(tmp_path):
    assert_png(figures.save_manifold(flat_decoder, tmp_path / "m.png", n=5))
    assert_png(figures.save_manifold(rgb_decoder, tmp_path / "m3.png", n=4, latent_dim=8))
    with pytest.raises(ValueError, match="returned 1 images for 9"):
        figures.save_manifold(lambda z: flat_decoder(z[:1]), tmp_path / "bad.png", n=3)


def test_latent_activity():
    mu = np.array([[1.0, 0.0], [-1.0, 0.0]])
    logvar = np.array([[0.0, np.log(2.0)], [0.0, np.log(2.0)]])
    np.testing.assert_allclose(figures.latent_activity(mu, logvar), [0.5, 0.5 * (1 - np.log(2.0))])
    np.testing.assert_allclose(figures.latent_activity(mu), [1.0, 0.0])  # Autoencoder: variance
    with pytest.raises(ValueError, match="same shape"):
        figures.latent_activity(mu, logvar[:, :1])


def recording_decoder(calls):
    def decode(z):
        calls.append(z.copy())
        return flat_decoder(z)

    return decode


@pytest.mark.parametrize("use_logvar", [True, False])
def test_manifold_varies_the_two_most_active_dims(tmp_path, use_logvar):
    # dims 4 and 1 are the most active (by KL, and by variance for the Autoencoder path)
    scale = np.array([0.1, 2.0, 0.2, 0.05, 3.0, 0.3])
    mu = RNG.normal(size=(400, 6)) * scale + 0.1 * np.arange(6)  # small offsets: the mean is not 0
    logvar = np.full_like(mu, np.log(0.5)) if use_logvar else None
    calls = []
    path = figures.save_manifold(recording_decoder(calls), tmp_path / "m.png", n=4, mu=mu, logvar=logvar)
    assert_png(path)
    (z,) = calls
    assert z.shape == (16, 6)
    grid = figures.manifold_grid(4)
    np.testing.assert_allclose(z[:, 4], grid[:, 0], rtol=1e-6)  # most active dim on the x axis
    np.testing.assert_allclose(z[:, 1], grid[:, 1], rtol=1e-6)
    for d in (0, 2, 3, 5):  # the others are held at their mean code
        np.testing.assert_allclose(z[:, d], mu[:, d].mean(), rtol=1e-6)
    fig = figures._manifold_figure(flat_decoder, 4, figures.DEFAULT_IMAGE_SHAPE, None, mu, logvar)
    try:
        (ax,) = fig.axes
        assert ax.get_xlabel().startswith("z[4] (") and ax.get_ylabel().startswith("z[1] (")
        assert ("nats" in ax.get_xlabel()) == use_logvar
        xs = [float(t.get_text()) for t in ax.get_xticklabels()]
        ys = [float(t.get_text()) for t in ax.get_yticklabels()]
        np.testing.assert_allclose(xs, norm.ppf(np.linspace(0.05, 0.95, 4)), atol=0.01)
        np.testing.assert_allclose(ys, xs[::-1])  # top row is the largest z
    finally:
        plt.close(fig)


def test_manifold_without_mu_keeps_dims_0_and_1():
    calls = []
    fig = figures._manifold_figure(recording_decoder(calls), 3, figures.DEFAULT_IMAGE_SHAPE, 5, None, None)
    plt.close(fig)
    np.testing.assert_allclose(calls[0][:, :2], figures.manifold_grid(3), rtol=1e-6)
    assert not calls[0][:, 2:].any()
    with pytest.raises(ValueError, match="does not match"):
        figures.save_manifold(flat_decoder, "unused.png", n=3, latent_dim=4, mu=np.zeros((5, 3)))


def test_slerp_and_lerp():
    z0, z1 = np.array([3.0, 0.0, 0.0]), np.array([0.0, 0.0, 3.0])
    np.testing.assert_allclose(figures.slerp(z0, z1, 0.0), z0, atol=1e-12)
    np.testing.assert_allclose(figures.slerp(z0, z1, 1.0), z1, atol=1e-12)
    path = figures.slerp(z0, z1, np.linspace(0, 1, 7))
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 3.0)
    np.testing.assert_allclose(figures.lerp(z0, z1, 0.5), [1.5, 0.0, 1.5])
    # parallel, anti-parallel and zero vectors fall back to lerp
    for a, b in [(z0, 2 * z0), (z0, -z0), (np.zeros(3), z1)]:
        np.testing.assert_allclose(figures.slerp(a, b, 0.25), figures.lerp(a, b, 0.25))
    with pytest.raises(ValueError, match="same shape"):
        figures.lerp(z0, np.zeros(2), 0.5)


@pytest.mark.parametrize("mode", ["linear", "spherical"])
def test_interpolation_path(mode):
    z0, z1 = RNG.normal(size=16), RNG.normal(size=16)
    path = figures.interpolation_path(z0, z1, 10, mode=mode)
    assert path.shape == (10, 16)
    np.testing.assert_allclose(path[[0, -1]], [z0, z1], atol=1e-12)


def test_interpolation_path_rejects():
    with pytest.raises(ValueError, match="mode must be"):
        figures.interpolation_path(np.zeros(2), np.ones(2), 5, mode="cubic")
    with pytest.raises(ValueError, match="num_steps must be"):
        figures.interpolation_path(np.zeros(2), np.ones(2), 1)


def test_save_interpolation(tmp_path):
    pairs = RNG.normal(size=(3, 2, 4))
    assert_png(figures.save_interpolation(flat_decoder, pairs, tmp_path / "i.png"))
    assert_png(figures.save_interpolation(rgb_decoder, pairs[0], tmp_path / "i1.png", num_steps=5, mode="spherical"))
    with pytest.raises(ValueError, match="z_pairs must have shape"):
        figures.save_interpolation(flat_decoder, np.zeros((3, 4, 2)), tmp_path / "bad.png")


def test_save_loss_curves(tmp_path):
    metrics = [
        {"epoch": e, "train_loss": 200 / e, "test_loss": 210 / e, "test_recon": 180 / e, "test_kl": 20.0}
        for e in range(1, 6)
    ]
    assert_png(figures.save_loss_curves(metrics, tmp_path / "loss.png"))
    plain = [{k: m[k] for k in ("epoch", "train_loss", "test_loss")} for m in metrics[:1]]
    assert_png(figures.save_loss_curves(plain, tmp_path / "loss1.png"))
    with pytest.raises(ValueError, match="missing \\['test_loss'\\]"):
        figures.save_loss_curves([{"epoch": 1, "train_loss": 1.0}], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="train_loss contains NaN"):
        figures.save_loss_curves([{"epoch": 1, "train_loss": float("nan"), "test_loss": 1.0}], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="non-empty list"):
        figures.save_loss_curves([], tmp_path / "bad.png")


def test_loss_curves_integer_epochs_nats_and_separate_kl_axis():
    metrics = [
        {
            "epoch": e,
            "train_loss": 200 / e,
            "test_loss": 210 / e,
            "train_recon": 180 / e,
            "test_recon": 190 / e,
            "train_kl": 20.0 + e,
            "test_kl": 21.0 + e,
        }
        for e in range(1, 6)
    ]
    fig = figures._loss_curves_figure(metrics)
    try:
        fig.canvas.draw()
        loss_ax, kl_ax = fig.axes
        for ax in fig.axes:
            assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
            ticks = ax.get_xticks()
            assert np.all(ticks == np.round(ticks)), ticks
            assert "nats" in ax.get_ylabel() and ax.get_legend() is not None
        assert [l.get_label() for l in kl_ax.get_lines()] == ["train KL", "test KL"]
        assert {l.get_label() for l in loss_ax.get_lines()} == {
            "train loss",
            "test loss",
            "train reconstruction",
            "test reconstruction",
        }
    finally:
        plt.close(fig)
    no_kl = [dict(m, train_kl=0.0, test_kl=0.0) for m in metrics]  # an Autoencoder: no KL panel
    fig = figures._loss_curves_figure(no_kl)
    try:
        assert len(fig.axes) == 1
    finally:
        plt.close(fig)


@pytest.mark.slow
@pytest.mark.parametrize("model_name, has_labels", [("vae", False), ("ae", True)])
def test_make_figures_passes_labels_mu_and_logvar(tmp_path, monkeypatch, model_name, has_labels):
    import jax
    from flax import nnx

    from vae_jax import datasets, evaluate, models

    seen = {}

    def spy(name):
        real = getattr(figures, name)

        def record(*args, **kwargs):
            seen[name] = (args, kwargs)
            return real(*args, **kwargs)

        return record

    monkeypatch.setattr(figures, "save_latent_scatter", spy("save_latent_scatter"))
    monkeypatch.setattr(figures, "save_manifold", spy("save_manifold"))
    images = RNG.uniform(size=(12, 28, 28, 1)).astype(np.float32)
    labels = RNG.integers(0, 10, size=12).astype(np.int32) if has_labels else None
    ds = datasets.Dataset(
        source=datasets.ArraySource(images, labels), name="t", image_shape=(28, 28, 1), has_labels=has_labels
    )
    rngs = nnx.Rngs(0)
    model = (
        models.VAE(hidden_dim=8, latent_dim=4, rngs=rngs)
        if model_name == "vae"
        else models.Autoencoder(hidden_dim=8, latent_dim=4, rngs=rngs)
    )
    out = evaluate.make_figures(model, ds, [], tmp_path, key=jax.random.key(0), batch_size=5)
    assert out["latent"] == str(tmp_path / "latent.png")
    assert_png(tmp_path / "manifold.png")
    scatter_args, _ = seen["save_latent_scatter"]
    assert (scatter_args[1] is None) == (not has_labels)
    _, manifold_kwargs = seen["save_manifold"]
    assert manifold_kwargs["mu"].shape == (12, 4)
    assert (manifold_kwargs["logvar"] is None) == (model_name == "ae")
