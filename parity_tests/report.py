"""The parity report: the largest JAX-vs-torch error of each (model, direction, dtype, quantity) that
the suite compared, with its bound from tolerances.py, as a markdown table.

Written by the test run itself (parity_tests/conftest.py), from the records that harness.compare
keeps of every comparison; `make parity` writes it with the JUnit XML beside it:

    .venv/bin/python -m pytest -q parity_tests --parity-report parity-report --junitxml=parity-report/junit.xml

  forward   max|diff| of encode / decode / decode_logits / forward (eval; train for CelebAVAE)
  loss_jit  max|diff| / |torch| of total and recon (loss_terms under jit), every recon variant
  grad      max|diff| / max|torch grad| per parameter tensor
  adam      max|diff| of the parameters after 5 Adam steps (adam_q999: the 99.9th percentile, not asserted)
Comparisons made outside a model case (test_losses.py, test_pitfalls.py, ...) are listed under their
test file, in parentheses. FAIL marks an error over its bound (or a missing or non-finite output).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from parity_tests.tolerances import tol
from vae_jax.files import atomic_write


@dataclasses.dataclass
class Record:
    """One comparison's largest error and its bound (None: measured, not asserted), kept by
    harness.compare in harness.RECORDS; conftest.py adds the test, and its model and direction
    where `compare` was given none."""

    dtype: str
    quantity: str
    error: float
    bound: float | None
    ok: bool  # within the bound, every output present and finite
    model: str | None = None
    direction: str | None = None
    test: str | None = None
    metric: str | None = None  # a vae_jax.parity check's own metric (its quantity is not a table key)


HEADER = ("model", "direction", "dtype", "quantity", "max error", "bound", "metric", "comparisons", "result")


def rows(records, model_order=()) -> list[dict]:
    """One row per (model, direction, dtype, quantity): the largest error, its bound, the number of
    comparisons and whether all passed; models in `model_order` first, then the test files."""
    groups: dict[tuple, dict] = {}
    for r in records:
        model = r.model or f"({Path((r.test or '?').split('::')[0]).stem.removeprefix('test_')})"
        key = (model, r.direction or "-", r.dtype, r.quantity)
        g = groups.setdefault(key, {"error": 0.0, "bound": r.bound, "n": 0, "ok": True, "metric": r.metric})
        g["error"], g["n"], g["ok"] = max(g["error"], r.error), g["n"] + 1, g["ok"] and r.ok
    order = {m: i for i, m in enumerate(model_order)}
    keys = sorted(groups, key=lambda k: (order.get(k[0], len(order)), k))
    return [dict(zip(("model", "direction", "dtype", "quantity"), k, strict=True), **groups[k]) for k in keys]


def markdown(records, *, model_order=(), redraws=None, summary="") -> str:
    lines = ["# JAX / PyTorch parity", "", summary, "", "| " + " | ".join(HEADER) + " |", "|---" * len(HEADER) + "|"]
    for row in rows(records, model_order):
        bound = row["bound"]
        cells = [
            row["model"],
            row["direction"],
            row["dtype"],
            row["quantity"],
            f"{row['error']:.1e}",
            "-" if bound is None else f"{bound:.0e}",
            "-" if bound is None else row["metric"] or tol(row["dtype"], row["quantity"]).metric,
            str(row["n"]),
            "not asserted" if bound is None else "ok" if row["ok"] else "FAIL",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    done = {f"{m} {d}": n for (m, d), n in (redraws or {}).items() if n}
    lines += ["", f"Batches redrawn because a ReLU input lay within rounding of 0 (see harness.py): {done or 'none'}"]
    return "\n".join(lines) + "\n"


def write(folder, records, *, model_order=(), redraws=None, summary="") -> Path:
    """<folder>/parity.md, written atomically (the folder is created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    md = markdown(records, model_order=model_order, redraws=redraws, summary=summary)
    return atomic_write(folder / "parity.md", md)
