"""A run directory: config.json, metrics.jsonl, orbax checkpoints (named by optimizer step), summary.json.

Nothing already written is overwritten: a fresh run refuses a workdir that holds a run, and a
resumed run must have the same configuration (only --epochs may grow).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from vae_jax import __version__
from vae_jax.config import KINDS, Config
from vae_jax.errors import CheckpointError, ConfigError, ConsoleStderr, machine_failure
from vae_jax.files import (
    atomic_write,
    check_outside_owned,
    checksum_failure,
    foreign_entries,
    json_text,
    lock_run_dir,
    unlock_run_dir,
    write_checksums,
)

# Options that may change when a run is resumed (all others are the run's, from its config.json).
RESUMABLE = {
    "epochs",
    "progress",
    "figures",
    "iwae_k",
    "checkpoint",
    "data_dir",
    "devices",
    "max_steps",
    "checkpoint_every",
    "data_mode",
    "data_workers",
    "log_every",
    "steps_per_call",
    "tensorboard",
    "lr",
    "conv_form",  # the machine's: a resume on one without oneDNN passes --conv-form xla
    "model_source",  # a model of one's own's file and sha256: recorded again by each part
}  # a lower --lr resumes a run that diverged from its last good checkpoint


def latest_step_on_disk(workdir) -> int:
    """The newest complete checkpoint's number in workdir/checkpoints, read from the folder names
    (no orbax): for messages after an interrupt."""
    try:
        return max((int(p.name) for p in (Path(workdir) / "checkpoints").iterdir() if p.name.isdigit()), default=0)
    except OSError:
        return 0


def resumed_options(saved: dict, current: dict, given: dict) -> dict:
    """The options of a resume: the run's config.json, then the options given now (config_differences
    then refuses those a resume may not change). --max-steps (where this invocation stops) and
    --devices (this machine's) are never inherited: they take their values from `current`."""
    names = current.keys()
    own = {k: v for k, v in saved.items() if k in names and k not in ("max_steps", "devices")}
    return {**current, **own, **{k: current[k] for k in ("max_steps", "devices")}, **given}


def config_differences(saved: dict, config) -> list[str]:
    """'--option X (the run: Y)' for each option of `config` that differs from the run's config.json
    and may not change on a resume."""
    cur = dataclasses.asdict(config)
    defaults = {f.name: f.default for f in dataclasses.fields(config)}  # options newer than the run
    out = []
    for k in sorted(cur):
        resumable = k in RESUMABLE and not (k == "epochs" and cur["lr_schedule"] != "constant")
        if not resumable and saved.get(k, defaults.get(k)) != cur[k]:
            why = " (--lr-schedule cosine fixes the schedule's length)" if k == "epochs" else ""
            out.append(
                f"--{k.replace('_', '-')} {cur[k]!r} differs from the run's {saved.get(k, defaults.get(k))!r}{why}"
            )
    return out


def read_config(path: Path) -> dict:
    """A run's config.json as a dict; a damaged file is a CheckpointError."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"cannot read {path}: {type(e).__name__} -- restore the run's original "
            "config.json or train again in another --workdir"
        ) from None
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"{path} holds a JSON {type(saved).__name__}, not a run's options -- restore "
            "the run's original config.json or train again in another --workdir"
        )
    return saved


# The settings outside the options that change a run's numbers, and how the environment sets them; a run
# written before they were recorded ran with the defaults.
ENVIRONMENT: dict[str, tuple[str, object]] = {
    "jax_enable_x64": ("JAX_ENABLE_X64", False),
    "jax_default_matmul_precision": ("JAX_DEFAULT_MATMUL_PRECISION", None),
    "xla_flags": ("XLA_FLAGS", []),
}
NUMERICS_NEUTRAL_FLAGS = ("--xla_force_host_platform_device_count", "--xla_dump")  # devices, debugging


def numerics_environment() -> dict:
    """{setting: value} of ENVIRONMENT in this process: JAX's x64 and default matmul precision, and the
    XLA_FLAGS that may change numbers (all but NUMERICS_NEUTRAL_FLAGS)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(NUMERICS_NEUTRAL_FLAGS)]
    return {
        "jax_enable_x64": bool(getattr(jax.config, "jax_enable_x64")),  # noqa: B009 -- untyped in jax's stubs
        "jax_default_matmul_precision": getattr(jax.config, "jax_default_matmul_precision"),  # noqa: B009
        "xla_flags": flags,
    }


def environment_differences(saved: dict) -> list[str]:
    """'VAR: the run had X, this process has Y' for each setting of ENVIRONMENT that differs from the run's."""
    ran, now = saved.get("environment") or {}, numerics_environment()
    out = []
    for key, (var, default) in ENVIRONMENT.items():
        before = ran.get(key, default)
        if before != now[key]:
            out.append(f"{var}: the run had {json.dumps(before)} ({key}), this process has {json.dumps(now[key])}")
    return out


ADDED_LATER = (
    "model_source",
    "torch_model",
)  # options newer than the schema's check: a run without them has the default


def check_saved_config(saved: dict, path) -> dict:
    """`saved` (a run's config.json) when it holds every option of the run with a value of its type
    and range, else a CheckpointError naming the key: a resume or a reader never fills in a default
    for a deleted key, nor runs with 20.5 latent dimensions."""
    fix = f"restore {path} from the run's original, or train again in another --workdir"
    for f in dataclasses.fields(Config):
        if f.name not in saved and f.name in ADDED_LATER:
            continue
        if f.name not in saved:
            raise CheckpointError(f"{path} has no {f.name!r} (the run's --{f.name.replace('_', '-')}) -- {fix}")
        v, kind = saved[f.name], str(f.type)
        if v is None and "None" in kind:
            continue
        ok = {
            "int": isinstance(v, int) and not isinstance(v, bool),
            "float": isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
            "str": isinstance(v, str),
            "bool": isinstance(v, bool),
            "dict": isinstance(v, dict),
        }[kind.split(" |")[0]]
        if ok and "kind" in f.metadata:
            cast, in_range, what = KINDS[f.metadata["kind"]]
            ok, kind = in_range(cast(v)), what
        if not ok:
            raise CheckpointError(f"{path}: {f.name!r} is {json.dumps(v)}, not {_what(kind)} -- {fix}")
    return saved


def _what(kind: str) -> str:
    names = {
        "int": "an integer",
        "float": "a finite number",
        "str": "a string",
        "bool": "true or false",
        "dict": "an object",
    }
    base = names.get(kind.split(" |")[0], kind)
    return f"{base} or null" if "None" in kind else base


class RunDir:
    """read_only: only read an existing run (export/eval/plot): nothing is created or written."""

    def __init__(self, workdir, config, *, resume=False, read_only=False, restart=False):
        self.dir = Path(workdir)
        self.config = config
        self.read_only = read_only
        self.metrics_path = self.dir / "metrics.jsonl"
        self.config_path = self.dir / "config.json"
        self.ckpt_dir = (self.dir / "checkpoints").absolute()
        # In a multi-process run (jax.distributed) only process 0 writes config, metrics and summary;
        # every process takes part in orbax's checkpoint writes.
        self.primary = jax.process_index() == 0
        created = not read_only and self.primary and not os.path.lexists(self.dir)
        if not read_only and self.primary:
            check_outside_owned(self.dir, "workdir")
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                fd, probe = tempfile.mkstemp(dir=self.dir, prefix=".write-probe-")  # O_EXCL | O_NOFOLLOW
                os.close(fd)
                os.unlink(probe)
            except OSError as e:
                raise ConfigError(
                    f"cannot write to workdir {self.dir}: {e.strerror} -- choose a writable --workdir"
                ) from None
            lock_run_dir(self.dir)
            if restart:
                self._clear_run(dry_run=True)  # deleted only once the new run's options and data work
        self.restart = restart
        self.created = created
        # only process 0 looks: the others would see its files appear
        has_run = self.primary and self.dir.is_dir() and any(self.dir.iterdir())
        if resume or read_only:
            if not self.config_path.exists():
                raise CheckpointError(
                    f"nothing to resume in {self.dir}: no config.json -- drop --resume to start a new run"
                )
            self._saved = check_saved_config(read_config(self.config_path), self.config_path)
            sizes = {k: self._saved[k] for k in ("latent_dim", "hidden_dim") if self._saved.get(k) is not None}
            # sizes left to the default (None) are the run's: its config.json holds the ones it used
            self.config = config = dataclasses.replace(
                config, **{k: v for k, v in sizes.items() if getattr(config, k) is None}
            )
            self._check_same_config(self._saved)
        elif has_run and not restart:
            what = "a run" if self.config_path.exists() else "files (not a vae-jax run)"
            raise ConfigError(
                f"workdir {self.dir} already holds {what} -- pass --resume to continue a run, "
                "or choose another (new or empty) --workdir; nothing was changed"
            )
        self.resume = resume
        self._manager = None
        if jax.process_count() > 1:  # every process has checked the folder before process 0 writes to it
            multihost_utils.sync_global_devices(f"vae_jax rundir {self.dir}")

    @contextlib.contextmanager
    def removed_if_unused(self):
        """A run that fails inside the block before writing anything leaves no folder: the workdir is
        removed again when this run created it and it is still empty."""
        try:
            yield
        except BaseException:
            if self.created and self.dir.is_dir() and not any(self.dir.iterdir()):
                unlock_run_dir(self.dir)
                with contextlib.suppress(OSError):
                    self.dir.rmdir()
            raise

    def _clear_run(self, dry_run=False):
        """--restart: delete what a run wrote here (only that: anything else refuses the restart)."""
        if not self.config_path.exists():
            raise ConfigError(f"--restart: {self.dir} holds no run (no config.json) -- drop --restart")
        other = foreign_run_entries(self.dir)
        if other:
            raise ConfigError(
                f"--restart: {self.dir} also holds {other[0]!r}, which vae-jax did not write -- move it "
                "away or choose another --workdir; nothing was deleted"
            )
        for p in [] if dry_run else self.dir.iterdir():
            if not p.name.startswith("."):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()

    def write_config(self, image_shape, step: int = 0):
        """config.json: the run's options as this part of it runs them (a resume's --lr, --epochs, ...
        replace the old values), the data's image shape (to rebuild the model), and `parts`: each
        start and resume, from which step, with the options a resume may change."""
        if not self.primary:
            return
        if self.restart:
            self._clear_run()
        saved = self._saved if self.resume else {}
        if self.resume and list(saved.get("image_shape", [])) != list(image_shape):
            raise CheckpointError(
                f"cannot resume {self.dir}: it was trained on images of shape "
                f"{tuple(saved.get('image_shape', ()))}, this data has {tuple(image_shape)} "
                "-- use the same data or another --workdir"
            )
        cfg = dict(dataclasses.asdict(self.config), image_shape=list(image_shape), vae_jax_version=__version__)
        cfg["environment"] = numerics_environment()
        parts = list(saved.get("parts") or ([_part(saved, 0, resumed=False)] if self.resume else []))
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        cfg["parts"] = [*parts, _part(cfg, step, resumed=self.resume, started=now)]
        atomic_write(self.config_path, json.dumps(cfg, indent=2) + "\n")
        self.parts = cfg["parts"]

    def _check_same_config(self, saved):
        env = [] if self.read_only else environment_differences(saved)
        if env:
            raise CheckpointError(
                f"cannot resume {self.dir}: {'; '.join(env)} -- run it with the settings it was trained with "
                "(they change the numbers), or train in another --workdir"
            )
        differ = config_differences(saved, self.config)
        if differ:
            raise CheckpointError(
                f"cannot resume {self.dir}: {'; '.join(differ)} -- drop those options (a resumed run "
                "keeps the options in its config.json) or train in another --workdir"
            )

    @property
    def manager(self):
        if self._manager is None:
            import orbax.checkpoint as ocp  # slow to import: loaded only to read or write checkpoints

            # Orbax writes each checkpoint into <epoch>.orbax-checkpoint-tmp and renames it when complete:
            # a process killed while writing leaves only that tmp folder, which latest_step ignores and the
            # next save of that epoch replaces.
            try:
                self._manager = ocp.CheckpointManager(
                    self.ckpt_dir,
                    options=ocp.CheckpointManagerOptions(
                        max_to_keep=2, enable_async_checkpointing=False, create=not self.read_only
                    ),
                    item_handlers=ocp.StandardCheckpointHandler(),
                )
            except Exception as e:  # noqa: BLE001 -- orbax raises many types for a damaged folder
                raise CheckpointError(
                    f"cannot read the checkpoints in {self.ckpt_dir} ({type(e).__name__}) -- "
                    "restore the folder or train again in another --workdir"
                ) from None
        return self._manager

    def checkpoints_in_words(self) -> str:
        """What checkpoints/ holds when it has no complete checkpoint: for the line that refuses a resume."""
        if not self.ckpt_dir.is_dir():
            return "it has no checkpoints/ folder"
        names = sorted(p.name for p in self.ckpt_dir.iterdir())
        unfinished = [n for n in names if "orbax-checkpoint-tmp" in n]
        if unfinished:
            return f"checkpoints/ holds no complete checkpoint, only the unfinished {unfinished[0]}"
        return "checkpoints/ is empty" if not names else f"checkpoints/ holds no checkpoint ({names[0]}, ...)"

    def check_intact(self, step: int) -> None:
        """CheckpointError when checkpoint `step` differs from the checksums written with it, naming it
        and the last good checkpoint before it."""
        failure = checksum_failure(self.ckpt_dir / str(step))
        if failure is None:
            return
        good = self.last_good_step(below=step)
        then = (
            f"the last good checkpoint is step {good}: move {self.ckpt_dir / str(step)} out of the run to "
            f"resume from it (eval, plot and export take --step {good})"
            if good is not None
            else "no earlier checkpoint is kept: restore the folder or train again with --restart"
        )
        raise CheckpointError(f"checkpoint {step} in {self.ckpt_dir} is damaged ({failure}) -- {then}")

    def last_good_step(self, below: int | None = None) -> int | None:
        """The newest checkpoint (before `below`) whose files match their checksums, or None."""
        if not self.ckpt_dir.is_dir():
            return None
        numbers = (int(p.name) for p in self.ckpt_dir.iterdir() if p.name.isdigit() and p.is_dir())
        steps = sorted((s for s in numbers if below is None or s < below), reverse=True)
        return next((s for s in steps if checksum_failure(self.ckpt_dir / str(s)) is None), None)

    def latest_step(self) -> int:
        """The number of the latest checkpoint (its optimizer step; the epoch in runs from before
        checkpoints inside an epoch), 0 when there is none."""
        if not self.ckpt_dir.exists():
            return 0
        return self.manager.latest_step() or 0

    def save(self, step, state):
        """Checkpoint `step` (orbax: into a temporary folder, renamed when complete). A failure of the
        disk is one CheckpointError; what orbax's threads print about it is held back."""
        import orbax.checkpoint as ocp  # slow to import: loaded only to read or write checkpoints

        # In a multi-process run a peer that dies during the save's barriers ends this process from
        # JAX's coordination service (a C++ abort): its one log line must stay visible.
        held = _held_stderr() if jax.process_count() == 1 else contextlib.nullcontext()
        try:
            with _quiet_unraisable(), held:
                self.manager.save(step, args=ocp.args.StandardSave(state))
                self.manager.wait_until_finished()
                if self.primary:  # every process's files are in the folder once the save has finished
                    write_checksums(self.ckpt_dir / str(step))
        except Exception as e:
            line = machine_failure(e)
            if line is None:
                raise
            kept = self.last_good_step(below=step)
            then = (
                f"the checkpoint of step {kept} is kept (--resume once there is room)"
                if kept is not None
                else "no checkpoint was written before it (--restart once there is room)"
            )
            raise CheckpointError(f"checkpoint {step} in {self.ckpt_dir}: {line}; {then}") from None

    def restore(self, init_state, step: int | None = None):
        """(state, number): the latest checkpoint (or that of `step`), or init_state and None when there
        is none (an imported run's weights are checkpoint 0). The run's position is state["step"]."""
        import orbax.checkpoint as ocp  # slow to import: loaded only to read or write checkpoints

        # --restart: its old checkpoints are deleted
        epoch = None if self.restart or not self.ckpt_dir.exists() else self.manager.latest_step()
        if step is not None and epoch is not None:
            steps = sorted(self.manager.all_steps())
            if step not in steps:
                raise CheckpointError(
                    f"--step {step}: {self.dir} has no checkpoint of that step -- use one of "
                    f"{', '.join(map(str, steps))} (the last {len(steps)} are kept)"
                )
            epoch = step
        if epoch is None:
            return init_state, None
        self.check_intact(epoch)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, init_state)
        where = f"checkpoint {self.ckpt_dir}/{epoch}"
        try:
            saved = flat_tree(self.manager.item_metadata(epoch))
        except Exception as e:  # noqa: BLE001 -- orbax raises many types for a damaged folder
            raise CheckpointError(
                f"{where} is damaged: its metadata cannot be read ({type(e).__name__}) -- "
                "restore the folder or train again in another --workdir"
            ) from None
        # A checkpoint written at an epoch's end before the epoch's running sums joined the state:
        # its sums are zero (an epoch starts with zero sums).
        old_format = "sums" in init_state and not any(k.startswith("sums.") for k in saved)
        if old_format:
            sums = init_state["sums"]
            abstract = {k: v for k, v in abstract.items() if k != "sums"}
        mismatch = tree_mismatch(saved, flat_tree(abstract))
        if mismatch:
            raise CheckpointError(
                f"{where} does not fit this model: {mismatch} -- use the options it was "
                "trained with, or another --workdir"
            )
        try:
            with _quiet_unraisable(), _held_stderr():
                state = self.manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # noqa: BLE001 -- tensorstore raises bare Exceptions for damaged data
            # The manager is left open: closing it closes the asyncio loop that reads still in flight
            # report to, and their callbacks then print "Event loop is closed" tracebacks.
            raise CheckpointError(
                f"{where} is damaged: its arrays cannot be read ({type(e).__name__}) -- "
                "restore the folder, or delete this epoch's folder to resume from the "
                "one before"
            ) from None
        if old_format:
            state = dict(state, sums=sums)
        return state, epoch

    def read_metrics(self, upto_epoch: int, *, at_epoch_end: bool) -> tuple[list[dict], int | None]:
        """(rows, missing): the metrics of epochs 1 .. upto_epoch (the restored checkpoint's whole epochs),
        and the epoch upto_epoch when its row alone is lost (a last line cut short) and the checkpoint
        ends that epoch, for the caller to recompute; any other gap is a CheckpointError. Later rows (a
        crash) are left out, and leave the file at the next write."""
        if self.restart:  # its old metrics are deleted with the rest of the run
            self._rows = []
            return [], None
        rows = [r for r in read_metrics(self.metrics_path) if int(r["epoch"]) <= upto_epoch]
        have = {int(r["epoch"]) for r in rows}
        gaps = [e for e in range(1, upto_epoch + 1) if e not in have]
        self._rows = list(rows)
        if not gaps:
            return rows, None
        if gaps == [upto_epoch] and at_epoch_end:
            return rows, upto_epoch
        raise CheckpointError(
            f"cannot resume {self.dir}: {self.metrics_path.name} has no row for epoch {gaps[0]}"
            f"{f' (and {len(gaps) - 1} more)' if len(gaps) > 1 else ''}, which its checkpoint has trained, and "
            "the checkpoint cannot restore it -- restore metrics.jsonl from a copy, or train again with "
            "--restart; nothing was changed"
        )

    def append_metrics(self, m):
        """One more row: the whole file is written anew (atomically; never appended through a link)."""
        if not self.primary:
            return
        self._rows = [*getattr(self, "_rows", []), m]
        atomic_write(self.metrics_path, "".join(json_text(r, indent=None) + "\n" for r in self._rows))

    def write_summary(self, summary):
        if not self.primary:
            return
        atomic_write(self.dir / "summary.json", json_text(summary) + "\n")


def _part(options: dict, step: int, *, resumed: bool, started: str | None = None) -> dict:
    """One entry of config.json's `parts`: where a start or resume began and the changeable options it ran."""
    return {
        "from_step": int(step),
        "resumed": resumed,
        "started": started,
        "options": {k: options.get(k) for k in sorted(RESUMABLE)},
        "vae_jax_version": options.get("vae_jax_version"),
    }


RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "import.json")  # and eval_k*.json


def foreign_run_entries(workdir) -> list[str]:
    """What in a run directory vae-jax did not write (relative names): a run's own files, orbax's step
    folders in checkpoints/, event files in tensorboard/, the manifest-listed figures in figures/ and
    plots/. Hidden names (temporary files) are skipped."""
    other = []
    for p in sorted(Path(workdir).iterdir()):
        name, is_dir = p.name, p.is_dir() and not p.is_symlink()
        if name.startswith("."):
            continue
        if not is_dir and (name in RUN_FILES or (name.startswith("eval_k") and name.endswith(".json"))):
            continue
        if is_dir and name in ("figures", "plots"):
            other += [f"{name}/{n}" for n in foreign_entries(p)]
        elif is_dir and name == "tensorboard":
            other += [f"{name}/{q.name}" for q in p.iterdir() if not q.name.startswith("events.out.tfevents.")]
        elif is_dir and name == "checkpoints":
            other += [f"{name}/{q.name}" for q in p.iterdir() if not _orbax_entry(q.name)]
        else:
            other.append(name)
    return other


def _orbax_entry(name: str) -> bool:
    """A step folder orbax writes in checkpoints/ (complete, or its temporary while being written)."""
    return name.isdigit() or "orbax-checkpoint-tmp" in name


def read_metrics(path) -> list[dict]:
    """The rows of a run's metrics.jsonl (`path`: the file or the run directory), one per epoch; [] when
    there is none. A last line cut short by a crash is dropped (its epoch is trained again on resume);
    any other damaged line is a CheckpointError."""
    path = Path(path)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.exists():
        return []
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({type(e).__name__}) -- restore the file") from None
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
            int(row["epoch"])
        except (ValueError, TypeError, KeyError):
            if number == len(lines):
                break
            raise CheckpointError(
                f"line {number} of {path} is damaged -- restore the file or train again in another --workdir"
            ) from None
        rows.append(row)
    return rows


def flat_tree(tree) -> dict:
    """{'params.encoder_fc1.kernel.value': leaf} for a state pytree or orbax's tree metadata."""

    def name(k):
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    tree = getattr(tree, "tree", tree)
    return {".".join(name(k) for k in path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def tree_mismatch(saved: dict, expected: dict) -> str:
    """'' when the checkpoint's arrays match the model's, else the first difference in words."""
    params_first = sorted(expected.items(), key=lambda item: not item[0].startswith("params."))
    for key, want in params_first:
        if key not in saved:
            return f"it has no {key!r} (the model expects shape {tuple(want.shape)})"
        got = saved[key]
        if tuple(got.shape) != tuple(want.shape) or np.dtype(got.dtype) != np.dtype(want.dtype):
            return (
                f"{key!r} is {np.dtype(got.dtype).name}{tuple(got.shape)} in the checkpoint, the model "
                f"expects {np.dtype(want.dtype).name}{tuple(want.shape)}"
            )
    extra = sorted(set(saved) - set(expected))
    if extra:
        return f"it holds {extra[0]!r} of shape {tuple(saved[extra[0]].shape)}, which the model does not have"
    return ""


class _held_stderr:
    """Hold what is written to fd 2 during the block; pass it on when the block succeeds, drop it when
    it raises (a damaged checkpoint: tensorstore's threads print asyncio tracebacks while the read
    fails, and the caller reports the failure in one line instead). In the console script fd 2 then
    stays silenced (see errors.ConsoleStderr): those threads can still print after the block."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.tmp = tempfile.TemporaryFile()
        os.dup2(self.tmp.fileno(), 2)

    def __exit__(self, exc_type, *exc):
        sys.stderr.flush()
        if exc_type is not None and ConsoleStderr.console:  # the script exits after one line: stay silent
            ConsoleStderr.silence(self.saved)
            self.tmp.close()
            return False
        os.dup2(self.saved, 2)
        os.close(self.saved)
        if exc_type is None:
            self.tmp.seek(0)
            held = self.tmp.read()
            if held:
                os.write(2, held)
        self.tmp.close()
        return False


class _quiet_unraisable:
    """Drop the 'Exception ignored in <coroutine ...>' tracebacks orbax leaves behind when a read fails."""

    def __enter__(self):
        self.hook = sys.unraisablehook
        sys.unraisablehook = lambda unraisable: None

    def __exit__(self, *exc):
        gc.collect()  # finalize the abandoned coroutines while the hook is silenced
        sys.unraisablehook = self.hook
        return False
