"""The state of a run and the one train step: `Trainer` holds the model's graph definitions and the
jitted steps (data on the device, or a batch streamed from the host), and places arrays on the devices
(one device, or a data-parallel mesh over several, also over several processes). The state is a plain
pytree {"params", "batch_stats", "opt_state", "step", "sums"}."""

from __future__ import annotations

import math
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vae_jax import input_pipeline, losses, models
from vae_jax.config import Config
from vae_jax.datasets import to_float
from vae_jax.errors import ConfigError


def learning_rate(config: Config, steps_per_epoch: int | None):
    """Adam's learning rate: the constant --lr, or a cosine decay from --lr to 0 over the run's steps."""
    if config.lr_schedule == "constant":
        return config.lr
    if not steps_per_epoch:
        raise ConfigError(f"--lr-schedule {config.lr_schedule} needs the number of steps per epoch")
    return optax.cosine_decay_schedule(config.lr, decay_steps=int(config.epochs) * int(steps_per_epoch))


def loss_terms(model, x, y, key, *, recon, beta, kl_weight, eps=None, k=1):
    """(total, (recon_loss, kl_loss)) summed over the batch: the one ELBO every model trains on.

    k > 1: total is minus the IWAE bound with k samples per image (Burda et al. 2016; Bernoulli
    decoder, beta = kl_weight = 1), a tighter bound on -log p(x) than the ELBO; recon_loss is then
    the mean over the k samples and kl_loss the analytic KL, reported as for the ELBO. eps: (k, B, D).
    """
    x, cond = models.model_inputs(model, x, y)
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
        model = nnx.clone(model)  # the caller's model keeps its mode
        model.train()
        # nnx.split's return type leaves the number of states open; two filters give two
        self.graphdef, params, batch_stats = cast(
            tuple[nnx.GraphDef, nnx.State, nnx.State], nnx.split(model, nnx.Param, nnx.BatchStat)
        )
        model.eval()
        self.eval_graphdef = nnx.split(model, nnx.Param, nnx.BatchStat)[0]
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
        self.train_steps = jax.jit(self._train_steps, donate_argnums=(0,))
        self.batch_train_step = jax.jit(self._step, donate_argnums=(0,))
        self.eval_step = jax.jit(self._eval_step)
        self.batch_eval_step = jax.jit(self._eval)
        self.mesh: jax.sharding.Mesh | None = None

    def step_for(self, streamed: bool, *, train: bool):
        """The jitted step for a feed's batches: a batch streamed from the host, or indices into the
        split on the device (input_pipeline.Feed)."""
        if train:
            return self.batch_train_step if streamed else self.train_step
        return self.batch_eval_step if streamed else self.eval_step

    @property
    def init_state(self):
        """A fresh copy of the initial state (the train step consumes the state it is given)."""
        return jax.tree.map(jnp.copy, self._init_state)

    def shard(self, devices: int):
        """Data parallelism over the first `devices` devices (one host or many after
        jax.distributed.initialize()): state and data replicated, each batch's indices split along
        the mesh's 'data' axis, so XLA partitions the step and all-reduces the gradients. The batch
        is the GLOBAL batch: results equal a single-device run up to float summation order."""
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
        x = to_float(x)
        bin_key, eps_key = jax.random.split(key)
        if self.config.binarize == "dynamic":
            x = input_pipeline.binarize(bin_key, x)
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

    def _train_steps(self, state, images, labels, idx, key, first, kl_weight):
        """idx.shape[0] train steps in one dispatch (a lax.scan of _train_step over the rows of idx):
        step j on images[idx[j]] with fold_in(key, first + j), as that many calls of train_step would
        be, with the same numbers (tests/test_trainer.py). -> (state, metrics with a leading step axis)."""

        def step(state, i_and_idx):
            i, batch = i_and_idx
            return self._train_step(state, images, labels, batch, jax.random.fold_in(key, i), kl_weight)

        return jax.lax.scan(step, state, (first + jnp.arange(idx.shape[0], dtype=jnp.int32), idx))

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
