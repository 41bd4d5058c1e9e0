"""Training and evaluation: one train step and one eval step for every model and loss variant.

`train_and_evaluate(config, workdir)` is the main job. Randomness comes from keys derived from
(seed, purpose, epoch, step) with `jax.random.fold_in`, so a run is reproducible and a resumed
run continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm  # the console bar: bars are drawn only on a terminal (tqdm.auto warns in a notebook)

from vae_jax import (
    __version__,
    checkpoints,
    datasets,
    evaluate,
    input_pipeline,
    layers,
    models,
    onednn_conv,
    user_models,
)
from vae_jax.config import Config, is_model_spec
from vae_jax.errors import CheckpointError, ConfigError, DataError, ReadError, VaeJaxError, warn
from vae_jax.files import atomic_dir, check_replaceable
from vae_jax.preflight import build_model, check_figures_fit, check_iwae_cost, check_memory, check_model_fits
from vae_jax.summaries import Summaries
from vae_jax.trainer import Trainer, loss_terms, to_host, zero_sums  # noqa: F401 -- train.loss_terms, as callers use it


class KeyPurpose(enum.IntEnum):
    """What a random stream is for: folded into the run's root key `jax.random.key(seed)`. Stable
    numbers (changing one changes that stream in every run)."""

    INIT = 0  # the model's initial parameters
    SHUFFLE = 1  # (with the epoch) the epoch's order: epoch_order
    TRAIN = 2  # (with the epoch, then the step) binarization and reparameterization noise
    EVAL = 3  # (with the epoch, then the batch) the test ELBO's z
    IWAE = 7  # the importance-sampled NLL at the end of a run
    FIGURES = 8  # the figures at the end of a run
    CVAE_SAMPLES = 11  # exercise 3: the conditional samples scored by the classifier
    MSE_VS_BCE = 13  # exercise 4: the compared reconstructions
    LATENT_SWEEP = 17  # exercise 5: samples of each latent size
    SUMMARY_IMAGES = 19  # the samples TensorBoard shows after each epoch (the same z every epoch)


def purpose_key(seed: int, purpose: KeyPurpose):
    """The run's key for one purpose: fold_in(key(seed), purpose)."""
    return jax.random.fold_in(jax.random.key(seed), purpose)


def resolved_sizes(config: Config, model) -> Config:
    """`config` with the sizes the model was built with where it left them to the chapter's defaults."""
    latent, hidden = getattr(model, "latent_dim", None), getattr(model, "hidden_dim", None)
    return dataclasses.replace(
        config,
        latent_dim=config.latent_dim if config.latent_dim is not None or latent is None else int(latent),
        hidden_dim=config.hidden_dim if config.hidden_dim is not None or hidden is None else int(hidden),
    )


def resolved_steps_per_call(config: Config, model) -> int:
    """--steps-per-call as it runs: 1 over several devices (the steps place each batch over the mesh);
    auto (0) is 32 for the MLP models (steps so short that a dispatch each costs a large share of the
    time), 8 for the conv models on oneDNN's kernels (their steps also ran faster in blocks;
    docs/speed.md) and 1 for the conv models in XLA's forms, whose steps inside a lax.scan round
    differently from the same steps one per dispatch. Streamed data takes one step per batch whatever
    it says."""
    if config.devices > 1:
        return 1
    if config.steps_per_call:
        return int(config.steps_per_call)
    if not hasattr(model, "input_channels"):
        return 32
    return 8 if conv_form_name(model, config) == "onednn" else 1


def kl_weight_for(config: Config, epoch: int) -> float:
    """KL annealing weight for a 1-based epoch: min(1, epoch / E); 1 when annealing is off."""
    if config.kl_anneal_epochs <= 0:
        return 1.0
    return min(1.0, epoch / config.kl_anneal_epochs)


def epoch_keys(seed: int, epoch: int):
    root = jax.random.key(seed)
    purposes = (KeyPurpose.SHUFFLE, KeyPurpose.TRAIN, KeyPurpose.EVAL)
    return {p: jax.random.fold_in(jax.random.fold_in(root, p), epoch) for p in purposes}


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The shuffled order of a 1-based epoch (from the run's seed), on the host."""
    return np.asarray(input_pipeline.epoch_permutation(epoch_keys(seed, epoch)[KeyPurpose.SHUFFLE], num_examples))


def first_nonfinite(losses) -> int | None:
    """Index of the first non-finite value in a list of scalars and vectors (read in order), or None."""
    values = [np.ravel(to_host(v)) for v in losses]
    bad: np.ndarray | list[int] = np.flatnonzero(~np.isfinite(np.concatenate(values))) if values else []
    return int(bad[0]) if len(bad) else None


def _log_step_losses(summaries, config: Config, num_examples: int, before: int, i: int, loss, n: int) -> None:
    """TensorBoard's train/step_loss (per sample) at the steps of a block of n, batches i .. i + n - 1
    of an epoch that starts after step `before`, that --log-every names; the loss (a scalar, or n
    values) is read from the device only there."""
    for j in range(n):
        step = before + i + j + 1
        if step % config.log_every:
            continue
        rows = min(config.batch_size, num_examples - (i + j) * config.batch_size)
        summaries.step_loss(step, float(np.ravel(to_host(loss))[j]) / rows)


def train_part(
    trainer,
    state,
    feed: input_pipeline.Feed,
    config: Config,
    epoch: int,
    start: int,
    stop: int,
    on_first_step=None,
    summaries=None,
):
    """Optimizer steps on batches [start, stop) of a 1-based epoch; returns the state.

    Step i of the epoch draws from fold_in(the epoch's train key, i): where the epoch is cut
    (--max-steps, --checkpoint-every, a resume) does not change the run."""
    keys = epoch_keys(config.seed, epoch)
    kw = kl_weight_for(config, epoch)
    if start == 0:
        state = {**state, "sums": trainer.put(zero_sums())}
    step_fn, losses = trainer.step_for(feed.streamed, train=True), []
    spe = steps_per_epoch(config, feed.ds)
    bar = None
    if config.progress and jax.process_index() == 0 and sys.stderr.isatty():  # a line per epoch in a log
        bar = tqdm(total=stop - start, initial=0, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
    order = epoch_order(config.seed, epoch, len(feed.ds))
    for i, n, args in feed.blocks(order, config.batch_size, start, stop, config.steps_per_call or 1):
        if n == 1:
            state, m = step_fn(state, *args, jax.random.fold_in(keys[KeyPurpose.TRAIN], i), kw)
        else:  # n steps in one dispatch, the same numbers
            state, m = trainer.train_steps(state, *args, keys[KeyPurpose.TRAIN], i, kw)
        losses.append(m["loss"])
        if on_first_step is not None:  # waits for the step: the time to the first step, said once
            on_first_step(float(to_host(m["loss"]).ravel()[0]))
            on_first_step = None
        if summaries is not None and config.log_every:
            _log_step_losses(summaries, config, len(feed.ds), (epoch - 1) * spe, i, m["loss"], n)
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    if not math.isfinite(float(to_host(state["sums"]["loss"]))):
        bad = first_nonfinite(losses)
        where = f"step {start + bad + 1} of {spe}" if bad is not None else "the epoch's sum"
        raise FloatingPointError(f"non-finite training loss at epoch {epoch}, {where}: lower --lr or check the data")
    return state


def evaluate_split(trainer, state, feed: input_pipeline.Feed, config: Config, epoch: int) -> dict[str, float]:
    """Per-sample means of the test ELBO terms, in order, z drawn from the epoch's eval key."""
    key, kw = epoch_keys(config.seed, epoch)[KeyPurpose.EVAL], kl_weight_for(config, epoch)
    step_fn, sums = trainer.step_for(feed.streamed, train=False), None
    order = np.arange(len(feed.ds), dtype=np.int32)
    for i, args in enumerate(feed.batches(order, config.batch_size)):
        m = step_fn(state, *args, jax.random.fold_in(key, i), kw)
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
    assert sums is not None  # batch_slices gives at least one batch (or raises)
    return {k: float(to_host(v)) / len(order) for k, v in sums.items()}


def evaluate_model(model, config: Config, test_ds) -> dict[str, float]:
    """The test ELBO terms (per sample) of a trained model, with the KL weight of the run's last
    epoch and z drawn from config.seed (`vae-jax eval`)."""
    trainer = Trainer(model, config, steps_per_epoch=1)
    m = evaluate_split(
        trainer, trainer.init_state, input_pipeline.Feed(test_ds, trainer, config), config, config.epochs
    )
    return {f"test_{k}": v for k, v in m.items()}


def epoch_metrics(trainer, state, feeds, config: Config, epoch: int, train_time: float, steps: int) -> dict:
    """The metrics row of an epoch (or of the part of it trained so far: `steps` batches)."""
    train_feed, test_feed = feeds
    n = min(len(train_feed.ds), steps * config.batch_size)
    tr = {k: float(to_host(v)) / n for k, v in state["sums"].items()}
    t0 = time.perf_counter()
    te = evaluate_split(trainer, state, test_feed, config, epoch)
    test_time = time.perf_counter() - t0
    if not math.isfinite(te["loss"]):
        raise FloatingPointError(
            f"non-finite test loss at epoch {epoch} (train loss {tr['loss']}): lower --lr or check the data"
        )
    return {
        "epoch": epoch,
        "kl_weight": kl_weight_for(config, epoch),
        "train_loss": tr["loss"],
        "train_recon": tr["recon"],
        "train_kl": tr["kl"],
        "test_loss": te["loss"],
        "test_recon": te["recon"],
        "test_kl": te["kl"],
        "train_time_s": train_time,
        "test_time_s": test_time,
    }


def load_data(config: Config):
    """(train, test) Datasets for the config; --train-limit/--test-limit select before decoding."""
    train = datasets.load_dataset(config.dataset, "train", config.data_dir).take(config.train_limit)
    test = datasets.load_dataset(config.test_dataset or config.dataset, "test", config.data_dir).take(config.test_limit)
    if train.image_shape != test.image_shape:
        raise ConfigError(
            f"--test-dataset {config.test_dataset} has images of shape {test.image_shape}, "
            f"the training data {config.dataset} {train.image_shape} -- use a test dataset "
            "with the same image shape"
        )
    return train, test


def device_arrays(ds):
    """A (small) split whole on the device: float32 images in [0, 1], int32 labels (zeros when none)."""
    images, labels = ds.stored_arrays()
    return jnp.asarray(datasets.to_float(images), jnp.float32), jnp.asarray(labels, jnp.int32)


def train_and_evaluate(
    config: Config, workdir, *, resume: bool = False, restart: bool = False, log=print
) -> dict[str, Any]:
    """Train `config.model` on `config.dataset`, writing into `workdir`:

    metrics.jsonl (one JSON object per epoch), config.json, checkpoints/ (orbax, at each epoch's end,
    every --checkpoint-every steps and at --max-steps), figures/*.png at the end, summary.json
    (with "conv_form": "onednn" or "xla", the form the convolutions ran in).
    Returns the summary. In a multi-process run (jax.distributed) every process calls this; only
    process 0 writes files other than checkpoints.

    Data that fails while read (a damaged image, a data worker killed) is a DataError that names
    the checkpoint kept and the command that continues the run.
    """
    try:
        return _train_and_evaluate(config, workdir, resume=resume, restart=restart, log=log)
    except ReadError as e:
        raise DataError(f"{e}, then {how_to_continue(workdir)}") from None


def how_to_continue(workdir) -> str:
    """The command that continues a run after a failure, and what it continues from (read from disk)."""
    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        return "run the same command again (nothing of this run was written yet)"
    if not any(p.name.isdigit() for p in (workdir / "checkpoints").glob("*")):
        return f"train it again with `vae-jax train --workdir {workdir} --restart` (no checkpoint was written yet)"
    step = checkpoints.latest_step_on_disk(workdir)
    return f"continue with `vae-jax train --workdir {workdir} --resume` (the checkpoint of step {step} is kept)"


def model_source(config: Config, image_shape, recorded: dict | None = None) -> dict | None:
    """config.json's `model_source` of a model of one's own (vae_jax.user_models.source; None for the
    chapter's), with a warning line when its file is not the one the run recorded (`recorded`)."""
    if not is_model_spec(config.model):
        return None
    changed = user_models.changed_since(recorded)
    if changed:
        warn(f"{changed} -- the checkpoint may not fit it; config.json records the file as it is now")
    return user_models.source(config.model, config, image_shape)


def conv_form_name(model, config: Config | None = None) -> str:
    """'onednn' when the model's convolutions run on oneDNN's kernels, 'lax' when asked for, else 'xla'."""
    onednn = (layers.OnednnConv, layers.OnednnConvTranspose)
    if any(isinstance(m, onednn) for _, m in nnx.iter_graph(model)):
        return "onednn"
    return "lax" if config is not None and config.conv_form == "lax" else "xla"


@dataclasses.dataclass
class _Run:
    """What a run's setup hands its loop and its end: the run directory, the data and their feeds, the
    trainer, and where the run stands (state, step, the epochs' metrics so far)."""

    dir: Any  # checkpoints.RunDir
    config: Config
    log: Any
    train_ds: Any
    test_ds: Any
    root: jax.Array
    trainer: Trainer
    spe: int
    feeds: tuple
    state: Any
    step: int
    history: list


def _train_and_evaluate(config: Config, workdir, *, resume: bool, restart: bool, log) -> dict[str, Any]:
    t_start = time.perf_counter()
    try:
        r = _setup(config, Path(workdir), resume=resume, restart=restart, log=log)
    except _NothingToTrain as done:
        log(done.args[0])
        return done.args[1]
    summaries = Summaries(workdir, enabled=r.config.tensorboard and r.dir.primary)
    options = {**dataclasses.asdict(r.config), "image_shape": str(r.train_ds.image_shape)}
    summaries.hparams(options, ("test/loss", "train/loss"))
    t_run = time.perf_counter()
    final = _fit(r, summaries, t_start)
    return _finish(r, summaries, final, time.perf_counter() - t_run)


def _setup(config: Config, workdir: Path, *, resume: bool, restart: bool, log) -> _Run:
    """Everything checked before the first step (options, data, model, memory, figures), the state
    restored or initialised, and config.json written; a failure before that leaves nothing behind."""
    config.validate()
    if jax.process_count() > 1:
        if config.devices != jax.device_count():
            raise ConfigError(
                f"a multi-process run trains on every device: pass --devices {jax.device_count()} "
                f"(the global device count over {jax.process_count()} processes), not {config.devices}"
            )
        if jax.process_index():
            log = lambda s: None  # noqa: E731 -- process 0 speaks for the run
    if resume and restart:
        raise ConfigError("--resume continues a run, --restart starts it again: pass one of them")
    run = checkpoints.RunDir(workdir, config, resume=resume, restart=restart)
    config = run.config  # a resume's sizes left to the default are the run's
    with run.removed_if_unused():  # a run that fails before its first file leaves no folder
        if config.figures and (workdir / "figures").exists():  # replaced at the end: refused now, not then
            check_replaceable(workdir / "figures", "the figures folder")
        train_ds, test_ds = load_data(config)
        if config.model == "cvae" and not train_ds.has_labels:
            raise ConfigError(
                f"--model cvae needs labels, and dataset {config.dataset!r} has none: use mnist or digits"
            )
        image_shape = train_ds.image_shape
        check_model_fits(config, image_shape)
        check_memory(config, image_shape, examples=max(len(train_ds), len(test_ds)))
        root = jax.random.key(config.seed)
        model = build_model(config, image_shape, rngs=nnx.Rngs(params=jax.random.fold_in(root, KeyPurpose.INIT)))
        # config.json and summary.json say the sizes used and the form the convolutions run in
        config = run.config = dataclasses.replace(
            resolved_sizes(config, model),
            conv_form=conv_form_name(model, config),
            steps_per_call=resolved_steps_per_call(config, model),
            model_source=model_source(config, image_shape, getattr(run, "_saved", {}).get("model_source")),
        )
        check_figures_fit(config, model, test_ds)
        check_iwae_cost(config, model, test_ds)
        spe = steps_per_epoch(config, train_ds)
        trainer = Trainer(model, config, steps_per_epoch=spe)
        if config.devices > 1:
            trainer.shard(config.devices)
        state, found = run.restore(trainer.put(trainer.init_state))  # restored with the state's sharding
        if resume and found is None:
            raise CheckpointError(
                f"cannot resume {workdir}: {run.checkpoints_in_words()} -- train it again from step 0 with "
                "--restart and the options in its config.json; nothing was changed"
            )
        step = int(to_host(state["step"]))
        _check_steps_left(run, config, step, spe)
        if config.init_from and not step:
            state = initial_weights_from(config.init_from, trainer, state, config, image_shape)
        feeds = (
            input_pipeline.Feed(train_ds, trainer, config),
            input_pipeline.Feed(test_ds, trainer, config),
        )  # 'memory' decodes all now
        history, lost = run.read_metrics(upto_epoch=step // spe, at_epoch_end=step % spe == 0)
        if lost:  # its line was cut short: the checkpoint ends that epoch and holds its train sums
            row = epoch_metrics(trainer, state, feeds, config, lost, 0.0, spe)
            history.append(dict(row, train_time_s=None, restored_from_step=step))
            run.append_metrics(history[-1])
            log(
                f"metrics.jsonl: the row of epoch {lost} was cut short; recomputed from the checkpoint of step "
                f"{step} (its train time is unknown: null)"
            )
        run.write_config(image_shape, step)  # only once the options, the data and --init-from are known to work
    if step:
        log(f"resumed from step {step} (epoch {step // spe + 1}, batch {step % spe} of {spe}) in {workdir}")
    if hasattr(model, "input_channels"):  # a conv model
        why = onednn_conv.unavailable_reason() if config.conv_form == "xla" else None  # said once, here
        log(f"convolutions: {config.conv_form} (--conv-form; recorded in config.json)" + (f": {why}" if why else ""))
    state = trainer.put(jax.tree.map(to_host, state))
    return _Run(run, config, log, train_ds, test_ds, root, trainer, spe, feeds, state, step, history)


class _NothingToTrain(Exception):  # noqa: N818 -- not an error: the answer of a finished run
    """A resume of a finished run: nothing is trained or written. args: (the line, the run's summary)."""


def last_step(config: Config, spe: int) -> int:
    """The optimizer step a run (or this part of it) ends at: --epochs, or --max-steps when sooner."""
    return config.epochs * spe if not config.max_steps else min(config.epochs * spe, config.max_steps)


def _check_steps_left(run, config: Config, step: int, spe: int) -> None:
    """A resume asking for fewer steps than the checkpoint has trained is refused; one that has nothing
    left to train on a finished run (its summary.json at this step) changes nothing (_NothingToTrain)."""
    last, epochs = last_step(config, spe), f"{step // spe} epochs" + (f" and {step % spe} steps" if step % spe else "")
    if step > last:
        what = f"--epochs {config.epochs}" if last == config.epochs * spe else f"--max-steps {config.max_steps}"
        raise CheckpointError(
            f"cannot resume {run.dir}: its checkpoint has trained {step} steps ({epochs}), more than {what} "
            f"asks for -- pass --epochs {-(-step // spe)} or more (and no smaller --max-steps); nothing was changed"
        )
    summary = run.dir / "summary.json"
    if run.resume and step == last and summary.is_file():
        try:
            done = json.loads(summary.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            return  # a damaged summary: the finish is done again
        if isinstance(done, dict) and done.get("steps") == step:
            raise _NothingToTrain(
                f"nothing to train: {run.dir} has trained the {step} steps ({epochs}) that --epochs "
                f"{config.epochs} asks for -- pass a larger --epochs to train more; nothing was changed",
                done,
            )


def _fit(r: _Run, summaries, t_start: float) -> dict[str, Any] | None:
    """The optimizer steps up to --epochs (or --max-steps), cut at epoch ends and --checkpoint-every;
    returns the last evaluation (None when there was nothing left to train)."""
    config, spe = r.config, r.spe
    last = last_step(config, spe)
    final, epoch_time, first_step = None, 0.0, []

    def first_step_done(loss):
        first_step.append(loss)
        r.log(f"first step done {time.perf_counter() - t_start:.1f}s after the run started (loss {loss:.2f})")

    while r.step < last:
        epoch, start = r.step // spe + 1, r.step % spe
        stop = min(spe, last - (epoch - 1) * spe)
        if config.checkpoint_every:
            stop = min(stop, (r.step // config.checkpoint_every + 1) * config.checkpoint_every - (epoch - 1) * spe)
        t0 = time.perf_counter()
        try:
            announce = None if first_step else first_step_done
            r.state = train_part(r.trainer, r.state, r.feeds[0], config, epoch, start, stop, announce, summaries)
        except FloatingPointError as e:
            raise FloatingPointError(f"{e}; {_after_divergence(r)}") from None
        epoch_time += time.perf_counter() - t0
        r.step = (epoch - 1) * spe + stop
        ended = epoch_metrics(r.trainer, r.state, r.feeds, config, epoch, epoch_time, spe) if stop == spe else None
        if ended is not None:
            final, epoch_time = ended, 0.0
            _epoch_done(r, summaries, ended)
        if config.checkpoint:
            r.dir.save(r.step, r.state)
        if ended is not None:
            r.log(epoch_line(ended, config.epochs))
    if r.step % spe:  # stopped inside an epoch (--max-steps): test the model as it is
        epoch = r.step // spe + 1
        final = epoch_metrics(r.trainer, r.state, r.feeds, config, epoch, epoch_time, r.step % spe)
        final = dict(final, step=r.step, partial_epoch=True)
        r.dir.append_metrics(final)  # the evaluation of where it stopped, marked partial (a resume drops it)
        summaries.scalars(r.step, {"test/loss": final["test_loss"], "test/recon": final["test_recon"]})
        r.log(
            f"stopped at step {r.step} (--max-steps {config.max_steps}), inside epoch {epoch}: test loss "
            f"{final['test_loss']:.4f} per sample; resume with --resume and a larger --max-steps"
        )
    return final


def _after_divergence(r: _Run) -> str:
    kept = r.dir.last_good_step() if r.config.checkpoint else None
    if kept is not None:
        where = f"the last good checkpoint (step {kept}) in {r.dir.dir}"
        return f"{where} is kept: continue from it with --resume and a lower --lr"
    return "no checkpoint was written: start again here with --restart"


def _epoch_done(r: _Run, summaries, m: dict) -> None:
    """An epoch's metrics into metrics.jsonl and TensorBoard, with its pictures."""
    r.history.append(m)
    r.dir.append_metrics(m)
    terms = ("train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl")
    scalars = {k.replace("_", "/"): m[k] for k in terms}
    scalars.update(
        {"train/kl_weight": m["kl_weight"], "train/epoch_steps_per_sec": r.spe / max(m["train_time_s"], 1e-9)}
    )
    summaries.scalars(r.step, scalars)
    if summaries.enabled:  # TensorBoard shows the first 8 test images reconstructed, and samples
        shown_x, shown_y = device_arrays(r.test_ds.take(8))
        model = r.trainer.merge(jax.tree.map(to_host, r.state))
        key = jax.random.fold_in(r.root, KeyPurpose.SUMMARY_IMAGES)
        summaries.images(r.step, evaluate.summary_images(model, shown_x, shown_y, key=key))


def epoch_line(m: dict, epochs: int) -> str:
    return (
        f"Epoch {m['epoch']}/{epochs}  Train - Loss: {m['train_loss']:.4f}, Recon: {m['train_recon']:.4f}, "
        f"KL: {m['train_kl']:.4f}  Test - Loss: {m['test_loss']:.4f}, Recon: {m['test_recon']:.4f}, "
        f"KL: {m['test_kl']:.4f}  (train {m['train_time_s']:.1f}s, test {m['test_time_s']:.1f}s)"
    )


def _finish(r: _Run, summaries, final: dict[str, Any] | None, wall: float) -> dict[str, Any]:
    """The end of a run: the importance-sampled NLL (--iwae-k), the figures, summary.json."""
    config, workdir, step = r.config, r.dir.dir, r.step
    summary: dict[str, Any] = {
        "workdir": str(workdir),
        "vae_jax_version": __version__,
        "config": dataclasses.asdict(config),
        "epochs": len(r.history),
        "steps": step,
        "wall_time_s": wall,
        "final": final or (r.history[-1] if r.history else None),
        "parts": getattr(r.dir, "parts", None),
        "conv_form": config.conv_form,
    }
    model = r.trainer.merge(jax.tree.map(to_host, r.state))
    if config.iwae_k:
        test_x, test_y = device_arrays(r.test_ds)
        key = jax.random.fold_in(r.root, KeyPurpose.IWAE)
        nll = evaluate.iwae_nll(
            model, test_x, test_y, k=config.iwae_k, key=key, recon=config.recon, progress=config.progress, say=r.log
        )
        summary["iwae_nll"] = nll
        summaries.scalars(step, {"test/iwae_nll": nll})
        r.log(f"importance-sampled NLL (k={config.iwae_k}): {nll:.3f} nats")
    summaries.close()
    if config.figures and r.dir.primary:
        t0 = time.perf_counter()
        key = jax.random.fold_in(r.root, KeyPurpose.FIGURES)
        with atomic_dir(workdir / "figures", replace=True, what="the figures folder") as tmp:  # all or none
            made = evaluate.make_figures(model, r.test_ds, r.history, tmp, key=key)
        summary["figures"] = {k: str(workdir / "figures" / Path(v).name) for k, v in made.items()}
        summary["figures_time_s"] = time.perf_counter() - t0
        r.log(f"figures: {len(made)} PNGs in {workdir / 'figures'} ({summary['figures_time_s']:.1f}s)")
    r.dir.write_summary(summary)
    f = summary["final"]
    if f:
        spe = r.spe
        whole = f"{len(r.history)} epochs" + (
            f" and {step % spe} steps of epoch {step // spe + 1}" if step % spe else ""
        )
        r.log(
            f"done: {step} steps ({whole}), test loss {f['test_loss']:.4f} per sample "
            f"(recon {f['test_recon']:.4f}, KL {f['test_kl']:.4f}); wrote {workdir}"
        )
    return summary


def initial_weights_from(path, trainer, state, config: Config, image_shape):
    """`state` with the parameters (and BatchNorm statistics) of the latest checkpoint of the run in
    `path`, and a fresh optimizer state: --init-from, to fine-tune a trained model (e.g. with another
    --train-k or learning rate). The source must be the same model on images of the same shape.
    `path` a .pt file: its state_dict (see vae_jax.torch_import), its sha256 into config.init_from_sha256."""
    if Path(path).is_file():  # a torch .pt checkpoint: vae_jax.torch_import
        from vae_jax import torch_import, torch_models  # here: they import this module

        src, src_config, src_shape = build_model(config, image_shape, rngs=nnx.Rngs(0)), config, image_shape
        try:  # recorded in config.json; a torch class of one's own (--torch-model): by call order
            if config.torch_model:
                config.init_from_sha256 = torch_models.load_pt_into(src, path, config, image_shape)
            else:
                config.init_from_sha256 = torch_import.load_pt_into(src, path, config)
        except VaeJaxError as e:
            raise ConfigError(f"--init-from {path}: {e}") from None
    elif not (Path(path) / "config.json").exists():
        raise ConfigError(
            f"--init-from {path}: no run there (config.json is missing) -- pass the --workdir "
            "of a trained `vae-jax train` run"
        )
    else:
        try:
            src, src_config, src_shape = restore_run(path)
        except CheckpointError as e:
            raise ConfigError(f"--init-from {path}: {e}") from None
    _, params, batch_stats = cast(tuple[nnx.GraphDef, nnx.State, nnx.State], nnx.split(src, nnx.Param, nnx.BatchStat))
    mismatch = checkpoints.tree_mismatch(
        checkpoints.flat_tree({"params": params, "batch_stats": batch_stats}),
        checkpoints.flat_tree({k: state[k] for k in ("params", "batch_stats")}),
    )
    if tuple(src_shape) != tuple(image_shape) or mismatch:

        def size(c):
            return f"{c.model} (--latent-dim {c.latent_dim or 'default'}, --hidden-dim {c.hidden_dim or 'default'})"

        raise ConfigError(
            f"--init-from {path}: it holds a {size(src_config)} for images {tuple(src_shape)}, this run "
            f"builds a {size(config)} for images {tuple(image_shape)} ({mismatch or 'other images'}) "
            "-- use the same --model, --latent-dim, --hidden-dim and image shape"
        )
    params, batch_stats = jax.tree.map(jnp.asarray, (params, batch_stats))
    return {**state, "params": params, "batch_stats": batch_stats, "opt_state": trainer.tx.init(params)}


def steps_per_epoch(config: Config, train_ds) -> int:
    return len(input_pipeline.batch_slices(len(train_ds), config.batch_size))


def restore_run(workdir, step: int | None = None):
    """(model in eval mode, config, image_shape) of the latest checkpoint of a run directory, or of the
    checkpoint of optimizer step `step`."""
    workdir = Path(workdir)
    path = workdir / "config.json"
    if not path.exists():
        raise CheckpointError(
            f"no run in {workdir}: config.json is missing -- pass the --workdir of a `vae-jax train` run"
        )
    saved = checkpoints.check_saved_config(checkpoints.read_config(path), path)
    fields = {f.name for f in dataclasses.fields(Config)}
    try:
        image_shape = tuple(int(d) for d in saved.pop("image_shape"))
        saved["devices"] = 1  # how many devices trained it does not matter to read it (eval, plot, export)
        config = Config(**{k: v for k, v in saved.items() if k in fields}).validate()
        if config.conv_form == "onednn" and not _onednn_here():  # reading needs no particular form
            config = dataclasses.replace(config, conv_form="auto")
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(
            f"{path} is damaged ({type(e).__name__}: {e}) -- restore it from the run's "
            "original config.json or train again"
        ) from None
    models.model_spec(config.model)  # a missing model file, module or class is its own line (not "damaged")
    try:  # a damaged size in config.json must not reach XLA (which aborts on arrays beyond memory)
        check_memory(config, image_shape, training=False)
    except (OverflowError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"{path} is damaged ({type(e).__name__}: {e}) -- restore it from the run's original config.json "
            "or train again"
        ) from None
    changed = user_models.changed_since(config.model_source)
    if changed:
        warn(f"{changed} -- if the checkpoint does not fit it, restore the file the run was trained with")
    run = checkpoints.RunDir(workdir, config, resume=True, read_only=True)
    model = build_model(config, image_shape, rngs=nnx.Rngs(params=purpose_key(config.seed, KeyPurpose.INIT)))
    trainer = Trainer(model, config, steps_per_epoch=1)  # the schedule only shapes opt_state
    state, epoch = run.restore(trainer.init_state, step)
    if epoch is None:
        raise CheckpointError(
            f"no checkpoint in {workdir}/checkpoints -- train first (vae-jax train --workdir {workdir})"
        )
    return trainer.merge(state), config, image_shape


def _onednn_here() -> bool:
    return jax.default_backend() == "cpu" and onednn_conv.available()
