"""Time of the importance-sampled NLL: vae_jax.evaluate.iwae_nll against the same estimator in PyTorch.

Both estimate the mean over images of -log p(x) with k samples z_i ~ q(z|x) per image (the IWAE bound):

    log p(x) ~= log (1/k) sum_i exp(log p(x|z_i) + log p(z_i) - log q(z_i|x))

with the Bernoulli decoder (binary cross-entropy from the decoder's logits), the chapter's VAE
(vae_torch_ref.VAE for PyTorch, vae_jax's VAE for JAX) holding the same weights (vae_jax.convert's
state_dict), over the same images, --batch-size images and --chunk samples at a time (a running
log-sum-exp: memory is bounded whatever k is). torch_iwae_nll below is the PyTorch one;
tests/test_bench_nll.py checks that it gives vae_jax's number for the same noise.

Each estimator runs in its own process (a worker: `--worker jax|torch`), alternated --repeats times, so
that each reports its own peak RSS (imports and the images included) and neither framework is loaded in
the other's process. The time is the estimator call as a whole (JAX's compilation included, about a
second). The weights: --weights (a torch state_dict .pt of the chapter's VAE, e.g. from `vae-jax
export`), else vae_jax's VAE initialized from --seed. The images: the first --images test images of
--dataset from --data-dir, as `vae-jax eval` reads them (x / 255, not binarized).

Reported: seconds (median and min over repeats), NLL of each (they agree up to the Monte Carlo error:
the two draw different noise), peak RSS, and the ratio PyTorch seconds / JAX seconds against the target
(issue #23: >= 1.5x). bench.py's load rules apply; the target is judged only at the issue's size
(k = 5000 over 10,000 images) on a quiet machine.

  python scripts/bench_nll.py --data-dir DATA --out-json bench_nll.json --out-md bench_nll.md
  python scripts/bench_nll.py --data-dir DATA --k 50 --images 200    # a quick check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from scripts import bench
except ImportError:  # run as `python scripts/bench_nll.py`: scripts/ itself is on sys.path
    import bench

FRAMEWORKS = ("jax", "torch")
TARGET_RATIO = 1.5  # PyTorch seconds / JAX seconds
FULL_SIZE = {"k": 5000, "images": 10000}  # the size the target is judged at
RESULT = "BENCH_NLL_RESULT "  # a worker's result line on stdout
_LOG2PI = math.log(2 * math.pi)


def torch_iwae_nll(model, x, *, k, batch_size=100, chunk=250, generator=None, eps_fn=None):
    """Mean over images of -log p(x), k importance samples each, for the chapter's VAE in PyTorch:
    the estimator of vae_jax.evaluate.iwae_nll (Bernoulli decoder from logits, a running log-sum-exp
    over chunks of samples, batches of images).

    x: (N, input_dim) float tensor. eps_fn(start, b, ci, c) -> (c, b, latent) tensor: the noise of
    images start..start+b-1, chunk ci of c samples (default torch.randn with `generator`).
    """
    import torch
    import torch.nn.functional as F

    from vae_torch_ref.losses import decode_logits

    model.eval()
    chunk = min(chunk, k)
    total = 0.0
    with torch.inference_mode():
        for a in range(0, x.shape[0], batch_size):
            xb = x[a : a + batch_size]
            b = xb.shape[0]
            mu, logvar = model.encode(xb)
            std = torch.exp(0.5 * logvar)
            lse = torch.full((b,), -math.inf, dtype=mu.dtype)
            for ci, c0 in enumerate(range(0, k, chunk)):
                c = min(chunk, k - c0)
                if eps_fn is not None:
                    eps = eps_fn(a, b, ci, c).to(mu.dtype)
                else:
                    eps = torch.randn((c, b, mu.shape[-1]), generator=generator, dtype=mu.dtype)
                z = mu + std * eps  # (c, b, D)
                logits = decode_logits(model, z.reshape(c * b, -1)).reshape(c, b, -1)
                bce = F.binary_cross_entropy_with_logits(logits, xb.expand(c, b, -1), reduction="none")
                log_px_z = -bce.sum(-1)
                log_pz = -0.5 * (z.square() + _LOG2PI).sum(-1)
                log_qz = -0.5 * (eps.square() + logvar + _LOG2PI).sum(-1)
                lse = torch.logaddexp(lse, torch.logsumexp(log_px_z + log_pz - log_qz, 0))
            total += float((lse - math.log(k)).sum())
    return -total / x.shape[0]


# ----------------------------------------------------------------------------- workers


def run_worker(a):
    """One estimate in this process: prints RESULT + JSON (nll, seconds, peak RSS)."""
    images = np.load(a.images_file)
    weights = dict(np.load(a.weights_file))
    n = images.shape[0]
    if a.worker == "jax":
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from vae_jax import convert
        from vae_jax import models as M
        from vae_jax.config import Config
        from vae_jax.evaluate import iwae_nll

        model = M.REGISTRY["vae"].build(Config(model="vae"), images.shape[1:], rngs=nnx.Rngs(0))
        convert.load_torch_state_dict(model, weights)
        x, y = jnp.asarray(images), jnp.zeros((n,), jnp.int32)
        t0 = time.perf_counter()
        nll = iwae_nll(model, x, y, k=a.k, key=jax.random.key(a.seed), batch_size=a.batch_size, chunk=a.chunk)
        seconds = time.perf_counter() - t0
        version = jax.__version__
    else:
        import torch

        from vae_torch_ref.models import VAE

        if a.threads:
            torch.set_num_threads(a.threads)
        model = VAE()
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
        x = torch.from_numpy(np.ascontiguousarray(images.reshape(n, -1)))
        gen = torch.Generator().manual_seed(a.seed)
        t0 = time.perf_counter()
        nll = torch_iwae_nll(model, x, k=a.k, batch_size=a.batch_size, chunk=a.chunk, generator=gen)
        seconds = time.perf_counter() - t0
        version = f"{torch.__version__} ({torch.get_num_threads()} threads)"
    out = {"framework": a.worker, "nll": nll, "seconds": seconds, "peak_rss_mb": bench.peak_rss_mb()}
    print(RESULT + json.dumps({**out, "version": version}), flush=True)


def worker_command(framework, a, images_file, weights_file):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", framework, "--k", str(a.k)]
    cmd += ["--batch-size", str(a.batch_size), "--chunk", str(a.chunk), "--seed", str(a.seed)]
    cmd += ["--images-file", str(images_file), "--weights-file", str(weights_file)]
    return cmd + (["--threads", str(a.threads)] if a.threads else [])


def parse_result(stdout):
    """The worker's result dict from its stdout (its last RESULT line)."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT)]
    if not lines:
        raise ValueError("the worker printed no result line")
    return json.loads(lines[-1][len(RESULT) :])


def prepare_inputs(a, folder):
    """Write the images (.npy, NHWC float32) and the weights (.npz of the torch state_dict) the workers read."""
    from flax import nnx

    from vae_jax import convert, datasets
    from vae_jax import models as M
    from vae_jax.config import Config

    ds = datasets.load_dataset(a.dataset, "test", a.data_dir).take(a.images)
    images = np.asarray(ds.images, np.float32)
    model = M.REGISTRY["vae"].build(Config(model="vae"), images.shape[1:], rngs=nnx.Rngs(a.seed))
    if a.weights:
        convert.load_pt(model, a.weights)
    images_file, weights_file = Path(folder) / "images.npy", Path(folder) / "weights.npz"
    np.save(images_file, images)
    np.savez(weights_file, **convert.to_numpy_state_dict(model))
    return images_file, weights_file, len(images)


# ----------------------------------------------------------------------------- report


def not_judged(report):
    """Why the NLL target cannot be judged ([] when it can): load, and the size."""
    why = []
    if report.get("busy") is None:
        why.append("load not recorded")
    elif report["busy"]:
        why.append("machine busy")
    if report.get("k") != FULL_SIZE["k"] or report.get("images") != FULL_SIZE["images"]:
        why.append(f"not the issue's size, k = {FULL_SIZE['k']} over {FULL_SIZE['images']} images")
    return why


def summary(report):
    """Per framework: median/min seconds, NLLs, peak RSS; the ratio PyTorch / JAX seconds and the verdict."""
    out = {}
    for fw in FRAMEWORKS:
        runs = [r for r in report.get("runs", []) if r.get("framework") == fw and r.get("status") == "ok"]
        secs = [r["seconds"] for r in runs]
        out[fw] = {
            "seconds": statistics.median(secs) if secs else None,
            "seconds_min": min(secs) if secs else None,
            "nll": [r["nll"] for r in runs],
            "peak_rss_mb": max((r["peak_rss_mb"] for r in runs), default=None),
        }
    ratio = bench.ratio(out["torch"]["seconds"], out["jax"]["seconds"])
    why = not_judged(report)
    if why:
        met = f"not judged ({'; '.join(why)})"
    elif ratio is None:
        met = "not judged (no result of one framework)"
    else:
        met = "yes" if ratio >= TARGET_RATIO else f"NO ({ratio:.2f}x < {TARGET_RATIO}x)"
    nll = [statistics.mean(out[fw]["nll"]) if out[fw]["nll"] else None for fw in FRAMEWORKS]
    diff = nll[0] - nll[1] if None not in nll else None
    return {
        **out,
        "ratio": ratio,
        "ratio_min": bench.ratio(out["torch"]["seconds_min"], out["jax"]["seconds_min"]),
        "nll_diff": diff,
        "met": met,
    }


def markdown(report):
    fmt = bench.fmt
    s = summary(report)
    lines = [f"**WARNING: MACHINE BUSY ({'; '.join(report.get('busy_reasons') or [])}): not a benchmark.**", ""]
    lines = lines if report.get("busy") else []
    lines += [
        f"Importance-sampled NLL of the chapter's VAE, k = {report.get('k')} samples over {report.get('images')} "
        f"{report.get('dataset')} test images (batches of {report.get('batch_size')} images, chunks of "
        f"{report.get('chunk')} samples), {report.get('repeats')} repeats alternated, one process per estimate; "
        f"weights: {report.get('weights') or 'vae_jax VAE initialized from --seed'}.",
        f"Load: {bench.load_summary(report)} ({bench.BUSY_RULE}).",
        "",
        "| estimator | seconds (median) | min seconds | NLL (nats, per repeat) | peak RSS MB |",
        "|---|---:|---:|---|---:|",
    ]
    names = {"jax": "JAX: vae_jax.evaluate.iwae_nll", "torch": "PyTorch: torch_iwae_nll (vae_torch_ref.VAE)"}
    for fw in FRAMEWORKS:
        f = s[fw]
        nlls = ", ".join(fmt(v, ".3f") for v in f["nll"]) or "-"
        lines.append(
            f"| {names[fw]} | {fmt(f['seconds'], '.1f')} | {fmt(f['seconds_min'], '.1f')} | {nlls} | "
            f"{fmt(f['peak_rss_mb'], '.0f')} |"
        )
    for r in report.get("runs", []):
        if r.get("status") != "ok":
            lines.append(f"\n{r.get('framework')} repeat {r.get('repeat')} failed: {r.get('error')}")
    ratio = f"{fmt(s['ratio'], '.2f')}x ({fmt(s['ratio_min'], '.2f')}x)" if s["ratio"] else "-"
    lines += [
        "",
        f"JAX - PyTorch NLL: {fmt(s['nll_diff'], '.3f')} nats (different noise: Monte Carlo error only).",
        "",
        "| PyTorch seconds / JAX seconds (median; min) | target | met |",
        "|---:|---|---|",
        f"| {ratio} | >= {TARGET_RATIO}x | {s['met']} |",
    ]
    return "\n".join(lines)


def write_outputs(report, a):
    report["summary"] = summary(report)
    bench.emit(markdown(report), report, a)


# ----------------------------------------------------------------------------- main


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR"), help="default: $VAE_DATA_DIR")
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "binarized_mnist", "fashion_mnist"])
    ap.add_argument("--images", type=int, default=FULL_SIZE["images"], help="the first N test images")
    ap.add_argument("--k", type=int, default=FULL_SIZE["k"], help="importance samples per image")
    ap.add_argument("--batch-size", type=int, default=100, help="images at a time (iwae_nll's default)")
    ap.add_argument("--chunk", type=int, default=250, help="samples at a time (iwae_nll's default)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0, help="the noise's seed, and the weights' without --weights")
    ap.add_argument("--weights", help="a torch state_dict .pt of the chapter's VAE (default: initialized)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads in the PyTorch worker")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds one estimate may take")
    ap.add_argument("--out-json")
    ap.add_argument("--out-md")
    ap.add_argument("--from-json", help="re-render --out-md from an earlier --out-json; runs nothing")
    ap.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    ap.add_argument("--images-file", help=argparse.SUPPRESS)
    ap.add_argument("--weights-file", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if not (a.from_json or a.worker):
        if min(a.images, a.k, a.batch_size, a.chunk, a.repeats) < 1:
            ap.error("--images, --k, --batch-size, --chunk and --repeats must be positive")
        if not a.data_dir:
            ap.error("pass --data-dir (or set VAE_DATA_DIR)")
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.worker:
        return run_worker(a)
    if a.from_json:
        return write_outputs(json.loads(Path(a.from_json).read_text()), a)

    def log(s):
        print(s, file=sys.stderr, flush=True)

    cpus = os.cpu_count() or 1
    load_before = bench.loadavg()
    busy, reasons = bench.busy_state(load_before, None, cpus)
    if busy:
        log(f"WARNING: MACHINE BUSY before the run ({'; '.join(reasons)}): the timings will not be a benchmark.")
    report = {
        "kind": "iwae_nll",
        "dataset": a.dataset,
        "k": a.k,
        "batch_size": a.batch_size,
        "chunk": a.chunk,
        "repeats": a.repeats,
        "seed": a.seed,
        "weights": a.weights,
        "runs": [],
    }
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1])  # the workers import this checkout's packages
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="bench_nll_") as tmp:
        images_file, weights_file, report["images"] = prepare_inputs(a, tmp)
        snap0 = bench.cpu_snapshot()
        t0 = time.perf_counter()
        for rep in range(a.repeats):
            for fw in FRAMEWORKS:
                run = {"framework": fw, "repeat": rep + 1, "status": "ok"}
                cmd = worker_command(fw, a, images_file, weights_file)
                try:
                    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
                    if r.returncode != 0:
                        tail = (r.stderr.strip().splitlines() or ["(no stderr)"])[-1]
                        raise RuntimeError(f"worker exited {r.returncode}: {tail}")
                    run.update(parse_result(r.stdout))
                    log(
                        f"{fw:5s} repeat {rep + 1}: NLL {run['nll']:.3f} in {run['seconds']:.1f}s, "
                        f"peak RSS {run['peak_rss_mb']:.0f} MB"
                    )
                except Exception as e:  # noqa: BLE001 -- a failed estimate is reported, not fatal
                    run.update(status="error", error=f"{type(e).__name__}: {str(e)[:300]}")
                    log(f"{fw:5s} repeat {rep + 1}: FAILED: {run['error']}")
                report["runs"].append(run)
        wall = time.perf_counter() - t0
        snap1 = bench.cpu_snapshot()
    fc = bench.foreign_cpu(snap0, snap1)
    foreign_cores = fc[0] / fc[1] if fc and fc[1] > 0 else None
    report["busy"], report["busy_reasons"] = bench.busy_state(load_before, foreign_cores, cpus)
    report["load"] = {
        "before": load_before,
        "after": bench.loadavg(),
        "timed_wall_s": wall,
        "foreign_cpu_s": fc[0] if fc else None,
        "foreign_cpu_cores": foreign_cores,
        "rule": bench.BUSY_RULE,
    }
    write_outputs(report, a)


if __name__ == "__main__":
    main()
