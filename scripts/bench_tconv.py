"""Micro-benchmark: the k4 s2 p1 conv layers of ConvVAE28 and CelebAVAE in their two exact forms.

Per layer, forward + backward (gradients of kernel, bias and -- except for a model's first
encoder layer, whose input is data -- the input), jitted, batch 128, float32 on the default
device. The forms are alternated inside one process and each reports the median of --repeats
timings of --iters calls.

  transposed conv: "lax" (nnx.ConvTranspose)  vs  "subpixel" (3x3 stride-1 conv + depth-to-space)
  strided conv:    "lax" (nnx.Conv)           vs  "s2d"      (space-to-depth + 2x2 stride-1 conv)

    python scripts/bench_tconv.py [--batch 128] [--repeats 7] [--iters 20] [--out-md FILE]

Prints a markdown table (ms per forward+backward, speedup = lax / alternative; "models use":
the form the default vae_jax.layers.ConvForm() picks for that layer).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from vae_jax import layers as L

DEFAULT_FORM = L.ConvForm()  # what the models use unless built with another conv_form

# (model, layer, kind, cin, cout, input H=W, output_padding, first layer (no input gradient))
LAYERS = [
    ("conv_vae28", "encoder_conv.0", "conv", 1, 32, 28, 0, True),
    ("conv_vae28", "encoder_conv.2", "conv", 32, 64, 14, 0, False),
    ("conv_vae28", "encoder_conv.4", "conv", 64, 128, 7, 0, False),
    ("conv_vae28", "decoder_conv.0", "tconv", 128, 64, 3, 1, False),
    ("conv_vae28", "decoder_conv.2", "tconv", 64, 32, 7, 0, False),
    ("conv_vae28", "decoder_conv.4", "tconv", 32, 1, 14, 0, False),
    ("celeba_vae", "encoder.0", "conv", 3, 32, 64, 0, True),
    ("celeba_vae", "encoder.3", "conv", 32, 64, 32, 0, False),
    ("celeba_vae", "encoder.6", "conv", 64, 128, 16, 0, False),
    ("celeba_vae", "encoder.9", "conv", 128, 256, 8, 0, False),
    ("celeba_vae", "decoder.0", "tconv", 256, 128, 4, 0, False),
    ("celeba_vae", "decoder.3", "tconv", 128, 64, 8, 0, False),
    ("celeba_vae", "decoder.6", "tconv", 64, 32, 16, 0, False),
    ("celeba_vae", "decoder.9", "tconv", 32, 3, 32, 0, False),
]
ALT = {"conv": "s2d", "tconv": "subpixel"}


def make_step(kind, impl, cin, cout, op, first):
    if kind == "conv":
        layer = L.Conv2d(cin, cout, 4, stride=2, padding=1, rngs=nnx.Rngs(0), conv_form=L.ConvForm(conv=impl))
    else:
        layer = L.ConvTranspose2d(
            cin, cout, 4, stride=2, padding=1, output_padding=op, rngs=nnx.Rngs(0), conv_form=L.ConvForm(tconv=impl)
        )
    graphdef, params = nnx.split(layer, nnx.Param)

    def loss(params, x, g):
        return jnp.vdot(nnx.merge(graphdef, params)(x), g)

    argnums = 0 if first else (0, 1)
    return jax.jit(jax.grad(loss, argnums=argnums)), params


def time_calls(f, args, iters):
    t0 = time.perf_counter()
    for _ in range(iters):
        out = f(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / iters


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--models", default="conv_vae28,celeba_vae")
    ap.add_argument("--out-md")
    a = ap.parse_args(argv)
    wanted = set(a.models.split(","))
    rows = []
    totals = {}
    for model, name, kind, cin, cout, h, op, first in LAYERS:
        if model not in wanted:
            continue
        key = jax.random.key(0)
        x = jax.random.uniform(key, (a.batch, h, h, cin))
        forms = {}
        for impl in ("lax", ALT[kind]):
            f, params = make_step(kind, impl, cin, cout, op, first)
            forms[impl] = [f, params]
        # output shape (same for both forms)
        oh = (h - 2) // 2 + 1 if kind == "conv" else 2 * h + op
        g = jax.random.normal(jax.random.fold_in(key, 1), (a.batch, oh, oh, cout))
        args = {impl: (p, x, g) for impl, (f, p) in forms.items()}
        # compile + warm up, and check the two forms agree
        outs = {}
        for impl, (f, _) in forms.items():
            outs[impl] = jax.block_until_ready(f(*args[impl]))
        err = max(
            float(jnp.max(jnp.abs(u - v)) / (jnp.max(jnp.abs(u)) + 1e-30))
            for u, v in zip(jax.tree.leaves(outs["lax"]), jax.tree.leaves(outs[ALT[kind]]), strict=False)
        )
        ts = {impl: [] for impl in forms}
        for _ in range(a.repeats):
            for impl, (f, _) in forms.items():  # alternate the forms
                ts[impl].append(time_calls(f, args[impl], a.iters))
        med = {impl: statistics.median(v) * 1e3 for impl, v in ts.items()}
        alt = ALT[kind]
        totals.setdefault(model, {}).setdefault(kind, [0.0, 0.0])
        totals[model][kind][0] += med["lax"]
        totals[model][kind][1] += med[alt]
        used = DEFAULT_FORM.conv_for(h, h) if kind == "conv" else DEFAULT_FORM.tconv_for(cout)
        rows.append(
            (
                model,
                name,
                kind,
                f"{cin}->{cout}",
                f"{h}->{oh}",
                med["lax"],
                alt,
                med[alt],
                med["lax"] / med[alt],
                err,
                used,
            )
        )
    lines = [
        f"Batch {a.batch}, float32, {jax.devices()[0].platform} ({os.cpu_count()} CPUs), "
        f"median of {a.repeats} x {a.iters} forward+backward calls, forms alternated; "
        "speedup = lax / alternative.",
        "",
        "| model | layer | kind | channels | H | lax ms | alternative | alt ms | speedup | max rel. diff | models use |",
        "|---|---|---|---|---|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.3f} | {r[6]} | {r[7]:.3f} | "
            f"{r[8]:.2f}x | {r[9]:.1e} | {r[10]} |"
        )
    for model, kinds in totals.items():
        for kind, (t_lax, t_alt) in kinds.items():
            lines.append(
                f"| {model} | **all {kind}** | {kind} | | | {t_lax:.3f} | {ALT[kind]} | {t_alt:.3f} | "
                f"{t_lax / t_alt:.2f}x | | |"
            )
    text = "\n".join(lines)
    print(text)
    if a.out_md:
        with open(a.out_md, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
