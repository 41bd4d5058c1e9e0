"""vae_jax.trainer: K train steps in one dispatch (Trainer.train_steps, a lax.scan) give the same
numbers, bit for bit, as K calls of the one train step."""

import jax
import numpy as np
import pytest
from flax import nnx

from vae_jax import input_pipeline
from vae_jax.config import Config
from vae_jax.preflight import build_model
from vae_jax.trainer import Trainer


@pytest.mark.parametrize("model", ["vae", "cvae"])
def test_k_steps_in_one_dispatch_equal_k_calls_of_the_step(model):
    config = Config(model=model, batch_size=20)
    ds = input_pipeline.load_dataset("digits", "train").take(200)
    net = build_model(config, ds.image_shape, rngs=nnx.Rngs(params=jax.random.key(0)))
    trainer = Trainer(net, config, steps_per_epoch=10)
    images, labels = trainer.put(ds.stored_arrays())
    idx = np.random.default_rng(0).permutation(200).astype(np.int32).reshape(10, 20)
    key = jax.random.key(7)

    one, losses = trainer.init_state, []
    for i in range(3, 9):  # steps 3..8 of an epoch
        one, m = trainer.train_step(one, images, labels, idx[i], jax.random.fold_in(key, i), 0.5)
        losses.append(np.asarray(m["loss"]))
    many = trainer.init_state
    for first, k in ((3, 4), (7, 2)):  # blocks of unequal length
        many, m = trainer.train_steps(many, images, labels, idx[first : first + k], key, first, 0.5)
        assert m["loss"].shape == (k,)
        np.testing.assert_array_equal(np.asarray(m["loss"]), np.stack(losses[first - 3 : first - 3 + k]))
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))), one, many)
    assert all(jax.tree.leaves(same)), same
    assert int(many["step"]) == 6
