"""vae_jax.trainer: K train steps in one dispatch (Trainer.train_steps, a lax.scan) give the same
numbers, bit for bit, as K calls of the one train step, and so does a whole run (--steps-per-call)."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from tests.helpers import tensorboard_scalars
from vae_jax import convert, datasets, train
from vae_jax.config import Config
from vae_jax.preflight import build_model
from vae_jax.trainer import Trainer


def _data(model):
    """200 images the model takes: the digits, or random 64x64 RGB ones for the CelebA VAE."""
    ds = datasets.load_dataset("digits", "train").take(200)
    if model != "celeba_vae":
        return ds.image_shape, ds.stored_arrays()
    images = np.random.default_rng(0).random((200, 64, 64, 3), dtype=np.float32)
    return images.shape[1:], (images, np.zeros(200, np.int32))


@pytest.mark.parametrize("model", ["vae", "cvae", "conv_vae28", "celeba_vae"])
def test_k_steps_in_one_dispatch_equal_k_calls_of_the_step(model):
    """The MLP models, a conv model (oneDNN's kernels where built) and the CelebA VAE (its batch
    statistics carried through the scan)."""
    config = Config(model=model, batch_size=20)
    shape, arrays = _data(model)
    net = build_model(config, shape, rngs=nnx.Rngs(params=jax.random.key(0)))
    trainer = Trainer(net, config, steps_per_epoch=10)
    images, labels = trainer.put(arrays)
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


def _rows(workdir):
    """metrics.jsonl without the times."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(l).items() if not k.endswith("_time_s")} for l in lines]


def _params(workdir):
    return convert.to_numpy_state_dict(train.restore_run(workdir)[0])


@pytest.mark.slow
def test_a_run_with_k_steps_per_dispatch_equals_one_step_per_dispatch(tmp_path):
    """`--steps-per-call 3` (blocks of 3 steps; 7 full batches and a partial one per epoch, log points
    inside blocks) against 1: metrics.jsonl, TensorBoard's step losses and the weights bit-identical;
    so is a run cut by --max-steps and --checkpoint-every inside blocks, then resumed."""
    base = dict(model="vae", epochs=2, batch_size=50, train_limit=380, test_limit=100, figures=False, progress=False)
    base.update(log_every=2)
    runs = {
        "k1": dict(steps_per_call=1),
        "k3": dict(steps_per_call=3),
        "cut": dict(steps_per_call=3, checkpoint_every=4, max_steps=10),
    }
    for name, extra in runs.items():
        train.train_and_evaluate(train.Config(**base, **extra), tmp_path / name, log=lambda s: None)
    train.train_and_evaluate(train.Config(**base, steps_per_call=3), tmp_path / "cut", resume=True, log=lambda s: None)
    cut = [r for r in _rows(tmp_path / "cut") if "partial_epoch" not in r]
    assert _rows(tmp_path / "k1") == _rows(tmp_path / "k3") == cut
    step_losses = {n: tensorboard_scalars(tmp_path / n / "tensorboard")["train/step_loss"] for n in ("k1", "k3")}
    assert step_losses["k1"] == step_losses["k3"] and len(step_losses["k1"]) == 8
    for other in ("k3", "cut"):
        a, b = _params(tmp_path / "k1"), _params(tmp_path / other)
        assert all(np.array_equal(a[k], b[k]) for k in a), other
