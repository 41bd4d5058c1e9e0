"""A torch model of one's own (vae_jax.torch_models, `--torch-model FILE.py:ClassName`) through the CLI:
tests/byom_torch_models.py's TorchMLPVAE, the torch side of tests/byom_models.py's MLPVAE, imported
from a .pt into a run of the Flax class (its weights mapped by vae_jax.parity's call-order pairing),
that run's eval, and `parity --workdir W --torch-model` passing for it and failing, naming the first
diverging layer, for a copy with a planted difference; a missing file or class is one line."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.byom_torch_models import TorchMLPVAE
from tests.helpers import one_line, run
from vae_jax.errors import ConversionError
from vae_jax.files import sha256_file

HERE = Path(__file__).resolve().parent
FLAX = f"{HERE / 'byom_models.py'}:MLPVAE"
TORCH = f"{HERE / 'byom_torch_models.py'}:TorchMLPVAE"
PLANTED = f"{HERE / 'byom_torch_models.py'}:SlopeTorchMLPVAE"
SIZES = ["--hidden-dim", "32", "--latent-dim", "4"]
DATA = ["--dataset", "digits", "--train-limit", "100", "--test-limit", "20", "--batch-size", "50"]


@pytest.fixture(scope="module")
def pt(tmp_path_factory):
    """A state_dict saved from the user's torch class (not the chapter's keys)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("pt") / "mine.pt"
    net = TorchMLPVAE(hidden_dim=32, latent_dim=4)
    torch.save(net.state_dict(), path)
    return path, net.state_dict()


def _import(pt, work, capsys, torch_spec=TORCH):
    args = ["import", pt[0], "--workdir", work, "--model", FLAX, "--torch-model", torch_spec, *SIZES, *DATA]
    return run(args, capsys)


@pytest.mark.slow  # an import (a parity check) and an eval
def test_import_with_torch_model_gives_a_run_eval_reads(pt, tmp_path, capsys):
    work = tmp_path / "run"
    code, err, out = _import(pt, work, capsys)
    assert code == 0, err
    assert "| 1 | enc1.weight | (32, 784) | enc1.kernel | (784, 32) |" in out  # the mapping, printed
    assert "-- PASSED" in out
    record = json.loads((work / "import.json").read_text())
    assert record["parity"]["passed"] and record["torch_model"] == TORCH
    assert all(r["passed"] for r in record["parity"]["rows"]) and len(record["parity"]["rows"]) > 10
    cfg = json.loads((work / "config.json").read_text())
    assert cfg["model"] == FLAX and cfg["model_source"]["args"]["hidden_dim"] == 32
    assert cfg["source"]["path"] == str(pt[0]) and cfg["latent_dim"] == 4
    # the Flax model holds the file's weights: export gives them back under the Flax class's names
    out_pt = tmp_path / "back.pt"
    code, err, _ = run(["export", "--workdir", work, "--out", out_pt], capsys)
    assert code == 0, err
    back = torch.load(out_pt, weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in pt[1].items())  # same names in both classes here
    code, err, out = run(["eval", "--workdir", work, "--iwae-k", "2", "--no-progress"], capsys)
    assert code == 0, err
    assert "NLL (k=2)" in out


@pytest.mark.slow  # an import and two parity checks with 5 Adam steps each
def test_parity_workdir_with_torch_model(pt, tmp_path, capsys):
    work = tmp_path / "run"
    assert _import(pt, work, capsys)[0] == 0
    code, err, out = run(["parity", "--workdir", work, "--torch-model", TORCH], capsys)
    assert code == 0, err
    assert "-- PASSED" in out and "parity passed" in out
    code, err, out = run(["parity", "--workdir", work, "--torch-model", PLANTED], capsys)
    assert code == 1, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("parity check failed: first divergence at enc2 (torch) / enc2 (Flax)"), last
    assert "-- FAILED" in out
    one_line(*run(["parity", "--workdir", work], capsys)[:2], "model of your own", "--torch-model")


@pytest.mark.parametrize(
    "spec, words",
    [
        ("nowhere.py:TorchMLPVAE", ["--torch-model", "no file"]),
        (f"{HERE / 'byom_torch_models.py'}:Absent", ["--torch-model", "no class 'Absent'"]),
        (FLAX, ["--torch-model", "not a torch.nn.Module"]),
    ],
)
def test_missing_torch_model_is_one_line(pt, tmp_path, capsys, spec, words):
    one_line(*_import(pt, tmp_path / "new", capsys, spec)[:2], *words)
    assert not (tmp_path / "new").exists()
    one_line(*run(["parity", "--workdir", tmp_path, "--torch-model", spec], capsys)[:2], *words)


def test_import_without_flax_model_is_one_line(pt, tmp_path, capsys):
    code, err, _ = run(["import", pt[0], "--workdir", tmp_path / "new", "--torch-model", TORCH], capsys)
    one_line(code, err, "--torch-model needs --model")


def test_from_pt_with_a_torch_class(pt):
    from vae_jax import torch_models

    model = torch_models.from_pt(pt[0], FLAX, TORCH, (28, 28, 1), hidden_dim=32, latent_dim=4)
    assert np.array_equal(np.asarray(model.enc1.kernel[...]), pt[1]["enc1.weight"].numpy().T)
    assert np.array_equal(np.asarray(model.out.bias[...]), pt[1]["out.bias"].numpy())
    with pytest.raises(ConversionError, match="does not load into TorchMLPVAE strictly"):
        torch_models.from_pt(pt[0], FLAX, TORCH, (28, 28, 1), hidden_dim=64, latent_dim=4)


def test_train_init_from_pt_with_a_torch_class(pt, tmp_path, capsys):
    """train --init-from FILE.pt --torch-model: the run starts from the file's weights (an lr of 1e-30
    leaves them as they are, which export gives back) and records the class and the file's sha256."""
    work = tmp_path / "ft"
    args = ["train", "--workdir", work, "--init-from", pt[0], "--model", FLAX, "--torch-model", TORCH, *SIZES]
    code, err, _ = run([*args, *DATA, "--epochs", "1", "--lr", "1e-30", "--no-progress", "--no-figures"], capsys)
    assert code == 0, err
    cfg = json.loads((work / "config.json").read_text())
    assert cfg["torch_model"] == TORCH and cfg["init_from_sha256"] == sha256_file(pt[0])
    assert run(["export", "--workdir", work, "--out", tmp_path / "ft.pt"], capsys)[0] == 0
    back = torch.load(tmp_path / "ft.pt", weights_only=True)
    assert all(torch.allclose(back[k], v, atol=1e-6) for k, v in pt[1].items())
    code, err, _ = run(["train", "--workdir", tmp_path / "x", "--model", FLAX, "--torch-model", TORCH], capsys)
    one_line(code, err, "--torch-model goes with --init-from FILE.pt")
