"""Training throughput of every model, PyTorch (the chapter's code) and JAX side by side.

Variants, alternated inside one process (each repeat runs every variant once, in turn):
  torch_loader   the chapter's loop: vae_torch_ref.train.train_epoch_general over a DataLoader
                 of a TensorDataset (batch --batch, shuffle=True, num_workers=--num-workers),
                 one .item() per loss per step as in the chapter
  torch_tight    the same model/loss/Adam step over tensors shuffled before the timer starts,
                 no DataLoader, no per-step .item()
  torch_compile  torch_tight with the forward+loss compiled by torch.compile (inductor); the
                 backward runs through AOTAutograd's compiled graph, Adam is eager
  jax_step       THE TRAIN PATH: vae_jax.train.Trainer.train_step on the model as `vae-jax train`
                 builds it (one jit call per step, data on device, batches gathered by index inside
                 the step). Its conv models use vae_jax.layers.default_conv_form(): oneDNN's kernels
                 ("onednn") when the optional library is built, XLA's forms ("xla") otherwise; the
                 report records which. The speed targets are judged on this variant only.
  jax_step_xla   jax_step with the conv models built with layers.DEFAULT_CONV_FORM (XLA's sub-pixel /
                 space-to-depth forms, the fallback when oneDNN is not built). Conv models only, and
                 only when the default form is oneDNN's (otherwise it is jax_step itself)
  jax_step_lax   jax_step with every conv layer in XLA's plain strided/transposed-conv form
                 (layers.ConvForm(tconv="lax", conv="lax")); conv models only
  jax_scan       the same step inside one jitted lax.scan over the whole epoch; MLP models only
                 (XLA:CPU runs the conv models' convolutions much slower inside a loop body)
  jax_dp         jax_step data-parallel over one XLA host device per core (`vae-jax train
                 --devices N`; the script sets --xla_force_host_platform_device_count to the core
                 count before JAX starts): same global batch, same result up to summation order.
                 Opt-in (--variants): XLA:CPU's all-reduce rendezvous has timed out on a loaded
                 machine
The "only" restrictions above are those of --variants default; --variants all runs every variant
for every model.

One "repeat" is one epoch of --steps steps over random data (uniform [0, 1]; 28x28x1 for the
MNIST models, 64x64x3 for celeba_vae; random labels for cvae). Each variant's first epoch is its
warm-up (compilation included; "warm-up s"), then --repeats timed epochs (at least 5 unless
--allow-few-repeats). Reported per variant: ms/step and samples/s from the minimum and from the
median epoch time, and the spread (max - min) / median of the epoch times; the JSON keeps every
time. Loss: --recon for both frameworks (default bce_logits, the project's default; the chapter's
is 'bce').

Speed targets (TARGETS), from the medians, with the ratio of the minima alongside: jax_step against
the best PyTorch variant (highest median samples/s of torch_*) for conv_vae28 and celeba_vae
(>= 1.0x), against torch_compile for vae (>= 1.5x). Every model's two ratios are reported.

Load. Other work on the machine skews the comparison (torch's OpenMP threads degrade far more
under contention than XLA:CPU does), so the script records the 1/5/15-min load average before and
after the run, and the CPU time other processes used during the timed epochs ("foreign CPU", in
cores: the machine's busy time in /proc/stat less this process's own user+system time, children
included, from os.times(), over the timed wall time). The machine counts as BUSY when the 1-min
load average before the run exceeds LOAD_PER_CORE x the core count (0.5 on 2 cores), or the
foreign CPU exceeds FOREIGN_CORES (0.25) cores on average. The load after the run includes the
benchmark itself and is recorded only. The foreign CPU comes from two kernel accounts in clock
ticks: over a timed part of a second or two it is good to about +-0.2 cores (a small negative
value is that noise), over a full run's minutes to a few hundredths. A busy run, a run with fewer
than 5 repeats, and a report without load data (an older JSON) judge no target: their rows say
"not judged (...)", and a busy run warns on stderr and at the top of the markdown.

Also reported: the machine's fp32 matmul peak (2048x2048 sgemm, numpy and jax, best of both),
training FLOPs per sample from XLA's cost analysis of the step with every conv in its plain lax
form (and analytically, 3 x 2 x forward MACs, for the MLP models), the fraction of that peak each
variant reaches, torch's thread count (XLA:CPU uses every core), and the process's RSS.

  python scripts/bench.py --out-json bench.json --out-md bench.md --out-png bench.png
  python scripts/bench.py --models vae,conv_vae28 --steps 50 --threads 2
  python scripts/bench.py --from-json bench.json --out-md bench.md --out-png bench.png
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

ALL_MODELS = ["ae", "vae", "conv_vae28", "celeba_vae", "cvae"]
VARIANTS = [
    "torch_loader",
    "torch_tight",
    "torch_compile",
    "jax_step",
    "jax_step_xla",
    "jax_step_lax",
    "jax_scan",
    "jax_dp",
]
TRAIN_VARIANT = "jax_step"  # what `vae-jax train` runs; the targets are judged on it
TRAIN_LABEL = "jax_step (vae-jax train)"
HOST_DEVICES = os.cpu_count() or 1  # jax_dp: one XLA:CPU device per core
MLP_MODELS = {"ae", "vae", "cvae"}  # no conv layers: jax_scan by default; no jax_step_xla/_lax
IMAGE_SHAPE = {"celeba_vae": (64, 64, 3)}  # default (28, 28, 1)
# model: (what jax_step is compared with, the least ratio of samples/s): "best torch" is the
# torch_* variant with the highest median samples/s.
TARGETS = {"vae": ("torch_compile", 1.5), "conv_vae28": ("best torch", 1.0), "celeba_vae": ("best torch", 1.0)}
MIN_REPEATS = 5
LOAD_PER_CORE = 0.25  # busy: 1-min load average before the run > LOAD_PER_CORE x cores (0.5 on 2 cores)
FOREIGN_CORES = 0.25  # busy: other processes used > FOREIGN_CORES cores on average while timing
BUSY_RULE = (
    f"busy when the 1-min load average before the run > {LOAD_PER_CORE} x cores, "
    f"or other processes' CPU during the timed epochs > {FOREIGN_CORES} cores on average"
)


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


# ----------------------------------------------------------------------------- load


def loadavg():
    """[1-min, 5-min, 15-min] load average, or None where the platform has none."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def cpu_snapshot():
    """(wall s, the machine's busy CPU s from /proc/stat, this process's CPU s incl. reaped children)
    -- or None without /proc/stat. Busy = user + nice + system + irq + softirq + steal."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[i] for i in (0, 1, 2, 5, 6, 7) if i < len(fields)) / os.sysconf("SC_CLK_TCK")
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system


def foreign_cpu(before, after):
    """(CPU seconds other processes used between two cpu_snapshot()s, wall seconds), or None."""
    if before is None or after is None:
        return None
    wall = after[0] - before[0]
    return (after[1] - before[1]) - (after[2] - before[2]), wall


def busy_state(load_before, foreign_cores, cpus):
    """(busy, reasons) by BUSY_RULE from the load average before the run ([1, 5, 15]-min, or None)
    and the other processes' mean CPU use while timing (cores, or None); None counts as quiet."""
    reasons = []
    if load_before is not None and load_before[0] > LOAD_PER_CORE * cpus:
        reasons.append(
            f"1-min load average before the run {load_before[0]:.2f} > {LOAD_PER_CORE} x {cpus} cores "
            f"= {LOAD_PER_CORE * cpus:.2f}"
        )
    if foreign_cores is not None and foreign_cores > FOREIGN_CORES:
        reasons.append(f"other processes used {foreign_cores:.2f} cores while timing (> {FOREIGN_CORES})")
    return bool(reasons), reasons


def not_judged(report):
    """Why the report's targets cannot be judged ([] when they can)."""
    why = []
    busy = report.get("busy")
    if busy is None:
        why.append("load not recorded")
    elif busy:
        why.append("machine busy")
    if not isinstance(report.get("repeats"), int) or report["repeats"] < MIN_REPEATS:
        why.append("too few repeats")
    return why


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
    conv_form = None

    def __init__(self, kind, name, x_nchw, y, batch, recon, num_workers):
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        torch.manual_seed(0)
        self.kind, self.name, self.batch, self.recon = kind, name, batch, recon
        self.model = torch_model(name)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        # standard NCHW strides (numpy's for a 1-channel transpose make torch pick channels_last)
        self.X = torch.from_numpy(x_nchw).clone(memory_format=torch.contiguous_format)
        self.Y = torch.from_numpy(y)
        self.loss = torch_loss_fn(name, self.model, recon)
        if kind == "torch_compile":
            self.loss = torch.compile(self.loss)
        if kind == "torch_loader":
            self.loader = DataLoader(
                TensorDataset(self.X, self.Y), batch_size=batch, shuffle=True, num_workers=num_workers
            )

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
            kw = dict(flatten=name in ("vae", "cvae"), conditional=name == "cvae", recon=self.recon)
            return train_epoch_general(self.model, self.loader, self.opt, "cpu", **kw)[0]
        self.model.train()
        perm = torch.randperm(self.X.shape[0])
        X, Y = self.X[perm], self.Y[perm]  # pre-shuffled (timed: one gather per epoch)
        total = torch.zeros(())
        for a in range(0, X.shape[0], self.batch):
            self.opt.zero_grad(set_to_none=True)
            losses = self.loss(X[a : a + self.batch], Y[a : a + self.batch])
            losses[0].backward()
            self.opt.step()
            total += losses[0].detach()
        return float(total) / X.shape[0]


# ----------------------------------------------------------------------------- jax


def conv_form_label(model):
    """Which form a model's k4 s2 convolutions compute in: "onednn" (oneDNN's kernels), "xla" (XLA's
    sub-pixel / space-to-depth forms, layers.DEFAULT_CONV_FORM), "xla-lax" (XLA's plain strided and
    transposed convolutions); None for a model without conv layers. Read from the built layers."""
    from flax import nnx

    from vae_jax import layers as L

    kinds = {type(node) for _, node in nnx.iter_graph(model)}
    if kinds & {L.OnednnConv, L.OnednnConvTranspose}:
        return "onednn"
    if kinds & {L.SpaceToDepthConv, L.SubPixelConvTranspose}:
        return "xla"
    if any(issubclass(k, (nnx.Conv, nnx.ConvTranspose)) for k in kinds):
        return "xla-lax"
    return None


class JaxVariant:
    def __init__(self, kind, name, x_nhwc, y, batch, recon, steps):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from vae_jax import layers as L
        from vae_jax import models as M
        from vae_jax import train as T

        self.jax, self.kind, self.batch, self.steps = jax, kind, batch, steps
        cfg = T.Config(model=name, recon=recon, batch_size=batch, progress=False, checkpoint=False, figures=False)
        forms = {"jax_step_xla": L.DEFAULT_CONV_FORM, "jax_step_lax": L.ConvForm(tconv="lax", conv="lax")}
        if kind in forms and name not in MLP_MODELS:
            model = M.REGISTRY[name].build(cfg, x_nhwc.shape[1:], rngs=nnx.Rngs(0), conv_form=forms[kind])
        else:  # as `vae-jax train` builds it (the default conv form)
            model = T.build_model(cfg, x_nhwc.shape[1:], rngs=nnx.Rngs(0))
        self.conv_form = conv_form_label(model)
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
            idx = self.trainer.place_batch(order[i * b : (i + 1) * b])
            self.state, m = self.trainer.train_step(self.state, self.images, self.labels, idx, k, 1.0)
            losses.append(m["loss"])
        return float(sum(losses)) / self.n  # one sync per epoch, as vae_jax.train does

    def flops_per_sample(self):
        jax = self.jax
        idx = jax.numpy.arange(self.batch, dtype="int32")
        try:
            comp = self.trainer.train_step.lower(
                self.state, self.images, self.labels, idx, jax.random.key(0), 1.0
            ).compile()
            ca = comp.cost_analysis()
            if isinstance(ca, (list, tuple)):
                ca = ca[0]
            return float(ca["flops"]) / self.batch
        except Exception:  # noqa: BLE001 -- cost analysis is best effort
            return float("nan")


def model_flops_per_sample(name, x, y, a):
    """Training FLOPs per sample from XLA's cost analysis of the step in its plain form (every conv
    a lax convolution): the model's own arithmetic, the same for every variant. The sub-pixel form
    does more (zero taps) and would flatter its GFLOP/s; oneDNN's calls are opaque to XLA."""
    try:
        return JaxVariant("jax_step_lax", name, x[: a.batch], y[: a.batch], a.batch, a.recon, 1).flops_per_sample()
    except Exception:  # noqa: BLE001 -- best effort
        return float("nan")


MLP_LAYERS = {
    "ae": [(784, 400), (400, 20), (20, 400), (400, 784)],
    "vae": [(784, 400), (400, 20), (400, 20), (20, 400), (400, 784)],
    "cvae": [(794, 400), (400, 20), (400, 20), (30, 400), (400, 784)],
}


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

    def rnd(i, shape):
        return jax.random.normal(jax.random.fold_in(key, i), shape)

    ws = [rnd(i, d) for i, d in enumerate(layers)]
    xs = [rnd(100 + i, (batch, d[0])) for i, d in enumerate(layers)]
    gs = [rnd(200 + i, (batch, d[1])) for i, d in enumerate(layers)]

    @jax.jit
    def dots(ws, xs, gs):
        out = [x @ w for w, x in zip(ws, xs, strict=True)] + [x.T @ g for x, g in zip(xs, gs, strict=True)]
        return out + [g @ w.T for w, g in list(zip(ws, gs, strict=True))[1:]]  # no input gradient for the data

    params = {"w": ws, "b": [jnp.zeros(d[1]) for d in layers]}
    tx = optax.adam(1e-3)

    @jax.jit
    def adam(p, s, g):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    def best_ms(f, *args):
        return 1e3 * best_seconds(f, *args, repeats=repeats, n=n)

    return {
        "matmuls_ms": best_ms(dots, ws, xs, gs),
        "adam_ms": best_ms(adam, params, tx.init(params), params),
        "params": int(sum(v.size for v in jax.tree.leaves(params))),
    }


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
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    out = {
        "numpy_gflops": 2 * n**3 / best_seconds(np.matmul, a, b, repeats=repeats) / 1e9,
        "jax_gflops": 2 * n**3 / best_seconds(jax.jit(jnp.matmul), ja, jb, repeats=repeats) / 1e9,
    }
    out["peak_gflops"] = max(out["numpy_gflops"], out["jax_gflops"])
    return out


# ----------------------------------------------------------------------------- statistics


def variant_stats(times_s, steps, batch):
    """Statistics of one variant's timed epochs (steps steps of batch samples each). "ms_per_step"
    and "samples_per_s" are from the median epoch time, "ms_per_step_min" and "samples_per_s_best"
    from the minimum, "samples_per_s_worst" from the maximum; spread_pct = (max - min) / median."""
    if not times_s:
        return {}
    n = steps * batch
    lo, med, hi = min(times_s), statistics.median(times_s), max(times_s)
    return {
        "min_epoch_s": lo,
        "median_epoch_s": med,
        "max_epoch_s": hi,
        "ms_per_step_min": lo / steps * 1e3,
        "ms_per_step": med / steps * 1e3,
        "samples_per_s_best": n / lo,
        "samples_per_s": n / med,
        "samples_per_s_worst": n / hi,
        "spread_pct": 100 * (hi - lo) / med,
    }


def stats_of(report, res, v):
    """variant_stats of variant v of a model's result, from its epoch times (older reports too);
    its stored numbers where it has no times; {} for a failed or missing variant."""
    r = res.get("variants", {}).get(v)
    if not r or r.get("status") != "ok":
        return {}
    steps, batch = res.get("steps") or report.get("steps"), report.get("batch")
    if r.get("times_s") and steps and batch:
        return variant_stats(r["times_s"], steps, batch)
    return {k: r[k] for k in ("ms_per_step", "samples_per_s", "median_epoch_s") if r.get(k) is not None}


def ratio(a, b):
    return a / b if (a and b) else None


def target_rows(report):
    """Per model: jax_step (the train path) against the best torch variant (highest median samples/s)
    and against torch_compile, from the medians and from the minima; the target (TARGETS) and
    whether it is met: "yes", "NO", "not judged (...)", or None for a model without a target."""
    why = not_judged(report)
    rows = []
    for res in report.get("results", []):
        name = res.get("model")
        st = {v: stats_of(report, res, v) for v in res.get("variants", {})}
        jx = st.get(TRAIN_VARIANT, {})
        torch_sps = {v: s["samples_per_s"] for v, s in st.items() if v.startswith("torch") and s.get("samples_per_s")}
        best = max(torch_sps, key=torch_sps.get) if torch_sps else None
        bt, tc = st.get(best, {}), st.get("torch_compile", {})
        row = {
            "model": name,
            "jax_step_samples_per_s": jx.get("samples_per_s"),
            "jax_step_conv_form": res.get("variants", {}).get(TRAIN_VARIANT, {}).get("conv_form"),
            "best_torch": best,
            "best_torch_samples_per_s": bt.get("samples_per_s"),
            "ratio_best_torch": ratio(jx.get("samples_per_s"), bt.get("samples_per_s")),
            "ratio_best_torch_min": ratio(jx.get("samples_per_s_best"), bt.get("samples_per_s_best")),
            "torch_compile_samples_per_s": tc.get("samples_per_s"),
            "ratio_torch_compile": ratio(jx.get("samples_per_s"), tc.get("samples_per_s")),
            "ratio_torch_compile_min": ratio(jx.get("samples_per_s_best"), tc.get("samples_per_s_best")),
            "target_vs": None,
            "target": None,
            "met": None,
        }
        if name in TARGETS:
            vs, want = TARGETS[name]
            got = row["ratio_torch_compile" if vs == "torch_compile" else "ratio_best_torch"]
            row["target_vs"], row["target"] = vs, want
            if why:
                row["met"] = f"not judged ({'; '.join(why)})"
            elif got is None:
                row["met"] = f"not judged (no {TRAIN_VARIANT} or {vs} result)"
            else:
                row["met"] = "yes" if got >= want else "NO"
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- run


def default_skips(name, onednn_default):
    """--variants default: the variants left out for a model, with the reason."""
    if name in MLP_MODELS:
        return dict.fromkeys(("jax_step_xla", "jax_step_lax"), "no conv layers")
    skip = {"jax_scan": "conv model (XLA:CPU runs its convolutions much slower inside a scan)"}
    if not onednn_default:
        skip["jax_step_xla"] = "the default conv form is XLA's already (oneDNN not built): jax_step runs it"
    return skip


def bench_model(name, a, log, onednn_default=False):
    shape = IMAGE_SHAPE.get(name, (28, 28, 1))
    steps = a.steps_celeba if name == "celeba_vae" else a.steps
    n = steps * a.batch
    rng = np.random.default_rng(0)
    x = rng.random((n, *shape), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    res = {"model": name, "image_shape": list(shape), "steps": steps, "variants": {}}
    runners = {}
    skips = default_skips(name, onednn_default) if a.default_variants else {}
    res["skipped"] = {v: why for v, why in skips.items() if v in a.variants}
    for v in a.variants:
        if v in skips:
            continue
        r = {"status": "ok"}
        res["variants"][v] = r
        rss0 = rss_mb()
        try:
            if v.startswith("torch"):
                runners[v] = TorchVariant(v, name, x_nchw, y, a.batch, a.recon, a.num_workers)
            else:
                runners[v] = JaxVariant(v, name, x, y, a.batch, a.recon, steps)
            r["conv_form"] = runners[v].conv_form
            t0 = time.perf_counter()
            runners[v].epoch()
            r["warmup_s"] = time.perf_counter() - t0
            r["rss_delta_mb"] = rss_mb() - rss0
            form = f" ({r['conv_form']})" if r["conv_form"] else ""
            log(f"  {name:11s} {v:14s} warm-up {r['warmup_s']:.2f}s{form}")
        except Exception as e:  # noqa: BLE001 -- e.g. torch.compile without a working compiler
            r["status"] = "error"
            msg = str(e).strip()
            r["error"] = f"{type(e).__name__}: {msg.splitlines()[0][:300] if msg else ''}"
            log(f"  {name:11s} {v:14s} FAILED: {r['error']}")
            if a.verbose:
                traceback.print_exc()
            runners.pop(v, None)
        r["times_s"] = []
    snap0 = cpu_snapshot()
    t0 = time.perf_counter()
    for _ in range(a.repeats):
        for v, runner in runners.items():  # alternate the variants
            t1 = time.perf_counter()
            runner.epoch()
            res["variants"][v]["times_s"].append(time.perf_counter() - t1)
    wall = time.perf_counter() - t0
    snap1 = cpu_snapshot()
    fc = foreign_cpu(snap0, snap1)
    res["timed_wall_s"] = wall
    res["foreign_cpu_s"] = fc[0] if fc else None
    res["own_cpu_s"] = snap1[2] - snap0[2] if fc else None
    if fc:
        log(f"  {name:11s} timed {wall:.1f}s; other processes used {fc[0] / max(wall, 1e-9):.2f} cores meanwhile")
    for r in res["variants"].values():
        if r["status"] == "ok":
            r.update(variant_stats(r["times_s"], steps, a.batch))
    res["flops_per_sample_xla"] = model_flops_per_sample(name, x, y, a)
    res["flops_per_sample_analytic"] = analytic_flops_per_sample(name)
    if name == "vae":
        res["step_bound"] = mlp_step_bound(name, a.batch)
    return res


# ----------------------------------------------------------------------------- report


def fmt(v, spec):
    return "-" if not isinstance(v, (int, float)) or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def fmt_load(load):
    return "/".join(fmt(v, ".2f") for v in load) if load else "-"


def load_summary(report):
    """One line on the load: the state, the load averages and the foreign CPU."""
    load = report.get("load") or {}
    busy = report.get("busy")
    state = "load not recorded" if busy is None else ("MACHINE BUSY, not a benchmark" if busy else "quiet")
    return (
        f"{state}: load avg 1/5/15 min before {fmt_load(load.get('before'))}, "
        f"after {fmt_load(load.get('after'))}; other processes {fmt(load.get('foreign_cpu_cores'), '.2f')} cores"
    )


def warnings_for(report):
    """The report's warning lines (markdown top; stderr)."""
    out = []
    if report.get("busy"):
        reasons = "; ".join(report.get("busy_reasons") or []) or "see the load line"
        out.append(
            f"WARNING: MACHINE BUSY ({reasons}). Other work skews the comparison (torch's threads degrade "
            "more under contention than XLA:CPU): these timings are not a benchmark and no target is judged."
        )
    repeats = report.get("repeats")
    if not isinstance(repeats, int) or repeats < MIN_REPEATS:
        out.append(f"WARNING: too few repeats to judge ({fmt(repeats, 'd')} < {MIN_REPEATS}); no target is judged.")
    if report.get("busy") is None:
        out.append("Note: this report has no load record (an older bench.py); no target is judged.")
    return out


def variant_label(v):
    return TRAIN_LABEL if v == TRAIN_VARIANT else v


def markdown(report):
    m = report.get("machine", {})
    peak = m.get("peak_gflops")
    lines = [f"**{w}**" for w in warnings_for(report)]
    if lines:
        lines.append("")
    lines += [
        f"Machine: {m.get('cpu', '-')}, {fmt(m.get('cpus'), 'd')} CPUs; torch {m.get('torch', '-')} "
        f"({fmt(m.get('torch_threads'), 'd')} threads), jax {m.get('jax', '-')} ({m.get('jax_backend', '-')}, "
        f"XLA:CPU uses all cores; default conv form {m.get('default_conv_form', '-')}); batch "
        f"{report.get('batch', '-')}, {report.get('steps', '-')} steps ({report.get('steps_celeba', '-')} for "
        f"celeba_vae) x {report.get('repeats', '-')} repeats, DataLoader num_workers={report.get('num_workers', '-')}, "
        f"loss {report.get('recon', '-')}.",
        f"Load: {load_summary(report)} ({BUSY_RULE}).",
        f"fp32 sgemm 2048^3 peak: numpy {fmt(m.get('numpy_gflops'), '.1f')} GFLOP/s, "
        f"jax {fmt(m.get('jax_gflops'), '.1f')} GFLOP/s.",
        "",
        f"{TRAIN_VARIANT} is the path `vae-jax train` runs; samples/s and ms/step from the median epoch "
        '("best": from the fastest), spread = (max - min) / median of the epoch times.',
        "",
        "| model | variant | conv form | samples/s | best samples/s | ms/step | min ms/step | spread % "
        "| vs torch_loader | warm-up s | RSS +MB | GFLOP/s | % peak |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in report.get("results", []):
        base = stats_of(report, res, "torch_loader").get("samples_per_s")
        fps = res.get("flops_per_sample_xla")
        for v, r in res.get("variants", {}).items():
            label = variant_label(v)
            if r.get("status") != "ok":
                lines.append(f"| {res['model']} | {label} | failed: {str(r.get('error', '-'))[:80]} |" + " |" * 10)
                continue
            s = stats_of(report, res, v)
            sps = s.get("samples_per_s")
            gf = sps * fps / 1e9 if (sps and isinstance(fps, float) and np.isfinite(fps)) else None
            pct = 100 * gf / peak if (gf and peak) else None
            rel = ratio(sps, base)
            lines.append(
                f"| {res['model']} | {label} | {r.get('conv_form') or '-'} | {fmt(sps, '.0f')} | "
                f"{fmt(s.get('samples_per_s_best'), '.0f')} | {fmt(s.get('ms_per_step'), '.2f')} | "
                f"{fmt(s.get('ms_per_step_min'), '.2f')} | {fmt(s.get('spread_pct'), '.0f')} | "
                f"{fmt(rel, '.2f')}{'x' if rel else ''} | {fmt(r.get('warmup_s'), '.2f')} | "
                f"{fmt(r.get('rss_delta_mb'), '.0f')} | {fmt(gf, '.1f')} | {fmt(pct, '.1f')} |"
            )
    for res in report.get("results", []):
        for v, why in (res.get("skipped") or {}).items():
            lines.append(f"\n{res['model']}: {v} not run ({why}).")
    lines += ["", "| model | train FLOPs/sample (XLA cost analysis) | analytic (dense layers) |", "|---|---:|---:|"]
    for res in report.get("results", []):
        lines.append(
            f"| {res['model']} | {fmt(res.get('flops_per_sample_xla'), '.3g')} | "
            f"{fmt(res.get('flops_per_sample_analytic'), '.3g')} |"
        )
    vae = next((r for r in report.get("results", []) if r.get("model") == "vae"), None)
    if vae and peak:
        fps = vae.get("flops_per_sample_xla") or vae.get("flops_per_sample_analytic")
        for v in (TRAIN_VARIANT, "jax_scan"):
            sps = stats_of(report, vae, v).get("samples_per_s")
            if sps and fps:
                lines.append(
                    f"\nMLP VAE, {variant_label(v)}: {sps * fps / 1e9:.1f} GFLOP/s = "
                    f"{100 * sps * fps / 1e9 / peak:.1f}% of the sgemm peak."
                )
        bound = vae.get("step_bound")
        if bound and fps:
            ms = bound["matmuls_ms"] + bound["adam_ms"]
            gf = report["batch"] * fps / ms / 1e6
            lines.append(
                f"\nMLP VAE bound at batch {report['batch']}: its matmuls alone take {bound['matmuls_ms']:.2f} ms, "
                f"its Adam update alone ({bound['params']} parameters) {bound['adam_ms']:.2f} ms: a step of "
                f"{ms:.2f} ms = {gf:.1f} GFLOP/s = {100 * gf / peak:.1f}% of the sgemm peak is the most it can reach."
            )
    lines += [
        "",
        f"Speed targets: {TRAIN_LABEL} against the best PyTorch variant (highest median samples/s) and against "
        "torch_compile; ratios of median samples/s, of the fastest epochs in brackets.",
        "",
        "| model | jax_step samples/s | conv form | best torch | samples/s | ratio | torch_compile samples/s "
        "| ratio | target | met |",
        "|---|---:|---|---|---:|---:|---:|---:|---|---|",
    ]

    def ratios(row, key):
        return f"{fmt(row[key], '.2f')}x ({fmt(row[key + '_min'], '.2f')}x)" if row[key] else "-"

    for row in target_rows(report):
        target = f">= {row['target']:.1f}x {row['target_vs']}" if row["target"] else "-"
        lines.append(
            f"| {row['model']} | {fmt(row['jax_step_samples_per_s'], '.0f')} | {row['jax_step_conv_form'] or '-'} | "
            f"{row['best_torch'] or '-'} | {fmt(row['best_torch_samples_per_s'], '.0f')} | "
            f"{ratios(row, 'ratio_best_torch')} | {fmt(row['torch_compile_samples_per_s'], '.0f')} | "
            f"{ratios(row, 'ratio_torch_compile')} | {target} | {row['met'] or '-'} |"
        )
    lines.append(f"\nProcess peak RSS: {fmt(report.get('peak_rss_mb'), '.0f')} MB (all variants in one process).")
    return "\n".join(lines)


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report.get("results", [])
    models = [r["model"] for r in results]
    variants = [v for v in VARIANTS if any(v in r.get("variants", {}) for r in results)]
    w = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.35 * len(models) * len(variants) + 3), 5.5))
    lowest = None
    for i, v in enumerate(variants):
        xs, med, lo, hi = [], [], [], []
        for j, res in enumerate(results):
            s = stats_of(report, res, v)
            if s.get("samples_per_s"):
                xs.append(j + (i - (len(variants) - 1) / 2) * w)
                med.append(s["samples_per_s"])
                lo.append(s.get("samples_per_s_worst", s["samples_per_s"]))
                hi.append(s.get("samples_per_s_best", s["samples_per_s"]))
        if not xs:
            continue
        train = v == TRAIN_VARIANT
        err = [np.subtract(med, lo), np.subtract(hi, med)]
        ax.bar(
            xs,
            med,
            w,
            yerr=err,
            capsize=2,
            ecolor="0.25",
            label=variant_label(v),
            hatch="///" if train else None,
            edgecolor="black" if train else None,
        )
        for x, m_, lo_ in zip(xs, med, lo, strict=True):
            ax.text(
                x,
                lo_ * 0.92,
                f"{m_:.0f}",
                rotation=90,
                ha="center",
                va="top",
                fontsize=6,
                bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0.5),
            )
        lowest = min(lo) if lowest is None else min(lowest, min(lo))
    ax.set_xticks(np.arange(len(models)), models)
    if lowest:
        ax.set_yscale("log")
        ax.set_ylim(bottom=lowest / 4)
    ax.set_ylabel("training samples / s (median; bars: min..max epoch; log)")
    m = report.get("machine", {})
    ax.set_title(
        f"Training throughput, batch {report.get('batch', '-')}, {fmt(m.get('cpus'), 'd')} CPUs, "
        f"{report.get('repeats', '-')} repeats\n{load_summary(report)}",
        fontsize=9,
        color="red" if report.get("busy") or report.get("busy") is None else "black",
    )
    ax.legend(fontsize=7, ncol=min(len(variants), 4) or 1, loc="upper center", bbox_to_anchor=(0.5, -0.07))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def emit(text, report, a):
    """A report's markdown to stdout and to --out-md, the report to --out-json (every benchmark script)."""
    print(text)
    if a.out_md:
        with open(a.out_md, "w") as f:
            f.write(text + "\n")
    if a.out_json:
        with open(a.out_json, "w") as f:
            json.dump(report, f, indent=1)


def write_outputs(report, a):
    report["targets"] = target_rows(report)
    emit(markdown(report), report, a)
    if a.out_png:
        plot(report, a.out_png)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(ALL_MODELS))
    ap.add_argument(
        "--variants",
        default="default",
        help="comma-separated subset of " + ",".join(VARIANTS) + "; 'default': all but jax_dp, jax_scan for the "
        "MLP models only, jax_step_lax and jax_step_xla for the conv models only (jax_step_xla only when the "
        "default conv form is oneDNN's); 'all': every variant for every model",
    )
    ap.add_argument("--repeats", type=int, default=MIN_REPEATS, help=f"timed epochs per variant (>= {MIN_REPEATS})")
    ap.add_argument(
        "--allow-few-repeats",
        action="store_true",
        help=f"allow --repeats < {MIN_REPEATS} (the report then judges no target)",
    )
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
        a.variants = list(VARIANTS)
    else:
        a.variants = [v for v in a.variants.split(",") if v]
    for m in a.models:
        if m not in ALL_MODELS:
            ap.error(f"unknown model {m!r}: use {', '.join(ALL_MODELS)}")
    for v in a.variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}: use {', '.join(VARIANTS)}")
    if not a.from_json:
        if a.repeats < 1 or a.steps < 1 or a.steps_celeba < 1 or a.batch < 1:
            ap.error("--repeats, --steps, --steps-celeba and --batch must be positive")
        if a.repeats < MIN_REPEATS and not a.allow_few_repeats:
            ap.error(
                f"--repeats {a.repeats}: at least {MIN_REPEATS} are needed to judge the targets (the spread of a "
                "few epochs on a shared machine can exceed the margins); pass --allow-few-repeats to run anyway"
            )
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.from_json:
        with open(a.from_json) as f:
            report = json.load(f)
        return write_outputs(report, a)
    load_before = loadavg()
    cpus = os.cpu_count() or 1

    def log(s):
        print(s, file=sys.stderr, flush=True)

    busy, reasons = busy_state(load_before, None, cpus)
    if busy:
        log(f"WARNING: MACHINE BUSY before the run ({'; '.join(reasons)}): the timings will not be a benchmark.")
    if "jax_dp" in a.variants and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (  # before JAX starts
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={HOST_DEVICES}"
        ).strip()
    import jax
    import torch

    from vae_jax import layers as L

    if a.threads:
        torch.set_num_threads(a.threads)
    onednn_default = L.default_conv_form() == L.ONEDNN_CONV_FORM
    peak = sgemm_peak()
    log(f"sgemm peak: {peak}")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    report = {
        "batch": a.batch,
        "steps": a.steps,
        "steps_celeba": a.steps_celeba,
        "repeats": a.repeats,
        "num_workers": a.num_workers,
        "recon": a.recon,
        "machine": {
            "cpu": cpu,
            "cpus": cpus,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "jax": jax.__version__,
            "jax_backend": jax.default_backend(),
            "default_conv_form": "onednn" if onednn_default else "xla",
            **peak,
        },
        "results": [],
    }
    for name in a.models:
        log(f"{name}:")
        report["results"].append(bench_model(name, a, log, onednn_default))
    walls = [r["timed_wall_s"] for r in report["results"]]
    foreign = [r["foreign_cpu_s"] for r in report["results"]]
    foreign_cores = sum(foreign) / sum(walls) if (foreign and None not in foreign and sum(walls) > 0) else None
    busy, reasons = busy_state(load_before, foreign_cores, cpus)
    report["load"] = {
        "before": load_before,
        "after": loadavg(),
        "timed_wall_s": sum(walls),
        "foreign_cpu_s": None if foreign_cores is None else sum(foreign),
        "own_cpu_s": None if foreign_cores is None else sum(r["own_cpu_s"] for r in report["results"]),
        "foreign_cpu_cores": foreign_cores,
        "rule": BUSY_RULE,
    }
    report["busy"] = busy
    report["busy_reasons"] = reasons
    report["peak_rss_mb"] = peak_rss_mb()
    write_outputs(report, a)
    for w in warnings_for(report):
        log(w)


if __name__ == "__main__":
    main()
