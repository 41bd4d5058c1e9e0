"""Training and evaluation: one train step and one eval step for every model and loss variant.

`train_and_evaluate(config, workdir)` is the main job. Randomness comes from keys derived from
(seed, purpose, epoch, step) with `jax.random.fold_in`, so a run is reproducible and a resumed
run continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vae_jax import __version__, evaluate, input_pipeline, losses, models
from vae_jax.config import FLOAT32_MAX, KINDS, Config, option, option_name  # noqa: F401 -- train.Config, as callers use it
from vae_jax.errors import ConfigError, DataError
from vae_jax.files import atomic_dir, check_replaceable


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


# --data-mode auto keeps a split whole on the device up to this size (as stored, uint8): MNIST's
# 60000 images are 47 MB; CelebA's train split at 64x64 is 2.0 GB and streams.
MEMORY_BYTES = 64 * 2**20


def learning_rate(config: Config, steps_per_epoch: int | None):
    """Adam's learning rate: the constant --lr, or a cosine decay from --lr to 0 over the run's steps."""
    if config.lr_schedule == "constant":
        return config.lr
    if not steps_per_epoch:
        raise ConfigError(f"--lr-schedule {config.lr_schedule} needs the number of steps per epoch")
    return optax.cosine_decay_schedule(config.lr, decay_steps=int(config.epochs) * int(steps_per_epoch))


def build_model(config: Config, image_shape, num_classes=10, *, rngs):
    """The model named by config, sized for the data (as its vae_jax.models.REGISTRY entry says)."""
    return models.REGISTRY[config.model].build(config, image_shape, num_classes, rngs=rngs)


def resolved_sizes(config: Config, model) -> Config:
    """`config` with the sizes the model was built with where it left them to the chapter's defaults."""
    latent, hidden = getattr(model, "latent_dim", None), getattr(model, "hidden_dim", None)
    return dataclasses.replace(
        config,
        latent_dim=config.latent_dim if config.latent_dim is not None or latent is None else int(latent),
        hidden_dim=config.hidden_dim if config.hidden_dim is not None or hidden is None else int(hidden),
    )


def kl_weight_for(config: Config, epoch: int) -> float:
    """KL annealing weight for a 1-based epoch: min(1, epoch / E); 1 when annealing is off."""
    if config.kl_anneal_epochs <= 0:
        return 1.0
    return min(1.0, epoch / config.kl_anneal_epochs)


model_inputs = models.model_inputs  # where it lives: vae_jax.models


def loss_terms(model, x, y, key, *, recon, beta, kl_weight, eps=None, k=1):
    """(total, (recon_loss, kl_loss)) summed over the batch: the one ELBO every model trains on.

    k > 1: total is minus the IWAE bound with k samples per image (Burda et al. 2016; Bernoulli
    decoder, beta = kl_weight = 1), a tighter bound on -log p(x) than the ELBO; recon_loss is then
    the mean over the k samples and kl_loss the analytic KL, reported as for the ELBO. eps: (k, B, D).
    """
    x, cond = model_inputs(model, x, y)
    if k > 1:
        mu, logvar = model.encode(x, *cond)
        eps = models.draw_eps(key, (k, *mu.shape), mu.dtype, eps)
        logw, log_px_z = losses.importance_log_weights(model.decode_logits, x, cond, mu, logvar, eps)
        total = -jnp.sum(jax.nn.logsumexp(logw, axis=0) - math.log(k))
        return total, (-jnp.sum(log_px_z) / k, jnp.sum(losses.kl_divergence_gaussian(mu, logvar)))
    logits, mu, logvar = model.forward_logits(x, key, *cond, eps=eps)
    out = logits if recon == "bce_logits" else jax.nn.sigmoid(logits)
    total, rec, kl = losses.elbo(out, x, mu, logvar, recon=recon, beta=beta, kl_weight=kl_weight)
    return total, (rec, kl)


class Trainer:
    """Holds the model's graph definitions and the jitted steps; the state is a plain pytree.

    state = {"params", "batch_stats", "opt_state", "step"}
    """

    def __init__(self, model, config: Config, steps_per_epoch: int | None = None):
        self.config = config
        model.train()
        # nnx.split's return type leaves the number of states open; two filters give two
        self.graphdef, params, batch_stats = cast(
            tuple[nnx.GraphDef, nnx.State, nnx.State], nnx.split(model, nnx.Param, nnx.BatchStat)
        )
        model.eval()
        self.eval_graphdef = nnx.split(model, nnx.Param, nnx.BatchStat)[0]
        model.train()
        self.tx = optax.adam(learning_rate(config, steps_per_epoch))
        self._init_state = {
            "params": params,
            "batch_stats": batch_stats,
            "opt_state": self.tx.init(params),
            "step": jnp.zeros((), jnp.int32),
            "sums": zero_sums(),
        }
        # The state is donated: XLA updates parameters and Adam moments in place; a state passed in
        # is consumed -- use the one returned.
        # Two entry points to the one step: data on the device (batch gathered by index inside the
        # step), or a batch streamed from the host.
        self.train_step = jax.jit(self._train_step, donate_argnums=(0,))
        self.batch_train_step = jax.jit(self._step, donate_argnums=(0,))
        self.eval_step = jax.jit(self._eval_step)
        self.batch_eval_step = jax.jit(self._eval)
        self.mesh: jax.sharding.Mesh | None = None

    @property
    def init_state(self):
        """A fresh copy of the initial state (the train step consumes the state it is given)."""
        return jax.tree.map(jnp.copy, self._init_state)

    def shard(self, devices: int):
        """Data parallelism over the first `devices` devices (one host or many after
        jax.distributed.initialize()): state and data replicated, each batch's indices split along
        the mesh's 'data' axis, so XLA partitions the step and all-reduces the gradients. The batch
        is the GLOBAL batch: results equal a single-device run up to float summation order."""
        from jax.sharding import Mesh, NamedSharding
        from jax.sharding import PartitionSpec as P

        have = jax.device_count()
        if devices > have:
            raise ConfigError(
                f"--devices {devices} asks for more devices than JAX sees ({have}): on CPU set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={devices}, or lower --devices"
            )
        self.mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
        self._replicated = NamedSharding(self.mesh, P())
        self._split = NamedSharding(self.mesh, P("data"))

    def replicate(self, tree):
        return tree if self.mesh is None else jax.device_put(tree, self._replicated)

    def place_batch(self, idx):
        """Split a batch's indices over the mesh (replicated when its size does not divide evenly)."""
        if self.mesh is None:
            return idx
        n = self.mesh.devices.size
        return jax.device_put(idx, self._split if idx.shape[0] % n == 0 else self._replicated)

    def merge(self, state, train=False):
        return nnx.merge(self.graphdef if train else self.eval_graphdef, state["params"], state["batch_stats"])

    def put(self, tree):
        """Host arrays -> device arrays, replicated over the mesh when there is one (every process
        passes the same values)."""
        if self.mesh is None:
            return jax.device_put(tree)
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(self._replicated, np.asarray(a)), tree)

    def batch_rows(self, rows: int) -> slice:
        """The rows of a global batch of `rows` that this process supplies (all of them on one process)."""
        n = 1 if self.mesh is None else self.mesh.devices.size
        if rows % n:
            return slice(None)
        return input_pipeline.process_rows(rows, jax.process_index(), jax.process_count())

    def put_batch(self, arrays, rows: int):
        """This process's rows of a global batch of `rows` -> global device arrays, split along the mesh's
        'data' axis (replicated when `rows` does not divide by the device count)."""
        if self.mesh is None:
            return jax.device_put(arrays)
        sharding = self._split if rows % self.mesh.devices.size == 0 else self._replicated
        return tuple(jax.make_array_from_process_local_data(sharding, a, (rows, *a.shape[1:])) for a in arrays)

    def _prepare(self, x, key):
        """(x as float32, eps_key): uint8 pixels -> [0, 1]; dynamic binarization draws from the step's key."""
        x = input_pipeline.to_float(x)
        bin_key, eps_key = jax.random.split(key)
        if self.config.binarize == "dynamic":
            x = jax.random.bernoulli(bin_key, x).astype(x.dtype)
        return x, eps_key

    def _step(self, state, x, y, key, kl_weight, eps=None):
        """The one train step: an Adam step on the batch (x, y) -> (state, metrics).

        state["sums"] accumulates the epoch's loss sums. eps: the reparameterization noise, when given
        (cross-framework comparisons); else drawn from key."""
        cfg = self.config
        x, eps_key = self._prepare(x, key)

        def loss_fn(params):
            model = nnx.merge(self.graphdef, params, state["batch_stats"], copy=True)
            total, aux = loss_terms(
                model, x, y, eps_key, recon=cfg.recon, beta=cfg.beta, kl_weight=kl_weight, eps=eps, k=int(cfg.train_k)
            )
            return total, (aux, nnx.state(model, nnx.BatchStat))

        (total, ((rec, kl), batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": total, "recon": rec, "kl": kl}
        new = {
            "params": params,
            "batch_stats": batch_stats,
            "opt_state": opt_state,
            "step": state["step"] + 1,
            "sums": jax.tree.map(jnp.add, state["sums"], metrics),
        }
        return new, metrics

    def _train_step(self, state, images, labels, idx, key, kl_weight, eps=None):
        """The train step on the batch images[idx] (the whole split on the device)."""
        return self._step(state, images[idx], labels[idx], key, kl_weight, eps)

    def _eval(self, state, x, y, key, kl_weight):
        """Loss sums on a batch in eval mode, z sampled as in the chapter's test_epoch.

        Always the ELBO (one z per image), whatever --train-k: test losses of runs compare."""
        cfg = self.config
        x, eps_key = self._prepare(x, key)
        model = self.merge(state)
        total, (rec, kl) = loss_terms(model, x, y, eps_key, recon=cfg.recon, beta=cfg.beta, kl_weight=kl_weight)
        return {"loss": total, "recon": rec, "kl": kl}

    def _eval_step(self, state, images, labels, idx, key, kl_weight):
        return self._eval(state, images[idx], labels[idx], key, kl_weight)


def zero_sums():
    """The running loss sums of an epoch (kept in the train state, so a checkpoint inside an epoch
    resumes it exactly)."""
    return {k: jnp.zeros((), jnp.float32) for k in ("loss", "recon", "kl")}


def to_host(x):
    """A (replicated) device value as numpy; in a multi-process run this process's copy."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)


class Feed:
    """One split on its way to the step: whole on the device ('memory': the step gathers its batch by
    index) or streamed ('stream': a Grain pipeline decodes the next batches on the host and they are
    transferred while the step runs). --data-mode auto streams splits over MEMORY_BYTES."""

    def __init__(self, ds, trainer, config: Config):
        self.ds, self.trainer, self.config = ds, trainer, config
        self.streamed = config.data_mode == "stream" or (config.data_mode == "auto" and ds.nbytes > MEMORY_BYTES)
        self.arrays = None if self.streamed else trainer.put(ds.stored_arrays())

    def step(self, train: bool):
        tr = self.trainer
        if train:
            return tr.batch_train_step if self.streamed else tr.train_step
        return tr.batch_eval_step if self.streamed else tr.eval_step

    def host_batches(self, order, batch_size, start=0, stop=None):
        """(images, labels) numpy batches [start, stop) of `order`, this process's rows, as the step sees them."""
        rows = self.trainer.batch_rows
        if self.streamed:
            return input_pipeline.stream_batches(
                self.ds, order, batch_size, start=start, stop=stop, rows=rows, workers=self.config.data_workers
            )
        return (
            input_pipeline.read_batch(self.ds.source, order[a:b][rows(b - a)])
            for a, b in input_pipeline.batch_slices(len(order), batch_size)[start:stop]
        )

    def batches(self, order, batch_size, start=0, stop=None):
        """The step's data arguments for batches [start, stop) of `order` (a host int array)."""
        tr = self.trainer
        slices = input_pipeline.batch_slices(len(order), batch_size)[start:stop]
        if not self.streamed:
            assert self.arrays is not None  # put on the device when not streamed
            for a, b in slices:
                yield (*self.arrays, *tr.put_batch((order[a:b][tr.batch_rows(b - a)],), b - a))
            return
        # device_put is asynchronous: the next batch moves while a step runs
        ahead: collections.deque[Any] = collections.deque()
        for (a, b), batch in zip(slices, self.host_batches(order, batch_size, start, stop), strict=False):
            ahead.append(tr.put_batch(batch, b - a))
            if len(ahead) > 1:
                yield ahead.popleft()
        while ahead:
            yield ahead.popleft()


def epoch_keys(seed: int, epoch: int):
    root = jax.random.key(seed)
    purposes = (KeyPurpose.SHUFFLE, KeyPurpose.TRAIN, KeyPurpose.EVAL)
    return {p: jax.random.fold_in(jax.random.fold_in(root, p), epoch) for p in purposes}


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The shuffled order of a 1-based epoch (from the run's seed), on the host."""
    return np.asarray(input_pipeline.epoch_permutation(epoch_keys(seed, epoch)[KeyPurpose.SHUFFLE], num_examples))


def first_nonfinite(losses) -> int | None:
    """Index of the first non-finite value in a list of scalars, or None."""
    bad: np.ndarray | list[int] = np.flatnonzero(~np.isfinite(np.stack([to_host(v) for v in losses]))) if losses else []
    return int(bad[0]) if len(bad) else None


def train_part(
    trainer, state, feed: Feed, config: Config, epoch: int, start: int, stop: int, on_first_step=None, summaries=None
):
    """Optimizer steps on batches [start, stop) of a 1-based epoch; returns the state.

    Step i of the epoch draws from fold_in(the epoch's train key, i): where the epoch is cut
    (--max-steps, --checkpoint-every, a resume) does not change the run."""
    keys = epoch_keys(config.seed, epoch)
    kw = kl_weight_for(config, epoch)
    if start == 0:
        state = {**state, "sums": trainer.put(zero_sums())}
    step_fn, losses = feed.step(train=True), []
    spe = steps_per_epoch(config, feed.ds)
    bar = None
    if config.progress and jax.process_index() == 0 and sys.stderr.isatty():  # a line per epoch in a log
        from tqdm.auto import tqdm

        bar = tqdm(total=stop - start, initial=0, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
    order = epoch_order(config.seed, epoch, len(feed.ds))
    for i, args in enumerate(feed.batches(order, config.batch_size, start, stop), start):
        state, m = step_fn(state, *args, jax.random.fold_in(keys[KeyPurpose.TRAIN], i), kw)
        losses.append(m["loss"])
        if on_first_step is not None:  # waits for the step: the time to the first step, said once
            on_first_step(float(to_host(m["loss"])))
            on_first_step = None
        step = (epoch - 1) * spe + i + 1
        if summaries is not None and config.log_every and step % config.log_every == 0:
            n = min(config.batch_size, len(feed.ds) - i * config.batch_size)
            now = time.perf_counter()
            rate = (
                {}
                if not hasattr(summaries, "last")
                else {"train/steps_per_sec": (step - summaries.last[0]) / (now - summaries.last[1])}
            )
            summaries.scalars(step, {"train/step_loss": float(to_host(m["loss"])) / n, **rate})
            summaries.last = (step, now)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not math.isfinite(float(to_host(state["sums"]["loss"]))):
        bad = first_nonfinite(losses)
        where = f"step {start + bad + 1} of {spe}" if bad is not None else "the epoch's sum"
        raise FloatingPointError(f"non-finite training loss at epoch {epoch}, {where}: lower --lr or check the data")
    return state


def evaluate_split(trainer, state, feed: Feed, config: Config, epoch: int) -> dict[str, float]:
    """Per-sample means of the test ELBO terms, in order, z drawn from the epoch's eval key."""
    key, kw = epoch_keys(config.seed, epoch)[KeyPurpose.EVAL], kl_weight_for(config, epoch)
    step_fn, sums = feed.step(train=False), None
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
    m = evaluate_split(trainer, trainer.init_state, Feed(test_ds, trainer, config), config, config.epochs)
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


def train_epoch(trainer, state, feeds, config, epoch):
    """One whole epoch (1-based) of training then evaluation; returns (state, metrics dict)."""
    t0 = time.perf_counter()
    spe = steps_per_epoch(config, feeds[0].ds)
    state = train_part(trainer, state, feeds[0], config, epoch, 0, spe)
    return state, epoch_metrics(trainer, state, feeds, config, epoch, time.perf_counter() - t0, spe)


def _fit_error(config: Config, image_shape):
    """None when the model runs on images of `image_shape`, else the exception.

    Traced with abstract values only (jax.eval_shape): nothing is initialized or computed.
    """

    def loss():
        model = build_model(config, image_shape, rngs=nnx.Rngs(0))
        model.eval()
        x, y = jnp.zeros((1, *image_shape), jnp.float32), jnp.zeros((1,), jnp.int32)
        return loss_terms(model, x, y, jax.random.key(0), recon=config.recon, beta=config.beta, kl_weight=1.0)[0]

    try:
        jax.eval_shape(loss)
    except (TypeError, ValueError) as e:
        return e
    return None


def check_model_fits(config: Config, image_shape):
    """ConfigError unless the model runs on images of `image_shape`; the message names the registered
    models that do."""
    e = _fit_error(config, image_shape)
    if e is None:
        return
    detail = (str(e).strip().splitlines() or [""])[0][:160]
    fitting = [
        name
        for name in models.REGISTRY
        if _fit_error(dataclasses.replace(config, model=name, latent_dim=None, hidden_dim=None), image_shape) is None
    ]
    raise ConfigError(
        f"--model {config.model} does not fit the {config.dataset} images of shape {tuple(image_shape)} "
        f"({type(e).__name__}: {detail}) -- use a model that does: {', '.join(fitting) or 'none is registered'}"
    )


def device_memory_bytes() -> int:
    """Memory of the first device: the accelerator's limit, or the host's RAM for the CPU."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 -- backends without memory statistics
        stats = {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(config: Config, image_shape, *, training: bool = True, examples: int | None = None) -> None:
    """ConfigError, before anything is allocated, for a run that cannot fit in memory: the weights
    with their gradients and Adam's two moments (4 copies), and a batch's activations (estimated as
    8 float32 copies of input, hidden and latent sizes per sample and importance sample).
    examples: the size of the largest split, which bounds the batch (a --batch-size above it is one
    full-data batch). training=False: only the weights and Adam's state (reading a trained run)."""
    abstract = nnx.eval_shape(lambda: build_model(config, image_shape, rngs=nnx.Rngs(0)))
    params = sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    width = math.prod(image_shape) + int(config.hidden_dim or 400) + int(getattr(abstract, "latent_dim", 0))
    weights = 4 * 4 * params
    batch = min(int(config.batch_size), int(examples)) if examples is not None else int(config.batch_size)
    activations = 8 * 4 * batch * int(config.train_k) * width if training else 0
    have = device_memory_bytes()
    if weights + activations > 0.8 * have:
        lower = "--latent-dim or --hidden-dim" if weights > activations else "--batch-size or --train-k"
        raise ConfigError(
            f"out of memory: this run needs about {(weights + activations) / 2**30:.1f} GiB "
            f"({params:,} parameters with Adam's state, and a batch's activations), the device has "
            f"{have / 2**30:.1f} GiB -- lower {lower}"
        )


def check_figures_fit(config: Config, model, test_ds) -> None:
    """ConfigError, before any training, for a run whose figures would fail at its end."""
    if not config.figures:
        return
    if getattr(model, "latent_dim", 2) < 2:
        raise ConfigError(
            f"--latent-dim {model.latent_dim}: the latent figures (scatter, manifold) need 2 or more "
            "dimensions -- pass --latent-dim 2 or more, or --no-figures"
        )
    if len(test_ds) < 2:
        raise ConfigError(
            f"the figures need at least 2 test images, the test set has {len(test_ds)} -- raise "
            "--test-limit or pass --no-figures"
        )


def load_data(config: Config):
    """(train, test) Datasets for the config; --train-limit/--test-limit select before decoding."""
    train = input_pipeline.load_dataset(config.dataset, "train", config.data_dir).take(config.train_limit)
    test = input_pipeline.load_dataset(config.test_dataset or config.dataset, "test", config.data_dir).take(
        config.test_limit
    )
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
    return jnp.asarray(input_pipeline.to_float(images), jnp.float32), jnp.asarray(labels, jnp.int32)


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
    except input_pipeline.ReadError as e:
        raise DataError(f"{e}, then {how_to_continue(workdir)}") from None


def how_to_continue(workdir) -> str:
    """The command that continues a run after a failure, and what it continues from (read from disk)."""
    from vae_jax.checkpoints import latest_step_on_disk

    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        return "run the same command again (nothing of this run was written yet)"
    step = latest_step_on_disk(workdir)
    kept = f"the checkpoint of step {step} is kept" if step else "no checkpoint was written yet"
    return f"continue with `vae-jax train --workdir {workdir} --resume` ({kept})"


def conv_form_name(model) -> str:
    """'onednn' when the model's convolutions run on oneDNN's kernels, else 'xla' (the XLA forms)."""
    from vae_jax import layers

    onednn = (layers.OnednnConv, layers.OnednnConvTranspose)
    return "onednn" if any(isinstance(m, onednn) for _, m in nnx.iter_graph(model)) else "xla"


def _train_and_evaluate(config: Config, workdir, *, resume: bool, restart: bool, log) -> dict[str, Any]:
    from vae_jax import checkpoints  # orbax is imported only when a run checkpoints

    t_start = time.perf_counter()
    config.validate()
    if jax.process_count() > 1:
        if config.devices != jax.device_count():
            raise ConfigError(
                f"a multi-process run trains on every device: pass --devices {jax.device_count()} "
                f"(the global device count over {jax.process_count()} processes), not {config.devices}"
            )
        if jax.process_index():
            log = lambda s: None  # noqa: E731 -- process 0 speaks for the run
    workdir = Path(workdir)
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
        config = run.config = resolved_sizes(config, model)  # config.json and summary.json say the sizes used
        conv_form = conv_form_name(model)
        check_figures_fit(config, model, test_ds)
        spe = steps_per_epoch(config, train_ds)
        trainer = Trainer(model, config, steps_per_epoch=spe)
        if config.devices > 1:
            trainer.shard(config.devices)
        state, _ = run.restore(trainer.put(trainer.init_state))  # restored with the state's sharding
        step = int(to_host(state["step"]))
        if config.init_from and not step:
            state = initial_weights_from(config.init_from, trainer, state, config, image_shape)
        feeds = (Feed(train_ds, trainer, config), Feed(test_ds, trainer, config))  # 'memory' decodes all now
        history = run.read_metrics(upto_epoch=step // spe)
        run.write_config(image_shape, step)  # only once the options, the data and --init-from are known to work
    state = trainer.put(jax.tree.map(to_host, state))
    if step:
        log(f"resumed from step {step} (epoch {step // spe + 1}, batch {step % spe} of {spe}) in {workdir}")
    last = config.epochs * spe if not config.max_steps else min(config.epochs * spe, config.max_steps)
    final: dict[str, Any] | None = None
    epoch_time, t_run, first_step = 0.0, time.perf_counter(), []

    def first_step_done(loss):
        first_step.append(loss)
        log(f"first step done {time.perf_counter() - t_start:.1f}s after the run started (loss {loss:.2f})")

    from vae_jax.summaries import Summaries

    summaries = Summaries(workdir, enabled=config.tensorboard and run.primary)
    summaries.hparams({**dataclasses.asdict(config), "image_shape": str(image_shape)}, ("test/loss", "train/loss"))
    shown_x, shown_y = device_arrays(test_ds.take(8))  # TensorBoard shows them reconstructed after each epoch
    while step < last:
        epoch, start = step // spe + 1, step % spe
        stop = min(spe, last - (epoch - 1) * spe)
        if config.checkpoint_every:
            stop = min(stop, (step // config.checkpoint_every + 1) * config.checkpoint_every - (epoch - 1) * spe)
        t0 = time.perf_counter()
        try:
            announce = None if first_step else first_step_done
            state = train_part(trainer, state, feeds[0], config, epoch, start, stop, announce, summaries)
            epoch_time += time.perf_counter() - t0
            step = (epoch - 1) * spe + stop
            if stop == spe:
                final = epoch_metrics(trainer, state, feeds, config, epoch, epoch_time, spe)
        except FloatingPointError as e:
            kept = run.latest_step() if config.checkpoint else 0
            raise FloatingPointError(
                f"{e}; "
                + (
                    f"the last good checkpoint (step {kept}) in {workdir} is kept: continue from it with "
                    "--resume and a lower --lr"
                    if kept
                    else "no checkpoint was written: start again here with --restart"
                )
            ) from None
        if stop == spe:
            assert final is not None  # set by epoch_metrics above when the epoch ends
            epoch_time = 0.0
            history.append(final)
            run.append_metrics(final)
            summaries.scalars(
                step,
                {
                    **{
                        f"{k.split('_')[0]}/{k.split('_')[1]}": final[k]
                        for k in ("train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl")
                    },
                    "train/kl_weight": final["kl_weight"],
                    "train/epoch_steps_per_sec": spe / max(final["train_time_s"], 1e-9),
                },
            )
            if summaries.enabled:
                pictures = evaluate.summary_images(
                    trainer.merge(jax.tree.map(to_host, state)),
                    shown_x,
                    shown_y,
                    key=jax.random.fold_in(root, KeyPurpose.SUMMARY_IMAGES),
                )
                summaries.images(step, pictures)
        if config.checkpoint:
            run.save(step, state)
        if stop == spe:
            m = final
            assert m is not None  # as above: the epoch ended
            log(
                f"Epoch {epoch}/{config.epochs}  Train - Loss: {m['train_loss']:.4f}, Recon: {m['train_recon']:.4f}, "
                f"KL: {m['train_kl']:.4f}  Test - Loss: {m['test_loss']:.4f}, Recon: {m['test_recon']:.4f}, "
                f"KL: {m['test_kl']:.4f}  (train {m['train_time_s']:.1f}s, test {m['test_time_s']:.1f}s)"
            )
    if step % spe:  # stopped inside an epoch (--max-steps): test the model as it is
        epoch = step // spe + 1
        final = dict(
            epoch_metrics(trainer, state, feeds, config, epoch, epoch_time, step % spe), step=step, partial_epoch=True
        )
        run.append_metrics(final)  # the evaluation of where it stopped, marked partial (a resume drops it)
        summaries.scalars(step, {"test/loss": final["test_loss"], "test/recon": final["test_recon"]})
        log(
            f"stopped at step {step} (--max-steps {config.max_steps}), inside epoch {epoch}: test loss "
            f"{final['test_loss']:.4f} per sample; resume with --resume and a larger --max-steps"
        )
    wall = time.perf_counter() - t_run
    summary: dict[str, Any] = {
        "workdir": str(workdir),
        "vae_jax_version": __version__,
        "config": dataclasses.asdict(config),
        "epochs": len(history),
        "steps": step,
        "wall_time_s": wall,
        "final": final or (history[-1] if history else None),
        "parts": getattr(run, "parts", None),
        "conv_form": conv_form,
    }
    model = trainer.merge(jax.tree.map(to_host, state))
    if config.iwae_k:
        test_x, test_y = device_arrays(test_ds)
        summary["iwae_nll"] = evaluate.iwae_nll(
            model,
            test_x,
            test_y,
            k=config.iwae_k,
            key=jax.random.fold_in(root, KeyPurpose.IWAE),
            recon=config.recon,
            binarize_key=None,
        )
        summaries.scalars(step, {"test/iwae_nll": summary["iwae_nll"]})
        log(f"importance-sampled NLL (k={config.iwae_k}): {summary['iwae_nll']:.3f} nats")
    summaries.close()
    if config.figures and run.primary:
        t0 = time.perf_counter()
        with atomic_dir(workdir / "figures", replace=True, what="the figures folder") as tmp:  # all figures or none
            made = evaluate.make_figures(model, test_ds, history, tmp, key=jax.random.fold_in(root, KeyPurpose.FIGURES))
        summary["figures"] = {k: str(workdir / "figures" / Path(v).name) for k, v in made.items()}
        summary["figures_time_s"] = time.perf_counter() - t0
        log(f"figures: {len(made)} PNGs in {workdir / 'figures'} ({summary['figures_time_s']:.1f}s)")
    run.write_summary(summary)
    f = summary["final"]
    if f:
        whole = f"{len(history)} epochs" + (f" and {step % spe} steps of epoch {step // spe + 1}" if step % spe else "")
        log(
            f"done: {step} steps ({whole}), test loss {f['test_loss']:.4f} per sample "
            f"(recon {f['test_recon']:.4f}, KL {f['test_kl']:.4f}); wrote {workdir}"
        )
    return summary


def initial_weights_from(path, trainer, state, config: Config, image_shape):
    """`state` with the parameters (and BatchNorm statistics) of the latest checkpoint of the run in
    `path`, and a fresh optimizer state: --init-from, to fine-tune a trained model (e.g. with another
    --train-k or learning rate). The source must be the same model on images of the same shape.
    `path` a .pt file: its state_dict (see vae_jax.torch_import), its sha256 into config.init_from_sha256."""
    from vae_jax import checkpoints
    from vae_jax.errors import CheckpointError

    if Path(path).is_file():  # a torch .pt checkpoint: vae_jax.torch_import
        from vae_jax import torch_import
        from vae_jax.errors import VaeJaxError

        src, src_config, src_shape = build_model(config, image_shape, rngs=nnx.Rngs(0)), config, image_shape
        try:
            config.init_from_sha256 = torch_import.load_pt_into(src, path, config)  # recorded in config.json
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
    from vae_jax import checkpoints
    from vae_jax.errors import CheckpointError

    workdir = Path(workdir)
    path = workdir / "config.json"
    if not path.exists():
        raise CheckpointError(
            f"no run in {workdir}: config.json is missing -- pass the --workdir of a `vae-jax train` run"
        )
    saved = checkpoints.read_config(path)
    fields = {f.name for f in dataclasses.fields(Config)}
    try:
        image_shape = tuple(int(d) for d in saved.pop("image_shape"))
        saved["devices"] = 1  # how many devices trained it does not matter to read it (eval, plot, export)
        config = Config(**{k: v for k, v in saved.items() if k in fields}).validate()
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(
            f"{path} is damaged ({type(e).__name__}: {e}) -- restore it from the run's "
            "original config.json or train again"
        ) from None
    try:  # a damaged size in config.json must not reach XLA (which aborts on arrays beyond memory)
        check_memory(config, image_shape, training=False)
    except (OverflowError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"{path} is damaged ({type(e).__name__}: {e}) -- restore it from the run's original config.json "
            "or train again"
        ) from None
    run = checkpoints.RunDir(workdir, config, resume=True, read_only=True)
    model = build_model(config, image_shape, rngs=nnx.Rngs(params=purpose_key(config.seed, KeyPurpose.INIT)))
    trainer = Trainer(model, config, steps_per_epoch=1)  # the schedule only shapes opt_state
    state, epoch = run.restore(trainer.init_state, step)
    if epoch is None:
        raise CheckpointError(
            f"no checkpoint in {workdir}/checkpoints -- train first (vae-jax train --workdir {workdir})"
        )
    return trainer.merge(state), config, image_shape
