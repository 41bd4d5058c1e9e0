"""Training curves of JAX and PyTorch side by side, from the same weights on the same batches.

Both frameworks start from one set of initial weights (the JAX model's, converted with
vae_jax.convert into the chapter's torch class, strict=True), run Adam (lr 1e-3) on the same
batch order (a permutation per epoch from a JAX key), and log the loss per sample at every step:
JAX through vae_jax.train.Trainer.train_step (the step `vae-jax train` runs), PyTorch through
vae_torch_ref.train.batch_loss (train_epoch_general's loss) + loss.backward() + Adam.

Two modes, both run by default:
  inject   the same eps (drawn from a JAX key) is given to both models, so the two trajectories
           are the same computation in two frameworks: they agree step for step, up to float32
           rounding carried through training (reported: the largest per-step difference).
  free     each framework draws its own eps (JAX keys; torch.manual_seed), as `vae-jax train` and
           the chapter do, with --free-seeds eps streams per framework (same weights, same batches).
           Two runs of one framework then differ as much as the two frameworks do, so the test is
           across eps streams: the last epoch's mean training loss of each run, mean and standard
           deviation per framework, and Welch's t for JAX - PyTorch (|t| < 3: no systematic
           difference detected).

    python scripts/compare_curves.py --data-dir ../shared/data --epochs 3 --out docs/curves
    python scripts/compare_curves.py --epochs 2          # the embedded digits, no data needed

Writes <out>/curves.json and <out>/curves.png (overlaid curves, and |JAX - PyTorch| per step).
Runs trained separately, each from its own seed (`vae-jax train`, scripts/train_torch.py), are
compared per epoch by `vae-jax compare`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

MLP = {"ae", "vae", "cvae"}


def load_images(dataset, data_dir, limit):
    from vae_jax import datasets

    ds = datasets.load_dataset(dataset, "train", data_dir)
    images = ds.images[:limit] if limit else ds.images
    labels = (ds.labels if ds.labels is not None else np.zeros(len(ds.images), np.int64))[: len(images)]
    return np.asarray(images, np.float32), np.asarray(labels, np.int64)


def run_pair(
    model_name,
    images,
    labels,
    *,
    epochs,
    batch_size=128,
    seed=0,
    inject=True,
    eps_stream=0,
    recon="bce_logits",
    log=lambda s: None,
):
    """Train both frameworks side by side; returns {"jax": [...], "torch": [...], "epoch_of_step": [...]},
    each a per-step loss per sample. Weights and batch order come from `seed`; eps from `seed` and
    `eps_stream` (inject: one stream for both; free: JAX draws stream `eps_stream`, torch draws
    from torch.manual_seed(1000 * seed + eps_stream))."""
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from vae_jax import convert, input_pipeline
    from vae_jax import train as T
    from vae_torch_ref import MODELS as TORCH_MODELS
    from vae_torch_ref import batch_loss, inject_eps

    if model_name == "ae":
        raise ValueError("the Autoencoder has no eps to inject: use vae, cvae or conv_vae28")
    cfg = T.Config(
        model=model_name, recon=recon, batch_size=batch_size, seed=seed, progress=False, checkpoint=False, figures=False
    )
    root = jax.random.key(seed)
    jm = T.build_model(cfg, images.shape[1:], rngs=nnx.Rngs(params=jax.random.fold_in(root, 0)))
    trainer = T.Trainer(jm, cfg)
    state = trainer.init_state
    torch.manual_seed(1000 * seed + eps_stream)
    tm = TORCH_MODELS[model_name]()
    tm.load_state_dict(convert.to_torch_state_dict(jm), strict=True)
    tm.train()
    opt = torch.optim.Adam(tm.parameters(), lr=cfg.lr)

    X, Y = jnp.asarray(images), jnp.asarray(labels.astype(np.int32))
    # standard NCHW strides (numpy's for a 1-channel transpose make torch pick channels_last)
    Xt = torch.from_numpy(np.array(images.transpose(0, 3, 1, 2))).clone(memory_format=torch.contiguous_format)
    Yt = torch.from_numpy(np.array(labels))
    kw = dict(flatten=model_name in MLP, conditional=model_name == "cvae", recon=recon)
    out = {"jax": [], "torch": [], "epoch_of_step": []}
    n = len(images)
    for epoch in range(1, epochs + 1):
        ekey = jax.random.fold_in(root, epoch)
        # a writable copy: torch warns when it indexes with a read-only array (np.asarray of a jax Array)
        order = np.array(input_pipeline.epoch_permutation(jax.random.fold_in(ekey, 0), n))
        t0 = time.perf_counter()
        for i, (a, b) in enumerate(input_pipeline.batch_slices(n, batch_size)):
            idx = order[a:b]
            k = jax.random.fold_in(ekey, i + 1)
            eps = jax.random.normal(jax.random.fold_in(k, 1 + eps_stream), (b - a, jm.latent_dim))
            state, m = trainer.train_step(state, X, Y, jnp.asarray(idx), k, 1.0, eps)
            opt.zero_grad(set_to_none=True)
            ctx = inject_eps(torch.from_numpy(np.array(eps))) if inject else contextlib.nullcontext()
            with ctx:
                total, _, _ = batch_loss(tm, Xt[idx], Yt[idx], "cpu", **kw)
            total.backward()
            opt.step()
            out["jax"].append(float(m["loss"]) / (b - a))
            out["torch"].append(total.item() / (b - a))
            out["epoch_of_step"].append(epoch)
        log(
            f"  {'inject' if inject else 'free'} epoch {epoch}: JAX {np.mean(out['jax'][-(i + 1) :]):.4f}, "
            f"PyTorch {np.mean(out['torch'][-(i + 1) :]):.4f} ({time.perf_counter() - t0:.1f}s)"
        )
    return out


def summarize(curves):
    """One side-by-side run: how far apart the two curves are, step by step."""
    j, t = np.asarray(curves["jax"]), np.asarray(curves["torch"])
    ep = np.asarray(curves["epoch_of_step"])
    d = np.abs(j - t)
    last = ep == ep.max()
    above = np.flatnonzero(d > 0.01)
    return {
        "steps": len(d),
        "max_abs_diff": float(d.max()),
        "max_rel_diff": float((d / np.abs(t)).max()),
        "first_step_abs_diff": float(d[0]),
        "first_step_above_0.01": int(above[0]) + 1 if len(above) else None,
        "last_epoch_mean_jax": float(j[last].mean()),
        "last_epoch_mean_torch": float(t[last].mean()),
    }


def compare_streams(runs):
    """Several free-eps runs: the last epoch's mean loss per run, per framework, and Welch's t."""
    a = np.array([summarize(c)["last_epoch_mean_jax"] for c in runs])
    b = np.array([summarize(c)["last_epoch_mean_torch"] for c in runs])
    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if len(runs) > 1 else float("nan")
    diff = float(a.mean() - b.mean())
    return {
        "runs": len(runs),
        "jax": a.tolist(),
        "torch": b.tolist(),
        "jax_mean": float(a.mean()),
        "torch_mean": float(b.mean()),
        "jax_std": float(a.std(ddof=1)) if len(a) > 1 else float("nan"),
        "torch_std": float(b.std(ddof=1)) if len(b) > 1 else float("nan"),
        "diff": diff,
        "welch_t": diff / se if se > 0 else float("nan"),
    }


def plot(results, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True)
    colors = {"inject": ("C0", "C1"), "free": ("C2", "C3")}
    for mode, curves in results.items():
        j, t = np.asarray(curves["jax"]), np.asarray(curves["torch"])
        steps = np.arange(1, len(j) + 1)
        cj, ct = colors[mode]
        axes[0].plot(steps, j, color=cj, lw=1.2, label=f"JAX ({mode} eps)")
        axes[0].plot(steps, t, color=ct, lw=0.8, ls="--", label=f"PyTorch ({mode} eps)")
        axes[1].semilogy(
            steps, np.maximum(np.abs(j - t), 1e-9), color=cj, lw=0.8, label=f"|JAX - PyTorch| ({mode} eps)"
        )
    axes[0].set_ylabel("training loss per sample (nats)")
    lo = min(min(np.percentile(c["jax"], 1), np.percentile(c["torch"], 1)) for c in results.values())
    hi = max(max(np.percentile(c["jax"], 90), np.percentile(c["torch"], 90)) for c in results.values())
    axes[0].set_ylim(lo - 2, hi + 2)
    axes[0].legend(fontsize=8)
    axes[0].set_title(title)
    axes[1].set_ylabel("|difference| (nats)")
    axes[1].set_xlabel("step")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vae", choices=["vae", "cvae", "conv_vae28"])
    ap.add_argument("--dataset", default=None, help="default: mnist when --data-dir is given, else digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default="inject,free")
    ap.add_argument("--free-seeds", type=int, default=3, help="eps streams per framework in the free mode")
    ap.add_argument("--out", default=None, help="output folder for curves.json and curves.png (must not exist)")
    a = ap.parse_args(argv)
    dataset = a.dataset or ("mnist" if a.data_dir else "digits")
    out = Path(a.out) if a.out else None
    if out is not None and out.exists():
        ap.error(f"--out {out} already exists: choose another folder (nothing was overwritten)")
    images, labels = load_images(dataset, a.data_dir, a.train_limit)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    log(f"{a.model} on {dataset} ({len(images)} images), batch {a.batch_size}, {a.epochs} epochs, seed {a.seed}")
    results, report = (
        {},
        {
            "model": a.model,
            "dataset": dataset,
            "num_images": len(images),
            "epochs": a.epochs,
            "batch_size": a.batch_size,
            "seed": a.seed,
            "modes": {},
        },
    )
    modes = [m for m in a.modes.split(",") if m]
    if "inject" in modes:
        results["inject"] = run_pair(
            a.model, images, labels, epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, inject=True, log=log
        )
        s = report["modes"]["inject"] = summarize(results["inject"])
        print(
            f"inject: {s['steps']} steps, max |diff| {s['max_abs_diff']:.3g} nats (max relative "
            f"{s['max_rel_diff']:.3g}; first step {s['first_step_abs_diff']:.2g}, first above 0.01 nats at step "
            f"{s['first_step_above_0.01']}); last epoch mean JAX {s['last_epoch_mean_jax']:.4f}, "
            f"PyTorch {s['last_epoch_mean_torch']:.4f}"
        )
    if "free" in modes:
        runs = [
            run_pair(
                a.model,
                images,
                labels,
                epochs=a.epochs,
                batch_size=a.batch_size,
                seed=a.seed,
                inject=False,
                eps_stream=r,
                log=log,
            )
            for r in range(1, a.free_seeds + 1)
        ]
        results["free"] = runs[0]
        s = report["modes"]["free"] = dict(summarize(runs[0]), streams=compare_streams(runs))
        c = s["streams"]
        print(
            f"free  : {c['runs']} eps streams per framework; last-epoch mean loss JAX {c['jax_mean']:.4f} "
            f"± {c['jax_std']:.4f}, PyTorch {c['torch_mean']:.4f} ± {c['torch_std']:.4f} (std over streams); "
            f"JAX - PyTorch {c['diff']:+.4f}, Welch t = {c['welch_t']:+.2f}; one pair: max |diff| "
            f"{s['max_abs_diff']:.3g} nats, first step {s['first_step_abs_diff']:.3g}"
        )
    if out is not None:
        out.mkdir(parents=True)
        (out / "curves.json").write_text(json.dumps({**report, "curves": results}, indent=1) + "\n")
        plot(
            results, out / "curves.png", f"{a.model} on {dataset}: JAX and PyTorch from the same weights, same batches"
        )
        print(f"wrote {out}/curves.json and {out}/curves.png")


if __name__ == "__main__":
    main()
