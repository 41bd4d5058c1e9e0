"""Tests of vae_torch_ref: it is the chapter's code, and the additions behave as documented.

Chapter-text tests need the chapter (../shared/chapter/vae-chapter.txt beside the checkout,
or $VAE_CHAPTER_PATH); real-MNIST tests need $VAE_DATA_DIR (set by the Makefile).
"""

import gzip
import os
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import vae_torch_ref as R
from vae_torch_ref.chapter_source import CLASS_NAMES, LISTING_NAMES

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chapter_path():
    path = R.default_chapter_path()
    if not os.path.isfile(path):
        pytest.skip("chapter text not found at %s (set VAE_CHAPTER_PATH)" % path)
    return path


@pytest.fixture(scope="module")
def ch(chapter_path):
    """The chapter's classes and functions, exec'd from the chapter text."""
    return R.chapter_namespace(chapter_path)


@pytest.fixture(scope="module")
def mnist_dir():
    root = os.environ.get("VAE_DATA_DIR")
    if not root:
        pytest.skip("VAE_DATA_DIR not set: real MNIST files absent")
    path = os.path.join(root, "mnist")
    assert os.path.isdir(path), "VAE_DATA_DIR is set but %s does not exist" % path
    return path


# (class name, constructor kwargs, input shape); small enough to be quick
MODEL_CASES = [
    ("Autoencoder", {}, (5, 784)),
    ("VAE", {}, (5, 784)),
    ("VAE", {"input_dim": 30, "hidden_dim": 7, "latent_dim": 2}, (4, 30)),
    ("ConvVAE", {}, (3, 1, 28, 28)),
    ("CelebAVAE", {}, (2, 3, 64, 64)),
]


def _outputs_equal(a, b):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b, strict=False))


def _tiny_loader(n=10, batch_size=4, shape=(1, 28, 28), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n,) + shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


# ----------------------------------------------------------- the reference IS the chapter


@pytest.mark.parametrize("name", LISTING_NAMES)
def test_tokens_equal_chapter_listing(chapter_path, name):
    ours = R.object_tokens(getattr(R, name))
    theirs = R.chapter_tokens(name, chapter_path)
    assert len(theirs) > 30
    assert ours == theirs


def test_token_comparison_can_fail(chapter_path):
    src = R.chapter_sources(chapter_path)["train_epoch"]
    base = R.source_tokens(src)
    # comments, blank lines and docstrings are ignored ...
    assert R.source_tokens(src.replace('"""Train for one epoch"""', '"""other"""\n# note\n')) == base
    # ... but a changed token or a changed nesting is not
    assert R.source_tokens(src.replace("data.size(0), -1", "data.size(0), 784")) != base
    moved = src.replace("\n    # Average loss\n    num_samples", "\n        num_samples")
    assert moved != src
    assert R.source_tokens(moved) != base


def test_restored_loops_nest_as_in_chapter(ch):
    # the heuristic put the accumulators inside the loops and the averages after them
    import ast

    src = R.chapter_sources()["test_epoch"]
    fn = ast.parse(src).body[0]
    with_node = fn.body[5]
    assert isinstance(with_node, ast.With)
    loop = with_node.body[0]
    assert isinstance(loop, ast.For) and isinstance(loop.body[-1], ast.AugAssign)
    assert isinstance(fn.body[-1], ast.Return) and len(fn.body) == 11


@pytest.mark.parametrize("name,kwargs,shape", MODEL_CASES)
def test_state_dict_loads_into_chapter_class_and_outputs_agree(ch, name, kwargs, shape):
    torch.manual_seed(0)
    ours = getattr(R, name)(**kwargs)
    theirs = ch[name](**kwargs)
    assert type(theirs).__module__ == "vae_chapter"
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.rand(shape)
    for train in (True, False):
        ours.train(train)
        theirs.train(train)
        torch.manual_seed(1)
        out_ours = ours(x)
        torch.manual_seed(1)
        out_theirs = theirs(x)
        assert _outputs_equal(out_ours, out_theirs)
    assert out_ours[0].shape[0] == shape[0]


@pytest.mark.parametrize("name,kwargs,shape", MODEL_CASES)
def test_same_seed_same_init_as_chapter(ch, name, kwargs, shape):
    torch.manual_seed(3)
    ours = getattr(R, name)(**kwargs).state_dict()
    torch.manual_seed(3)
    theirs = ch[name](**kwargs).state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("name", ["VAE", "ConvVAE", "CelebAVAE"])
def test_sample_agrees_with_chapter(ch, name):
    torch.manual_seed(0)
    ours = getattr(R, name)().eval()
    theirs = ch[name]().eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    torch.manual_seed(5)
    a = ours.sample(3)
    torch.manual_seed(5)
    b = theirs.sample(3)
    assert torch.equal(a, b)


def test_loss_functions_agree_with_chapter(ch):
    torch.manual_seed(0)
    x, xr = torch.rand(6, 50), torch.rand(6, 50)
    mu, logvar = torch.randn(6, 4), torch.randn(6, 4)
    assert torch.equal(R.kl_divergence_gaussian(mu, logvar), ch["kl_divergence_gaussian"](mu, logvar))
    assert R.kl_divergence_gaussian(mu, logvar).shape == (6,)
    assert _outputs_equal(R.vae_loss(xr, x, mu, logvar), ch["vae_loss"](xr, x, mu, logvar))
    torch.manual_seed(2)
    a = R.reparameterize(mu, logvar)
    torch.manual_seed(2)
    b = ch["reparameterize"](mu, logvar)
    assert torch.equal(a, b)
    # KL is zero exactly at the prior
    assert torch.equal(R.kl_divergence_gaussian(torch.zeros(2, 3), torch.zeros(2, 3)), torch.zeros(2))


def test_train_and_test_epoch_agree_with_chapter(ch):
    results = []
    for train_epoch, test_epoch in (
        (R.train_epoch, R.test_epoch),
        (ch["train_epoch"], ch["test_epoch"]),
        (R.train_epoch_general, R.test_epoch_general),
    ):
        torch.manual_seed(0)
        model = R.VAE(hidden_dim=32, latent_dim=4)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        torch.manual_seed(1)
        tr = train_epoch(model, _tiny_loader(), opt, "cpu")
        torch.manual_seed(2)
        te = test_epoch(model, _tiny_loader(seed=1), "cpu")
        results.append((tr, te, model.state_dict()))
    (tr0, te0, sd0) = results[0]
    assert all(np.isfinite(tr0)) and all(np.isfinite(te0)) and tr0[0] > 0
    assert tr0[0] == pytest.approx(tr0[1] + tr0[2])
    for tr, te, sd in results[1:]:
        assert tr == tr0 and te == te0
        assert all(torch.equal(sd[k], sd0[k]) for k in sd0)


# ------------------------------------------------------------ ConvVAE bug and ConvVAE28


def test_chapter_convvae_outputs_24x24_and_vae_loss_fails(ch):
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    for cls in (ch["ConvVAE"], R.ConvVAE):
        model = cls()
        x_recon, mu, logvar = model(x)
        assert x_recon.shape == (4, 1, 24, 24)
        assert mu.shape == logvar.shape == (4, 128)
        assert model.sample(2).shape == (2, 1, 24, 24)
        with pytest.raises(ValueError, match="size"):
            R.vae_loss(x_recon, x, mu, logvar)
        with pytest.raises(ValueError, match="size"):
            ch["vae_loss"](x_recon, x, mu, logvar)


def test_convvae28_outputs_28x28_and_loads_into_chapter_convvae(ch):
    torch.manual_seed(0)
    m28 = R.ConvVAE28()
    x = torch.rand(4, 1, 28, 28)
    x_recon, mu, logvar = m28(x)
    assert x_recon.shape == (4, 1, 28, 28)
    assert m28.sample(3).shape == (3, 1, 28, 28)
    total, _, _ = R.vae_loss(x_recon, x, mu, logvar)
    assert torch.isfinite(total)
    chapter = ch["ConvVAE"]()
    chapter.load_state_dict(m28.state_dict(), strict=True)
    sd_c = chapter.state_dict()
    assert {k: v.shape for k, v in sd_c.items()} == {k: v.shape for k, v in m28.state_dict().items()}
    # same encoder; the decoders differ only in the output size
    assert _outputs_equal(m28.encode(x), chapter.encode(x))
    assert chapter.decode(mu).shape == (4, 1, 24, 24)
    # the same seed gives the same parameters as the chapter's ConvVAE
    torch.manual_seed(7)
    a = R.ConvVAE28().state_dict()
    torch.manual_seed(7)
    b = ch["ConvVAE"]().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


# -------------------------------------------------------------------------------- CVAE


def test_cvae_shapes_and_conditioning():
    torch.manual_seed(0)
    m = R.CVAE()
    assert m.encoder_fc1.weight.shape == (400, 794)
    assert m.decoder_fc1.weight.shape == (400, 30)
    assert m.decoder_fc2.weight.shape == (784, 400)
    x = torch.rand(6, 784)
    y = F.one_hot(torch.arange(6) % 10, 10).float()
    x_recon, mu, logvar = m(x, y)
    assert x_recon.shape == (6, 784) and mu.shape == logvar.shape == (6, 20)
    assert ((x_recon > 0) & (x_recon < 1)).all()
    z = torch.randn(6, 20)
    y_other = F.one_hot((torch.arange(6) + 1) % 10, 10).float()
    assert not torch.allclose(m.decode(z, y), m.decode(z, y_other))
    assert m.sample(4, F.one_hot(torch.tensor([1, 2, 3, 4]), 10).float()).shape == (4, 784)
    assert m.sample(5, F.one_hot(torch.tensor(3), 10).float()).shape == (5, 784)
    small = R.CVAE(input_dim=12, hidden_dim=8, latent_dim=3, num_classes=4)
    out = small(torch.rand(2, 12), F.one_hot(torch.tensor([0, 3]), 4).float())
    assert [t.shape for t in out] == [(2, 12), (2, 3), (2, 3)]


# ------------------------------------------------------------------------------ losses


def _loss_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(8, 40, generator=g),
        torch.rand(8, 40, generator=g),
        torch.randn(8, 5, generator=g),
        torch.randn(8, 5, generator=g),
    )


def test_elbo_defaults_equal_vae_loss_exactly():
    xr, x, mu, logvar = _loss_inputs()
    assert _outputs_equal(R.elbo_loss(xr, x, mu, logvar), R.vae_loss(xr, x, mu, logvar))
    assert _outputs_equal(
        R.elbo_loss(xr, x, mu, logvar, recon="bce", beta=1.0, kl_weight=1.0), R.vae_loss(xr, x, mu, logvar)
    )


@pytest.mark.parametrize("beta,kl_weight", [(0.0, 1.0), (4.0, 1.0), (2.0, 0.25), (0.5, 0.0)])
def test_elbo_beta_and_kl_weight(beta, kl_weight):
    xr, x, mu, logvar = _loss_inputs()
    _, recon0, kl0 = R.vae_loss(xr, x, mu, logvar)
    total, recon, kl = R.elbo_loss(xr, x, mu, logvar, beta=beta, kl_weight=kl_weight)
    assert torch.equal(recon, recon0) and torch.equal(kl, kl0)  # kl is unweighted
    assert total.item() == pytest.approx(recon0.item() + beta * kl_weight * kl0.item(), rel=1e-6)


def test_elbo_gaussian_is_sum_of_squares():
    xr, x, mu, logvar = _loss_inputs()
    total, recon, kl = R.elbo_loss(xr, x, mu, logvar, recon="gaussian")
    assert torch.equal(recon, ((xr - x) ** 2).sum())
    assert recon.item() == pytest.approx(F.mse_loss(xr, x, reduction="sum").item(), rel=1e-6)
    assert torch.equal(total, recon + kl)


def test_elbo_bce_logits_matches_bce_for_moderate_logits():
    _, x, mu, logvar = _loss_inputs()
    logits = torch.linspace(-5, 5, 320).view(8, 40)
    _, r_logits, _ = R.elbo_loss(logits, x, mu, logvar, recon="bce_logits")
    _, r_probs, _ = R.elbo_loss(torch.sigmoid(logits), x, mu, logvar, recon="bce")
    assert r_logits.item() == pytest.approx(r_probs.item(), rel=1e-5)


def test_elbo_bce_logits_differs_for_saturated_logits():
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    logits = torch.full((2, 5), -200.0)
    x = torch.ones(2, 5)
    _, r_probs, _ = R.elbo_loss(torch.sigmoid(logits), x, mu, logvar, recon="bce")
    _, r_logits, _ = R.elbo_loss(logits, x, mu, logvar, recon="bce_logits")
    assert r_probs.item() == pytest.approx(100.0 * 10)  # log clamped at -100
    assert r_logits.item() == pytest.approx(200.0 * 10)


def test_elbo_bad_recon_raises():
    xr, x, mu, logvar = _loss_inputs()
    with pytest.raises(ValueError) as err:
        R.elbo_loss(xr, x, mu, logvar, recon="mse")
    msg = str(err.value)
    assert "'mse'" in msg and all(repr(k) in msg for k in ("bce", "bce_logits", "gaussian"))


@pytest.mark.parametrize(
    "name,shape",
    [
        ("Autoencoder", (3, 784)),
        ("VAE", (3, 784)),
        ("ConvVAE", (3, 1, 28, 28)),
        ("ConvVAE28", (3, 1, 28, 28)),
        ("CelebAVAE", (2, 3, 64, 64)),
        ("CVAE", (3, 784)),
    ],
)
def test_decode_logits_is_pre_sigmoid_decoder(request, name, shape):
    torch.manual_seed(0)
    models = [getattr(R, name)().eval()]
    if name in CLASS_NAMES:  # the chapter's own classes too
        models.append(request.getfixturevalue("ch")[name]().eval())
        models[1].load_state_dict(models[0].state_dict(), strict=True)
    y = F.one_hot(torch.arange(shape[0]), 10).float() if name == "CVAE" else None
    z = torch.randn(shape[0], models[0].fc2.out_features if name == "Autoencoder" else models[0].latent_dim)
    with torch.no_grad():
        for m in models:
            logits = R.decode_logits(m, z, y)
            probs = m.decode(z, y) if y is not None else m.decode(z)
            assert logits.shape == probs.shape
            assert (logits < 0).any() and (logits > 0).any()  # really pre-sigmoid
            assert torch.equal(torch.sigmoid(logits), probs)


def test_decode_logits_needs_labels_for_cvae():
    with pytest.raises(ValueError):
        R.decode_logits(R.CVAE(), torch.randn(2, 20))


# ---------------------------------------------------------------- generalized training


def test_train_epoch_general_conv_cvae_and_losses():
    torch.manual_seed(0)
    conv = R.ConvVAE28(latent_dim=8)
    opt = torch.optim.Adam(conv.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in conv.parameters()]
    tr = R.train_epoch_general(conv, _tiny_loader(), opt, "cpu", flatten=False, beta=2.0)
    assert all(np.isfinite(tr)) and tr[0] == pytest.approx(tr[1] + 2.0 * tr[2])
    assert any(not torch.equal(a, b) for a, b in zip(before, conv.parameters(), strict=False))
    te = R.test_epoch_general(conv, _tiny_loader(), "cpu", flatten=False, recon="gaussian")
    assert all(np.isfinite(te))

    cvae = R.CVAE(hidden_dim=16, latent_dim=3)
    opt = torch.optim.SGD(cvae.parameters(), lr=1e-3)
    tr = R.train_epoch_general(cvae, _tiny_loader(), opt, "cpu", conditional=True, kl_weight=0.0)
    assert all(np.isfinite(tr)) and tr[0] == pytest.approx(tr[1])


@pytest.mark.parametrize("conditional", [False, True])
def test_general_bce_logits_matches_bce(conditional):
    torch.manual_seed(0)
    model = R.CVAE(hidden_dim=16, latent_dim=3) if conditional else R.VAE(hidden_dim=16, latent_dim=3)
    results = []
    for recon in ("bce", "bce_logits"):
        torch.manual_seed(4)
        results.append(R.test_epoch_general(model, _tiny_loader(), "cpu", conditional=conditional, recon=recon))
    assert results[0] == pytest.approx(results[1], rel=1e-5)
    assert results[0][2] == results[1][2]  # same random draws -> same KL


# -------------------------------------------------------------------------------- data


def _write_idx(path, array, magic=None, gz=False, cut=0, extra=b""):
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x800 | array.ndim) if magic is None else magic
    raw = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = raw + array.tobytes() + extra
    raw = raw[: len(raw) - cut]
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(raw)
    return str(path)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_small_files(tmp_path, gz):
    images = np.arange(3 * 4 * 5).reshape(3, 4, 5) % 256
    labels = np.array([7, 0, 255])
    got = R.read_idx(_write_idx(tmp_path / "img", images, gz=gz))
    assert got.dtype == np.uint8 and got.shape == (3, 4, 5) and (got == images).all()
    got = R.read_idx(_write_idx(tmp_path / "lab", labels, gz=gz))
    assert got.shape == (3,) and got.tolist() == [7, 0, 255]


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_errors(tmp_path, gz):
    images = np.zeros((2, 3, 3))
    cases = [
        (_write_idx(tmp_path / "magic", images, magic=0x00000804, gz=gz), "bad magic 0x00000804"),
        (_write_idx(tmp_path / "floats", images, magic=0x00000D03, gz=gz), "bad magic"),
        (_write_idx(tmp_path / "short", images, cut=1, gz=gz), "truncated"),
        (_write_idx(tmp_path / "header", images, cut=18 + 8, gz=gz), "truncated"),
        (_write_idx(tmp_path / "tiny", images, cut=18 + 14, gz=gz), "truncated"),
        (_write_idx(tmp_path / "long", images, extra=b"\0", gz=gz), "bytes after"),
        (str(tmp_path / "missing"), "not found"),
    ]
    for path, problem in cases:
        with pytest.raises(ValueError) as err:
            R.read_idx(path)
        assert path in str(err.value) and problem in str(err.value)


def test_read_idx_truncated_gzip(tmp_path):
    good = _write_idx(tmp_path / "img.gz", np.zeros((20, 28, 28)), gz=True)
    with open(good, "rb") as f:
        raw = f.read()
    bad = tmp_path / "cut.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="cut.gz: bad or truncated gzip"):
        R.read_idx(bad)


def _fake_mnist(folder, n_train=6, n_test=4, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        ext = ".gz" if gz else ""
        _write_idx(folder / ("%s-images-idx3-ubyte%s" % (split, ext)), rng.integers(0, 256, (n, 28, 28)), gz=gz)
        _write_idx(folder / ("%s-labels-idx1-ubyte%s" % (split, ext)), rng.integers(0, 10, n), gz=gz)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_datasets_on_small_files(tmp_path, gz):
    _fake_mnist(tmp_path / "mnist", gz=gz)
    for data_dir in (tmp_path, tmp_path / "mnist"):
        train, test = R.mnist_datasets(data_dir)
        x, y = train.tensors
        assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32
        assert y.shape == (6,) and y.dtype == torch.int64
        assert len(test) == 4
        ext = ".gz" if gz else ""
        raw = R.read_idx(tmp_path / "mnist" / ("train-images-idx3-ubyte" + ext))
        assert torch.equal(x[:, 0], torch.from_numpy(raw).float() / 255)
    train_loader, test_loader = R.mnist_loaders(tmp_path, batch_size=3, num_workers=0)
    assert len(train_loader) == 2 and len(test_loader) == 2
    assert torch.equal(next(iter(test_loader))[0], test.tensors[0][:3])


def test_mnist_datasets_errors(tmp_path):
    _fake_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: file not found"):
        R.mnist_datasets(tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3), gz=True)
    with pytest.raises(ValueError, match="4 images but .* has 3 labels"):
        R.mnist_datasets(tmp_path)


def test_real_mnist_idx_files(mnist_dir):
    train_images = R.read_idx(os.path.join(mnist_dir, "train-images-idx3-ubyte.gz"))
    train_labels = R.read_idx(os.path.join(mnist_dir, "train-labels-idx1-ubyte.gz"))
    test_images = R.read_idx(os.path.join(mnist_dir, "t10k-images-idx3-ubyte.gz"))
    test_labels = R.read_idx(os.path.join(mnist_dir, "t10k-labels-idx1-ubyte.gz"))
    assert train_images.shape == (60000, 28, 28) and train_labels.shape == (60000,)
    assert test_images.shape == (10000, 28, 28) and test_labels.shape == (10000,)
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(train_labels).tolist()[:2] == [5923, 6742]
    assert abs(train_images.mean(dtype=np.float64) / 255 - 0.1307) < 1e-4


def test_real_mnist_datasets_and_loaders(mnist_dir):
    train, test = R.mnist_datasets(os.path.dirname(mnist_dir))
    x, y = train.tensors
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and len(test) == 10000
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert abs(x.double().mean().item() - 0.1307) < 1e-4
    assert abs(test.tensors[0].double().mean().item() - 0.1325) < 1e-4
    assert test.tensors[1][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    train_loader, test_loader = R.mnist_loaders(mnist_dir, num_workers=0)
    assert len(train_loader) == 469 and len(test_loader) == 79
    assert isinstance(train_loader.sampler, torch.utils.data.RandomSampler)
    data, labels = next(iter(test_loader))
    assert data.shape == (128, 1, 28, 28) and torch.equal(labels, test.tensors[1][:128])
