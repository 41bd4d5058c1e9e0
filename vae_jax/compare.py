"""`vae-jax compare RUN RUN ...`: training runs side by side, JAX (`vae-jax train`) or PyTorch
(scripts/train_torch.py), on one figure and in one markdown table.

Each run directory gives its metrics.jsonl (per-sample ELBO terms per epoch), its config.json (the
setting; "framework": "torch" for a PyTorch run) and, where present, summary.json. The table holds
each run's setting, its last epoch's numbers and their differences from the first run's. Time per
epoch is the median of the epochs after the first (the first includes JAX's compilation), and the
throughput is training images per second of that time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from pathlib import Path

from vae_jax import datasets
from vae_jax.checkpoints import read_config, read_metrics
from vae_jax.errors import CheckpointError, ConfigError, VaeJaxError
from vae_jax.files import atomic_dir

TERMS = ("loss", "recon", "kl")
FIX = "pass run directories written by `vae-jax train` or scripts/train_torch.py"


@dataclasses.dataclass
class Run:
    path: Path
    label: str
    config: dict
    rows: list[dict]
    num_train: int | None  # training images per epoch (None: unknown, no throughput)

    @property
    def framework(self) -> str:
        return self.config.get("framework", "jax")

    def epoch_time(self) -> float | None:
        """Training seconds per epoch: the median of the epochs after the first (all when one)."""
        times = [float(r["train_time_s"]) for r in self.rows if r["train_time_s"] is not None]  # None: recomputed
        return statistics.median(times[1:] or times) if times else None

    def throughput(self) -> float | None:
        t = self.epoch_time()
        return self.num_train / t if self.num_train and t else None


def _num_train(path: Path, config: dict) -> int | None:
    """Training images per epoch: summary.json's num_train (PyTorch runs), else the length of the
    run's dataset (its first train_limit images); None when the data cannot be read here."""
    summary_path = path / "summary.json"
    if summary_path.is_file():
        try:
            n = json.loads(summary_path.read_text()).get("num_train")
        except (OSError, ValueError, AttributeError):
            n = None
        if isinstance(n, int):
            return n
    try:
        ds = datasets.load_dataset(config["dataset"], "train", config.get("data_dir"))
        return len(ds.take(config.get("train_limit")))
    except (VaeJaxError, OSError, KeyError, TypeError):
        return None


def load_run(path) -> Run:
    """One run directory; a missing folder or one without a finished epoch is a one-line error."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"no run at {path}: {'not a folder' if path.exists() else 'no such folder'} -- {FIX}")
    rows = read_metrics(path)
    if not rows:
        raise CheckpointError(f"{path} holds no finished epoch (no metrics.jsonl rows) -- {FIX}")
    for r in rows:
        time_lost = r.get("train_time_s", 0) is None and "restored_from_step" in r  # a row recomputed on resume
        missing = [
            k
            for k in ("train_loss", "test_loss", "train_time_s")
            if not isinstance(r.get(k), (int, float)) and not (k == "train_time_s" and time_lost)
        ]
        if missing:
            where = f"{path / 'metrics.jsonl'} epoch {r['epoch']}"
            raise CheckpointError(f"{where} has no number for {missing[0]} -- {FIX}")
    config = read_config(path / "config.json") if (path / "config.json").is_file() else {}
    return Run(path, path.name or str(path), config, rows, _num_train(path, config))


def load_runs(paths) -> list[Run]:
    runs = [load_run(p) for p in paths]
    names = [r.label for r in runs]
    for r in runs:  # two runs with the same folder name: their paths as given
        if names.count(r.label) > 1:
            r.label = str(r.path)
    return runs


# ------------------------------------------------------------------------------------- the table

SETTING = ("model", "dataset", "recon", "batch_size", "lr", "seed", "epochs")
FINAL = [f"{s}_{t}" for s in ("train", "test") for t in TERMS]


# What runs must share for their losses to be compared: the model, its sizes, the data it is tested on.
COMPARABLE = ("model", "latent_dim", "hidden_dim", "recon", "dataset", "test_dataset", "test_limit")


def not_comparable(runs: list[Run]) -> str | None:
    """One line when the runs differ in model, sizes or data (each key given by both runs compared
    with the first run's), else None."""
    base, differ = runs[0], []
    for key in COMPARABLE:
        values = {r.label: r.config.get(key) for r in runs if r.config.get(key) is not None}
        if base.label in values and len(set(map(str, values.values()))) > 1:
            differ.append(f"{key} ({', '.join(f'{v} in {k}' for k, v in values.items())})")
    if not differ:
        return None
    return (
        f"Not comparable: the runs differ in {'; '.join(differ)} -- their losses are of different models or "
        "data; the differences below are not a gap between frameworks or settings"
    )


def _num(v, fmt=".4f") -> str:
    return "-" if v is None else format(v, fmt)


def table(runs: list[Run]) -> str:
    """Markdown: each run's setting, its last epoch's numbers, and their differences from the first run."""
    head = "| run | framework | " + " | ".join(SETTING) + " | train images |"
    lines = ["### Runs", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        cells = [str(r.config.get(k, "-")) for k in SETTING]
        lines.append(f"| {r.label} | {r.framework} | " + " | ".join(cells) + f" | {_num(r.num_train, 'd')} |")
    cols = [c.replace("_", " ") for c in FINAL] + ["train s/epoch", "train images/s"]
    head = "| run | epoch | " + " | ".join(cols) + " |"
    lines += ["", "### Last epoch (nats per sample)", "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        last = r.rows[-1]
        cells = [_num(last.get(k)) for k in FINAL] + [_num(r.epoch_time(), ".3g"), _num(r.throughput(), ".0f")]
        lines.append(f"| {r.label} | {last['epoch']} | " + " | ".join(cells) + " |")
    if len(runs) > 1:
        base = runs[0]
        head = "| run | " + " | ".join(cols) + " |"
        lines += [
            "",
            f"### Differences from {base.label} (losses: run - {base.label}; time and throughput: run / {base.label})",
            "",
            head,
            "|" + "---|" * (head.count("|") - 1),
        ]
        for r in runs[1:]:
            cells = [_diff(r.rows[-1].get(k), base.rows[-1].get(k)) for k in FINAL]
            cells += [_ratio(r.epoch_time(), base.epoch_time()), _ratio(r.throughput(), base.throughput())]
            lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    lines += seed_spread(runs)
    return "\n".join(lines) + "\n"


def seed_spread(runs: list[Run], key: str = "test_loss") -> list[str]:
    """Markdown: with two or more runs of a framework (seeds), each framework's mean, sample standard
    deviation and range of the last epoch's `key`; with two such frameworks, whether the difference of
    their means lies within the seeds' spread: within 2 standard errors (Welch's, sqrt(s1^2/n1 + s2^2/n2))
    it may be seed noise, beyond them it is unlikely to be. [] with fewer runs."""
    groups: dict[str, list[float]] = {}
    for r in runs:
        if isinstance(r.rows[-1].get(key), (int, float)):
            groups.setdefault(r.framework, []).append(float(r.rows[-1][key]))
    seeds = {f: v for f, v in groups.items() if len(v) >= 2}
    if not seeds:
        return []
    lines = [
        "",
        f"### Seed spread ({key.replace('_', ' ')}, last epoch)",
        "",
        "| framework | runs | mean | sd | min | max |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for f, v in seeds.items():
        lines.append(
            f"| {f} | {len(v)} | {statistics.mean(v):.4f} | {statistics.stdev(v):.4f} | {min(v):.4f} | {max(v):.4f} |"
        )
    if len(seeds) == 2:
        (fa, a), (fb, b) = seeds.items()
        d = statistics.mean(b) - statistics.mean(a)
        se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
        verdict = (
            "within 2 standard errors of the seeds' spread: it may be seed noise"
            if abs(d) <= 2 * se
            else "beyond 2 standard errors of the seeds' spread: unlikely to be seed noise"
        )
        ratio = f"{abs(d) / se:.1f}" if se > 0 else "inf"
        lines += ["", f"{fb} - {fa}: {d:+.4f} nats ({ratio} standard errors, se {se:.4f}), {verdict}."]
    return lines


def _diff(a, b) -> str:
    return "-" if a is None or b is None else f"{a - b:+.4f}"


def _ratio(a, b) -> str:
    return "-" if not a or not b else f"x{a / b:.3g}"


# ------------------------------------------------------------------------------------ the figure


def _series(r: Run, key: str) -> list[tuple[str, str, list]]:
    """[(label suffix, line style, one value per epoch)] of run `r` for the panel `key`."""
    if key in TERMS:
        return [
            (f" {s}", style, [row.get(f"{s}_{key}") for row in r.rows]) for s, style in (("train", "-"), ("test", "--"))
        ]
    secs = [None if row["train_time_s"] is None else float(row["train_time_s"]) for row in r.rows]
    if key == "time":
        return [("", "-", secs)]
    return [("", "-", [r.num_train / s if r.num_train and s else None for s in secs])]


def figure(runs: list[Run], path) -> Path:
    """Loss, recon and KL per epoch (train solid, test dashed), training seconds per epoch and
    training images per second, one color per run."""
    # matplotlib (also through vae_jax.figures) is slow to import: only `--out` draws a figure
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from vae_jax.figures import _save

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    panels = [(t, f"{t} (nats per sample)") for t in TERMS] + [("time", "train s/epoch"), ("speed", "train images/s")]
    for i, r in enumerate(runs):
        epochs = [int(row["epoch"]) for row in r.rows]
        for ax, (key, _) in zip(axes.flat, panels, strict=False):
            for suffix, style, ys in _series(r, key):
                if all(isinstance(y, (int, float)) for y in ys):
                    marker = "o" if len(epochs) <= 30 else None  # per-epoch markers would hide the line styles
                    ax.plot(epochs, ys, style, color=f"C{i % 10}", marker=marker, ms=3, label=r.label + suffix)
    for ax, (key, ylabel) in zip(axes.flat, panels, strict=False):
        if key not in TERMS and ax.lines:
            ax.set_yscale("log")  # epoch 1 of a JAX run includes its compilation
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    axes.flat[-1].axis("off")
    axes.flat[-1].legend(handles, labels, loc="center", title="solid: train, dashed: test")
    fig.suptitle("  vs  ".join(f"{r.label} ({r.framework})" for r in runs), fontsize=12)
    fig.tight_layout()
    return _save(fig, path)


def compare_runs(paths, out=None) -> str:
    """The markdown table of the runs at `paths`; with `out` (a new folder), also compare.png and
    compare.md there, written whole or not at all."""
    if out is not None:
        out = Path(out)
        if os.path.lexists(out):
            raise ConfigError(f"--out {out} already exists -- choose another folder; nothing was overwritten")
        parent = out.absolute().parent
        if not parent.is_dir():
            raise ConfigError(f"cannot write --out {out}: the folder {parent} does not exist -- create it")
    runs = load_runs(paths)
    warning = not_comparable(runs)
    md = (f"{warning}\n\n" if warning else "") + table(runs)
    if out is not None:
        with atomic_dir(out) as tmp:
            figure(runs, tmp / "compare.png")
            (tmp / "compare.md").write_text(f"# {' vs '.join(r.label for r in runs)}\n\n![curves](compare.png)\n\n{md}")
    return md
