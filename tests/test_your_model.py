"""A model of one's own (vae_jax.user_models, docs/your_model.md) through the CLI: the models of
tests/byom_models.py -- an MLP with two hidden layers and LeakyReLU, a conv VAE with 3x3 stride-2
convs and BatchNorm built from vae_jax.layers -- go through train, resume, eval, plot, export and
compare; a missing file, module or class and a class without the interface are one line each."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import TINY, one_line, run
from vae_jax import train

MODELS = Path(__file__).resolve().parent / "byom_models.py"
QUICK = [*TINY, "--no-figures"]


def _train(work, model, capsys, *extra):
    code, err, out = run(["train", "--workdir", work, "--model", model, *QUICK, *extra], capsys)
    assert code == 0, err
    return out


def _losses(work):
    """Each epoch's losses in metrics.jsonl (not its times)."""
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.endswith(("loss", "recon", "kl"))} for r in rows]


def _torch_conv3x3():
    """ConvVAE3x3 written in torch, the attribute names the same: what an exported state_dict loads into."""
    nn = torch.nn
    m = nn.Module()
    m.encoder = nn.Sequential(
        nn.Conv2d(1, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.LeakyReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32)
    )
    m.fc_mu, m.fc_logvar, m.decoder_fc = nn.Linear(32 * 49, 16), nn.Linear(32 * 49, 16), nn.Linear(16, 32 * 49)
    m.decoder = nn.Sequential(
        nn.ConvTranspose2d(32, 16, 3, 2, 1, output_padding=1),
        nn.BatchNorm2d(16),
        nn.LeakyReLU(),
        nn.ConvTranspose2d(16, 1, 3, 2, 1, output_padding=1),
    )
    return m.eval()


def _check_export(work, tmp_path, capsys, conv: bool):
    out = tmp_path / f"{work.name}.pt"
    code, err, _ = run(["export", "--workdir", work, "--out", out], capsys)
    assert code == 0, err
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["model_source"]["class"] == ("ConvVAE3x3" if conv else "MLPVAE")
    sd = torch.load(out, weights_only=True)
    if not conv:
        assert sd["enc1.weight"].shape == (256, 784) and sd["out.weight"].shape == (784, 256)
        return
    assert sd["encoder.0.weight"].shape == (16, 1, 3, 3) and sd["decoder.0.weight"].shape == (32, 16, 3, 3)
    tm = _torch_conv3x3()
    tm.load_state_dict(sd, strict=True)  # every key, torch's shapes (BatchNorm's statistics included)
    model, _, _ = train.restore_run(work)
    z = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    with torch.no_grad():
        h = tm.decoder_fc(torch.from_numpy(z)).view(4, 32, 7, 7)
        ref = torch.sigmoid(tm.decoder(h)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(model.decode(z)), ref, atol=1e-5)


@pytest.mark.slow  # two small trainings, a resume, eval, plot, export
@pytest.mark.timeout(600)
@pytest.mark.parametrize("cls, conv", [("MLPVAE", False), ("ConvVAE3x3", True)])
def test_every_command_on_a_model_of_ones_own(tmp_path, capsys, cls, conv):
    work = tmp_path / "run"
    _train(work, f"{MODELS}:{cls}", capsys)
    saved = json.loads((work / "config.json").read_text())
    assert saved["model"] == f"{MODELS}:{cls}"
    src = saved["model_source"]
    assert src["class"] == cls and src["path"] == str(MODELS) and len(src["sha256"]) == 64
    assert src["args"] == (
        {"input_channels": 1, "latent_dim": 16} if conv else {"input_dim": 784, "hidden_dim": 256, "latent_dim": 8}
    )

    code, err, out = run(["train", "--workdir", work, "--resume", "--epochs", "2", "--no-progress"], capsys)
    assert code == 0 and "resumed from step 2" in out, (err, out)
    assert [m["epoch"] for m in map(json.loads, (work / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    assert json.loads((work / "config.json").read_text())["model_source"] == src
    if conv:  # the resumed run is the run trained straight (BatchNorm's statistics in the checkpoint)
        _train(tmp_path / "straight", f"{MODELS}:{cls}", capsys, "--epochs", "2")
        assert _losses(tmp_path / "straight") == _losses(work)

    code, err, out = run(["eval", "--workdir", work, "--iwae-k", "10", "--json", "--no-progress"], capsys)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert np.isfinite(result["iwae_nll"]) and result["iwae_nll"] <= result["test_loss"] + 1e-3, result

    code, err, _ = run(["plot", "--workdir", work, "--out", tmp_path / "figures"], capsys)
    assert code == 0, err
    assert (tmp_path / "figures" / "samples.png").stat().st_size > 1000

    _check_export(work, tmp_path, capsys, conv)

    other = tmp_path / "mlp_of_the_chapter"
    _train(other, "vae", capsys)
    code, err, out = run(["compare", work, other, "--out", tmp_path / "cmp"], capsys)
    assert code == 0 and "| run |" in out, err
    assert "run" in (tmp_path / "cmp" / "compare.md").read_text()


@pytest.mark.slow  # a small training, then eval after the file changed and after it is gone
def test_a_module_spec_and_a_changed_or_missing_file(tmp_path, capsys):
    code, err, _ = run(["train", "--workdir", tmp_path / "m", "--model", "tests.byom_models:MLPVAE", *QUICK], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_source"]["module"] == "tests.byom_models"

    mine = tmp_path / "mine.py"
    shutil.copy(MODELS, mine)
    _train(tmp_path / "f", f"{mine}:MLPVAE", capsys)
    mine.write_text(mine.read_text() + "\n# edited\n")
    code, err, _ = run(["eval", "--workdir", tmp_path / "f", "--iwae-k", "2", "--json", "--no-progress"], capsys)
    assert code == 0 and len(err) == 1 and "changed since the run recorded it" in err[0], err
    mine.unlink()
    code, err, _ = run(["eval", "--workdir", tmp_path / "f", "--iwae-k", "2"], capsys)
    one_line(code, err, f"no file {mine}")
    assert "damaged" not in err[0]


@pytest.mark.parametrize(
    "spec, words",
    [
        ("{tmp}/absent.py:MLPVAE", ["no file", "absent.py"]),
        ("{models}:Absent", ["has no class 'Absent'"]),
        ("{models}:NoDecode", ["NoDecode has no decode", "docs/your_model.md"]),
        ("no_such_package.models:VAE", ["no module named 'no_such_package'"]),
    ],
    ids=["missing-file", "missing-class", "no-interface", "missing-module"],
)
def test_a_model_that_cannot_be_used_is_one_line(tmp_path, capsys, spec, words):
    spec = spec.format(tmp=tmp_path, models=MODELS)
    code, err, _ = run(["train", "--workdir", tmp_path / "run", "--model", spec, *QUICK], capsys)
    one_line(code, err, *words)
    assert not (tmp_path / "run").exists()


def test_an_option_the_model_cannot_take_is_one_line(tmp_path, capsys):
    args = ["train", "--workdir", tmp_path / "run", "--model", f"{MODELS}:ConvVAE3x3", "--hidden-dim", "64"]
    code, err, _ = run([*args, *QUICK], capsys)
    one_line(code, err, "--hidden-dim 64", "takes no hidden_dim")
