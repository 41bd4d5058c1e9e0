"""The streaming input pipeline against the CelebA train step, on a CelebA-layout folder.

    python scripts/make_celeba_like.py --out DATA            # 202,599 synthetic JPEGs, once
    python scripts/bench_input.py --data-dir DATA --out-json input.json

Measures, in one process, alternating the variants each repeat (median, min and spread of --repeats):
  loader          the Grain pipeline alone (decode, crop, resize, batch; `input_pipeline.stream_batches`)
                  on the train split in the epoch's shuffled order: batches/s
  step_memory     `vae-jax train`'s step (train.train_part) on batches already on the device
  step_stream     the same step fed by the streaming pipeline (decoding and transfer while it runs)
and prints the two ratios the issue sets: loader / step_memory (>= 2) and step_stream / step_memory
(>= 0.9). With --cli it also runs the whole command
  vae-jax train --model celeba_vae --dataset celeb_a --data-dir DIR --max-steps 20 --batch-size 64
(test evaluation and figures included) and reports its peak RSS and the time from launch to the first
step. The load average is recorded before and after: on a busy machine the numbers mean little.
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def load():
    return round(os.getloadavg()[0], 2)


def stats(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": xs}


def time_loader(ds, order, batch, batches, threads, workers):
    from vae_jax import input_pipeline

    t0 = time.perf_counter()
    n = sum(1 for _ in input_pipeline.stream_batches(ds, order, batch, stop=batches, threads=threads, workers=workers))
    assert n == batches
    return batches / (time.perf_counter() - t0)


def make_runner(ds, mode, batch, batches):
    """A function timing `batches` train steps (steps/s) through train.train_part with a fresh feed."""
    import jax
    from flax import nnx

    from vae_jax import input_pipeline, train

    cfg = train.Config(model="celeba_vae", dataset="celeb_a", batch_size=batch, data_mode=mode, progress=False)
    data = ds if mode == "stream" else ds.take(batch * (batches + 2))
    trainer = train.Trainer(train.build_model(cfg, ds.image_shape, rngs=nnx.Rngs(0)), cfg)
    feed = input_pipeline.Feed(data, trainer, cfg)
    holder = {"state": trainer.init_state, "epoch": 1}
    holder["state"] = train.train_part(trainer, holder["state"], feed, cfg, 1, 0, 2)  # compile
    jax.block_until_ready(holder["state"])

    def run():
        holder["epoch"] += 1
        t0 = time.perf_counter()
        state = train.train_part(trainer, holder["state"], feed, cfg, holder["epoch"], 0, batches)
        jax.block_until_ready(state)
        holder["state"] = state
        return batches / (time.perf_counter() - t0)

    return run


def run_cli(data_dir, max_steps, batch):
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(sys.executable).with_name("vae-jax")
        cmd = [
            str(exe) if exe.exists() else sys.executable,
            *([] if exe.exists() else ["-m", "vae_jax.cli"]),
            "train",
            "--model",
            "celeba_vae",
            "--dataset",
            "celeb_a",
            "--data-dir",
            str(data_dir),
            "--max-steps",
            str(max_steps),
            "--batch-size",
            str(batch),
            "--workdir",
            f"{tmp}/run",
            "--no-progress",
        ]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first, lines = None, []
        for line in proc.stdout:
            lines.append(line.rstrip())
            if first is None and line.startswith("first step done"):
                first = time.perf_counter() - t0
        code = proc.wait()
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if code:
            raise SystemExit(f"bench_input: the command failed ({code}): {lines[-1] if lines else ''}")
        summary = json.loads(Path(tmp, "run", "summary.json").read_text())
        in_run = float(re.search(r"first step done ([\d.]+)s", "\n".join(lines)).group(1))
        return {
            "command": " ".join(cmd[cmd.index("train") :]),
            "peak_rss_mb": round(peak_mb),
            "first_step_from_launch_s": round(first, 1),
            "first_step_in_run_s": in_run,
            "wall_s": round(wall, 1),
            "test_loss": summary["final"]["test_loss"],
        }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="a CelebA-layout folder (scripts/make_celeba_like.py)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=20, help="batches per timed run")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="Grain threads decoding batches")
    ap.add_argument("--workers", type=int, default=0, help="Grain worker processes (0: threads)")
    ap.add_argument("--cli", action="store_true", help="also run the whole --max-steps 20 command")
    ap.add_argument("--out-json")
    args = ap.parse_args(argv)

    from vae_jax import datasets, train

    result = {
        "load_before": load(),
        "cpus": os.cpu_count(),
        "batch_size": args.batch_size,
        "batches": args.batches,
        "threads": args.threads,
        "workers": args.workers,
    }
    if args.cli:  # first, in a fresh process, before this one holds memory
        result["cli"] = run_cli(args.data_dir, 20, args.batch_size)
    t0 = time.perf_counter()
    ds = datasets.load_dataset("celeb_a", "train", args.data_dir)
    result["list_and_check_s"] = round(time.perf_counter() - t0, 2)
    result["train_images"] = len(ds)
    runners = {
        "step_memory": make_runner(ds, "memory", args.batch_size, args.batches),
        "step_stream": make_runner(ds, "stream", args.batch_size, args.batches),
    }
    runs = {"loader": [], "step_memory": [], "step_stream": []}
    for r in range(args.repeats):
        order = train.epoch_order(0, 100 + r, len(ds))
        runs["loader"].append(time_loader(ds, order, args.batch_size, args.batches, args.threads, args.workers))
        for name in ("step_memory", "step_stream") if r % 2 == 0 else ("step_stream", "step_memory"):
            runs[name].append(runners[name]())
    result.update({k: stats(v) for k, v in runs.items()})
    med = {k: result[k]["median"] for k in runs}
    result["loader_over_step"] = med["loader"] / med["step_memory"]
    result["stream_over_memory"] = med["step_stream"] / med["step_memory"]
    result["load_after"] = load()

    print(
        f"CelebA-layout folder, {len(ds)} train images, batch {args.batch_size}, {args.batches} batches per run, "
        f"{args.repeats} repeats; load average {result['load_before']} before, {result['load_after']} after"
    )
    print(f"{'':14} {'median':>9} {'min':>9} {'max':>9}   (batches/s)")
    for k in runs:
        s = result[k]
        print(f"{k:14} {s['median']:9.2f} {s['min']:9.2f} {s['max']:9.2f}")
    print(f"loader / step (memory)    {result['loader_over_step']:.2f}x   (target >= 2)")
    print(f"stream / memory (step)    {result['stream_over_memory']:.3f}   (target >= 0.90)")
    if "cli" in result:
        c = result["cli"]
        print(
            f"{c['command']}: peak RSS {c['peak_rss_mb']} MB (target <= 3072), first step "
            f"{c['first_step_from_launch_s']} s after launch (target <= 30), whole command {c['wall_s']} s"
        )
    if args.out_json:
        Path(args.out_json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
