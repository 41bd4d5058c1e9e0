"""Time `vae-jax train`'s step of one model in this process (for comparing XLA_FLAGS, which XLA reads
at start-up, so each setting is its own process; `scripts/bench.py` is the side-by-side benchmark).

    python scripts/step_time.py celeba_vae
    XLA_FLAGS=--xla_cpu_experimental_xnn_fusion_type=eltwise,reduce python scripts/step_time.py celeba_vae
    python scripts/step_time.py conv_vae28 --form xla        # the XLA forms instead of the default
    python scripts/step_time.py celeba_vae --drop relu       # the step without its conv ReLUs
    python scripts/step_time.py vae --steps 128 --steps-per-call 32 --profile 20   # as `vae-jax train` runs it

--profile N also traces one more epoch with jax.profiler and prints the N ops with the most time per
step (summed by name) and the shares of oneDNN's calls (ffi_call), YNNPACK's fusions and XLA's own.

--drop relu / bias / relu,bias times a step that is NOT the model's: the ReLUs of the encoder and
decoder Sequentials replaced by the identity, or the conv layers' biases removed. Its time is an upper
bound on what fusing them into the oneDNN primitives (BN+ReLU, conv bias) could win.

--steps-per-call K dispatches K steps at a time (Trainer.train_steps, a lax.scan), as `vae-jax train`
does by default (32 for the MLP models, 8 for the conv models on oneDNN's kernels); 1 here by default.

Prints one line: the model, the conv form, K, XLA_FLAGS, min and median ms per step over --epochs
epochs of --steps steps (batch 128, random data on the device), after one warm-up epoch.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--form", choices=["default", "xla", "lax"], default="default")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps-per-call", type=int, default=1, metavar="K", help="K steps per dispatch (lax.scan)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print the N ops with most time")
    ap.add_argument("--drop", default="", help="relu, bias or relu,bias: leave them out (an upper bound)")
    a = ap.parse_args(argv)
    if a.steps_per_call < 1 or a.steps % a.steps_per_call:
        ap.error(f"--steps {a.steps} is not a multiple of --steps-per-call {a.steps_per_call}")

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vae_jax import layers, models
    from vae_jax import train as T

    shape = (64, 64, 3) if a.model == "celeba_vae" else (28, 28, 1)
    x = np.random.default_rng(0).random((a.steps * a.batch, *shape), dtype=np.float32)
    cfg = T.Config(model=a.model, batch_size=a.batch, progress=False, checkpoint=False, figures=False)
    forms = {"xla": layers.DEFAULT_CONV_FORM, "lax": layers.ConvForm(tconv="lax", conv="lax")}
    kw = {"conv_form": forms[a.form]} if a.form != "default" and a.model.startswith(("conv", "celeba")) else {}
    net = models.REGISTRY[a.model].build(cfg, shape, rngs=nnx.Rngs(0), **kw)
    drop(net, set(filter(None, a.drop.split(","))))
    trainer = T.Trainer(net, cfg)
    state, images, labels = trainer.init_state, jnp.asarray(x), jnp.zeros((x.shape[0],), jnp.int32)

    def epoch():
        nonlocal state
        t0, losses, k = time.perf_counter(), [], a.steps_per_call
        for i in range(0, a.steps, k):
            idx = jnp.arange(i * a.batch, (i + k) * a.batch, dtype=jnp.int32)
            if k == 1:
                state, m = trainer.train_step(state, images, labels, idx, jax.random.key(i), 1.0)
            else:  # as `vae-jax train --steps-per-call K` runs them
                state, m = trainer.train_steps(state, images, labels, idx.reshape(k, -1), jax.random.key(0), i, 1.0)
            losses.append(m["loss"])
        jax.block_until_ready(losses)
        return (time.perf_counter() - t0) / a.steps * 1e3

    epoch()
    times = [epoch() for _ in range(a.epochs)]
    print(
        f"{a.model} form={a.form} K={a.steps_per_call}{' drop=' + a.drop if a.drop else ''} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}: "
        f"ms/step min {min(times):.1f} median {statistics.median(times):.1f}"
    )
    if a.profile:
        with tempfile.TemporaryDirectory() as folder:
            jax.profiler.start_trace(folder)
            epoch()
            jax.profiler.stop_trace()
            print_profile(folder, a.steps, a.profile)


def print_profile(folder, steps, top):
    """Op time per step from the trace in `folder`: the `top` ops by name, then the shares by kind."""
    trace = sorted(Path(folder).glob("**/*.trace.json.gz"))[-1]
    events = json.load(gzip.open(trace))
    events = events["traceEvents"] if isinstance(events, dict) else events
    ops = collections.Counter()
    for e in events:  # the ops XLA ran; not the Python frames ($...), the runtime's or the dispatch's
        name = e.get("name", "")
        if e.get("ph") == "X" and "dur" in e and not name.startswith(("$", "Thunk", "Pjit")) and "::" not in name:
            ops[name] += e["dur"] / 1e3 / steps
    for name, ms in ops.most_common(top):
        print(f"{ms:9.2f} ms/step  {name}")
    kinds = collections.Counter()
    for name, ms in ops.items():
        kinds[
            "oneDNN (ffi_call)" if name.startswith("ffi_call") else "YNNPACK" if name.startswith("ynn") else "XLA"
        ] += ms
    total = sum(kinds.values())
    print("  ".join(f"{k} {v:.1f} ms ({100 * v / total:.0f} %)" for k, v in kinds.most_common()))


def drop(net, what):
    """Leave out the ReLUs of net's Sequentials ('relu') and its conv layers' biases ('bias')."""
    import jax
    from flax import nnx

    if what - {"relu", "bias"}:
        raise SystemExit(f"--drop takes relu and/or bias, got {sorted(what)}")
    for _, mod in nnx.iter_modules(net):
        if not isinstance(mod, nnx.Sequential):
            continue
        for i, layer in enumerate(mod.layers):
            if "relu" in what and layer is jax.nn.relu:
                mod.layers[i] = lambda h: h
            if "bias" in what and isinstance(layer, (nnx.Conv, nnx.ConvTranspose)):
                layer.bias = None


if __name__ == "__main__":
    main()
