"""vae_jax.figures read at a glance: each figure rendered from small synthetic inputs through its
public save_* function, its Figure caught on the way to the file and checked through matplotlib's
objects (legends, colours, markers, line styles, axis labels, texts)."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter

from vae_jax import figures

RNG = np.random.default_rng(1)


@pytest.fixture
def drawn(monkeypatch):
    """The figures the save_* functions saved (after the save: written, closed, still inspectable)."""
    saved = []
    real_save = figures._save

    def save(fig, path):
        saved.append(fig)
        out = real_save(fig, path)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return out

    monkeypatch.setattr(figures, "_save", save)
    return saved


def decoder(z):
    return np.tile(1 / (1 + np.exp(-z[:, :1])), (1, 784))


def images_of(ax):
    return [a for a in ax.get_children() if isinstance(a, AxesImage)]


def rgb(colour):
    return tuple(np.round(to_rgb(colour), 6))


# the latent scatter


def scatter_and_legend(fig):
    (ax,) = fig.axes  # a legend, no colour bar axes
    (points,) = ax.collections
    return ax, points, ax.get_legend()


def test_latent_scatter_legend_names_each_class_in_its_points_colour(tmp_path, drawn):
    labels = np.tile(np.arange(10), 30)[RNG.permutation(300)]
    figures.save_latent_scatter(RNG.normal(size=(300, 2)), labels, tmp_path / "z.png")
    ax, points, legend = scatter_and_legend(drawn[0])
    assert [t.get_text() for t in legend.get_texts()] == [str(d) for d in range(10)]
    assert legend.get_title().get_text() == "Label"
    faces = points.get_facecolors()
    assert len(faces) == 300
    legend_colours = [rgb(h.get_markerfacecolor()) for h in legend.legend_handles]
    for digit, colour in enumerate(legend_colours):
        class_colours = {rgb(f[:3]) for f in faces[labels == digit]}
        assert class_colours == {colour}, digit  # every point of the class has the entry's colour
        assert colour == rgb(plt.get_cmap("tab10")(digit))  # digit d is tab10's C<d> in every run
    assert len(set(legend_colours)) == 10
    assert all(h.get_linestyle() == "None" and h.get_marker() == "o" for h in legend.legend_handles)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("Latent Dimension 1", "Latent Dimension 2")


def test_latent_scatter_some_digits_keep_their_colours_and_order(tmp_path, drawn):
    labels = np.array([7, 2, 5, 2, 7, 5, 5])
    figures.save_latent_scatter(RNG.normal(size=(7, 5)), labels, tmp_path / "z.png")
    ax, points, legend = scatter_and_legend(drawn[0])
    assert [t.get_text() for t in legend.get_texts()] == ["2", "5", "7"]
    tab10 = plt.get_cmap("tab10")
    assert [rgb(h.get_markerfacecolor()) for h in legend.legend_handles] == [rgb(tab10(d)) for d in (2, 5, 7)]
    assert [rgb(f[:3]) for f in points.get_facecolors()] == [rgb(tab10(d)) for d in labels]
    assert ax.get_xlabel() == "Principal Component 1"


def test_latent_scatter_other_labels_get_distinct_colours(tmp_path, drawn):
    labels = np.arange(12).repeat(3) + 100  # 12 classes, not digits: tab20 by rank
    figures.save_latent_scatter(RNG.normal(size=(36, 2)), labels, tmp_path / "z.png")
    _, points, legend = scatter_and_legend(drawn[0])
    assert [t.get_text() for t in legend.get_texts()] == [str(c) for c in range(100, 112)]
    colours = [rgb(h.get_markerfacecolor()) for h in legend.legend_handles]
    assert len(set(colours)) == 12
    faces = points.get_facecolors()
    for c, colour in zip(range(100, 112), colours, strict=True):
        assert {rgb(f[:3]) for f in faces[labels == c]} == {colour}


def test_latent_scatter_many_classes_colour_bar_with_integer_ticks(tmp_path, drawn):
    labels = np.arange(40).repeat(2)
    figures.save_latent_scatter(RNG.normal(size=(80, 2)), labels, tmp_path / "z.png")
    fig = drawn[0]
    fig.canvas.draw()
    ax, bar = fig.axes
    assert ax.get_legend() is None and bar.get_ylabel() == "Label"
    ticks = bar.get_yticks()
    assert len(ticks) > 1 and np.all(ticks == np.round(ticks))


def test_latent_scatter_without_labels_one_colour_no_legend(tmp_path, drawn):
    figures.save_latent_scatter(RNG.normal(size=(30, 2)), None, tmp_path / "z.png")
    (ax,) = drawn[0].axes
    assert ax.get_legend() is None
    assert len({rgb(f[:3]) for f in ax.collections[0].get_facecolors()}) == 1


# loss curves


def history(epochs, kl=True):
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "train_loss": 100 + 50 / e, "test_loss": 103 + 50 / e}
        if kl:
            row.update(train_recon=80 + 50 / e, test_recon=84 + 50 / e, train_kl=20 - 5 / e, test_kl=19 - 5 / e)
        rows.append(row)
    return rows


@pytest.mark.parametrize("epochs, marked", [(1, True), (10, True), (30, True), (31, False), (150, False)])
def test_loss_curves_markers_only_on_short_runs(tmp_path, drawn, epochs, marked):
    figures.save_loss_curves(history(epochs), tmp_path / "loss.png")
    lines = [line for ax in drawn[0].axes for line in ax.get_lines()]
    assert len(lines) == 6
    assert {line.get_marker() for line in lines} == ({"o"} if marked else {"None"})
    assert all(len(line.get_xdata()) == epochs for line in lines)


def test_loss_curves_train_solid_test_dashed_colour_per_quantity(tmp_path, drawn):
    figures.save_loss_curves(history(150), tmp_path / "loss.png")
    loss_ax, kl_ax = drawn[0].axes
    for ax in (loss_ax, kl_ax):
        assert ax.get_xlabel() == "Epoch"
        assert ax.get_ylabel().endswith("(nats per sample)")
        lines = {line.get_label(): line for line in ax.get_lines()}
        legend = ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == list(lines)
        assert legend.get_title().get_text() == "solid: train, dashed: test"
        for name, line in lines.items():
            assert line.get_linestyle() == ("-" if name.startswith("train ") else "--"), name
        for handle, line in zip(legend.legend_handles, lines.values(), strict=True):
            assert handle.get_linestyle() == line.get_linestyle()  # the legend shows the styles
            assert rgb(handle.get_color()) == rgb(line.get_color())
        colours = {rgb(line.get_color()) for line in lines.values()}
        assert len(colours) == len(lines)  # train and test of a quantity differ in colour too
    assert loss_ax.get_ylabel() == "Loss (nats per sample)" and kl_ax.get_ylabel() == "KL (nats per sample)"
    assert [line.get_label() for line in loss_ax.get_lines()] == [
        "train loss",
        "test loss",
        "train reconstruction",
        "test reconstruction",
    ]
    assert [line.get_label() for line in kl_ax.get_lines()] == ["train KL", "test KL"]


def test_loss_curves_loss_only(tmp_path, drawn):
    figures.save_loss_curves(history(3, kl=False), tmp_path / "loss.png")
    (ax,) = drawn[0].axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train loss", "test loss"]


# image figures


def test_reconstructions_rows_named_on_the_left(tmp_path, drawn):
    x = RNG.uniform(size=(6, 784))
    figures.save_reconstructions(x, x[::-1], tmp_path / "r.png", n=4)
    fig = drawn[0]
    assert len(fig.axes) == 8 and all(len(images_of(ax)) == 1 for ax in fig.axes)
    for ax, name in zip((fig.axes[0], fig.axes[4]), ("Original", "Reconstructed"), strict=True):
        (text,) = ax.texts
        assert text.get_text() == name
        assert text.get_position()[0] < 0 and text.get_ha() == "right"  # left of the row, not above one image
    assert not any(ax.get_title() for ax in fig.axes)


def test_sample_grid_title_and_cells(tmp_path, drawn):
    figures.save_sample_grid(RNG.uniform(size=(7, 8, 8, 3)), tmp_path / "s.png", title="samples", ncols=3)
    fig = drawn[0]
    assert fig.get_suptitle() == "samples"
    assert len(fig.axes) == 9 and [len(images_of(ax)) for ax in fig.axes] == [1] * 7 + [0, 0]


def test_manifold_axes_say_which_z(tmp_path, drawn):
    figures.save_manifold(decoder, tmp_path / "m.png", n=3, latent_dim=4)
    (ax,) = drawn[0].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z[0]", "z[1]")
    assert len(ax.get_xticklabels()) == 3 and len(ax.get_yticklabels()) == 3
    assert "dims 0-1 of 4" in ax.get_title()


@pytest.mark.parametrize("mode", ["linear", "spherical"])
def test_interpolation_rows_and_title(tmp_path, drawn, mode):
    figures.save_interpolation(decoder, RNG.normal(size=(2, 2, 3)), tmp_path / "i.png", num_steps=4, mode=mode)
    fig = drawn[0]
    assert fig.get_suptitle() == f"Latent Space Interpolation ({mode})"
    assert len(fig.axes) == 8 and all(len(images_of(ax)) == 1 for ax in fig.axes)


# the exercises' figures


@pytest.mark.parametrize("points, marked", [(5, True), (40, False)])
def test_lines_markers_legend_and_labels(tmp_path, drawn, points, marked):
    xs = list(range(1, points + 1))
    series = {"none": (xs, [list(np.linspace(9, 1, points))]), "anneal": (xs, [list(np.linspace(8, 2, points))])}
    figures.save_lines(series, tmp_path / "l.png", xlabel="epoch", ylabels=["test KL (nats)"], title="t")
    (ax,) = drawn[0].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epoch", "test KL (nats)")
    lines = ax.get_lines()
    assert {line.get_marker() for line in lines} == ({"o"} if marked else {"None"})
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["none", "anneal"]
    assert len({rgb(line.get_color()) for line in lines}) == 2


def test_lines_log_axis_labels_only_the_given_x(tmp_path, drawn):
    xs = [2, 3, 5, 8]  # under a decade: matplotlib would label minor ticks too
    figures.save_lines(
        {"test": (xs, [[1, 2, 3, 4], [4, 3, 2, 1]])},
        tmp_path / "l.png",
        xlabel="latent dimensions",
        ylabels=["a (nats)", "b (nats)"],
        title="t",
        xlog=True,
    )
    fig = drawn[0]
    fig.canvas.draw()
    for ax, ylabel in zip(fig.axes, ("a (nats)", "b (nats)"), strict=True):
        assert ax.get_ylabel() == ylabel and ax.get_legend() is None  # one series: no legend
        assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "3", "5", "8"]
        assert isinstance(ax.xaxis.get_minor_formatter(), NullFormatter)


def test_bars_one_colour_per_group_and_a_legend(tmp_path, drawn):
    values = {"β=0.5": RNG.uniform(size=5), "β=1": RNG.uniform(size=5), "β=4": RNG.uniform(size=5)}
    figures.save_bars(values, tmp_path / "b.png", xlabel="latent dimension", ylabel="KL (nats)", title="t")
    (ax,) = drawn[0].axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("latent dimension", "KL (nats)")
    assert list(ax.get_xticks()) == list(range(5))
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == list(values)
    for container, handle, (label, heights) in zip(ax.containers, legend.legend_handles, values.items(), strict=True):
        assert container.get_label() == label
        np.testing.assert_allclose([bar.get_height() for bar in container], heights)
        assert {rgb(bar.get_facecolor()) for bar in container} == {rgb(handle.get_facecolor())}
    assert len({rgb(h.get_facecolor()) for h in legend.legend_handles}) == 3


def test_class_grid_rows_errors_and_accuracy(tmp_path, drawn):
    preds = np.repeat(np.arange(10), 2)
    preds[3] = 7  # row 1, column 1: classified as 7
    accuracy = np.linspace(0.5, 1.0, 10)
    figures.save_class_grid(
        RNG.uniform(size=(20, 784)),
        preds,
        tmp_path / "c.png",
        image_shape=(28, 28, 1),
        ncols=2,
        title="grid",
        row_accuracy=accuracy,
    )
    fig = drawn[0]
    assert fig.get_suptitle() == "grid" and len(fig.axes) == 20
    axes = np.array(fig.axes).reshape(10, 2)
    assert [ax.texts[0].get_text() for ax in axes[:, 0]] == [f"y={r}" for r in range(10)]
    assert [ax.texts[-1].get_text() for ax in axes[:, 1]] == [f"{a:.0%}" for a in accuracy]
    framed = [(r, c) for r in range(10) for c in range(2) if any(isinstance(p, Rectangle) for p in axes[r, c].patches)]
    assert framed == [(1, 1)]
    assert [t.get_text() for t in axes[1, 1].texts] == ["7", f"{accuracy[1]:.0%}"]
    assert rgb(axes[1, 1].texts[0].get_color()) == rgb("red")
