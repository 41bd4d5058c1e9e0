"""Conversion round trips through vae_jax.convert, for every model: exact (bit-identical)."""

import numpy as np
import pytest
import torch
from flax import nnx

from parity_tests import harness as H
from vae_jax import convert
from vae_jax.errors import ConversionError


def _jax_source(name):
    jm = H.jax_model(name, "float32", 0)
    if H.SPECS[name].bn:
        H.perturb_bn_jax(jm, 0)  # non-trivial BatchNorm tensors, count != 0
    return jm


def _torch_source(name):
    tm = H.torch_model(name, "float32", 0)
    if H.SPECS[name].bn:
        H.perturb_bn_torch(tm, 0)
    return tm


def _assert_same_sd(a: dict, b: dict, what):
    assert list(a) == list(b) or sorted(a) == sorted(b), f"{what}: keys differ: {sorted(set(a) ^ set(b))}"
    for k in b:
        x = a[k].numpy() if isinstance(a[k], torch.Tensor) else np.asarray(a[k])
        y = b[k].numpy() if isinstance(b[k], torch.Tensor) else np.asarray(b[k])
        assert x.shape == y.shape, f"{what}: {k} shape {x.shape} vs {y.shape}"
        assert x.dtype == y.dtype, f"{what}: {k} dtype {x.dtype} vs {y.dtype}"
        assert np.array_equal(x, y), f"{what}: {k} differs, max |diff| {np.max(np.abs(x - y))}"


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] if n in ("ConvVAE", "CelebAVAE") else []) for n in H.MODEL_NAMES]
)
def test_flax_torch_flax_is_identity(name):
    jm = _jax_source(name)
    jm2 = H.jax_model(name, "float32", 1)  # another initialisation, overwritten entirely
    convert.load_torch_state_dict(jm2, convert.to_torch_state_dict(jm))
    a, b = nnx.state(jm), nnx.state(jm2)
    la, lb = jax_leaves_with_paths(a), jax_leaves_with_paths(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb, strict=False):
        assert x.shape == y.shape and x.dtype == y.dtype and np.array_equal(x, y), f"{name}: {p} changed"


def jax_leaves_with_paths(state):
    import jax

    return [(jax.tree_util.keystr(p), np.asarray(v)) for p, v in jax.tree_util.tree_leaves_with_path(state)]


@pytest.mark.parametrize("name", H.MODEL_NAMES)
def test_torch_flax_torch_is_identity(name):
    tm = _torch_source(name)
    jm = H.jax_model(name, "float32", 1)
    convert.load_torch_state_dict(jm, tm.state_dict())
    _assert_same_sd(convert.to_torch_state_dict(jm), tm.state_dict(), name)


@pytest.mark.parametrize("name", H.MODEL_NAMES)
def test_export_is_the_torch_state_dict_and_loads_strict(name):
    jm = _jax_source(name)
    sd = convert.to_torch_state_dict(jm)
    ref = H.torch_model(name, "float32", 5).state_dict()
    assert sorted(sd) == sorted(ref)
    for k, v in ref.items():
        assert tuple(sd[k].shape) == tuple(v.shape) and sd[k].dtype == v.dtype, (
            f"{name}: {k} exported as {tuple(sd[k].shape)} {sd[k].dtype}, torch has {tuple(v.shape)} {v.dtype}"
        )
    if H.SPECS[name].bn:
        cnt = sd["encoder.1.num_batches_tracked"]
        assert cnt.dtype == torch.int64 and cnt.shape == () and cnt.item() > 0
    tm = H.torch_model(name, "float32", 5)
    result = tm.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    _assert_same_sd(tm.state_dict(), sd, name)


@pytest.mark.parametrize("name", ["VAE", "CelebAVAE"])
def test_save_pt_load_pt(tmp_path, name):
    jm = _jax_source(name)
    path = tmp_path / f"{name}.pt"
    convert.save_pt(jm, path)
    tm = H.torch_model(name, "float32", 5)
    tm.load_state_dict(torch.load(path, weights_only=True), strict=True)  # torch reads it strictly
    jm2 = H.jax_model(name, "float32", 2)
    convert.load_pt(jm2, path)
    _assert_same_sd(convert.to_numpy_state_dict(jm2), convert.to_numpy_state_dict(jm), name)
    _assert_same_sd(tm.state_dict(), convert.to_torch_state_dict(jm2), name)


def test_load_refuses_another_models_state_dict():
    with pytest.raises(ConversionError, match="does not fit CVAE: key .decoder_fc1.weight. has shape .400, 20.,"):
        convert.load_torch_state_dict(
            H.jax_model("CVAE", "float32", 0), H.torch_model("VAE", "float32", 0).state_dict()
        )
