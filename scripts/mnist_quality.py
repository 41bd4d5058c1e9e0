"""Quality bar: the chapter's setting on real MNIST in both frameworks, 3 seeds each.

VAE 784-400-20, Bernoulli loss, Adam 1e-3, batch 128, 10 epochs. Prints a markdown table of the
final test loss per sample (JAX and PyTorch, per seed and mean) and writes JSON.

    python scripts/mnist_quality.py --data-dir ../shared/data --out docs/mnist_quality.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from train_torch import train_torch

from vae_jax import train


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    for seed in a.seeds:
        cfg = train.Config(
            model="vae",
            dataset="mnist",
            data_dir=a.data_dir,
            epochs=a.epochs,
            seed=seed,
            checkpoint=False,
            figures=False,
            progress=False,
        )
        t0 = time.perf_counter()
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            js = train.train_and_evaluate(cfg, d, log=lambda s: print("[jax]", s))
        t_jax = time.perf_counter() - t0
        t0 = time.perf_counter()
        # num_workers=0: the same shuffled batches as the chapter's 2 workers (workers change speed only;
        # on 2 busy cores they thrash)
        th = train_torch(a.data_dir, epochs=a.epochs, seed=seed, num_workers=0)
        t_torch = time.perf_counter() - t0
        rows.append(
            {
                "seed": seed,
                "jax_test_loss": js["final"]["test_loss"],
                "torch_test_loss": th[-1]["test_loss"],
                "jax_wall_s": t_jax,
                "torch_wall_s": t_torch,
            }
        )
    mj = statistics.mean(r["jax_test_loss"] for r in rows)
    mt = statistics.mean(r["torch_test_loss"] for r in rows)
    print("\n| seed | JAX test loss / sample | PyTorch test loss / sample | JAX wall s | PyTorch wall s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['jax_test_loss']:.3f} | {r['torch_test_loss']:.3f} | {r['jax_wall_s']:.0f} | {r['torch_wall_s']:.0f} |"
        )
    print(f"| mean | {mj:.3f} | {mt:.3f} | | |")
    print(f"\nJAX - PyTorch = {mj - mt:+.3f} nats (bar: |difference| <= 0.3)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(
                {"rows": rows, "jax_mean": mj, "torch_mean": mt, "difference": mj - mt, "epochs": a.epochs}, f, indent=2
            )


if __name__ == "__main__":
    main()
