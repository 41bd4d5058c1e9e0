"""Train the chapter's PyTorch code into a run directory that vae-jax reads (`vae-jax compare`).

The chapter's VAE with the chapter's own loop (vae_torch_ref.train.train_epoch / test_epoch: the
clamped BCE of vae_loss, a shuffled DataLoader, Adam); cvae and conv_vae28 through
train_epoch_general with the same loss; a torch model of your own with `--model path/to/file.py:ClassName`
(forward(x) -> (recon, mu, logvar), constructor sizes by name as vae_jax.torch_models builds it: input_dim
takes flat images, input_channels / image_shape NCHW ones) with that same loss. Data: the embedded digits (no download) or MNIST from
--data-dir (read by vae_torch_ref.data, as ToTensor does), the first --train-limit / --test-limit images.

<workdir> (new or empty) gets config.json (vae_jax.train.Config's option names, plus "framework":
"torch" and image_shape), metrics.jsonl (vae-jax's fields, per sample), model.pt (the state_dict,
the chapter's keys) and summary.json, each written atomically. --data-order torch (the default) is
the chapter's shuffled DataLoader; --data-order jax feeds each epoch's batches in vae-jax's order
(vae_jax.train.epoch_order of the seed), so this run and `vae-jax train --seed S` see the same batches.

    python scripts/train_torch.py --epochs 10 --workdir runs/torch_digits
    python scripts/train_torch.py --data-dir ../shared/data --epochs 10 --seed 0 --workdir runs/torch_s0
    python scripts/train_torch.py --model my_torch_vae.py:MyVAE --data-order jax --workdir runs/mine_torch
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from vae_jax.config import KINDS, absolute_model_spec, is_model_spec
from vae_jax.errors import ConfigError, DataError, VaeJaxError, machine_failure
from vae_jax.files import atomic_write, lock_run_dir
from vae_torch_ref import models as tm
from vae_torch_ref import train as tt
from vae_torch_ref.data import mnist_datasets

MODELS = ("vae", "cvae", "conv_vae28")  # the MNIST models with an ELBO (the chapter's loss)
DATASETS = ("digits", "mnist")
DATA_ORDERS = ("torch", "jax")  # the chapter's shuffled DataLoader, or vae_jax.train.epoch_order
# config.json: vae_jax.train.Config's names for what this loop has (recon "bce": vae_loss's clamped BCE)
FIXED = {"recon": "bce", "beta": 1.0, "kl_anneal_epochs": 0, "binarize": "none", "lr_schedule": "constant"}


def load_splits(dataset, data_dir, train_limit=None, test_limit=None):
    """(train, test) TensorDatasets: NCHW float32 images in [0, 1], int64 labels; the first N of each."""
    if dataset == "mnist":
        if data_dir is None:
            raise ConfigError("--dataset mnist needs --data-dir -- pass the folder with the original MNIST files")
        try:
            train, test = mnist_datasets(data_dir)
        except ValueError as e:
            raise DataError(f"{e} -- pass --data-dir with the four original MNIST files") from None
        splits = [(s.tensors[0], s.tensors[1]) for s in (train, test)]
    elif dataset == "digits":
        from vae_jax import datasets

        splits = []
        for split in ("train", "test"):
            ds = datasets.load_dataset("digits", split)
            x = torch.from_numpy(ds.images.transpose(0, 3, 1, 2).copy())  # NHWC -> NCHW, contiguous
            splits.append((x, torch.from_numpy(ds.labels.astype("int64"))))
    else:
        raise ConfigError(f"unknown dataset {dataset!r} -- use one of {', '.join(DATASETS)}")
    return tuple(TensorDataset(x[:n], y[:n]) for (x, y), n in zip(splits, (train_limit, test_limit), strict=True))


def build_model(model, image_shape, latent_dim=None, hidden_dim=None):
    """The chapter's class for `model`, sized as vae_jax.models builds it (None: the chapter's size), or
    the torch model of one's own that the spec `model` names (vae_jax.torch_models.build)."""
    if is_model_spec(model):
        from vae_jax import torch_models

        sizes = {"latent_dim": latent_dim, "hidden_dim": hidden_dim}
        return torch_models.build(model, image_shape, sizes, seed=torch.initial_seed(), option="--model")
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r} -- use one of {', '.join(MODELS)} or path/to/file.py:ClassName")
    sizes = {"latent_dim": latent_dim} if latent_dim is not None else {}
    if model == "conv_vae28":
        return tm.ConvVAE28(input_channels=image_shape[-1], **sizes)
    if hidden_dim is not None:
        sizes["hidden_dim"] = hidden_dim
    return tm.MODELS[model](input_dim=math.prod(image_shape), **sizes)


def _fresh(workdir) -> Path:
    """`workdir` when nothing is there or it is an empty folder."""
    workdir = Path(workdir)
    if os.path.lexists(workdir) and (not workdir.is_dir() or any(workdir.iterdir())):
        raise ConfigError(
            f"workdir {workdir} is not empty -- choose another (new or empty) --workdir; nothing was changed"
        )
    return workdir


def _run_dir(workdir) -> Path:
    """The new (or empty) run directory, created and locked for this process."""
    workdir = _fresh(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lock_run_dir(workdir)
    return _fresh(workdir)  # no other writer got there first


def train_loader(train_ds, batch_size, num_workers, data_order, seed, epoch, torch_loader=None):
    """The epoch's training batches: torch's shuffled DataLoader (`torch_loader`, made once), or for
    data_order "jax" a DataLoader whose sampler is vae_jax.train.epoch_order(seed, epoch, n)."""
    if data_order == "torch":
        return torch_loader
    from vae_jax.train import epoch_order

    order = [int(i) for i in epoch_order(seed, epoch, len(train_ds))]
    return DataLoader(train_ds, batch_size=batch_size, sampler=order, num_workers=num_workers)


def _epoch(net, model, loaders, optimizer, epoch):
    """One epoch of training then testing; the metrics row, as vae_jax.train.epoch_metrics writes it."""
    cpu = torch.device("cpu")
    kw = {"flatten": getattr(net, "flat_input", model != "conv_vae28"), "conditional": model == "cvae"}
    t0 = time.perf_counter()
    if model == "vae":  # the chapter's loop, verbatim
        tr = tt.train_epoch(net, loaders[0], optimizer, cpu)
    else:
        tr = tt.train_epoch_general(net, loaders[0], optimizer, cpu, **kw)
    t1 = time.perf_counter()
    te = tt.test_epoch(net, loaders[1], cpu) if model == "vae" else tt.test_epoch_general(net, loaders[1], cpu, **kw)
    t2 = time.perf_counter()
    if not all(math.isfinite(v) for v in (*tr, *te)):
        raise FloatingPointError(f"non-finite loss at epoch {epoch} (train {tr[0]}, test {te[0]}): lower --lr")
    names = ("loss", "recon", "kl")
    return {
        "epoch": epoch,
        "kl_weight": 1.0,
        **{f"train_{k}": v for k, v in zip(names, tr, strict=True)},
        **{f"test_{k}": v for k, v in zip(names, te, strict=True)},
        "train_time_s": t1 - t0,
        "test_time_s": t2 - t1,
    }


def train_torch(
    data_dir=None,
    *,
    dataset=None,
    model="vae",
    latent_dim=None,
    hidden_dim=None,
    epochs=10,
    batch_size=128,
    lr=1e-3,
    seed=0,
    train_limit=None,
    test_limit=None,
    num_workers=2,
    threads=None,
    data_order="torch",
    workdir=None,
    log=print,
):
    """Train one torch run (dataset: mnist when data_dir is given, else digits); returns the per-epoch
    metrics. With `workdir`, writes the run there (see the module docstring)."""
    t_start = time.perf_counter()
    dataset = dataset or ("mnist" if data_dir else "digits")
    if workdir is not None:
        _fresh(workdir)  # before the data is read; created once the data and the model are known to work
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train_ds, test_ds = load_splits(dataset, data_dir, train_limit, test_limit)
    image_shape = [*train_ds.tensors[0].shape[2:], train_ds.tensors[0].shape[1]]  # HWC, as vae-jax
    shuffled = DataLoader(train_ds, batch_size=batch_size, shuffle=True, num_workers=num_workers)
    test_loader = DataLoader(test_ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model = absolute_model_spec(model)
    net = build_model(model, image_shape, latent_dim, hidden_dim)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    run = _run_dir(workdir) if workdir is not None else None
    config = {
        "model": model,
        "dataset": dataset,
        "data_dir": os.path.abspath(data_dir) if data_dir and dataset != "digits" else None,
        "latent_dim": latent_dim,
        "hidden_dim": hidden_dim,
        **FIXED,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "train_limit": train_limit,
        "test_limit": test_limit,
        "num_workers": num_workers,
        "data_order": data_order,
        "framework": "torch",
        "image_shape": image_shape,
    }
    if is_model_spec(model):
        from vae_jax import torch_models

        config["model_source"] = torch_models.source(
            model, image_shape, {"latent_dim": latent_dim, "hidden_dim": hidden_dim}
        )
    if run:
        atomic_write(run / "config.json", json.dumps(config, indent=2) + "\n")
    history = []
    for epoch in range(1, epochs + 1):
        loaders = (train_loader(train_ds, batch_size, num_workers, data_order, seed, epoch, shuffled), test_loader)
        m = _epoch(net, model, loaders, optimizer, epoch)
        history.append(m)
        if run:  # the whole file anew each epoch, as vae-jax's RunDir.append_metrics
            atomic_write(run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        log(
            f"[torch seed {seed}] epoch {epoch}/{epochs} train {m['train_loss']:.4f} test {m['test_loss']:.4f} "
            f"({m['train_time_s']:.1f}s)"
        )
    if run:
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        atomic_write(run / "model.pt", buf.getvalue())
        summary = {
            "workdir": str(run),
            "framework": "torch",
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "config": config,
            "num_train": len(train_ds),
            "num_test": len(test_ds),
            "epochs": len(history),
            "steps": len(history) * len(shuffled),
            "wall_time_s": time.perf_counter() - t_start,
            "final": history[-1],
        }
        atomic_write(run / "summary.json", json.dumps(summary, indent=2) + "\n")
        log(f"wrote {run}")
    return history


class _Parser(argparse.ArgumentParser):
    """One-line errors: `train_torch: error: ... (see --help)`, exit 2."""

    def error(self, message):
        self.exit(2, f"train_torch: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _kind(kind):
    """An argparse type for a value of vae_jax.config.KINDS[kind] (the same checks as `vae-jax train`)."""
    cast, ok, what = KINDS[kind]

    def parse(s):
        try:
            v = cast(s)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}")
        return v

    parse.__name__ = kind
    return parse


def parser():
    pos, nonneg = _kind("positive_int"), _kind("nonneg_int")
    p = _Parser(prog="train_torch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vae", help=f"one of {', '.join(MODELS)}, or path/to/file.py:ClassName")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="default: mnist with --data-dir, else digits")
    p.add_argument("--data-dir", default=None, help="folder with the original MNIST .gz files (or its parent)")
    p.add_argument("--latent-dim", type=pos, default=None, help="default: the chapter's for the model")
    p.add_argument("--hidden-dim", type=pos, default=None, help="MLP models; default: the chapter's 400")
    p.add_argument("--epochs", type=pos, default=10)
    p.add_argument("--batch-size", type=pos, default=128)
    p.add_argument("--lr", type=_kind("positive_float"), default=1e-3)
    p.add_argument("--seed", type=nonneg, default=0)
    p.add_argument("--train-limit", type=pos, default=None, help="use the first N training images")
    p.add_argument("--test-limit", type=pos, default=None, help="use the first N test images")
    p.add_argument("--num-workers", type=nonneg, default=2, help="DataLoader worker processes (the chapter's 2)")
    p.add_argument(
        "--data-order",
        default="torch",
        choices=DATA_ORDERS,
        help="torch: a shuffled DataLoader "
        "(the chapter's); jax: vae-jax's epoch order of --seed, the batches `vae-jax train` sees",
    )
    p.add_argument("--threads", type=pos, default=None, help="torch's CPU threads (default: torch's choice)")
    p.add_argument("--workdir", required=True, help="the run directory to write (new or empty)")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    kw = {k: v for k, v in vars(a).items() if k != "data_dir"}
    try:
        train_torch(a.data_dir, **kw)
    except VaeJaxError as e:
        print(f"train_torch: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"train_torch: error: {e}", file=sys.stderr)
        return 3
    except OSError as e:
        line = machine_failure(e) or f"cannot access {e.filename or ''}: {e.strerror} -- check the path"
        print(f"train_torch: error: {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
