"""PyTorch checkpoints into vae-jax (vae_jax.torch_import): `vae-jax import`, `vae-jax parity`,
`train --init-from FILE.pt` and `torch_import.from_pt`, through the CLI where a user would."""

import hashlib
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import vae_torch_ref as R  # noqa: E402
from tests.helpers import TINY, one_line, run  # noqa: E402
from vae_jax import convert, tolerances, torch_import, train  # noqa: E402

DIGITS = ["--dataset", "digits", *TINY, "--no-figures"]


def chapter_vae(seed=0, **sizes):
    torch.manual_seed(seed)
    return R.VAE(**sizes)


class ExamplesVAE(nn.Module):
    """pytorch/examples' vae/main.py model: the chapter's MLP VAE under other names."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))


class SequentialConvVAE(nn.Module):
    """ConvVAE28's layers with other names and nn.Sequential numbering (ReLUs and Sigmoid included)."""

    def __init__(self):
        super().__init__()
        k = dict(kernel_size=4, stride=2, padding=1)
        self.enc = nn.Sequential(
            nn.Conv2d(1, 32, **k), nn.ReLU(), nn.Conv2d(32, 64, **k), nn.ReLU(), nn.Conv2d(64, 128, **k), nn.ReLU()
        )
        self.mean = nn.Linear(1152, 16)
        self.log_var = nn.Linear(1152, 16)
        self.up = nn.Linear(16, 1152)
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(128, 64, output_padding=1, **k),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, **k),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 1, **k),
            nn.Sigmoid(),
        )

    def decode(self, z):
        return self.dec(self.up(z).view(-1, 128, 3, 3))


def save(obj, path):
    torch.save(obj, path)
    return path


def params_of(workdir):
    model, _, _ = train.restore_run(workdir)
    return convert.to_numpy_state_dict(model)


# ------------------------------------------------------------------------------ reading a .pt


class Optimizer:  # pickled in a checkpoint beside the state_dict: anything but tensors and containers
    pass


def test_weights_only_refuses_a_pickle_holding_a_custom_object(tmp_path, capsys):
    path = save({"state_dict": chapter_vae().state_dict(), "opt": Optimizer()}, tmp_path / "full.pt")
    line = one_line(*run(["import", path, "--model", "vae", "--workdir", tmp_path / "w"], capsys)[:2])
    assert "Optimizer" in line and "weights-only" in line and "state_dict()" in line
    assert not (tmp_path / "w").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    one_line(
        *run(["import", tmp_path / "junk.pt", "--model", "vae", "--workdir", tmp_path / "w"], capsys)[:2], "junk.pt"
    )
    path = save({"epoch": 3, "weights": [1, 2]}, tmp_path / "nosd.pt")
    one_line(*run(["import", path, "--model", "vae", "--workdir", tmp_path / "w"], capsys)[:2], "holds no state_dict")
    one_line(*run(["import", tmp_path / "none.pt", "--workdir", tmp_path / "w"], capsys)[:2], "no such file")


def test_inferred_sizes_and_metadata_and_from_pt(tmp_path):
    tm = chapter_vae(hidden_dim=64, latent_dim=3)
    bare = save(tm.state_dict(), tmp_path / "bare.pt")
    m = torch_import.from_pt(bare, "vae")
    assert (m.input_dim, m.latent_dim, m.encoder_fc1.out_features) == (784, 3, 64)
    np.testing.assert_array_equal(np.asarray(m.encoder_fc_mu.kernel[...]), tm.encoder_fc_mu.weight.detach().numpy().T)
    x = torch.rand(4, 784)
    with torch.no_grad():
        want = tm.decode(tm.encode(x)[0]).numpy()
    got = np.asarray(m.decode(m.encode(x.numpy())[0]))
    assert np.abs(got - want).max() <= tolerances.tol("float32", "forward").bound
    # a training script's dict: the state_dict under a common key, the model's name and sizes beside it
    for key in torch_import.COMMON_KEYS:
        name = {} if key == "model" else {"model": "VAE"}
        wrapped = save({key: tm.state_dict(), **name, "latent_dim": 3, "epoch": 7}, tmp_path / f"{key}.pt")
        m2 = torch_import.from_pt(wrapped, None if name else "vae")  # None: the file's 'model' entry
        assert type(m2).__name__ == "VAE" and m2.latent_dim == 3
        src = torch_import.load_source(wrapped, None if name else "vae")
        assert src.under == key and src.meta == {**name, "latent_dim": 3} and src.mapping == []


def test_a_shape_mismatch_names_the_key_and_both_shapes(tmp_path, capsys):
    path = save(chapter_vae(latent_dim=8).state_dict(), tmp_path / "vae8.pt")
    line = one_line(
        *run(["import", path, "--model", "vae", "--latent-dim", "10", "--workdir", tmp_path / "w"], capsys)[:2]
    )
    assert "vae8.pt" in line and "(400, 8)" in line and "(400, 10)" in line and "decoder_fc1.weight" in line
    assert not (tmp_path / "w").exists()
    line = one_line(*run(["import", path, "--model", "cvae", "--workdir", tmp_path / "w"], capsys)[:2])
    assert "CVAE" in line and "'decoder_fc1.weight' has shape (400, 8), model expects (400, 18)" in line


# ------------------------------------------------------------------------------ other layouts


def test_pytorch_examples_layout_is_mapped_by_order_and_shape_with_a_table(tmp_path, capsys):
    torch.manual_seed(1)
    ex = ExamplesVAE()
    path = save(ex.state_dict(), tmp_path / "examples.pt")
    code, err, out = run(["import", path, "--model", "vae", "--workdir", tmp_path / "w"], capsys)
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if "->" in line][1:]  # after the header
    assert len(rows) == 10
    assert [(r[0], r[2], " ".join(r[3:])) for r in rows[:2]] == [
        ("fc1.weight", "encoder_fc1.weight", "(400, 784)"),
        ("fc1.bias", "encoder_fc1.bias", "(400,)"),
    ]
    assert ("fc21.weight", "encoder_fc_mu.weight", "(20, 400)") in [(r[0], r[2], " ".join(r[3:])) for r in rows]
    assert ("fc22.bias", "encoder_fc_logvar.bias") in [(r[0], r[2]) for r in rows]
    assert ("fc4.weight", "decoder_fc2.weight") in [(r[0], r[2]) for r in rows]
    record = json.loads((tmp_path / "w" / "import.json").read_text())
    assert {"source": "fc3.weight", "chapter": "decoder_fc1.weight", "shape": [400, 20]} in record["mapping"]
    # the imported model computes what the original module computes, with the same eps
    model, config, shape = train.restore_run(tmp_path / "w")
    assert config.dataset == "mnist" and shape == (28, 28, 1)
    x = torch.rand(5, 784)
    eps = torch.randn(5, 20)
    with torch.no_grad():
        mu, logvar = ex.encode(x)
        want = ex.decode(mu + torch.exp(0.5 * logvar) * eps).numpy()
    got, _, _ = model(x.numpy(), eps=eps.numpy())
    assert np.abs(np.asarray(got) - want).max() <= tolerances.tol("float32", "forward").bound


@pytest.mark.slow
def test_sequential_conv_stacks_are_mapped(tmp_path):
    torch.manual_seed(2)
    tm = SequentialConvVAE()
    m = torch_import.from_pt(save(tm.state_dict(), tmp_path / "conv.pt"), "conv_vae28")
    assert m.latent_dim == 16
    z = torch.randn(3, 16)
    with torch.no_grad():
        want = tm.decode(z).numpy().transpose(0, 2, 3, 1)
    assert np.abs(np.asarray(m.decode(z.numpy())) - want).max() <= tolerances.tol("float32", "forward").bound


def test_an_ambiguous_or_partial_layout_is_one_line(tmp_path, capsys):
    class DecoderFirst(nn.Module):  # the right tensors in another order: the shapes do not follow
        def __init__(self):
            super().__init__()
            self.dec1, self.dec2 = nn.Linear(20, 400), nn.Linear(400, 784)
            self.enc1, self.enc_mu, self.enc_lv = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)

    path = save(DecoderFirst().state_dict(), tmp_path / "decfirst.pt")
    line = one_line(*run(["import", path, "--model", "vae", "--workdir", tmp_path / "w"], capsys)[:2])
    assert (
        "by order and shape" in line
        and "enc1.weight (400, 784) -> encoder_fc_logvar.weight expects (784, 400)" in line
        and "--rename" in line
    )
    ex = ExamplesVAE().state_dict()
    del ex["fc22.weight"], ex["fc22.bias"]  # no logvar layer: partial
    path = save(ex, tmp_path / "partial.pt")
    line = one_line(*run(["import", path, "--model", "vae", "--workdir", tmp_path / "w"], capsys)[:2])
    assert "10 of its tensors have no match (in encoder_fc1, encoder_fc_mu, encoder_fc_logvar, decoder_fc1, " in line
    assert "8 of the file's have no place (in fc1, fc21, fc3, fc4)" in line
    assert not (tmp_path / "w").exists()

    # --rename settles it: the decoder by prefix, the encoder then follows by order
    code, err, out = run(
        ["import", tmp_path / "decfirst.pt", "--model", "vae", "--workdir", tmp_path / "w"]
        + [
            "--rename",
            "dec1=decoder_fc1",
            "--rename",
            "dec2.weight=decoder_fc2.weight",
            "--rename",
            "dec2.bias=decoder_fc2.bias",
        ],
        capsys,
    )
    assert code == 0, err
    rows = {(r[0], r[2]) for r in (line.split() for line in out.splitlines() if "->" in line)}
    assert {("dec1.bias", "decoder_fc1.bias"), ("dec2.weight", "decoder_fc2.weight")} <= rows
    assert {("enc1.weight", "encoder_fc1.weight"), ("enc_lv.bias", "encoder_fc_logvar.bias")} <= rows
    one_line(
        *run(["import", path, "--model", "vae", "--rename", "fc1", "--workdir", tmp_path / "v"], capsys)[:2], "OLD=NEW"
    )


# ------------------------------------------------------------------------------ runs


@pytest.mark.slow
def test_an_imported_run_is_a_run_with_its_source_and_parity(tmp_path, capsys, monkeypatch):
    tm = chapter_vae(latent_dim=8)
    path = save(tm.state_dict(), tmp_path / "vae.pt")
    work = tmp_path / "run"
    # one batch of 100 per epoch: training's first checkpoint is number 1, as the import's is
    code, err, out = run(["import", path, "--model", "vae", "--workdir", work, *DIGITS, "--batch-size", "100"], capsys)
    assert code == 0, err
    assert "8 test images of digits" in out
    for q in ("weights", "forward.x_recon", "forward.mu", "forward.logvar", "loss.total", "loss.recon", "loss.kl"):
        assert any(line.split()[:1] == [q] and line.split()[-1] == "pass" for line in out.splitlines()), q
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    config = json.loads((work / "config.json").read_text())
    assert config["source"] == {"path": str(path), "sha256": digest, "format": "torch state_dict"}
    assert (config["model"], config["latent_dim"], config["dataset"], config["image_shape"]) == (
        "vae",
        8,
        "digits",
        [28, 28, 1],
    )
    record = json.loads((work / "import.json").read_text())
    assert record["source"]["sha256"] == digest and record["parity"]["passed"] and "fresh Adam" in record["optimizer"]
    assert [r["quantity"] for r in record["parity"]["rows"]][:2] == ["weights", "forward.x_recon"]
    assert all(r["max_error"] <= r["bound"] for r in record["parity"]["rows"])

    code, _, out = run(["parity", "--workdir", work], capsys)
    assert code == 0 and "loss.kl" in out and "FAIL" not in out
    code, err, out = run(["eval", "--workdir", work, "--iwae-k", "5", "--no-progress", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["num_test"] == 20
    code, err, _ = run(["export", "--workdir", work, "--out", tmp_path / "back.pt"], capsys)
    assert code == 0, err
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in tm.state_dict().items()) and back.keys() == tm.state_dict().keys()
    code, err, out = run(["plot", "--workdir", work], capsys)
    assert code == 0, err
    assert (work / "plots" / "reconstruction.png").is_file()

    before = params_of(work)
    code, err, _ = run(["train", "--workdir", work, "--resume"], capsys)
    assert code == 0, err
    after = params_of(work)
    assert any(np.abs(after[k] - before[k]).max() > 0 for k in before)  # checkpoint 1 trained from checkpoint 0
    assert json.loads((work / "summary.json").read_text())["steps"] == 1
    assert [r["epoch"] for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines())] == [1]

    # a quantity over its bound: FAIL in the table and one error line
    bad = dict(tolerances.TOLERANCES)
    bad[("float32", "forward")] = tolerances.Tol("abs", -1.0)
    monkeypatch.setattr(tolerances, "TOLERANCES", bad)
    code, err, out = run(["parity", "--workdir", work], capsys)
    one_line(code, err, "parity check failed", "forward.x_recon")
    assert "FAIL" in out


@pytest.mark.slow
def test_train_init_from_a_pt_file_records_it_and_equals_import_then_resume(tmp_path, capsys):
    torch.manual_seed(3)
    path = save({"model_state_dict": ExamplesVAE().state_dict(), "epoch": 9}, tmp_path / "examples.pt")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    code, err, _ = run(["train", "--init-from", path, "--workdir", tmp_path / "ft", *DIGITS], capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert (config["init_from"], config["init_from_sha256"], config["latent_dim"]) == (str(path), digest, 20)
    code, _, out = run(["parity", "--workdir", tmp_path / "ft"], capsys)  # any run, trained or imported
    assert code == 0 and "8 test images of digits" in out and out.count(" pass") == 7
    # the same start through `import` and `train --resume`: the same training
    code, err, _ = run(["import", path, "--model", "vae", "--workdir", tmp_path / "im", *DIGITS], capsys)
    assert code == 0, err
    assert run(["train", "--workdir", tmp_path / "im", "--resume"], capsys)[0] == 0
    a, b = (json.loads((tmp_path / w / "metrics.jsonl").read_text()) for w in ("ft", "im"))
    assert a["train_loss"] == b["train_loss"] and a["test_loss"] == b["test_loss"]
    assert all(np.array_equal(v, params_of(tmp_path / "im")[k]) for k, v in params_of(tmp_path / "ft").items())
    # a file that is not the one given by sha256, and a file of another model: one line, no run
    for extra, words in (
        (["--init-from-sha256", "0" * 64], ("sha256", "0" * 64)),
        (["--model", "conv_vae28"], ("have no match",)),
    ):
        work = tmp_path / f"bad{len(extra[1])}"
        one_line(*run(["train", "--init-from", path, "--workdir", work, *DIGITS, *extra], capsys)[:2], *words)
        assert not (work / "config.json").exists()
