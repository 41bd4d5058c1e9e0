"""Largest JAX-vs-torch errors per model, float32 and float64, as markdown tables.

    .venv/bin/python parity_tests/report.py [--seeds 0 1 2] [--models VAE CelebAVAE ...]

Runs the same cached checks as the pytest suite (harness.run_case / harness.run_adam), both
directions, every seed (Adam in float64 too), and prints the largest error of each kind with its
bound from tolerances.py; FAIL marks a value over its bound.
  forward  max|diff| of encode / decode / decode_logits / forward (eval; train for CelebAVAE)
  loss     max|diff| / |torch| of total and recon (loss_terms under jit), every recon variant
  grad     max|diff| / max|torch grad| per parameter tensor
  Adam     max|diff| of the parameters after 5 steps (float32: see tolerances.py, "adam")
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from parity_tests import harness as H
from parity_tests.tolerances import TOLERANCES, tol

COLUMNS = [("forward", "forward"), ("loss", "loss_jit"), ("grad", "grad"), ("Adam", "adam")]


def _cell(name, dtype, q):
    v = H.MEASURED.get((name, dtype, q))
    if v is None:
        return "-"
    return f"{v:.1e}" + ("" if v <= tol(dtype, q).bound else " FAIL")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(H.SEEDS))
    ap.add_argument("--models", nargs="+", default=list(H.MODEL_NAMES))
    ap.add_argument("--dtypes", nargs="+", default=list(H.DTYPES))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    failures = []
    t0 = time.perf_counter()
    for dtype in args.dtypes:
        for name in args.models:
            for direction in H.DIRECTIONS:
                for seed in args.seeds:
                    checks = [c for cs in H.run_case(name, direction, seed, dtype).values() for c in cs]
                    checks += H.run_adam(name, direction, seed, dtype)
                    failures += [c.message().splitlines()[0] for c in checks if c.bad]
    print("| model | " + " | ".join(f"{d} {c}" for d in args.dtypes for c, _ in COLUMNS) + " |")
    print("|---|" + "---|" * (len(args.dtypes) * len(COLUMNS)))
    for name in args.models:
        print(f"| {name} | " + " | ".join(_cell(name, d, q) for d in args.dtypes for _, q in COLUMNS) + " |")
    print(
        "| **bound** | "
        + " | ".join(f"{tol(d, q).metric} {tol(d, q).bound:.0e}" for d in args.dtypes for _, q in COLUMNS)
        + " |"
    )
    main_q = {q for _, q in COLUMNS}
    extra = sorted({q for (_, _, q) in H.MEASURED} - main_q)
    if extra:
        print("\nNamed entries of tolerances.py (largest error measured per model):\n")
        print("| entry | metric, bound (f32 / f64) | " + " | ".join(args.models) + " |")
        print("|---|---|" + "---|" * len(args.models))
        for q in extra:
            for d in args.dtypes:
                if (d, q) not in TOLERANCES:
                    continue
                t = tol(d, q)
                print(
                    f"| {d} {q} | {t.metric} {t.bound:.1e} | " + " | ".join(_cell(m, d, q) for m in args.models) + " |"
                )
    if any(k[2] == "adam_q999" for k in H.MEASURED):
        print(
            "\nfloat32 Adam, 99.9th percentile of |diff| over all parameter elements (not asserted): "
            + ", ".join(
                f"{m} {H.MEASURED[(m, 'float32', 'adam_q999')]:.1e}"
                for m in args.models
                if (m, "float32", "adam_q999") in H.MEASURED
            )
        )
    redraws = {k: v for k, v in H.REDRAWS.items() if v}
    print(f"\nbatches redrawn because a ReLU input lay within rounding of 0 (see harness): {redraws or 'none'}")
    print(
        f"{len(args.seeds)} seeds x {len(H.DIRECTIONS)} directions per model and dtype; "
        f"{time.perf_counter() - t0:.0f} s; {len(failures)} failing checks"
    )
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
