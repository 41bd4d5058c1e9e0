"""Throughput of the train path: whole `vae-jax train` epochs against the chapter's PyTorch loops, same images.

scripts/bench.py times the JAX step in-process on random data; this script times what a user runs. For
each model (--models; vae, conv_vae28, celeba_vae) it trains on one fixed set of images:

  vae          the first --vae-images MNIST training images (default all 60,000), from --data-dir
  conv_vae28   the first --train-limit MNIST training images (default 12,800)
  celeba_vae   the first --celeba-images training images (default 2,560) of a CelebA-layout folder:
               --celeba-dir, made there by scripts/make_celeba_like.py when it has no partition file
               (a temporary folder, deleted at the end, when --celeba-dir is not given)

and runs, alternated (repeat r: every variant once, in this order):

  jax_train      `python -m vae_jax.cli train` as a subprocess (the real command line, --epochs E >= 3,
                 batch --batch, loss --recon, --no-figures, a fresh --workdir each time); its time is
                 the `train_time_s` that the run writes to metrics.jsonl for epochs 2..E (epoch 1
                 compiles: it is the run's warm-up). The test split (--test-limit images) is evaluated
                 after each epoch as always; that time is not train_time_s.
  torch_loader   the chapter's loop (vae_torch_ref.train.train_epoch_general over a DataLoader, as
                 bench.TorchVariant runs it), --torch-epochs epochs (default E - 1)
  torch_tight    the same step over tensors, no DataLoader, no per-step .item() (bench.TorchVariant)
  torch_compile  torch_tight with the forward+loss compiled by torch.compile (bench.TorchVariant)

The PyTorch variants read the same images the CLI reads (vae_jax.datasets.load_dataset, the same
limit, x / 255), in this process; each runs one warm-up epoch before the timed repeats. With the default
sizes every training split fits the CLI's in-memory data mode (64 MiB of uint8 pixels); some 5,500
CelebA images or more would make it stream, decoding the JPEGs during the timed epochs.

Reported per model and variant: samples/s of each repeat (images x timed epochs / their summed time),
its median and min over the repeats and the spread (max - min) / median; the ratio of jax_train to the
best PyTorch variant (highest median samples/s; the ratio of the minima in brackets); and the fraction
of the machine's limit: training FLOPs per sample (bench.model_flops_per_sample: XLA's cost analysis
of the step with plain lax convolutions; analytic for the MLP where that fails) x samples/s / the
fp32 sgemm peak measured at the start (bench.sgemm_peak).

Targets (issue #23), judged on jax_train from the medians (TARGETS): vae >= 1.8x the best PyTorch
variant and >= 60% of the limit; conv_vae28 >= 1.5x; celeba_vae >= 1.1x. bench.py's load rules apply:
the load average before the run and the CPU other processes used during the repeats (the CLI runs
count as this process's own); a busy machine, or fewer than bench.MIN_REPEATS repeats, judges nothing.

  python scripts/bench_train.py --data-dir DATA --out-json bench_train.json --out-md bench_train.md
  python scripts/bench_train.py --models conv_vae28 --train-limit 256 --epochs 3 --repeats 1 \\
      --allow-few-repeats      # a tiny check that everything runs
  python scripts/bench_train.py --from-json bench_train.json --out-md bench_train.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

try:
    from scripts import bench, make_celeba_like
except ImportError:  # run as `python scripts/bench_train.py`: scripts/ itself is on sys.path
    import bench
    import make_celeba_like

MODELS = ("vae", "conv_vae28", "celeba_vae")
DATASET = {"vae": "mnist", "conv_vae28": "mnist", "celeba_vae": "celeb_a"}
JAX = "jax_train"
JAX_LABEL = "jax_train (`vae-jax train`)"
TORCH_VARIANTS = ("torch_loader", "torch_tight", "torch_compile")
VARIANTS = (JAX, *TORCH_VARIANTS)
# model: the least ratio of jax_train's median samples/s to the best PyTorch variant's, and the least
# fraction of the machine's limit (None: no such target)
TARGETS = {"vae": (1.8, 0.60), "conv_vae28": (1.5, None), "celeba_vae": (1.1, None)}
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- arithmetic


def timed_epochs(metrics_text, skip=1):
    """train_time_s of each epoch of a run's metrics.jsonl after the first `skip` (the warm-up)."""
    rows = [json.loads(line) for line in metrics_text.splitlines() if line.strip()]
    times = [float(r["train_time_s"]) for r in sorted(rows, key=lambda r: r["epoch"])]
    if len(times) <= skip:
        raise ValueError(f"metrics.jsonl has {len(times)} epochs: none left to time after the first {skip}")
    return times[skip:]


def samples_per_s(epoch_times, images):
    """Samples/s of one repeat: its timed epochs of `images` images each, over their summed time."""
    return images * len(epoch_times) / sum(epoch_times)


def summarize(rates):
    """median, min, max of the repeats' samples/s and spread_pct = (max - min) / median; {} for none."""
    if not rates:
        return {}
    med = statistics.median(rates)
    return {
        "samples_per_s": med,
        "samples_per_s_min": min(rates),
        "samples_per_s_max": max(rates),
        "spread_pct": 100 * (max(rates) - min(rates)) / med,
    }


def fraction_of_limit(flops_per_sample, sps, peak_gflops):
    """FLOPs per sample x samples/s / the sgemm peak: the share of the machine's limit reached (None
    where a number is missing)."""
    vals = (flops_per_sample, sps, peak_gflops)
    if not all(isinstance(v, (int, float)) and np.isfinite(v) and v > 0 for v in vals):
        return None
    return flops_per_sample * sps / (peak_gflops * 1e9)


def flops_of(res):
    """The model's training FLOPs per sample: XLA's cost analysis, else the analytic count."""
    for key in ("flops_per_sample_xla", "flops_per_sample_analytic"):
        v = res.get(key)
        if isinstance(v, (int, float)) and np.isfinite(v) and v > 0:
            return v
    return None


def stats(res, v):
    r = res.get("variants", {}).get(v) or {}
    return summarize(r.get("repeat_samples_per_s") or []) if r.get("status") == "ok" else {}


def target_rows(report):
    """Per model: jax_train against the best PyTorch variant (highest median samples/s), its fraction of
    the machine's limit, the targets (TARGETS) and whether they are met: "yes", "NO (...)",
    "not judged (...)", or None for a model without a target."""
    why = bench.not_judged(report)
    peak = report.get("machine", {}).get("peak_gflops")
    rows = []
    for res in report.get("results", []):
        name = res.get("model")
        st = {v: stats(res, v) for v in res.get("variants", {})}
        jx = st.get(JAX, {})
        torch_sps = {v: s["samples_per_s"] for v, s in st.items() if v.startswith("torch") and s}
        best = max(torch_sps, key=torch_sps.get) if torch_sps else None
        bt = st.get(best, {})
        row = {
            "model": name,
            "jax_samples_per_s": jx.get("samples_per_s"),
            "best_torch": best,
            "best_torch_samples_per_s": bt.get("samples_per_s"),
            "ratio": bench.ratio(jx.get("samples_per_s"), bt.get("samples_per_s")),
            "ratio_min": bench.ratio(jx.get("samples_per_s_min"), bt.get("samples_per_s_min")),
            "fraction_of_limit": fraction_of_limit(flops_of(res), jx.get("samples_per_s"), peak),
            "target_ratio": None,
            "target_fraction": None,
            "met": None,
        }
        if name in TARGETS:
            want_ratio, want_fraction = TARGETS[name]
            row["target_ratio"], row["target_fraction"] = want_ratio, want_fraction
            missing = [k for k, want in (("ratio", want_ratio), ("fraction_of_limit", want_fraction)) if want]
            missing = [k for k in missing if row[k] is None]
            if why:
                row["met"] = f"not judged ({'; '.join(why)})"
            elif missing:
                row["met"] = f"not judged (no {' or '.join(missing)})"
            else:
                short = []
                if row["ratio"] < want_ratio:
                    short.append(f"{row['ratio']:.2f}x < {want_ratio}x")
                if want_fraction and row["fraction_of_limit"] < want_fraction:
                    short.append(f"{100 * row['fraction_of_limit']:.0f}% < {100 * want_fraction:.0f}% of the limit")
                row["met"] = f"NO ({'; '.join(short)})" if short else "yes"
        rows.append(row)
    return rows


def target_text(row):
    if row["target_ratio"] is None:
        return "-"
    text = f">= {row['target_ratio']}x best torch"
    if row["target_fraction"]:
        text += f", >= {100 * row['target_fraction']:.0f}% of the limit"
    return text


# ----------------------------------------------------------------------------- report


def markdown(report):
    fmt = bench.fmt
    m = report.get("machine", {})
    peak = m.get("peak_gflops")
    lines = [f"**{w}**" for w in bench.warnings_for(report)]
    if lines:
        lines.append("")
    lines += [
        f"Machine: {m.get('cpu', '-')}, {fmt(m.get('cpus'), 'd')} CPUs; torch {m.get('torch', '-')} "
        f"({fmt(m.get('torch_threads'), 'd')} threads), jax {m.get('jax', '-')}. Batch {report.get('batch', '-')}, "
        f"loss {report.get('recon', '-')}; `vae-jax train --epochs {report.get('epochs', '-')}` (epoch 1 is its "
        f"warm-up), {report.get('torch_epochs', '-')} PyTorch epochs per repeat, {report.get('repeats', '-')} "
        f"repeats alternated, DataLoader num_workers={report.get('num_workers', '-')}.",
        f"Load: {bench.load_summary(report)} ({bench.BUSY_RULE}).",
        f"Limit: fp32 sgemm 2048^3 peak {fmt(peak, '.1f')} GFLOP/s (numpy {fmt(m.get('numpy_gflops'), '.1f')}, "
        f"jax {fmt(m.get('jax_gflops'), '.1f')}).",
        "",
        "samples/s of a repeat = images x timed epochs / their time; median and min over the repeats, "
        "spread = (max - min) / median; % of limit = train FLOPs/sample x median samples/s / the sgemm peak.",
        "",
        "| model | images | variant | samples/s | min samples/s | spread % | vs best torch | GFLOP/s | % of limit "
        "| warm-up s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = {r["model"]: r for r in target_rows(report)}
    for res in report.get("results", []):
        best = rows.get(res["model"], {}).get("best_torch_samples_per_s")
        fps = flops_of(res)
        for v, r in res.get("variants", {}).items():
            label = JAX_LABEL if v == JAX else v
            head = f"| {res['model']} | {fmt(res.get('images'), 'd')} | {label} |"
            if r.get("status") != "ok":
                lines.append(f"{head} failed: {str(r.get('error', '-'))[:100]} |" + " |" * 6)
                continue
            s = stats(res, v)
            sps = s.get("samples_per_s")
            frac = fraction_of_limit(fps, sps, peak)
            rel = bench.ratio(sps, best)
            warm = r.get("warmup_s")
            warm = statistics.median(warm) if isinstance(warm, list) and warm else warm
            lines.append(
                f"{head} {fmt(sps, '.0f')} | {fmt(s.get('samples_per_s_min'), '.0f')} | "
                f"{fmt(s.get('spread_pct'), '.0f')} | {fmt(rel, '.2f')}{'x' if rel else ''} | "
                f"{fmt(sps * fps / 1e9 if (sps and fps) else None, '.1f')} | "
                f"{fmt(100 * frac if frac else None, '.1f')} | {fmt(warm, '.1f')} |"
            )
    lines += ["", "| model | train FLOPs/sample (XLA cost analysis) | analytic (dense layers) | conv form | data |"]
    lines.append("|---|---:|---:|---|---|")
    for res in report.get("results", []):
        jr = res.get("variants", {}).get(JAX, {})
        lines.append(
            f"| {res['model']} | {fmt(res.get('flops_per_sample_xla'), '.3g')} | "
            f"{fmt(res.get('flops_per_sample_analytic'), '.3g')} | {jr.get('conv_form') or '-'} | "
            f"{res.get('dataset', '-')} {fmt(res.get('images'), 'd')} images |"
        )
    lines += [
        "",
        f"Speed targets (issue #23): {JAX_LABEL} against the best PyTorch variant (highest median samples/s); "
        "ratio of the medians, of the minima in brackets.",
        "",
        "| model | jax_train samples/s | best torch | samples/s | ratio | % of limit | target | met |",
        "|---|---:|---|---:|---:|---:|---|---|",
    ]
    for row in target_rows(report):
        ratio = f"{fmt(row['ratio'], '.2f')}x ({fmt(row['ratio_min'], '.2f')}x)" if row["ratio"] else "-"
        frac = row["fraction_of_limit"]
        lines.append(
            f"| {row['model']} | {fmt(row['jax_samples_per_s'], '.0f')} | {row['best_torch'] or '-'} | "
            f"{fmt(row['best_torch_samples_per_s'], '.0f')} | {ratio} | {fmt(100 * frac if frac else None, '.1f')} | "
            f"{target_text(row)} | {row['met'] or '-'} |"
        )
    lines.append(f"\nThis process's peak RSS: {fmt(report.get('peak_rss_mb'), '.0f')} MB (PyTorch variants, data).")
    return "\n".join(lines)


def write_outputs(report, a):
    report["targets"] = target_rows(report)
    bench.emit(markdown(report), report, a)


# ----------------------------------------------------------------------------- run


def celeba_num_for(train_images):
    """The smallest --num of make_celeba_like.py whose train split holds `train_images` images."""
    num = max(3, train_images)
    while make_celeba_like.split_sizes(num)[0] < train_images:
        num += 1
    return num


def celeba_folder(a, log):
    """A CelebA-layout folder with at least --celeba-images train images (made when missing)."""
    folder = Path(a.celeba_dir) if a.celeba_dir else Path(tempfile.mkdtemp(prefix="bench_train_celeba_"))
    if (folder / "list_eval_partition.txt").is_file():
        return folder
    num = celeba_num_for(a.celeba_images)
    log(f"celeba_vae: writing {num} CelebA-like images to {folder} (scripts/make_celeba_like.py)")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_celeba_like.py"), "--out", str(folder), "--num", str(num)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return folder


def cli_command(name, data_dir, images, a, workdir):
    """The `vae-jax train` command line of one jax_train repeat."""
    return [
        sys.executable,
        "-m",
        "vae_jax.cli",
        "train",
        "--model",
        name,
        "--dataset",
        DATASET[name],
        "--data-dir",
        str(data_dir),
        "--train-limit",
        str(images),
        "--test-limit",
        str(a.test_limit),
        "--epochs",
        str(a.epochs),
        "--batch-size",
        str(a.batch),
        "--recon",
        a.recon,
        "--no-figures",
        "--workdir",
        str(workdir),
        *shlex.split(a.train_args),
    ]


def run_cli(cmd, workdir, timeout):
    """Run one `vae-jax train`; (timed epoch times, warm-up epoch time, config.json, wall s)."""
    import vae_jax

    env = dict(os.environ)  # the vae_jax this process imports, whatever is installed
    src = str(Path(vae_jax.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise RuntimeError(f"vae-jax train exited {r.returncode}: {tail}")
    text = (workdir / "metrics.jsonl").read_text()
    first = timed_epochs(text, skip=0)[0]
    config = json.loads((workdir / "config.json").read_text())
    return timed_epochs(text), first, config, wall


def load_images(name, data_dir, images):
    """(NHWC float32 images, int64 labels) of the first `images` training images, as vae-jax train reads them."""
    from vae_jax import datasets

    ds = datasets.load_dataset(DATASET[name], "train", data_dir).take(images)
    x = np.asarray(ds.images, np.float32)
    y = ds.labels if ds.labels is not None else np.zeros(len(x), np.int32)
    return x, np.asarray(y, np.int64)


def bench_model(name, data_dir, images, a, log):
    x, y = load_images(name, data_dir, images)
    n = len(x)
    res = {
        "model": name,
        "dataset": DATASET[name],
        "images": n,
        "image_shape": list(x.shape[1:]),
        "variants": {},
    }
    if n < images:
        log(f"  {name}: only {n} training images (asked for {images})")
    x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    runners = {}
    for v in a.variants:
        r = res["variants"][v] = {"status": "ok", "repeat_samples_per_s": [], "epoch_times_s": []}
        if v == JAX:
            r.update(warmup_s=[], run_wall_s=[], command=cli_command(name, data_dir, n, a, "WORKDIR")[1:])
            continue
        try:
            runners[v] = bench.TorchVariant(v, name, x_nchw, y, a.batch, a.recon, a.num_workers)
            t0 = time.perf_counter()
            runners[v].epoch()
            r["warmup_s"] = time.perf_counter() - t0
            log(f"  {name:11s} {v:14s} warm-up {r['warmup_s']:.1f}s")
        except Exception as e:  # noqa: BLE001 -- e.g. torch.compile without a working compiler
            fail(r, e, f"{name:11s} {v:14s}", log, a.verbose)
            runners.pop(v, None)
    snap0 = bench.cpu_snapshot()
    t0 = time.perf_counter()
    for rep in range(a.repeats):
        for v in a.variants:
            r = res["variants"][v]
            if r["status"] != "ok":
                continue
            if v == JAX:
                with tempfile.TemporaryDirectory(prefix="bench_train_run_") as tmp:
                    workdir = Path(tmp) / "run"
                    try:
                        times, first, config, wall = run_cli(
                            cli_command(name, data_dir, n, a, workdir), workdir, a.timeout
                        )
                    except Exception as e:  # noqa: BLE001 -- the CLI failed: say so in the report
                        fail(r, e, f"{name:11s} {v:14s}", log, a.verbose)
                        continue
                r["warmup_s"].append(first)
                r["run_wall_s"].append(wall)
                r["conv_form"] = config.get("conv_form") if name != "vae" else None
            else:
                times = []
                for _ in range(a.torch_epochs):
                    t1 = time.perf_counter()
                    runners[v].epoch()
                    times.append(time.perf_counter() - t1)
            r["epoch_times_s"].append(times)
            r["repeat_samples_per_s"].append(samples_per_s(times, n))
            log(f"  {name:11s} {v:14s} repeat {rep + 1}: {r['repeat_samples_per_s'][-1]:.0f} samples/s")
    wall = time.perf_counter() - t0
    snap1 = bench.cpu_snapshot()
    fc = bench.foreign_cpu(snap0, snap1)
    res["timed_wall_s"] = wall
    res["foreign_cpu_s"] = fc[0] if fc else None
    res["own_cpu_s"] = snap1[2] - snap0[2] if fc else None
    if fc:
        log(f"  {name:11s} {wall:.1f}s; other processes used {fc[0] / max(wall, 1e-9):.2f} cores meanwhile")
    fa = argparse.Namespace(batch=min(a.batch, n), recon=a.recon)
    res["flops_per_sample_xla"] = bench.model_flops_per_sample(name, x, y, fa)
    res["flops_per_sample_analytic"] = bench.analytic_flops_per_sample(name)
    return res


def fail(r, e, where, log, verbose):
    r["status"] = "error"
    msg = str(e).strip()
    r["error"] = f"{type(e).__name__}: {msg.splitlines()[0][:300] if msg else ''}"
    log(f"  {where} FAILED: {r['error']}")
    if verbose:
        traceback.print_exc()


def machine_info(peak):
    import jax
    import torch

    cpu = "-"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count() or 1,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        **peak,
    }


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    ap.add_argument("--data-dir", default=os.environ.get("VAE_DATA_DIR"), help="MNIST (default: $VAE_DATA_DIR)")
    ap.add_argument("--vae-images", type=int, default=60000, help="MNIST training images for vae")
    ap.add_argument("--train-limit", type=int, default=12800, help="MNIST training images for conv_vae28")
    ap.add_argument("--celeba-images", type=int, default=2560, help="CelebA-like training images for celeba_vae")
    ap.add_argument("--celeba-dir", help="a CelebA-layout folder; written there when it has no partition file")
    ap.add_argument("--test-limit", type=int, default=1000, help="test images the CLI evaluates after each epoch")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each `vae-jax train` run (>= 3; 1st: warm-up)")
    ap.add_argument("--torch-epochs", type=int, help="PyTorch epochs per repeat (default: --epochs - 1)")
    ap.add_argument("--repeats", type=int, default=bench.MIN_REPEATS, help=f"(>= {bench.MIN_REPEATS})")
    ap.add_argument("--allow-few-repeats", action="store_true", help="allow fewer repeats (judges no target)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--recon", default="bce_logits", choices=["bce", "bce_logits", "gaussian"])
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (XLA:CPU: all cores)")
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of torch_loader")
    ap.add_argument("--train-args", default="", help="more options for every `vae-jax train` run (one string)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one `vae-jax train` run may take")
    ap.add_argument("--out-json")
    ap.add_argument("--out-md")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--from-json", help="re-render --out-md from an earlier --out-json; runs nothing")
    a = ap.parse_args(argv)
    a.models = [m for m in a.models.split(",") if m]
    a.variants = [v for v in a.variants.split(",") if v]
    for m in a.models:
        if m not in MODELS:
            ap.error(f"unknown model {m!r}: use {', '.join(MODELS)}")
    for v in a.variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}: use {', '.join(VARIANTS)}")
    a.torch_epochs = a.torch_epochs or a.epochs - 1
    if a.from_json:
        return a
    if a.epochs < 3:
        ap.error(f"--epochs {a.epochs}: at least 3 (the first compiles; two or more are timed)")
    if min(a.repeats, a.batch, a.vae_images, a.train_limit, a.celeba_images, a.test_limit, a.torch_epochs) < 1:
        ap.error("--repeats, --batch, --torch-epochs and the image counts must be positive")
    if a.repeats < bench.MIN_REPEATS and not a.allow_few_repeats:
        ap.error(
            f"--repeats {a.repeats} < {bench.MIN_REPEATS} judges no target: pass --allow-few-repeats to run anyway"
        )
    if {"vae", "conv_vae28"} & set(a.models) and not a.data_dir:
        ap.error("vae and conv_vae28 train on MNIST: pass --data-dir (or set VAE_DATA_DIR)")
    return a


def main(argv=None):
    a = parse_args(argv)
    if a.from_json:
        return write_outputs(json.loads(Path(a.from_json).read_text()), a)

    def log(s):
        print(s, file=sys.stderr, flush=True)

    cpus = os.cpu_count() or 1
    load_before = bench.loadavg()
    busy, reasons = bench.busy_state(load_before, None, cpus)
    if busy:
        log(f"WARNING: MACHINE BUSY before the run ({'; '.join(reasons)}): the timings will not be a benchmark.")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    peak = bench.sgemm_peak()
    log(f"sgemm peak: {peak}")
    report = {
        "kind": "train_path",
        "batch": a.batch,
        "epochs": a.epochs,
        "torch_epochs": a.torch_epochs,
        "repeats": a.repeats,
        "num_workers": a.num_workers,
        "recon": a.recon,
        "train_args": a.train_args,
        "machine": machine_info(peak),
        "results": [],
    }
    made = None
    try:
        for name in a.models:
            log(f"{name}:")
            if name == "celeba_vae":
                data_dir, images = celeba_folder(a, log), a.celeba_images
                made = None if a.celeba_dir else data_dir
            else:
                data_dir, images = a.data_dir, a.vae_images if name == "vae" else a.train_limit
            report["results"].append(bench_model(name, data_dir, images, a, log))
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    walls = [r["timed_wall_s"] for r in report["results"]]
    foreign = [r["foreign_cpu_s"] for r in report["results"]]
    foreign_cores = sum(foreign) / sum(walls) if (foreign and None not in foreign and sum(walls) > 0) else None
    busy, reasons = bench.busy_state(load_before, foreign_cores, cpus)
    report["load"] = {
        "before": load_before,
        "after": bench.loadavg(),
        "timed_wall_s": sum(walls),
        "foreign_cpu_s": None if foreign_cores is None else sum(foreign),
        "foreign_cpu_cores": foreign_cores,
        "rule": bench.BUSY_RULE,
    }
    report["busy"], report["busy_reasons"] = busy, reasons
    report["peak_rss_mb"] = bench.peak_rss_mb()
    write_outputs(report, a)
    for w in bench.warnings_for(report):
        log(w)


if __name__ == "__main__":
    main()
