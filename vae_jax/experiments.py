"""The chapter's five exercises as runnable experiments (`vae-jax experiment NAME`).

Each experiment trains its variants with `train.train_and_evaluate` (one sub-run per variant in
<workdir>/<variant>/, reused and resumed when it already exists), reloads each trained model with
`train.restore_run`, measures what the exercise asks for, and writes into <workdir>:

    results.csv, results.md   the table (same rows; results.md adds a sentence drawn from the numbers)
    *.png                     the experiment's figures
    summary.json              every number measured, plus the sizes used

Sizes: 'reduced' (tiny: seconds per run, for tests) and 'full' (the chapter's setting: 10 epochs,
batch 128, Adam 1e-3, on whatever dataset is passed -- mnist for the documented results).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import checkpoints, evaluate, figures, models, train
from vae_jax.classifier import accuracy, train_classifier
from vae_jax.configs.exercises import SIZES
from vae_jax.errors import ConfigError
from vae_jax.files import atomic_write, check_outside_owned, json_text

MARKER = ".vae-jax-experiment"  # in an experiment's folder: the experiment's name (the folder is its own)

BETAS = (0.5, 1.0, 2.0, 4.0)
LATENT_DIMS = (2, 10, 20, 50, 100)


@dataclasses.dataclass
class Context:
    workdir: Path
    dataset: str = "digits"
    data_dir: str | None = None
    size: str = "reduced"
    seed: int = 0
    log: Callable[[str], object] = print

    @property
    def opts(self):
        return SIZES[self.size]

    def config(self, **overrides) -> train.Config:
        o = self.opts
        kw = dict(
            dataset=self.dataset,
            data_dir=self.data_dir,
            seed=self.seed,
            epochs=o["epochs"],
            batch_size=o["batch_size"],
            lr=o["lr"],
            train_limit=o["train_limit"],
            test_limit=o["test_limit"],
            figures=o["figures"],
            progress=False,
            checkpoint=True,
        )
        kw.update(overrides)
        return train.Config(**kw)

    def train(self, variant, **overrides):
        """Train (or resume / reuse) the sub-run <workdir>/<variant>; (model, config, history)."""
        run_dir = self.workdir / variant
        cfg = self.config(**overrides)
        started = (run_dir / "config.json").exists()  # and stopped: resumed, or again when it has no checkpoint
        resume = started and any(p.name.isdigit() for p in (run_dir / "checkpoints").glob("*"))
        self.log(f"[{variant}] {'resuming' if resume else 'training'} in {run_dir}")
        train.train_and_evaluate(cfg, run_dir, resume=resume, restart=started and not resume, log=self.log)
        model, cfg, _ = train.restore_run(run_dir)
        model.eval()
        history = checkpoints.read_metrics(run_dir)
        return model, cfg, history

    def test_data(self, cfg=None):
        """(test_x, test_y) device arrays and the test Dataset for the experiment's data."""
        _, test_ds = train.load_data(cfg or self.config())
        return (*train.device_arrays(test_ds), test_ds)


# ----------------------------------------------------------------------------------------------
# helpers shared by the experiments


def decoder_fn(model, y=None):
    """numpy (M, D) latents -> numpy images; a conditional model decodes with labels y (M,)."""

    def fn(z):
        z = jnp.asarray(z, jnp.float32)
        if not model.conditional:
            return np.asarray(model.decode(z))
        return np.asarray(model.decode(z, models.one_hot(model, jnp.asarray(y))))

    return fn


def image_shape_of(test_ds):
    return tuple(test_ds.images.shape[1:])


def true_elbo(m):
    """-ELBO per sample from a metrics row: recon + KL (the logged loss weighs KL by beta * w)."""
    return m["test_recon"] + m["test_kl"]


def iwae(ctx, model, x, y, cfg):
    n = ctx.opts["iwae_n"] or x.shape[0]
    return evaluate.iwae_nll(
        model,
        x[:n],
        y[:n],
        k=ctx.opts["iwae_k"],
        key=train.purpose_key(ctx.seed, train.KeyPurpose.IWAE),
        recon=cfg.recon,
    )


# ----------------------------------------------------------------------------------------------
# output: one table as CSV and markdown, line plots


def _fmt(v):
    if isinstance(v, (float, np.floating)):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def write_table(rows, outdir, statement="", title="", stem="results"):
    """<stem>.csv and <stem>.md (the same rows) in outdir; returns the markdown table text."""
    outdir = Path(outdir)
    cols = list(rows[0])
    buffer = io.StringIO(newline="")
    w = csv.DictWriter(buffer, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic_write(outdir / f"{stem}.csv", buffer.getvalue())
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    table = "\n".join(lines)
    text = (f"## {title}\n\n" if title else "") + table + "\n" + (f"\n{statement}\n" if statement else "")
    atomic_write(outdir / f"{stem}.md", text)
    return table


def _epochs(history):
    return [m["epoch"] for m in history]


# ----------------------------------------------------------------------------------------------
# 1. beta-VAE


def traversal_latents(mu0, dims, values):
    """(len(dims) * len(values), D): row r sweeps dimension dims[r] over values, others at mu0."""
    z = np.tile(np.asarray(mu0, np.float32), (len(dims) * len(values), 1))
    for r, d in enumerate(dims):
        z[r * len(values) : (r + 1) * len(values), d] = values
    return z


def beta_vae(ctx):
    rows, kls, out = [], {}, {}
    values = np.linspace(-3, 3, ctx.opts["traversal_steps"])
    for beta in BETAS:
        model, cfg, hist = ctx.train(f"beta{beta:g}", beta=beta)
        x, y, test_ds = ctx.test_data(cfg)
        mu, lv = evaluate.posterior(model, x, y)
        kld = evaluate.kl_per_dim(mu, lv)
        kls[f"β={beta:g}"] = kld
        f = hist[-1]
        rows.append(
            {
                "beta": beta,
                "test_recon": f["test_recon"],
                "test_kl": f["test_kl"],
                "neg_elbo": true_elbo(f),
                "active_units": evaluate.active_units(mu),
                "latent_dim": int(mu.shape[1]),
            }
        )
        top = np.argsort(kld)[::-1][: min(ctx.opts["traversal_dims"], len(kld))]
        z = traversal_latents(mu[0], top, values)
        out[f"traversal_beta{beta:g}"] = figures.save_sample_grid(
            decoder_fn(model)(z),
            ctx.workdir / f"traversal_beta{beta:g}.png",
            image_shape=image_shape_of(test_ds),
            ncols=len(values),
            title=f"β={beta:g}: rows = dims {', '.join(map(str, top))} (largest KL), z_d from -3 to 3",
        )
    out["kl_per_dim"] = figures.save_bars(
        kls,
        ctx.workdir / "kl_per_dim.png",
        xlabel="latent dimension",
        ylabel="mean KL per dimension (nats)",
        title="KL per latent dimension",
    )
    out["recon_vs_kl"] = figures.save_lines(
        {"β-VAE": ([r["test_kl"] for r in rows], [[r["test_recon"] for r in rows]])},
        ctx.workdir / "recon_vs_kl.png",
        xlabel="test KL (nats)",
        ylabels=["test reconstruction (nats)"],
        title="Reconstruction vs KL, β = " + ", ".join(f"{b:g}" for b in BETAS),
    )
    a, b = rows[0], rows[-1]
    statement = (
        f"As β goes {a['beta']:g}→{b['beta']:g}, the test KL goes from {a['test_kl']:.2f} to "
        f"{b['test_kl']:.2f} nats and the active units from {a['active_units']} to "
        f"{b['active_units']} (of {a['latent_dim']}); the reconstruction term goes from "
        f"{a['test_recon']:.2f} to {b['test_recon']:.2f} nats."
    )
    return rows, statement, out, {"kl_per_dim": {k: v.tolist() for k, v in kls.items()}}


# ----------------------------------------------------------------------------------------------
# 2. conditional VAE, scored by a small classifier


# (sub-run name, training overrides, label). The layers are the chapter's CVAE in every variant;
# only the latent size and the KL weight beta (training choices) change. With the chapter's 20-d
# latent and beta = 1 the encoder, which sees the image, also writes the class into z, and the
# decoder learns to read it from there: a z drawn from the prior then often says another class
# than the label. Making z cheaper to ignore (fewer dimensions, or a larger KL weight) leaves the
# class to the label. See docs/exercises.md for the measured trade-off.
CVAE_VARIANTS = (
    ("latent20", dict(latent_dim=20, beta=1.0), "latent 20, β=1 (the chapter's setting)"),
    ("latent20_beta4", dict(latent_dim=20, beta=4.0), "latent 20, β=4"),
    ("latent2", dict(latent_dim=2, beta=1.0), "latent 2, β=1"),
)
CVAE_TARGET = 0.95  # the bar: share of generated digits the classifier labels as requested
CLASS_PAIRS = ((0, 1), (1, 7), (3, 8), (4, 9), (5, 6), (2, 3))  # the class interpolations: (from, to)


def generated_predictions(model, classifier, labels, z):
    """(classifier labels (M,), images) of decode(z, labels), both numpy."""
    gen = decoder_fn(model, labels)(z)
    return np.asarray(jnp.argmax(classifier(jnp.asarray(gen)), -1)), gen


def cvae(ctx):
    train_ds, test_ds = train.load_data(ctx.config(model="cvae"))
    (tx, ty), (x, y) = train.device_arrays(train_ds), train.device_arrays(test_ds)
    clf = train_classifier(tx, ty, epochs=ctx.opts["classifier_epochs"], seed=ctx.seed)
    clf_acc = accuracy(clf, x, y)
    key = train.purpose_key(ctx.seed, train.KeyPurpose.CVAE_SAMPLES)
    shape = image_shape_of(test_ds)
    rows, per_class_rows, finals, out = [], [], {}, {}
    for name, overrides, label in CVAE_VARIANTS:
        model, cfg, hist = ctx.train(name, model="cvae", **overrides)
        ok, by_class = class_scores(model, clf, key, ctx.opts["per_class"])
        f = finals[name] = hist[-1]
        rows.append(_cvae_row(name, model, cfg, f, ok, by_class))
        per_class_rows.append({"variant": name, **{str(c): float(by_class[c]) for c in range(10)}})
        out[f"class_grid_{name}"] = _class_grid(ctx, name, label, model, clf, key, ok, by_class, shape)
        out[f"class_interpolation_{name}"] = _class_interpolation(ctx, name, model, key, shape)
    write_table(
        per_class_rows,
        ctx.workdir,
        stem="per_class",
        title="Share of generated digits classified as requested, per requested class",
    )
    passing = [r["variant"] for r in rows if r["classified_as_requested"] >= CVAE_TARGET]
    extra = {
        "classifier_test_accuracy": clf_acc,
        "target": CVAE_TARGET,
        "meets_target": passing,
        "per_class": per_class_rows,
        "final": finals,
    }
    return rows, _cvae_statement(ctx, clf_acc, rows, passing), out, extra


def class_scores(model, classifier, key, per_class):
    """(ok, share per class): `per_class` samples of every class, z ~ N(0, I) (the prior, as a user
    samples), and for each whether the classifier labels it as requested."""
    labels = np.repeat(np.arange(10), per_class)
    z = np.asarray(jax.random.normal(key, (labels.shape[0], model.latent_dim)))
    pred, _ = generated_predictions(model, classifier, labels, z)
    ok = pred == labels
    return ok, ok.reshape(10, per_class).mean(axis=1)


def _cvae_row(name, model, cfg, f, ok, by_class):
    """The table's row of one variant: its final test terms and how its samples were classified."""
    worst = int(np.argmin(by_class))
    return {
        "variant": name,
        "latent_dim": model.latent_dim,
        "beta": cfg.beta,
        "epochs": f["epoch"],
        "test_recon": f["test_recon"],
        "test_kl": f["test_kl"],
        "neg_elbo": true_elbo(f),
        "n": int(ok.shape[0]),
        "classified_as_requested": float(ok.mean()),
        "worst_class": worst,
        "worst_class_acc": float(by_class[worst]),
    }


def _class_grid(ctx, name, label, model, classifier, key, ok, by_class, shape):
    """The grid of a variant: row c = class c, the same z's in every row (same style, different class),
    the classifier's label in red where it is not the requested one."""
    cols, per_class = ctx.opts["class_cols"], ctx.opts["per_class"]
    z = np.tile(np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (cols, model.latent_dim))), (10, 1))
    pred, images = generated_predictions(model, classifier, np.repeat(np.arange(10), cols), z)
    return figures.save_class_grid(
        images,
        pred,
        ctx.workdir / f"class_grid_{name}.png",
        image_shape=shape,
        ncols=cols,
        row_accuracy=by_class,
        title=(
            f"CVAE {label}: row = label y, column = one z ~ N(0, I) (the same z down a column)\n"
            f"{ok.mean():.1%} of {ok.shape[0]} samples classified as y; right: per label, over "
            f"{per_class} samples; red: the classifier's label where it is not y"
        ),
    )


def _class_interpolation(ctx, name, model, key, shape):
    """Class interpolation at fixed z, a row per pair of CLASS_PAIRS: [z, onehot(a)] -> [z, onehot(b)]
    (the z part constant)."""
    D, eye = model.latent_dim, np.eye(10, dtype=np.float32)
    zp = np.asarray(jax.random.normal(jax.random.fold_in(key, 2), (len(CLASS_PAIRS), D)))
    pairs = np.stack(
        [
            np.stack([np.concatenate([zp[i], eye[a]]), np.concatenate([zp[i], eye[b]])])
            for i, (a, b) in enumerate(CLASS_PAIRS)
        ]
    )

    def decode_joint(v):
        v = jnp.asarray(v, jnp.float32)
        return np.asarray(model.decode(v[:, :D], v[:, D:]))

    return figures.save_interpolation(
        decode_joint,
        pairs,
        ctx.workdir / f"class_interpolation_{name}.png",
        num_steps=10,
        mode="linear",
        image_shape=shape,
    )


def _cvae_statement(ctx, clf_acc, rows, passing):
    """The sentence under the table, drawn from the numbers."""
    per_class = ctx.opts["per_class"]
    return (
        f"The classifier (MLP 784-256-10, {ctx.opts['classifier_epochs']} epochs) scores "
        f"{clf_acc:.1%} on the real test images. Of {10 * per_class} CVAE samples "
        f"(z ~ N(0, I), {per_class} per class) it labels as the requested class: "
        + ", ".join(
            f"{r['classified_as_requested']:.1%} ({r['variant']}, test KL {r['test_kl']:.1f} nats)" for r in rows
        )
        + f". At or above {CVAE_TARGET:.0%}: {', '.join(passing) if passing else 'none'}. "
        "Interpolation rows: " + ", ".join(f"{a}→{b}" for a, b in CLASS_PAIRS) + " (fixed z, one-hot interpolated)."
    )


# ----------------------------------------------------------------------------------------------
# 3. KL annealing


def kl_annealing(ctx):
    E = max(2, ctx.opts["epochs"] // 2)  # half the epochs; 2 at least, else weight 1 from epoch 1
    runs = {"none": ctx.train("no_anneal"), f"anneal E={E}": ctx.train(f"anneal_E{E}", kl_anneal_epochs=E)}
    rows, series = [], {}
    for name, (model, cfg, hist) in runs.items():
        x, y, _ = ctx.test_data(cfg)
        mu, _lv = evaluate.posterior(model, x, y)
        f = hist[-1]
        rows.append(
            {
                "variant": name,
                "epoch1_neg_elbo": true_elbo(hist[0]),
                "final_test_recon": f["test_recon"],
                "final_test_kl": f["test_kl"],
                "final_neg_elbo": true_elbo(f),
                "final_logged_test_loss": f["test_loss"],
                "active_units": evaluate.active_units(mu),
            }
        )
        series[name] = (
            _epochs(hist),
            [[true_elbo(m) for m in hist], [m["test_recon"] for m in hist], [m["test_kl"] for m in hist]],
        )
    out = {
        "convergence": figures.save_lines(
            series,
            ctx.workdir / "convergence.png",
            xlabel="epoch",
            ylabels=["test -ELBO = recon + KL (nats)", "test recon (nats)", "test KL (nats)"],
            title="KL annealing vs none (true ELBO, KL weight 1)",
        )
    }
    a, b = rows
    statement = (
        f"Final test -ELBO (recon + KL, unweighted): {a['final_neg_elbo']:.2f} without annealing, "
        f"{b['final_neg_elbo']:.2f} with weight min(1, epoch/{E}); active units {a['active_units']} vs "
        f"{b['active_units']}. The annealed run's logged test loss uses the annealed weight "
        f"(final {b['final_logged_test_loss']:.2f}); the table's ELBO columns do not."
    )
    return rows, statement, out, {}


# ----------------------------------------------------------------------------------------------
# 4. MSE vs BCE


def mse_vs_bce(ctx):
    runs = {"bce": ctx.train("bce", recon="bce_logits"), "mse": ctx.train("mse", recon="gaussian")}
    key = train.purpose_key(ctx.seed, train.KeyPurpose.MSE_VS_BCE)
    rows, recons, series = [], {}, {}
    x = y = test_ds = None
    for name, (model, cfg, hist) in runs.items():
        x, y, test_ds = ctx.test_data(cfg)
        s = evaluate.recon_scores(model, x, y, key)
        f = hist[-1]
        final = f["test_recon"]
        within = next(m["epoch"] for m in hist if abs(m["test_recon"] - final) <= 0.05 * abs(final))
        rows.append(
            {
                "loss": name,
                "trained_on": cfg.recon,
                "final_own_test_recon": final,
                "epochs_to_within_5pct": within,
                "test_bce_nats": s["bce"],
                "test_sse": s["sse"],
                "test_kl": s["kl"],
                "bernoulli_neg_elbo": s["bce"] + s["kl"],
            }
        )
        series[name] = (_epochs(hist), [[m["test_recon"] for m in hist], [m["test_kl"] for m in hist]])
        xin, cond = models.model_inputs(model, x[:10], y[:10])
        recons[name] = np.asarray(model.decode(model.encode(xin, *cond)[0], *cond))
    assert x is not None  # set by the loop over the two runs
    shape = image_shape_of(test_ds)
    grid = np.concatenate([np.asarray(x[:10]).reshape(10, -1), recons["bce"], recons["mse"]])
    out = {
        "reconstructions": figures.save_sample_grid(
            grid,
            ctx.workdir / "reconstructions.png",
            image_shape=shape,
            ncols=10,
            title="rows: original / BCE-trained / MSE-trained",
        ),
        "convergence": figures.save_lines(
            series,
            ctx.workdir / "convergence.png",
            xlabel="epoch",
            ylabels=["test recon, own loss (BCE nats / SSE)", "test KL (nats)"],
            title="MSE vs BCE: per-epoch test terms",
        ),
    }
    a, b = rows
    statement = (
        f"On one scale (Bernoulli NLL of the test images, z ~ q once): BCE-trained {a['test_bce_nats']:.2f} "
        f"nats, MSE-trained {b['test_bce_nats']:.2f} nats; squared error {a['test_sse']:.2f} vs "
        f"{b['test_sse']:.2f}; KL {a['test_kl']:.2f} vs {b['test_kl']:.2f}; each reached 5% of its final "
        f"reconstruction by epoch {a['epochs_to_within_5pct']} (BCE) / {b['epochs_to_within_5pct']} (MSE)."
    )
    return rows, statement, out, {}


# ----------------------------------------------------------------------------------------------
# 5. latent dimension sweep


def latent_sweep(ctx):
    rows, out = [], {}
    key = train.purpose_key(ctx.seed, train.KeyPurpose.LATENT_SWEEP)
    for d in LATENT_DIMS:
        model, cfg, hist = ctx.train(f"latent{d}", latent_dim=d)
        x, y, test_ds = ctx.test_data(cfg)
        mu, _lv = evaluate.posterior(model, x, y)
        f = hist[-1]
        nll = iwae(ctx, model, x, y, cfg)
        rows.append(
            {
                "latent_dim": d,
                "test_recon": f["test_recon"],
                "test_kl": f["test_kl"],
                "neg_elbo": true_elbo(f),
                "iwae_nll": nll,
                "active_units": evaluate.active_units(mu),
            }
        )
        out[f"samples_latent{d}"] = figures.save_sample_grid(
            np.asarray(model.sample(ctx.opts["grid_samples"], key)),
            ctx.workdir / f"samples_latent{d}.png",
            image_shape=image_shape_of(test_ds),
            title=f"latent_dim={d}: samples, z ~ N(0, I)",
        )
    n_iw = ctx.opts["iwae_n"] or "all"
    out["dims_vs_performance"] = figures.save_lines(
        {
            "test": (
                list(LATENT_DIMS),
                [[r["test_recon"] for r in rows], [r["test_kl"] for r in rows], [r["iwae_nll"] for r in rows]],
            )
        },
        ctx.workdir / "dims_vs_performance.png",
        xlabel="latent dimensions",
        ylabels=["reconstruction (nats)", "KL (nats)", f"NLL, IWAE k={ctx.opts['iwae_k']} (nats)"],
        title="Latent dimensions vs performance",
        xlog=True,
    )
    best = min(rows, key=lambda r: r["iwae_nll"])
    a, b = rows[0], rows[-1]
    statement = (
        f"From {a['latent_dim']} to {b['latent_dim']} latent dimensions the reconstruction term goes "
        f"{a['test_recon']:.2f}→{b['test_recon']:.2f} nats and the KL {a['test_kl']:.2f}→{b['test_kl']:.2f}; "
        f"active units {', '.join(str(r['active_units']) for r in rows)}. Lowest importance-sampled "
        f"NLL (k={ctx.opts['iwae_k']}, test images: {n_iw}): {best['iwae_nll']:.2f} nats at "
        f"latent_dim={best['latent_dim']}."
    )
    return rows, statement, out, {"iwae_k": ctx.opts["iwae_k"], "iwae_n": n_iw}


EXPERIMENTS = {
    "beta-vae": (beta_vae, "Exercise 1: β-VAE"),
    "latent-sweep": (latent_sweep, "Exercise 2: latent dimensions"),
    "cvae": (cvae, "Exercise 3: conditional VAE"),
    "mse-vs-bce": (mse_vs_bce, "Exercise 4: MSE vs BCE"),
    "kl-annealing": (kl_annealing, "Exercise 5: KL annealing"),
}


def _claim(workdir: Path, name: str) -> None:
    """Make `workdir` the folder of experiment `name`: a new or empty folder gets MARKER; one that holds
    anything else must be this experiment's (its MARKER, or the summary.json of one written before the
    marker) -- never a run directory or the user's files."""
    check_outside_owned(workdir, "experiment folder")
    if (workdir / "config.json").exists():
        raise ConfigError(
            f"experiment folder {workdir} is a run directory -- choose a new folder for the experiment; "
            "nothing was changed"
        )
    if workdir.is_dir() and any(workdir.iterdir()):
        if _owner(workdir) != name:
            raise ConfigError(
                f"experiment folder {workdir} holds files that are not experiment {name}'s -- choose a new "
                "(or empty) folder, or the one this experiment wrote before; nothing was changed"
            )
        return
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write(workdir / MARKER, name + "\n")


def _owner(workdir: Path) -> str | None:
    """The experiment whose folder `workdir` is (its MARKER, or an older folder's summary.json), else None."""
    try:
        if (workdir / MARKER).is_file():
            return (workdir / MARKER).read_text().strip()
        summary = json.loads((workdir / "summary.json").read_text())
        return summary.get("experiment") if isinstance(summary, dict) else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _remove_empty_folders(workdir: Path, before: set[str] | None) -> None:
    """After a failed experiment: the empty folders it made (a variant's, the workdir itself when
    the experiment made it) are removed; anything with a file in it is kept."""
    made = set(os.listdir(workdir)) - (before or set())
    for entry in made - {MARKER}:
        with contextlib.suppress(OSError):  # not empty, or not a folder: kept
            (workdir / entry).rmdir()
    if MARKER in made and os.listdir(workdir) == [MARKER]:  # this failed experiment's mark, alone
        (workdir / MARKER).unlink()
    if before is None:
        with contextlib.suppress(OSError):
            workdir.rmdir()


def run_experiment(name, workdir, *, dataset="digits", data_dir=None, size="reduced", seed=0, log=print):
    """Run one experiment into workdir; returns its summary (also written to summary.json)."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}: use one of {', '.join(EXPERIMENTS)}")
    if size not in SIZES:
        raise ConfigError(f"unknown size {size!r}: use one of {', '.join(SIZES)}")
    workdir = Path(workdir)
    before = set(os.listdir(workdir)) if workdir.is_dir() else None
    _claim(workdir, name)
    ctx = Context(workdir, dataset, data_dir, size, seed, log)
    fn, title = EXPERIMENTS[name]
    try:
        rows, statement, figs, extra = fn(ctx)
    except BaseException:
        _remove_empty_folders(workdir, before)
        raise
    table = write_table(rows, workdir, statement, title)
    summary = {
        "experiment": name,
        "title": title,
        "dataset": dataset,
        "size": size,
        "seed": seed,
        "sizes": ctx.opts,
        "rows": rows,
        "statement": statement,
        "figures": {k: str(v) for k, v in figs.items()},
        **extra,
    }
    atomic_write(workdir / "summary.json", json_text(summary) + "\n")
    log(f"{title}\n{table}\n{statement}\nwrote {workdir}")
    return summary
