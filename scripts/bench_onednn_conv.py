"""Timing check: the k4 s2 p1 conv layers of ConvVAE28 and CelebAVAE, forward + backward, in three
forms: vae_jax.onednn_conv (oneDNN through the XLA FFI), the XLA form the default ConvForm() picks
(space-to-depth / sub-pixel / lax, vae_jax.layers), the lax form (what nnx.Conv /
nnx.ConvTranspose run) and torch's F.conv2d / F.conv_transpose2d (NCHW, as the chapter's code).

Per layer: gradients of <layer(x, w), g> w.r.t. the kernel and -- except for a model's first encoder
layer, whose input is data -- the input; JAX's jitted. No bias. Best of --repeats means of --iters
calls (fewer when a call takes long), ms. Needs the oneDNN library (built by `pip install -e .`);
torch is optional. VAE_ONEDNN_LAYOUT=plain|w|all picks the oneDNN layouts (vae_jax/onednn_conv.cc).

    python scripts/bench_onednn_conv.py [--batch 128] [--repeats 5] [--iters 10]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax import layers as L
from vae_jax import onednn_conv as oc

try:  # the layers' table has one source, bench_tconv.py
    from scripts.bench_tconv import LAYERS
except ImportError:  # run as `python scripts/bench_onednn_conv.py`: scripts/ itself is on sys.path
    from bench_tconv import LAYERS

DN = ("NHWC", "HWIO", "NHWC")


def jax_fn(form, kind, op, h=0, cout=0):
    if form == "xla":  # the XLA form the default ConvForm() picks for this layer (vae_jax.layers)
        if kind == "conv":
            pick = L.DEFAULT_CONV_FORM.conv_for(h, h)
            return (lambda x, w: L.space_to_depth_conv(x, w)) if pick == "s2d" else jax_fn("lax", kind, op)
        if L.DEFAULT_CONV_FORM.tconv_for(cout) == "subpixel":
            return lambda x, w: L.subpixel_conv_transpose(x, w, output_padding=op)
        return jax_fn("lax", kind, op)
    if kind == "conv":
        if form == "onednn":
            return lambda x, w: oc.conv2d(x, w, 2, 1)
        return lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN)
    if form == "onednn":
        return lambda x, w: oc.conv2d_transpose(x, w, 2, ((2, 2), (2, 2)), output_padding=op)
    pad = ((2, 2 + op), (2, 2 + op))
    return lambda x, w: jax.lax.conv_transpose(x, w, (2, 2), pad, dimension_numbers=DN)


def best_ms(f, args, repeats, iters):
    jax.block_until_ready(f(*args))  # compile, create the primitives
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    iters = max(1, min(iters, int(0.2 / (time.perf_counter() - t0))))  # about 0.2 s a repeat at most
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            out = f(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / iters)
    return best * 1e3


def torch_ms(kind, cin, cout, h, op, first, batch, repeats, iters):
    import torch
    import torch.nn.functional as F

    x = torch.randn(batch, cin, h, h, requires_grad=not first)
    if kind == "conv":
        w = torch.randn(cout, cin, 4, 4, requires_grad=True)

        def f():
            return F.conv2d(x, w, stride=2, padding=1)
    else:
        w = torch.randn(cin, cout, 4, 4, requires_grad=True)

        def f():
            return F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=op)

    g = torch.randn_like(f())

    def step():
        x.grad = w.grad = None
        f().backward(g)

    step()
    t0 = time.perf_counter()
    step()
    iters = max(1, min(iters, int(0.2 / (time.perf_counter() - t0))))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        best = min(best, (time.perf_counter() - t0) / iters)
    return best * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args(argv)
    oc.load()
    try:
        import torch

        torch_info = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        a.no_torch, torch_info = True, "torch not installed"
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform}, oneDNN {oc.onednn_version()}, {torch_info}, "
        f"batch {a.batch}, best of {a.repeats} means of up to {a.iters} calls, ms per forward+backward\n"
    )
    print("| model | layer | shape | onednn | xla (ConvForm()) | lax | torch | xla/onednn | torch/onednn |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    tot: dict[tuple[str, str], float] = {}
    rng = np.random.default_rng(0)
    for model, name, kind, cin, cout, h, op, first in LAYERS:
        x = jnp.asarray(rng.standard_normal((a.batch, h, h, cin), np.float32))
        w = jnp.asarray(rng.standard_normal((4, 4, cin, cout), np.float32) * 0.05)
        row = {}
        for form in ("onednn", "xla", "lax"):
            fn = jax_fn(form, kind, op, h, cout)
            g = jnp.ones(jax.eval_shape(fn, x, w).shape, jnp.float32)
            step = jax.jit(jax.grad(lambda x, w, fn=fn, g=g: jnp.vdot(fn(x, w), g), argnums=1 if first else (0, 1)))
            row[form] = best_ms(step, (x, w), a.repeats, a.iters)
        row["torch"] = (
            float("nan") if a.no_torch else torch_ms(kind, cin, cout, h, op, first, a.batch, a.repeats, a.iters)
        )
        for k, v in row.items():
            tot[(model, k)] = tot.get((model, k), 0.0) + v
        shape = f"{kind} {cin}->{cout} {h}x{h}" + (" op1" if op else "")
        print(
            f"| {model} | {name} | {shape} | {row['onednn']:.2f} | {row['xla']:.2f} | {row['lax']:.2f} | "
            f"{row['torch']:.2f} | {row['xla'] / row['onednn']:.2f} | {row['torch'] / row['onednn']:.2f} |",
            flush=True,
        )
    for model in dict.fromkeys(m for m, *_ in LAYERS):
        o, xl, lx, t = (tot[(model, k)] for k in ("onednn", "xla", "lax", "torch"))
        print(f"| {model} | **sum** | | {o:.2f} | {xl:.2f} | {lx:.2f} | {t:.2f} | {xl / o:.2f} | {t / o:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
