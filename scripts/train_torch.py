"""Train the PyTorch reference the way `vae-jax train` trains the JAX models, on the same data.

The chapter's VAE with the chapter's own loop (vae_torch_ref.train.train_epoch / test_epoch,
DataLoader batch 128, shuffle, Adam 1e-3); other models through train_epoch_general.
Writes <workdir>/metrics.jsonl with the same keys as vae-jax (epoch, train_loss, test_loss, ...).

    python scripts/train_torch.py --data-dir ../shared/data --epochs 10 --seed 0 --workdir runs/torch_s0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.optim as optim

from vae_torch_ref import models as tm
from vae_torch_ref import train as tt
from vae_torch_ref.data import mnist_loaders

MODELS = {k: tm.MODELS[k] for k in ("vae", "ae", "cvae", "conv_vae28")}  # the MNIST models


def train_torch(
    data_dir, *, model="vae", epochs=10, batch_size=128, lr=1e-3, seed=0, workdir=None, num_workers=2, log=print
):
    """Train one torch run; returns the list of per-epoch metrics."""
    torch.manual_seed(seed)
    train_loader, test_loader = mnist_loaders(data_dir, batch_size=batch_size, num_workers=num_workers)
    net = MODELS[model]()
    optimizer = optim.Adam(net.parameters(), lr=lr)
    device = torch.device("cpu")
    kw = {"flatten": model != "conv_vae28", "conditional": model == "cvae"}
    out = None
    if workdir:
        Path(workdir).mkdir(parents=True, exist_ok=False)
        out = open(Path(workdir) / "metrics.jsonl", "w")
    history = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        if model == "vae":  # the chapter's loop, verbatim
            tr = tt.train_epoch(net, train_loader, optimizer, device)
            train_time = time.perf_counter() - t0
            te = tt.test_epoch(net, test_loader, device)
        else:
            tr = tt.train_epoch_general(net, train_loader, optimizer, device, **kw)
            train_time = time.perf_counter() - t0
            te = tt.test_epoch_general(net, test_loader, device, **kw)
        m = {
            "epoch": epoch,
            "train_loss": tr[0],
            "train_recon": tr[1],
            "train_kl": tr[2],
            "test_loss": te[0],
            "test_recon": te[1],
            "test_kl": te[2],
            "train_time_s": train_time,
        }
        history.append(m)
        if out:
            out.write(json.dumps(m) + "\n")
            out.flush()
        log(f"[torch seed {seed}] epoch {epoch}/{epochs} train {tr[0]:.4f} test {te[0]:.4f} ({train_time:.1f}s)")
    if out:
        out.close()
    return history


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder with the original MNIST .gz files (or its parent)")
    p.add_argument("--model", default="vae", choices=list(MODELS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None)
    a = p.parse_args(argv)
    try:
        train_torch(
            a.data_dir, model=a.model, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, workdir=a.workdir
        )
    except (ValueError, FileExistsError) as e:
        print(f"train_torch: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
