"""Training throughput of every model, PyTorch (the chapter's code) and JAX side by side.

Variants, alternated inside one process (each repeat runs every variant once, in turn):
  torch_loader   the chapter's loop: vae_torch_ref.train.train_epoch_general over a DataLoader
                 of a TensorDataset (batch --batch, shuffle=True, num_workers=--num-workers),
                 one .item() per loss per step as in the chapter
  torch_tight    the same model/loss/Adam step over tensors shuffled before the timer starts,
                 no DataLoader, no per-step .item()
  torch_compile  torch_tight with the forward+loss compiled by torch.compile (inductor); the
                 backward runs through AOTAutograd's compiled graph, Adam is eager
  jax_step       vae_jax.train.Trainer.train_step (one jit call per step, data on device,
                 batches gathered by index inside the step) -- what `vae-jax train` runs
  jax_step_lax   jax_step with every conv layer in XLA's strided/transposed-conv form
                 (built with vae_jax.layers.ConvForm(tconv="lax", conv="lax"); conv models only
                 by default),
                 to measure what the sub-pixel / space-to-depth forms that jax_step uses buy
  jax_scan       the same step inside one jitted lax.scan over the whole epoch (MLP models only
                 by default: XLA:CPU runs the convolutions ~10x slower inside the loop body)
  jax_dp         jax_step data-parallel over one XLA host device per core (`vae-jax train
                 --devices N`; the script sets --xla_force_host_platform_device_count to the core
                 count before JAX starts): each batch is split over the devices, the gradients are
                 all-reduced; same global batch, same result up to summation order. NOT in the
                 default set: on this 2-core machine one full run aborted at jax_dp's first step
                 (XLA:CPU's all-reduce rendezvous timed out waiting for the second device's
                 thread), although standalone runs of it completed; pass --variants to try it

One "repeat" is one epoch of --steps steps over random data (uniform [0, 1]; 28x28x1 for the
MNIST models, 64x64x3 for celeba_vae; random labels for cvae). Throughput = steps * batch /
median epoch time. The first epoch of each variant is the warm-up (compilation included);
"warm-up s" is that first epoch's time. Loss: --recon for both frameworks (default bce_logits,
the project's default; the chapter's is 'bce').

Also reported: the machine's fp32 matmul peak (2048x2048 sgemm, numpy and jax, best of both),
training FLOPs per sample from XLA's cost analysis of the JAX step (and analytically, 3 x 2 x
forward MACs, for the MLP models), the fraction of that peak each JAX variant reaches, torch's
thread count (XLA:CPU uses every core), and the process's RSS.

  python scripts/bench.py --out-json bench.json --out-md bench.md --out-png bench.png
  python scripts/bench.py --models vae,conv_vae28 --repeats 5 --steps 50 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

ALL_MODELS = ["ae", "vae", "conv_vae28", "celeba_vae", "cvae"]
VARIANTS = ["torch_loader", "torch_tight", "torch_compile", "jax_step", "jax_step_lax", "jax_scan", "jax_dp"]
HOST_DEVICES = os.cpu_count() or 1  # jax_dp: one XLA:CPU device per core
MLP_MODELS = {"ae", "vae", "cvae"}  # --variants default: jax_scan only for these (XLA:CPU runs the conv
                                    # models' convolutions ~10x slower inside a scan's loop body)
IMAGE_SHAPE = {"celeba_vae": (64, 64, 3)}  # default (28, 28, 1)
TARGETS = {"vae": 1.5, "conv_vae28": 1.0, "celeba_vae": 1.0}  # issue #5: JAX / torch.compile samples/s


def rss_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


# ----------------------------------------------------------------------------- torch

def torch_model(name):
    from vae_torch_ref import models as TM
    return TM.MODELS[name]()


def torch_loss_fn(name, model, recon):
    """(data, labels) -> (total, recon, kl) on one batch, as the chapter's train loop computes it."""
    import torch
    import torch.nn.functional as F
    from vae_torch_ref.train import batch_loss

    if name == "ae":  # Autoencoder returns (x_recon, z): reconstruction loss only
        def ae_loss(data, labels):
            x = data.view(data.size(0), -1)
            if recon == "bce_logits":
                h = F.relu(model.fc3(model.encode(x)))
                rec = F.binary_cross_entropy_with_logits(model.fc4(h), x, reduction="sum")
            else:
                rec = F.binary_cross_entropy(model(x)[0], x, reduction="sum")
            return rec, rec, torch.zeros(())
        return ae_loss
    kw = dict(flatten=name in ("vae", "cvae"), conditional=name == "cvae", recon=recon)
    return lambda data, labels: batch_loss(model, data, labels, "cpu", **kw)


class TorchVariant:
    def __init__(self, kind, name, x_nchw, y, batch, recon, num_workers):
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        torch.manual_seed(0)
        self.kind, self.name, self.batch = kind, name, batch
        self.model = torch_model(name)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        # standard NCHW strides (numpy's for a 1-channel transpose make torch pick channels_last)
        self.X = torch.from_numpy(x_nchw).clone(memory_format=torch.contiguous_format)
        self.Y = torch.from_numpy(y)
        self.loss = torch_loss_fn(name, self.model, recon)
        if kind == "torch_compile":
            self.loss = torch.compile(self.loss)
        if kind == "torch_loader":
            self.loader = DataLoader(TensorDataset(self.X, self.Y), batch_size=batch, shuffle=True,
                                     num_workers=num_workers)

    def epoch(self):
        import torch
        if self.kind == "torch_loader":
            from vae_torch_ref.train import train_epoch_general
            if self.name == "ae":  # train_epoch_general unpacks model(x) into 3: same loop, ae loss
                self.model.train()
                tot = [0.0, 0.0, 0.0]
                for data, labels in self.loader:
                    self.opt.zero_grad()
                    losses = self.loss(data, labels)
                    losses[0].backward()
                    self.opt.step()
                    for k in range(3):
                        tot[k] += losses[k].item()
                return tot[0] / len(self.loader.dataset)
            name = self.name
            kw = dict(flatten=name in ("vae", "cvae"), conditional=name == "cvae", recon=self._recon)
            return train_epoch_general(self.model, self.loader, self.opt, "cpu", **kw)[0]
        self.model.train()
        perm = torch.randperm(self.X.shape[0])
        X, Y = self.X[perm], self.Y[perm]  # pre-shuffled (timed: one gather per epoch)
        total = torch.zeros(())
        for a in range(0, X.shape[0], self.batch):
            self.opt.zero_grad(set_to_none=True)
            losses = self.loss(X[a:a + self.batch], Y[a:a + self.batch])
            losses[0].backward()
            self.opt.step()
            total += losses[0].detach()
        return float(total) / X.shape[0]


# ----------------------------------------------------------------------------- jax

class JaxVariant:
    def __init__(self, kind, name, x_nhwc, y, batch, recon, steps):
        import jax
        import jax.numpy as jnp
        from flax import nnx
        from vae_jax import train as T

        self.jax, self.kind, self.batch, self.steps = jax, kind, batch, steps
        cfg = T.Config(model=name, recon=recon, batch_size=batch, progress=False, checkpoint=False, figures=False)
        from vae_jax import layers as L, models as M
        if kind == "jax_step_lax" and name not in MLP_MODELS:
            model = M.REGISTRY[name].build(cfg, x_nhwc.shape[1:], rngs=nnx.Rngs(0),
                                           conv_form=L.ConvForm(tconv="lax", conv="lax"))
        else:
            model = T.build_model(cfg, x_nhwc.shape[1:], rngs=nnx.Rngs(0))
        self.trainer = T.Trainer(model, cfg)
        self.state = self.trainer.init_state
        self.images, self.labels = jnp.asarray(x_nhwc), jnp.asarray(y.astype(np.int32))
        if kind == "jax_dp":
            self.trainer.shard(min(HOST_DEVICES, jax.device_count()))
            self.state, self.images, self.labels = self.trainer.replicate((self.state, self.images, self.labels))
        self.n = x_nhwc.shape[0]
        self.epoch_no = 0
        if kind == "jax_scan":
            tr = self.trainer

            def run_epoch(state, images, labels, idxs, keys):
                def body(s, ik):
                    s, m = tr._train_step(s, images, labels, ik[0], ik[1], 1.0)
                    return s, m["loss"]
                state, losses = jax.lax.scan(body, state, (idxs, keys))
                return state, losses.sum()
            self.run_epoch = jax.jit(run_epoch)

    def _order(self):
        jax = self.jax
        self.epoch_no += 1
        key = jax.random.fold_in(jax.random.key(0), self.epoch_no)
        order = jax.random.permutation(jax.random.fold_in(key, 0), self.n).astype("int32")
        return key, order

    def epoch(self):
        jax = self.jax
        key, order = self._order()
        b = self.batch
        if self.kind == "jax_scan":
            idxs = order[: self.steps * b].reshape(self.steps, b)
            keys = jax.random.split(jax.random.fold_in(key, 1), self.steps)
            self.state, total = self.run_epoch(self.state, self.images, self.labels, idxs, keys)
            return float(total) / self.n
        losses = []
        for i in range(self.steps):
            k = jax.random.fold_in(key, i + 1)
            self.state, m = self.trainer.train_step(self.state, self.images, self.labels,
                                                    self.trainer.place_batch(order[i * b:(i + 1) * b]), k, 1.0)
            losses.append(m["loss"])
        return float(sum(losses)) / self.n  # one sync per epoch, as vae_jax.train does

    def flops_per_sample(self):
        jax = self.jax
        idx = jax.numpy.arange(self.batch, dtype="int32")
        try:
            comp = self.trainer.train_step.lower(self.state, self.images, self.labels, idx,
                                                 jax.random.key(0), 1.0).compile()
            ca = comp.cost_analysis()
            if isinstance(ca, (list, tuple)):
                ca = ca[0]
            return float(ca["flops"]) / self.batch
        except Exception:  # noqa: BLE001 -- cost analysis is best effort
            return float("nan")


def model_flops_per_sample(name, x, y, a):
    """Training FLOPs per sample from XLA's cost analysis of the step in its plain form (every conv
    a lax convolution): the model's own arithmetic, the same for every variant. The sub-pixel
    form jax_step runs does more (zero taps) and would flatter its GFLOP/s."""
    try:
        return JaxVariant("jax_step_lax", name, x[:a.batch], y[:a.batch], a.batch, a.recon, 1).flops_per_sample()
    except Exception:  # noqa: BLE001 -- best effort
        return float("nan")


MLP_LAYERS = {"ae": [(784, 400), (400, 20), (20, 400), (400, 784)],
              "vae": [(784, 400), (400, 20), (400, 20), (20, 400), (400, 784)],
              "cvae": [(794, 400), (400, 20), (400, 20), (30, 400), (400, 784)]}


def analytic_flops_per_sample(name):
    """2 x MACs of the MLP models' dense layers x 3 (forward, input gradient, weight gradient),
    less the input gradient of the first layer (its input is data)."""
    layers = MLP_LAYERS.get(name)
    return None if layers is None else 6.0 * sum(a * b for a, b in layers) - 2.0 * layers[0][0] * layers[0][1]


def mlp_step_bound(name, batch, repeats=5, n=200):
    """What a training step of an MLP model cannot beat on this machine: the time of its matmuls
    alone (forward, input and weight gradients of every dense layer at this batch, one jit) plus
    the time of its Adam update alone (the same parameter count, one jit). Milliseconds each."""
    import jax
    import jax.numpy as jnp
    import optax

    layers = MLP_LAYERS[name]
    key = jax.random.key(0)
    rnd = lambda i, shape: jax.random.normal(jax.random.fold_in(key, i), shape)  # noqa: E731
    ws = [rnd(i, d) for i, d in enumerate(layers)]
    xs = [rnd(100 + i, (batch, d[0])) for i, d in enumerate(layers)]
    gs = [rnd(200 + i, (batch, d[1])) for i, d in enumerate(layers)]

    @jax.jit
    def dots(ws, xs, gs):
        out = [x @ w for w, x in zip(ws, xs)] + [x.T @ g for x, g in zip(xs, gs)]
        return out + [g @ w.T for w, g in list(zip(ws, gs))[1:]]  # no input gradient for the data

    params = {"w": ws, "b": [jnp.zeros(d[1]) for d in layers]}
    tx = optax.adam(1e-3)

    @jax.jit
    def adam(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    best_ms = lambda f, *args: 1e3 * best_seconds(f, *args, repeats=repeats, n=n)  # noqa: E731
    return {"matmuls_ms": best_ms(dots, ws, xs, gs), "adam_ms": best_ms(adam, params, tx.init(params), params),
            "params": int(sum(v.size for v in jax.tree.leaves(params)))}


def best_seconds(f, *args, repeats=5, n=1):
    """Best over `repeats` of the mean time of n calls f(*args), after one warm-up call (numpy or jax)."""
    import jax

    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            r = f(*args)
        jax.block_until_ready(r)
        ts.append((time.perf_counter() - t0) / n)
    return min(ts)


# ----------------------------------------------------------------------------- peak

def sgemm_peak(n=2048, repeats=5):
    import jax
    import jax.numpy as jnp
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    out = {"numpy_gflops": 2 * n ** 3 / best_seconds(np.matmul, a, b, repeats=repeats) / 1e9,
           "jax_gflops": 2 * n ** 3 / best_seconds(jax.jit(jnp.matmul), jnp.asarray(a), jnp.asarray(b),
                                                   repeats=repeats) / 1e9}
    out["peak_gflops"] = max(out["numpy_gflops"], out["jax_gflops"])
    return out


# ----------------------------------------------------------------------------- main

def bench_model(name, a, log):
    shape = IMAGE_SHAPE.get(name, (28, 28, 1))
    steps = a.steps_celeba if name == "celeba_vae" else a.steps
    n = steps * a.batch
    rng = np.random.default_rng(0)
    x = rng.random((n, *shape), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    res = {"model": name, "image_shape": list(shape), "steps": steps, "variants": {}}
    runners = {}
    skip = {"jax_scan"} if name not in MLP_MODELS else {"jax_step_lax"}
    variants = [v for v in a.variants if not (a.default_variants and v in skip)]
    for v in variants:
        r = {"status": "ok"}
        res["variants"][v] = r
        rss0 = rss_mb()
        try:
            if v.startswith("torch"):
                runners[v] = TorchVariant(v, name, x_nchw, y, a.batch, a.recon, a.num_workers)
                runners[v]._recon = a.recon
            else:
                runners[v] = JaxVariant(v, name, x, y, a.batch, a.recon, steps)
            t0 = time.perf_counter()
            runners[v].epoch()
            r["warmup_s"] = time.perf_counter() - t0
            r["rss_delta_mb"] = rss_mb() - rss0
            log(f"  {name:11s} {v:14s} warm-up {r['warmup_s']:.2f}s")
        except Exception as e:  # noqa: BLE001 -- e.g. torch.compile without a working compiler
            r["status"] = "error"
            r["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            log(f"  {name:11s} {v:14s} FAILED: {r['error']}")
            if a.verbose:
                traceback.print_exc()
            runners.pop(v, None)
        r["times_s"] = []
    for rep in range(a.repeats):
        for v, runner in runners.items():  # alternate the variants
            t0 = time.perf_counter()
            runner.epoch()
            res["variants"][v]["times_s"].append(time.perf_counter() - t0)
    for v, r in res["variants"].items():
        if r["status"] == "ok" and r["times_s"]:
            med = statistics.median(r["times_s"])
            r["median_epoch_s"] = med
            r["samples_per_s"] = n / med
            r["ms_per_step"] = med / steps * 1e3
    res["flops_per_sample_xla"] = model_flops_per_sample(name, x, y, a)
    res["flops_per_sample_analytic"] = analytic_flops_per_sample(name)
    if name == "vae":
        res["step_bound"] = mlp_step_bound(name, a.batch)
    return res


def fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def markdown(report):
    m = report["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cpus']} CPUs; torch {m['torch']} ({m['torch_threads']} threads), "
             f"jax {m['jax']} ({m['jax_backend']}, XLA:CPU uses all cores); batch {report['batch']}, "
             f"{report['steps']} steps ({report['steps_celeba']} for celeba_vae) x {report['repeats']} repeats (median), DataLoader num_workers="
             f"{report['num_workers']}, loss {report['recon']}.",
             f"fp32 sgemm 2048^3 peak: numpy {m['numpy_gflops']:.1f} GFLOP/s, jax {m['jax_gflops']:.1f} GFLOP/s.",
             "", "| model | variant | samples/s | ms/step | vs torch_loader | warm-up s | RSS +MB | GFLOP/s | % peak |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for res in report["results"]:
        base = res["variants"].get("torch_loader", {}).get("samples_per_s")
        fps = res.get("flops_per_sample_xla")
        for v, r in res["variants"].items():
            if r["status"] != "ok":
                lines.append(f"| {res['model']} | {v} | failed: {r['error'][:80]} | | | | | | |")
                continue
            sps = r.get("samples_per_s")
            gf = sps * fps / 1e9 if (sps and fps and np.isfinite(fps)) else None
            pct = 100 * gf / m["peak_gflops"] if gf else None
            rel = f"{sps / base:.2f}x" if (sps and base) else "-"
            lines.append(f"| {res['model']} | {v} | {fmt(sps, '.0f')} | {fmt(r.get('ms_per_step'), '.2f')} | "
                         f"{rel} | {fmt(r.get('warmup_s'), '.2f')} | {fmt(r.get('rss_delta_mb'), '.0f')} | "
                         f"{fmt(gf, '.1f')} | {fmt(pct, '.1f')} |")
    lines += ["", "| model | train FLOPs/sample (XLA cost analysis) | analytic (dense layers) |", "|---|---:|---:|"]
    for res in report["results"]:
        lines.append(f"| {res['model']} | {fmt(res.get('flops_per_sample_xla'), '.3g')} | "
                     f"{fmt(res.get('flops_per_sample_analytic'), '.3g')} |")
    vae = next((r for r in report["results"] if r["model"] == "vae"), None)
    if vae:
        fps = vae.get("flops_per_sample_xla") or vae.get("flops_per_sample_analytic")
        for v in ("jax_step", "jax_scan"):
            sps = vae["variants"].get(v, {}).get("samples_per_s")
            if sps and fps:
                lines.append(f"\nMLP VAE, {v}: {sps * fps / 1e9:.1f} GFLOP/s = "
                             f"{100 * sps * fps / 1e9 / m['peak_gflops']:.1f}% of the sgemm peak.")
        bound = vae.get("step_bound")
        if bound and fps:
            ms = bound["matmuls_ms"] + bound["adam_ms"]
            gf = report["batch"] * fps / ms / 1e6
            lines.append(f"\nMLP VAE bound at batch {report['batch']}: its matmuls alone take {bound['matmuls_ms']:.2f} ms, "
                         f"its Adam update alone ({bound['params']} parameters) {bound['adam_ms']:.2f} ms: a step of "
                         f"{ms:.2f} ms = {gf:.1f} GFLOP/s = {100 * gf / m['peak_gflops']:.1f}% of the sgemm peak "
                         "is the most it can reach.")
    lines += ["", "Speed targets (ratios from this run; best JAX variant against torch.compile):", "",
              "| model | best JAX | samples/s | torch_compile samples/s | ratio | target | met |", "|---|---|---:|---:|---:|---:|---|"]
    for res in report["results"]:
        want = TARGETS.get(res["model"])
        jx = {v: r.get("samples_per_s") for v, r in res["variants"].items() if v.startswith("jax") and r.get("samples_per_s")}
        tc = res["variants"].get("torch_compile", {}).get("samples_per_s")
        if not (want and jx and tc):
            continue
        best = max(jx, key=jx.get)
        ratio = jx[best] / tc
        lines.append(f"| {res['model']} | {best} | {jx[best]:.0f} | {tc:.0f} | {ratio:.2f}x | >= {want:.1f}x | "
                     f"{'yes' if ratio >= want else 'NO'} |")
        if res["model"] == "vae":
            fps = res.get("flops_per_sample_xla") or res.get("flops_per_sample_analytic")
            pct = 100 * jx[best] * fps / 1e9 / m["peak_gflops"]
            lines.append(f"| vae | {best} | | | {pct:.1f}% of peak | >= 75% | {'yes' if pct >= 75 else 'NO'} |")
    lines.append(f"\nProcess peak RSS: {report['peak_rss_mb']:.0f} MB (all variants in one process).")
    return "\n".join(lines)


def plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = [r["model"] for r in report["results"]]
    variants = [v for v in VARIANTS if any(v in r["variants"] for r in report["results"])]
    w = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(1.8 * len(models) + 3, 4.5))
    for i, v in enumerate(variants):
        vals = [r["variants"].get(v, {}).get("samples_per_s") or 0 for r in report["results"]]
        ax.bar(np.arange(len(models)) + (i - (len(variants) - 1) / 2) * w, vals, w, label=v)
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_yscale("log")
    ax.set_ylabel("training samples / s (log)")
    ax.set_title(f"Training throughput, batch {report['batch']}, {report['machine']['cpus']} CPUs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(ALL_MODELS))
    ap.add_argument("--variants", default="default",
                    help="comma-separated subset of " + ",".join(VARIANTS) + "; 'default': all but jax_dp, with jax_scan "
                         "for the MLP models only and jax_step_lax for the conv models only; 'all': every "
                         "variant for every model")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50, help="steps per timed epoch")
    ap.add_argument("--steps-celeba", type=int, default=10, help="steps per timed epoch for celeba_vae (64x64 RGB)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (XLA:CPU: all cores)")
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for torch_loader")
    ap.add_argument("--recon", default="bce_logits", choices=["bce", "bce_logits", "gaussian"])
    ap.add_argument("--out-json")
    ap.add_argument("--out-md")
    ap.add_argument("--out-png")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--from-json", help="re-render --out-md/--out-png from an earlier --out-json; runs nothing")
    a = ap.parse_args(argv)
    a.models = [m for m in a.models.split(",") if m]
    a.default_variants = a.variants == "default"
    if a.default_variants:
        a.variants = [v for v in VARIANTS if v != "jax_dp"]
    elif a.variants == "all":
        a.variants = VARIANTS
    else:
        a.variants = [v for v in a.variants.split(",") if v]
    for m in a.models:
        if m not in ALL_MODELS:
            ap.error(f"unknown model {m!r}: use {', '.join(ALL_MODELS)}")
    for v in a.variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}: use {', '.join(VARIANTS)}")

    if a.from_json:
        with open(a.from_json) as f:
            report = json.load(f)
        return write_outputs(report, a)
    if "jax_dp" in a.variants and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +  # before JAX starts
                                   f" --xla_force_host_platform_device_count={HOST_DEVICES}").strip()
    import jax
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    peak = sgemm_peak()
    log(f"sgemm peak: {peak}")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    report = {"batch": a.batch, "steps": a.steps, "steps_celeba": a.steps_celeba, "repeats": a.repeats, "num_workers": a.num_workers,
              "recon": a.recon,
              "machine": {"cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__,
                          "torch_threads": torch.get_num_threads(), "jax": jax.__version__,
                          "jax_backend": jax.default_backend(), **peak},
              "results": []}
    for name in a.models:
        log(f"{name}:")
        report["results"].append(bench_model(name, a, log))
    report["peak_rss_mb"] = peak_rss_mb()
    write_outputs(report, a)


def write_outputs(report, a):
    text = markdown(report)
    print(text)
    if a.out_md:
        with open(a.out_md, "w") as f:
            f.write(text + "\n")
    if a.out_json:
        with open(a.out_json, "w") as f:
            json.dump(report, f, indent=1)
    if a.out_png:
        plot(report, a.out_png)


if __name__ == "__main__":
    main()
