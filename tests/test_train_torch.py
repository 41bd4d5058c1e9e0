"""scripts/train_torch.py: the chapter's PyTorch loop writes a run directory in vae-jax's layout."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from scripts import train_torch
from vae_jax import cli, convert
from vae_jax import train as T
from vae_jax.checkpoints import read_metrics
from vae_torch_ref import VAE

TINY = ["--train-limit", "100", "--test-limit", "20", "--epochs", "2", "--batch-size", "50"]
METRICS = {
    "epoch",
    "kl_weight",
    "train_loss",
    "train_recon",
    "train_kl",
    "test_loss",
    "test_recon",
    "test_kl",
    "train_time_s",
    "test_time_s",
}


def torch_run(workdir, *extra):
    code = train_torch.main([*TINY, "--num-workers", "0", "--workdir", str(workdir), *extra])
    assert code == 0
    return workdir


@pytest.fixture(scope="module")
def torch_dir(tmp_path_factory):
    return torch_run(tmp_path_factory.mktemp("torch") / "run")


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    jax_dir = tmp_path_factory.mktemp("jax") / "run"
    assert cli.main(["train", *TINY, "--no-progress", "--no-figures", "--workdir", jax_dir]) == 0
    return jax_dir


@pytest.mark.slow  # a JAX training run (compiles)
def test_metrics_have_vae_jax_fields(torch_dir, jax_run):
    jax_rows, torch_rows = read_metrics(jax_run), read_metrics(torch_dir)
    assert [r["epoch"] for r in torch_rows] == [1, 2]
    assert set(torch_rows[0]) == set(jax_rows[0]) == METRICS
    for r in torch_rows:  # per sample: the chapter's numbers on 28x28 digits are hundreds of nats, not batch sums
        assert 50 < r["test_loss"] < 2000 and r["kl_weight"] == 1.0
        assert r["train_loss"] == pytest.approx(r["train_recon"] + r["train_kl"], rel=1e-5)
    assert torch_rows[1]["train_loss"] < torch_rows[0]["train_loss"]  # it trains


def test_config_uses_vae_jax_option_names(torch_dir):
    cfg = json.loads((torch_dir / "config.json").read_text())
    fields = {f.name for f in dataclasses.fields(T.Config)}
    assert set(cfg) - fields == {"framework", "num_workers", "image_shape", "data_order"}
    assert cfg["data_order"] == "torch"  # the default: the chapter's shuffled DataLoader
    assert cfg["framework"] == "torch" and cfg["image_shape"] == [28, 28, 1]
    assert (cfg["model"], cfg["dataset"], cfg["train_limit"], cfg["test_limit"], cfg["recon"]) == (
        "vae",
        "digits",
        100,
        20,
        "bce",
    )
    summary = json.loads((torch_dir / "summary.json").read_text())
    assert summary["num_train"] == 100 and summary["steps"] == 4 and summary["final"]["epoch"] == 2


def test_model_pt_is_the_chapters_state_dict(torch_dir):
    sd = torch.load(torch_dir / "model.pt", weights_only=True)
    net = VAE()
    assert list(sd) == list(net.state_dict())
    net.load_state_dict(sd, strict=True)
    # and vae-jax reads it into its VAE
    from flax import nnx

    jm = T.build_model(T.Config(), (28, 28, 1), rngs=nnx.Rngs(0))
    convert.load_pt(jm, torch_dir / "model.pt")
    back = convert.to_numpy_state_dict(jm)
    assert set(back) == set(sd) and all(torch.equal(torch.from_numpy(back[k]), sd[k]) for k in sd)


def test_same_seed_same_run_other_seed_other_run(tmp_path, torch_dir):
    def losses(d):
        return [(r["train_loss"], r["test_loss"]) for r in read_metrics(d)]

    assert losses(torch_run(tmp_path / "a")) == losses(torch_dir)
    assert losses(torch_run(tmp_path / "b", "--seed", "1")) != losses(torch_dir)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--workdir", "{full}"], ["not empty", "nothing was changed"]),
        (["--workdir", "{new}", "--dataset", "mnist"], ["needs --data-dir"]),
        (["--workdir", "{new}", "--epochs", "0"], ["--epochs", "positive integer"]),
        (["--workdir", "{new}", "--data-dir", "{new}/nowhere"], ["file not found", "--data-dir"]),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, torch_dir, args, words):
    args = [a.format(full=torch_dir, new=tmp_path / "new") for a in args]
    try:
        code = train_torch.main(args)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("train_torch: error: "), err
    assert all(w in err[0] for w in words), err
    assert not (tmp_path / "new").exists()  # nothing created


def test_other_models(tmp_path):
    for model in ("cvae", "conv_vae28"):
        rows = read_metrics(torch_run(tmp_path / model, "--model", model, "--epochs", "1"))
        assert set(rows[0]) == METRICS and rows[0]["test_kl"] > 0


TORCH_MODELS = Path(__file__).resolve().parent / "byom_torch_models.py"


def test_user_torch_model_run_compare_reads(tmp_path, capsys):
    """--model FILE.py:ClassName trains a torch model of one's own into the run layout; compare reads it."""
    spec = f"{TORCH_MODELS}:TorchMLPVAE"
    work = torch_run(tmp_path / "mine", "--model", spec, "--hidden-dim", "32", "--latent-dim", "4")
    cfg = json.loads((work / "config.json").read_text())
    src = cfg["model_source"]
    assert cfg["model"] == spec and src["class"] == "TorchMLPVAE" and src["path"] == str(TORCH_MODELS)
    assert src["args"] == {"input_dim": 784, "hidden_dim": 32, "latent_dim": 4} and len(src["sha256"]) == 64
    sd = torch.load(work / "model.pt", weights_only=True)
    assert sd["enc1.weight"].shape == (32, 784) and sd["mu.weight"].shape == (4, 16)
    rows = read_metrics(work)
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["train_loss"] < rows[0]["train_loss"]
    code = cli.main(["compare", str(work), str(work), "--out", str(tmp_path / "cmp")])
    assert code == 0
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| torch |" in table and f"{rows[-1]['test_loss']:.4f}" in table


def test_data_order_jax_is_vae_jax_epoch_order():
    """--data-order jax: each epoch's batches are vae_jax.train.epoch_order's, in order."""
    n, batch = 23, 5
    ds = TensorDataset(torch.zeros(n, 1), torch.arange(n))
    for seed, epoch in ((0, 1), (0, 2), (3, 1)):
        loader = train_torch.train_loader(ds, batch, 0, "jax", seed, epoch)
        batches = [labels.tolist() for _, labels in loader]
        order = T.epoch_order(seed, epoch, n).tolist()
        assert batches == [order[i : i + batch] for i in range(0, n, batch)]
    assert T.epoch_order(0, 1, n).tolist() != T.epoch_order(0, 2, n).tolist()  # a new order each epoch
    shuffled = DataLoader(ds, batch_size=batch, shuffle=True)
    assert train_torch.train_loader(ds, batch, 0, "torch", 0, 1, shuffled) is shuffled


def test_data_order_jax_run_records_it(tmp_path):
    work = torch_run(tmp_path / "j", "--data-order", "jax", "--epochs", "1")
    assert json.loads((work / "config.json").read_text())["data_order"] == "jax"
    assert read_metrics(work)[0]["train_loss"] > 0


@pytest.mark.parametrize("spec, words", [("nowhere.py:X", ["no file"]), ("{models}:Absent", ["no class 'Absent'"])])
def test_missing_torch_model_is_one_line(tmp_path, capsys, spec, words):
    spec = spec.format(models=TORCH_MODELS)
    code = train_torch.main([*TINY, "--num-workers", "0", "--model", spec, "--workdir", str(tmp_path / "new")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("train_torch: error: --model "), err
    assert all(w in err[0] for w in words), err
    assert not (tmp_path / "new").exists()
