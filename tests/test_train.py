"""End-to-end training: the embedded default, real MNIST files, resume, figures, export, CLI errors."""

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.helpers import tensorboard_events, tensorboard_scalars
from vae_jax import cli, input_pipeline, train, trainer
from vae_jax.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.slow  # end-to-end runs: `make test-fast` leaves this module out

DATA = os.environ.get("VAE_DATA_DIR")
needs_data = pytest.mark.skipif(not DATA, reason="VAE_DATA_DIR not set: real MNIST files absent")

QUICK = dict(epochs=2, batch_size=64, train_limit=300, test_limit=100, progress=False)


def _params(workdir):
    model, _, _ = train.restore_run(workdir)
    from vae_jax import convert

    return convert.to_numpy_state_dict(model)


def test_default_run_writes_metrics_checkpoints_and_every_figure(tmp_path):
    summary = train.train_and_evaluate(train.Config(**QUICK), tmp_path / "run", log=lambda s: None)
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        for k in ("epoch", "train_loss", "test_loss", "test_recon", "test_kl"):
            assert np.isfinite(r[k])
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    # the checkpoint holds the model that was evaluated: restored and evaluated again (as `vae-jax eval`
    # does), it gives the test metrics that training logged for its last epoch
    model, config, _ = train.restore_run(tmp_path / "run")
    again = train.evaluate_model(model, config, train.load_data(config)[1])
    for k in ("test_loss", "test_recon", "test_kl"):
        assert again[k] == pytest.approx(rows[-1][k], rel=1e-5), k
    figs = summary["figures"]
    assert set(figs) == {
        "reconstruction",
        "samples",
        "latent",
        "manifold",
        "interpolation_linear",
        "interpolation_spherical",
        "loss_curves",
    }
    for p in figs.values():
        data = Path(p).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, p
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    cfg = dict(QUICK, epochs=1, checkpoint=False, figures=False)
    a = train.train_and_evaluate(train.Config(**cfg), tmp_path / "a", log=lambda s: None)["final"]
    b = train.train_and_evaluate(train.Config(**cfg), tmp_path / "b", log=lambda s: None)["final"]
    c = train.train_and_evaluate(train.Config(**cfg, seed=1), tmp_path / "c", log=lambda s: None)["final"]
    for k in ("train_loss", "test_loss"):
        assert a[k] == b[k]
        assert a[k] != c[k]


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    cfg = dict(QUICK, epochs=3, figures=False)
    train.train_and_evaluate(train.Config(**cfg), tmp_path / "full", log=lambda s: None)
    train.train_and_evaluate(train.Config(**dict(cfg, epochs=1)), tmp_path / "part", log=lambda s: None)
    train.train_and_evaluate(train.Config(**cfg), tmp_path / "part", resume=True, log=lambda s: None)
    full = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    part = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [
        {k: v for k, v in json.loads(l).items() if k not in ("train_time_s", "test_time_s")} for l in lines
    ]
    assert strip(full) == strip(part)
    pf, pp = _params(tmp_path / "full"), _params(tmp_path / "part")
    assert pf.keys() == pp.keys()
    for k in pf:
        np.testing.assert_array_equal(pf[k], pp[k])


def test_last_partial_batch_compiles_once(tmp_path):
    cfg = train.Config(**dict(QUICK, epochs=3, train_limit=150, batch_size=64, checkpoint=False, figures=False))
    from flax import nnx

    model = train.build_model(cfg, (28, 28, 1), rngs=nnx.Rngs(0))
    tr = train.Trainer(model, cfg)
    ds_train, _ = train.load_data(cfg)
    feed, spe = input_pipeline.Feed(ds_train, tr, cfg), train.steps_per_epoch(cfg, ds_train)
    state = tr.init_state
    for epoch in (1, 2, 3):
        state = train.train_part(tr, state, feed, cfg, epoch, 0, spe)
    assert tr.train_step._cache_size() == 2  # a full batch (64) and the last partial one (22)
    assert int(state["step"]) == 3 * 3


@pytest.mark.parametrize("model", ["ae", "cvae", "conv_vae28"])
def test_other_models_train(tmp_path, model):
    cfg = train.Config(**dict(QUICK, model=model, epochs=1, checkpoint=False))
    s = train.train_and_evaluate(cfg, tmp_path / model, log=lambda s: None)
    assert np.isfinite(s["final"]["test_loss"])
    assert all(Path(p).stat().st_size > 2000 for p in s["figures"].values())


def test_kl_annealing_weight_and_beta_change_the_loss(tmp_path):
    cfg = train.Config(kl_anneal_epochs=4)
    assert [train.kl_weight_for(cfg, e) for e in (1, 2, 4, 6)] == [0.25, 0.5, 1.0, 1.0]
    base = dict(QUICK, epochs=1, checkpoint=False, figures=False)
    m = train.train_and_evaluate(train.Config(**base, kl_anneal_epochs=4), tmp_path / "a", log=lambda s: None)["final"]
    assert m["kl_weight"] == 0.25
    assert m["test_loss"] == pytest.approx(m["test_recon"] + 0.25 * m["test_kl"], rel=1e-5)
    m = train.train_and_evaluate(train.Config(**base, beta=4.0), tmp_path / "b", log=lambda s: None)["final"]
    assert m["test_loss"] == pytest.approx(m["test_recon"] + 4.0 * m["test_kl"], rel=1e-5)


@needs_data
def test_real_mnist_slice_trains_and_exports_to_the_chapter_class(tmp_path):
    from vae_torch_ref.chapter_source import chapter_namespace

    work = tmp_path / "mnist"
    cfg = train.Config(**dict(QUICK, dataset="mnist", data_dir=DATA, train_limit=1000, test_limit=500))
    s = train.train_and_evaluate(cfg, work, log=lambda s: None)
    assert s["final"]["test_loss"] < 400  # a 784-pixel Bernoulli model that learned something
    out = tmp_path / "vae.pt"
    assert cli.main(["export", "--workdir", str(work), "--out", str(out)]) == 0
    chapter_vae = chapter_namespace()["VAE"](input_dim=784, hidden_dim=400, latent_dim=20)
    chapter_vae.load_state_dict(torch.load(out, weights_only=True), strict=True)
    model, _, _ = train.restore_run(work)
    x = np.random.default_rng(0).random((4, 784), dtype=np.float32)
    mu_t, logvar_t = chapter_vae.encode(torch.from_numpy(x))
    mu_j, logvar_j = model.encode(jnp.asarray(x))
    np.testing.assert_allclose(mu_t.detach().numpy(), np.asarray(mu_j), atol=1e-5)
    np.testing.assert_allclose(logvar_t.detach().numpy(), np.asarray(logvar_j), atol=1e-5)


@needs_data
def test_iwae_bound_is_tighter_than_the_elbo(tmp_path):
    from vae_jax import evaluate

    cfg2 = train.Config(
        **dict(
            QUICK, dataset="binarized_mnist", data_dir=DATA, train_limit=2000, test_limit=200, epochs=2, figures=False
        )
    )
    s = train.train_and_evaluate(cfg2, tmp_path / "r2", log=lambda s: None)
    model, _, _ = train.restore_run(tmp_path / "r2")
    _, test = train.load_data(cfg2)
    x, y = train.device_arrays(test)
    key = jax.random.key(0)
    nll1 = evaluate.iwae_nll(model, x, y, k=1, key=key, chunk=1)
    nll64 = evaluate.iwae_nll(model, x, y, k=64, key=key, chunk=16)
    nll64b = evaluate.iwae_nll(model, x, y, k=64, key=key, chunk=16, batch_size=37)
    assert nll64 < nll1  # the IWAE bound tightens with k
    assert abs(nll1 - s["final"]["test_loss"]) < 3.0  # k=1 is the ELBO (up to Monte Carlo noise)
    assert nll64b == pytest.approx(nll64, rel=1e-6)  # batching does not change the estimate


def _cli(args, capsys):
    code = cli.main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_cli_refuses_to_overwrite_a_run_and_names_the_fix(tmp_path, capsys):
    work = tmp_path / "run"
    base = [
        "train",
        "--workdir",
        str(work),
        "--epochs",
        "1",
        "--train-limit",
        "200",
        "--test-limit",
        "50",
        "--no-figures",
        "--no-progress",
    ]
    assert cli.main(base) == 0
    before = (work / "metrics.jsonl").read_bytes()
    code, err = _cli(base, capsys)
    assert code == 2 and len(err) == 1 and "already holds a run" in err[0] and "--resume" in err[0]
    assert (work / "metrics.jsonl").read_bytes() == before
    code, err = _cli(base + ["--resume", "--latent-dim", "5"], capsys)
    assert code == 2 and len(err) == 1 and "--latent-dim 5 differs" in err[0]
    out = tmp_path / "exists.pt"
    out.write_bytes(b"keep me")
    code, err = _cli(["export", "--workdir", str(work), "--out", str(out)], capsys)
    assert code == 2 and "already exists" in err[0] and out.read_bytes() == b"keep me"


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--epochs", "-1"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--model", "nope"], "--model"),
        (["--lr", "abc"], "--lr"),
    ],
)
def test_cli_bad_values_exit_nonzero_with_one_line(tmp_path, capsys, args, fragment):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--workdir", str(tmp_path / "w")] + args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err.strip().splitlines()[-1]
    assert not (tmp_path / "w").exists()


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="unknown model"):
        train.Config(model="nope").validate()
    with pytest.raises(ConfigError, match="--epochs"):
        train.Config(epochs=0).validate()
    with pytest.raises(CheckpointError, match="config.json"):
        train.restore_run("/nonexistent/run")


def test_end_to_end_on_tfds_mock_data(tmp_path):
    """train.py on tfds.testing.mock_data, as Flax's examples test their trainers."""
    from vae_jax import tfds_data

    tfds = tfds_data._tfds()
    (tmp_path / "tfds" / "mnist" / "3.0.1").mkdir(parents=True)
    (tmp_path / "tfds" / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    with tfds.testing.mock_data(num_examples=96):
        cfg = train.Config(dataset="mnist", data_dir=str(tmp_path / "tfds"), epochs=2, batch_size=32, progress=False)
        s = train.train_and_evaluate(cfg, tmp_path / "run", log=lambda s: None)
    assert s["epochs"] == 2 and np.isfinite(s["final"]["test_loss"])
    assert all(Path(p).stat().st_size > 2000 for p in s["figures"].values())


def test_cosine_schedule_decays_to_zero_and_fixes_epochs_for_a_resume(tmp_path):
    cfg = train.Config(**dict(QUICK, lr_schedule="cosine", epochs=3, figures=False))
    lr = trainer.learning_rate(cfg, steps_per_epoch=5)
    assert float(lr(0)) == pytest.approx(1e-3) and float(lr(15)) == pytest.approx(0.0, abs=1e-12)
    assert 0 < float(lr(7)) < 1e-3
    assert trainer.learning_rate(train.Config(), steps_per_epoch=5) == 1e-3  # constant: a number
    # the schedule is what trains: cosine and constant runs diverge after the first step
    const = train.train_and_evaluate(
        train.Config(**dict(QUICK, epochs=1, figures=False)), tmp_path / "c", log=lambda s: None
    )["final"]
    cos = train.train_and_evaluate(
        train.Config(**dict(QUICK, epochs=1, figures=False, lr_schedule="cosine")), tmp_path / "s", log=lambda s: None
    )["final"]
    assert cos["train_loss"] != const["train_loss"]
    with pytest.raises(CheckpointError, match="--epochs 2 differs from the run's 1.*cosine"):
        train.train_and_evaluate(
            train.Config(**dict(QUICK, epochs=2, figures=False, lr_schedule="cosine")),
            tmp_path / "s",
            resume=True,
            log=lambda s: None,
        )
    # a constant-lr run may be extended
    train.train_and_evaluate(
        train.Config(**dict(QUICK, epochs=2, figures=False)), tmp_path / "c", resume=True, log=lambda s: None
    )


@needs_data
def test_test_dataset_evaluates_on_another_split(tmp_path):
    """Train on dynamically binarized grayscale MNIST, test on the static binarized MNIST test set."""
    cfg = dict(QUICK, epochs=1, figures=False, checkpoint=False, dataset="mnist", data_dir=DATA)
    a = train.train_and_evaluate(
        train.Config(**cfg, binarize="dynamic", test_dataset="binarized_mnist"), tmp_path / "a", log=lambda s: None
    )
    b = train.train_and_evaluate(train.Config(**cfg, binarize="dynamic"), tmp_path / "b", log=lambda s: None)
    assert a["final"]["train_loss"] == b["final"]["train_loss"]  # same training ...
    assert a["final"]["test_loss"] != b["final"]["test_loss"]  # ... other test images
    _, test = train.load_data(train.Config(dataset="mnist", data_dir=DATA, test_dataset="binarized_mnist"))
    assert set(np.unique(test.images)) == {0.0, 1.0} and len(test.images) == 10000
    from PIL import Image

    (tmp_path / "imgs" / "test").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / "imgs" / "test" / f"{i}.png")
    with pytest.raises(ConfigError, match="same image shape"):  # 28x28x1 digits, 64x64x3 images
        train.load_data(train.Config(dataset="digits", test_dataset="image_folder", data_dir=str(tmp_path / "imgs")))


def _vae_batch(seed=0, b=6, latent=4):
    from flax import nnx

    from vae_jax import models

    model = models.VAE(input_dim=784, hidden_dim=32, latent_dim=latent, rngs=nnx.Rngs(seed))
    x = (jax.random.uniform(jax.random.key(seed + 1), (b, 28, 28, 1)) > 0.5).astype(jnp.float32)
    return model, x, jnp.zeros((b,), jnp.int32)


def test_iwae_objective_of_identical_samples_is_the_single_sample_elbo():
    """k copies of one eps: the IWAE bound equals log p(x|z) + log p(z) - log q(z|x), computed here in numpy."""
    model, x, y = _vae_batch()
    eps1 = jax.random.normal(jax.random.key(5), (1, 6, 4))
    total, (rec, kl) = train.loss_terms(
        model, x, y, None, recon="bce_logits", beta=1.0, kl_weight=1.0, eps=jnp.tile(eps1, (3, 1, 1)), k=3
    )
    xf = np.asarray(x).reshape(6, -1).astype(np.float64)
    mu, logvar = (np.asarray(a, np.float64) for a in model.encode(x.reshape(6, -1)))
    z = mu + np.exp(0.5 * logvar) * np.asarray(eps1[0], np.float64)
    logits = np.asarray(model.decode_logits(jnp.asarray(z, jnp.float32)), np.float64)
    log_px_z = -np.sum(np.logaddexp(0, logits) - xf * logits, -1)
    log_pz = -0.5 * np.sum(z**2 + np.log(2 * np.pi), -1)
    log_qz = -0.5 * np.sum(np.asarray(eps1[0], np.float64) ** 2 + logvar + np.log(2 * np.pi), -1)
    assert float(total) == pytest.approx(-np.sum(log_px_z + log_pz - log_qz), rel=1e-5)
    assert float(rec) == pytest.approx(-np.sum(log_px_z), rel=1e-5)
    assert float(kl) == pytest.approx(np.sum(-0.5 * (1 + logvar - mu**2 - np.exp(logvar))), rel=1e-5)


def test_iwae_objective_is_tighter_than_the_mean_of_its_samples_and_k1_is_the_elbo():
    from vae_jax import losses

    model, x, y = _vae_batch(seed=3)
    eps = jax.random.normal(jax.random.key(9), (8, 6, 4))
    total8, _ = train.loss_terms(model, x, y, None, recon="bce_logits", beta=1.0, kl_weight=1.0, eps=eps, k=8)
    xin = x.reshape(6, -1)
    mu, logvar = model.encode(xin)
    logw, _ = losses.importance_log_weights(model.decode_logits, xin, (), mu, logvar, eps)
    assert float(total8) < -float(jnp.sum(jnp.mean(logw, 0)))  # log-mean-exp > mean (Jensen), per image
    elbo, _ = train.loss_terms(model, x, y, None, recon="bce_logits", beta=1.0, kl_weight=1.0, eps=eps[0])
    total1, _ = train.loss_terms(model, x, y, None, recon="bce_logits", beta=1.0, kl_weight=1.0, eps=eps[0], k=1)
    assert float(total1) == float(elbo)


def test_init_from_starts_from_another_runs_weights_with_fresh_adam(tmp_path, capsys):
    from flax import nnx

    src = tmp_path / "src"
    train.train_and_evaluate(train.Config(**dict(QUICK, figures=False)), src, log=lambda s: None)
    cfg = train.Config(**dict(QUICK, figures=False, train_k=4, init_from=str(src), lr=1e-12))
    # a learning rate of 1e-12 keeps the weights where --init-from put them (to float32 rounding)
    train.train_and_evaluate(cfg, tmp_path / "ft", log=lambda s: None)
    a, b = _params(src), _params(tmp_path / "ft")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-9, err_msg=name)
    model = train.build_model(train.Config(), (28, 28, 1), rngs=nnx.Rngs(0))
    state = train.initial_weights_from(
        src,
        train.Trainer(model, train.Config()),
        train.Trainer(model, train.Config()).init_state,
        train.Config(),
        (28, 28, 1),
    )
    assert all(float(jnp.abs(m).max()) == 0 for m in jax.tree.leaves(state["opt_state"][0].mu))
    # a different model, or no run at all: one error line, and the new workdir is left without a run
    for extra, fragment in (
        (["--init-from", str(src), "--latent-dim", "3"], "--latent-dim"),
        (["--init-from", str(tmp_path / "nowhere")], "no run there"),
    ):
        work = tmp_path / f"bad{len(extra[1])}"
        code, err = _cli(["train", "--workdir", str(work), "--epochs", "1", "--no-progress"] + extra, capsys)
        assert code == 2 and len(err) == 1 and fragment in err[0], err
        assert not (work / "config.json").exists()


def test_train_k_is_refused_where_it_has_no_meaning():
    with pytest.raises(ConfigError, match="--train-k"):
        train.Config(model="ae", train_k=5).validate()
    with pytest.raises(ConfigError, match="--train-k"):
        train.Config(train_k=5, beta=4.0).validate()
    with pytest.raises(ConfigError, match="--train-k"):
        train.Config(train_k=0).validate()


def test_tensorboard_events_beside_metrics(tmp_path):
    cfg = train.Config(**dict(QUICK, epochs=2, figures=False, log_every=2))
    train.train_and_evaluate(cfg, tmp_path / "run", log=lambda s: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    tb = tensorboard_scalars(tmp_path / "run" / "tensorboard")
    for key in ("train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl"):
        tag = key.replace("_", "/")
        assert [v for _, v in tb[tag]] == pytest.approx([r[key] for r in rows], rel=1e-6), tag
    steps = [s for s, _ in tb["train/loss"]]
    assert steps == sorted(steps) and len(steps) == 2 and steps[1] == 2 * steps[0]  # at each epoch's last step
    assert [s for s, _ in tb["train/step_loss"]] == list(range(2, steps[1] + 1, 2))
    assert all(v > 0 for _, v in tb["train/steps_per_sec"])


def test_paths_are_stored_absolute(tmp_path, monkeypatch):
    from vae_jax import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert (
        cli.main(
            [
                "train",
                "--workdir",
                "run",
                "--data-dir",
                "data",
                "--epochs",
                "1",
                "--train-limit",
                "64",
                "--test-limit",
                "32",
                "--no-figures",
                "--no-progress",
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data_dir"] == str(tmp_path / "data")


def test_tensorboard_shows_pictures_each_epoch_and_the_runs_options(tmp_path):
    import io

    from PIL import Image

    cfg = train.Config(**dict(QUICK, epochs=2, figures=False, batch_size=64))
    train.train_and_evaluate(cfg, tmp_path / "run", log=lambda s: None)
    events = list(tensorboard_events(tmp_path / "run" / "tensorboard"))
    pictures = {}
    for step, v in events:
        if v.HasField("image"):
            pictures.setdefault(v.tag, []).append((step, Image.open(io.BytesIO(v.image.encoded_image_string))))
    assert sorted(pictures) == ["reconstruction", "samples"]
    assert [s for s, _ in pictures["samples"]] == [s for s, _ in pictures["reconstruction"]] and len(
        pictures["samples"]
    ) == 2
    assert pictures["reconstruction"][0][1].size == (8 * 28, 2 * 28)  # 8 test images above their reconstructions
    assert pictures["samples"][0][1].size == (4 * 28, 4 * 28)
    hparams = [v for _, v in events if v.metadata.plugin_data.plugin_name == "hparams"]
    content = b"".join(v.metadata.plugin_data.content for v in hparams)
    assert hparams and b"batch_size" in content and b"test/loss" in content


@pytest.mark.parametrize("form", ["xla", "lax", "onednn"])
def test_auto_steps_per_call_follows_the_model_and_its_conv_form(form):
    """auto: 32 for the MLP models, 8 for the conv models on oneDNN's kernels, 1 in XLA's conv forms
    (their steps round differently inside a lax.scan: docs/speed.md); a K given, or several devices, win."""
    from flax import nnx

    from vae_jax import onednn_conv

    if form == "onednn" and not onednn_conv.available():
        pytest.skip(f"oneDNN's kernels are not built here: {onednn_conv.unavailable_reason()}")
    cfg = train.Config(model="conv_vae28", conv_form=form)
    model = train.build_model(cfg, (28, 28, 1), rngs=nnx.Rngs(0))
    assert train.conv_form_name(model, cfg) == form
    assert train.resolved_steps_per_call(cfg, model) == (8 if form == "onednn" else 1)
    assert train.resolved_steps_per_call(dataclasses.replace(cfg, steps_per_call=4), model) == 4
    assert train.resolved_steps_per_call(dataclasses.replace(cfg, devices=2), model) == 1
    mlp = train.Config(model="vae", conv_form=form)
    assert train.resolved_steps_per_call(mlp, train.build_model(mlp, (28, 28, 1), rngs=nnx.Rngs(0))) == 32
