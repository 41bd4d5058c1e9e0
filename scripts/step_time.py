"""Time `vae-jax train`'s step of one model in this process (for comparing XLA_FLAGS, which XLA reads
at start-up, so each setting is its own process; `scripts/bench.py` is the side-by-side benchmark).

    python scripts/step_time.py celeba_vae
    XLA_FLAGS=--xla_cpu_experimental_xnn_fusion_type=eltwise,reduce python scripts/step_time.py celeba_vae
    python scripts/step_time.py conv_vae28 --form xla        # the XLA forms instead of the default
    python scripts/step_time.py celeba_vae --drop relu       # the step without its conv ReLUs

--profile N also traces one more epoch with jax.profiler and prints the N ops with the most time per
step (summed by name) and the shares of oneDNN's calls (ffi_call), YNNPACK's fusions and XLA's own.

--drop relu / bias / relu,bias times a step that is NOT the model's: the ReLUs of the encoder and
decoder Sequentials replaced by the identity, or the conv layers' biases removed. Its time is an upper
bound on what fusing them into the oneDNN primitives (BN+ReLU, conv bias) could win.

Prints one line: the model, the conv form, XLA_FLAGS, min and median ms per step over --epochs
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
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print the N ops with most time")
    ap.add_argument("--drop", default="", help="relu, bias or relu,bias: leave them out (an upper bound)")
    a = ap.parse_args(argv)

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
        t0, losses = time.perf_counter(), []
        for i in range(a.steps):
            idx = jnp.arange(i * a.batch, (i + 1) * a.batch, dtype=jnp.int32)
            state, m = trainer.train_step(state, images, labels, idx, jax.random.key(i), 1.0)
            losses.append(m["loss"])
        jax.block_until_ready(losses)
        return (time.perf_counter() - t0) / a.steps * 1e3

    epoch()
    times = [epoch() for _ in range(a.epochs)]
    print(
        f"{a.model} form={a.form}{' drop=' + a.drop if a.drop else ''} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}: "
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
