"""A run directory: config.json, metrics.jsonl, orbax checkpoints (one per epoch), summary.json.

Nothing already written is overwritten: a fresh run refuses a workdir that holds a run, and a
resumed run must have the same configuration (only --epochs may grow).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import numpy as np

from vae_jax.errors import CheckpointError, ConfigError

# Fields that may differ between a run and its resumption.
_RESUMABLE = {"epochs", "progress", "figures", "iwae_k", "checkpoint", "data_dir"}


def _atomic_write(path: Path, text: str):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunDir:
    def __init__(self, workdir, config, *, resume=False):
        self.dir = Path(workdir)
        self.config = config
        self.metrics_path = self.dir / "metrics.jsonl"
        self.config_path = self.dir / "config.json"
        self.ckpt_dir = (self.dir / "checkpoints").absolute()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".write_probe"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"cannot write to workdir {self.dir}: {e.strerror} -- choose a writable --workdir") from None
        has_run = self.config_path.exists() or self.metrics_path.exists() or self.ckpt_dir.exists()
        if resume:
            if not self.config_path.exists():
                raise CheckpointError(f"nothing to resume in {self.dir}: no config.json -- drop --resume to start a new run")
            self._check_same_config(json.loads(self.config_path.read_text()))
        elif has_run:
            raise ConfigError(f"workdir {self.dir} already holds a run -- pass --resume to continue it, "
                              "or choose another --workdir")
        self.resume = resume
        self._manager = None

    def write_config(self, image_shape):
        """config.json: the run's options plus the data's image shape (to rebuild the model)."""
        if not self.resume:
            cfg = dict(dataclasses.asdict(self.config), image_shape=list(image_shape))
            _atomic_write(self.config_path, json.dumps(cfg, indent=2) + "\n")

    def _check_same_config(self, saved):
        cur = dataclasses.asdict(self.config)
        for k in sorted(cur):
            if k not in _RESUMABLE and saved.get(k) != cur.get(k):
                raise CheckpointError(
                    f"cannot resume {self.dir}: it was trained with {k}={saved.get(k)!r}, this run asks for "
                    f"{k}={cur.get(k)!r} -- use the same options or another --workdir")

    @property
    def manager(self):
        if self._manager is None:
            import orbax.checkpoint as ocp

            self._manager = ocp.CheckpointManager(
                self.ckpt_dir, options=ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False))
        return self._manager

    def latest_epoch(self) -> int:
        if not self.ckpt_dir.exists():
            return 0
        return self.manager.latest_step() or 0

    def save(self, epoch, state):
        import orbax.checkpoint as ocp

        self.manager.save(epoch, args=ocp.args.StandardSave(state))
        self.manager.wait_until_finished()

    def restore(self, init_state):
        """(state, epoch): the latest checkpoint, or init_state and 0 when there is none."""
        import orbax.checkpoint as ocp

        epoch = self.latest_epoch()
        if not epoch:
            return init_state, 0
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, init_state)
        try:
            state = self.manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # noqa: BLE001 -- orbax raises many types for a foreign tree
            raise CheckpointError(f"checkpoint {self.ckpt_dir}/{epoch} does not fit this model "
                                  f"({type(e).__name__}) -- use the options it was trained with") from None
        return state, epoch

    def read_metrics(self):
        """Metrics of the epochs up to the restored checkpoint; later lines (a crash) are dropped."""
        if not self.metrics_path.exists():
            return []
        upto = self.latest_epoch()
        rows = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r["epoch"] <= upto]
        _atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def append_metrics(self, m):
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(m) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_summary(self, summary):
        _atomic_write(self.dir / "summary.json", json.dumps(summary, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
