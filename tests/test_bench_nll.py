"""scripts/bench_nll.py: its PyTorch estimator gives vae_jax.evaluate.iwae_nll's number (the same noise:
to float32 rounding; its own noise: to the Monte Carlo error), its verdicts, and one tiny run (slow)."""

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from scripts import bench_nll
from vae_jax import convert
from vae_jax import models as M
from vae_jax.config import Config
from vae_jax.evaluate import iwae_nll
from vae_torch_ref.models import VAE

ROOT = Path(__file__).resolve().parents[1]
N, K, CHUNK, BATCH = 7, 37, 16, 3  # a partial last batch and a partial last chunk


@pytest.fixture(scope="module")
def case():
    """The chapter's VAE in both frameworks with the same weights (q(z|x) moved off the prior, so that
    log p(z) - log q(z|x) matters), and N binary images."""
    model = M.REGISTRY["vae"].build(Config(model="vae"), (28, 28, 1), rngs=nnx.Rngs(0))
    sd = convert.to_numpy_state_dict(model)
    sd["encoder_fc_mu.bias"] = sd["encoder_fc_mu.bias"] + 0.7
    sd["encoder_fc_logvar.bias"] = sd["encoder_fc_logvar.bias"] - 1.5
    convert.load_torch_state_dict(model, sd)
    tm = VAE()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    images = (np.random.default_rng(1).random((N, 28, 28, 1)) < 0.3).astype(np.float32)
    return model, tm, images


def jax_nll(model, images, key, k=K):
    return iwae_nll(
        model, jnp.asarray(images), jnp.zeros(len(images), jnp.int32), k=k, key=key, batch_size=BATCH, chunk=CHUNK
    )


def jax_eps(key, chunk, latent):
    """eps_fn drawing what iwae_nll draws: image i, chunk ci from fold_in(fold_in(key, i), ci)."""

    def eps_fn(start, b, ci, c):
        draws = [
            jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), ci), (chunk, latent))
            for i in range(start, start + b)
        ]
        return torch.from_numpy(np.array(jnp.stack(draws, axis=1)[:c]))

    return eps_fn


def test_the_torch_estimator_is_iwae_nll_for_the_same_noise(case):
    model, tm, images = case
    key = jax.random.key(3)
    want = jax_nll(model, images, key)
    x = torch.from_numpy(images.reshape(N, -1))
    got = bench_nll.torch_iwae_nll(tm, x, k=K, batch_size=BATCH, chunk=CHUNK, eps_fn=jax_eps(key, CHUNK, 20))
    assert got == pytest.approx(want, rel=2e-6, abs=1e-3)
    # each term counts: without log p(z) - log q(z|x) (eps_fn making z = mu exactly would not do), the number moves
    elbo_k1 = bench_nll.torch_iwae_nll(tm, x, k=1, batch_size=BATCH, chunk=CHUNK, eps_fn=jax_eps(key, 1, 20))
    assert elbo_k1 == pytest.approx(jax_nll(model, images, key, k=1), rel=2e-6, abs=1e-3)
    assert elbo_k1 > got + 1  # the IWAE bound with 37 samples is tighter than the ELBO


def test_the_torch_estimator_with_its_own_noise_agrees_to_the_monte_carlo_error(case):
    model, tm, images = case
    k = 2000
    x = torch.from_numpy(images.reshape(N, -1))
    ours = [jax_nll(model, images, jax.random.key(s), k=k) for s in (0, 1)]
    theirs = [
        bench_nll.torch_iwae_nll(tm, x, k=k, batch_size=BATCH, chunk=250, generator=torch.Generator().manual_seed(s))
        for s in (0, 1)
    ]
    noise = max(abs(ours[0] - ours[1]), abs(theirs[0] - theirs[1]), 0.05)
    assert abs(np.mean(ours) - np.mean(theirs)) < 5 * noise, (ours, theirs)


def report(*, jax_s=400.0, torch_s=700.0, k=5000, images=10000, busy=False, failed=()):
    runs = []
    for rep in (1, 2):
        for fw, s in (("jax", jax_s), ("torch", torch_s)):
            if (fw, rep) in failed:
                runs.append({"framework": fw, "repeat": rep, "status": "error", "error": "RuntimeError: boom"})
            else:
                nll = 90.0 if fw == "jax" else 90.2
                runs.append(
                    {
                        "framework": fw,
                        "repeat": rep,
                        "status": "ok",
                        "seconds": s * (1 + 0.01 * rep),
                        "nll": nll,
                        "peak_rss_mb": 900.0 + rep,
                    }
                )
    return {
        "k": k,
        "images": images,
        "dataset": "mnist",
        "batch_size": 100,
        "chunk": 250,
        "repeats": 2,
        "runs": runs,
        "busy": busy,
        "busy_reasons": ["test"] if busy else [],
        "load": {"before": [0.1] * 3},
    }


def test_the_verdict():
    s = bench_nll.summary(report())
    assert s["ratio"] == pytest.approx(1.75) and s["met"] == "yes"
    assert s["jax"]["seconds"] == pytest.approx(400 * 1.015) and s["jax"]["seconds_min"] == pytest.approx(404.0)
    assert s["jax"]["peak_rss_mb"] == 902.0 and s["nll_diff"] == pytest.approx(-0.2)
    assert bench_nll.summary(report(torch_s=500.0))["met"] == "NO (1.25x < 1.5x)"
    small = bench_nll.summary(report(k=500))["met"]
    assert small.startswith("not judged") and "k = 5000 over 10000 images" in small
    assert bench_nll.summary(report(busy=True))["met"] == "not judged (machine busy)"
    assert bench_nll.summary(report(busy=None))["met"] == "not judged (load not recorded)"
    one_failed = bench_nll.summary(report(failed={("torch", 1)}))
    assert one_failed["torch"]["seconds"] == pytest.approx(714.0) and one_failed["met"] == "yes"
    none = bench_nll.summary(report(failed={("torch", 1), ("torch", 2)}))
    assert none["ratio"] is None and none["met"] == "not judged (no result of one framework)"


def test_the_markdown():
    text = bench_nll.markdown(report(failed={("torch", 2)}))
    assert "| JAX: vae_jax.evaluate.iwae_nll | 406.0 | 404.0 | 90.000, 90.000 | 902 |" in text
    assert "| 1.74x (1.75x) | >= 1.5x | yes |" in text  # 707 / 406, 707 / 404
    assert "torch repeat 2 failed: RuntimeError: boom" in text
    assert "WARNING: MACHINE BUSY" in bench_nll.markdown(report(busy=True))


def test_the_result_line():
    out = "noise\n" + bench_nll.RESULT + '{"nll": 1.0}\n' + bench_nll.RESULT + '{"nll": 2.0}\nmore\n'
    assert bench_nll.parse_result(out) == {"nll": 2.0}
    with pytest.raises(ValueError):
        bench_nll.parse_result("nothing here")


@pytest.mark.slow
def test_a_tiny_run_end_to_end(tmp_path):
    """Both workers on 10 test images of a tiny MNIST, k = 8: two estimates, one table."""
    rng = np.random.default_rng(0)
    for images_name, labels_name in (("train-images", "train-labels"), ("t10k-images", "t10k-labels")):
        images = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
        (tmp_path / f"{images_name}-idx3-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">IIII", 0x803, 10, 28, 28) + images.tobytes())
        )
        (tmp_path / f"{labels_name}-idx1-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">II", 0x801, 10) + bytes(10))
        )
    out = tmp_path / "r.json"
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "bench_nll.py"),
        "--data-dir",
        str(tmp_path),
        "--k",
        "8",
        "--images",
        "10",
        "--out-json",
        str(out),
    ]
    r = subprocess.run(cmd, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert [(x["framework"], x["status"]) for x in rep["runs"]] == [("jax", "ok"), ("torch", "ok")], rep["runs"]
    nll = [x["nll"] for x in rep["runs"]]
    assert all(300 < v < 1000 for v in nll) and abs(nll[0] - nll[1]) < 5  # 8 samples of grey noise images
    assert all(x["peak_rss_mb"] > 50 for x in rep["runs"])
    assert "not the issue's size" in rep["summary"]["met"]
