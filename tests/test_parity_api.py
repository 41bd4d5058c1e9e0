"""vae_jax.parity on pairs that are not the chapter's (tests/parity_pairs.py): the correct ports pass,
each typical porting bug planted alone in the Flax side fails and the report names its layer."""

import functools
import subprocess
import sys
import xml.etree.ElementTree as ET

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from flax import nnx  # noqa: E402

from tests.helpers import one_line, run  # noqa: E402
from tests.parity_pairs import FlaxConv, FlaxMLP, TorchConv, TorchMLP  # noqa: E402
from vae_jax import convert, parity  # noqa: E402
from vae_jax.errors import ConversionError  # noqa: E402

XM = np.random.default_rng(0).uniform(0, 1, (8, 48)).astype(np.float32)
XC = np.random.default_rng(0).uniform(0, 1, (4, 1, 16, 16)).astype(np.float32)


def _torch(cls):
    torch.manual_seed(0)
    return cls()


@functools.cache
def _report(kind, steps=0, **bug):
    pair = {"mlp": (TorchMLP, FlaxMLP, XM), "conv": (TorchConv, FlaxConv, XC)}[kind]
    return parity.check(_torch(pair[0]), pair[1](rngs=nnx.Rngs(1), **bug), pair[2], steps=steps)


def test_the_correct_mlp_port_passes_every_check():
    flax_model = FlaxMLP(rngs=nnx.Rngs(1))
    before = nnx.state(flax_model, nnx.Param)["fc1"]["kernel"][...].copy()
    r = parity.check(_torch(TorchMLP), flax_model, XM, steps=2)
    assert r.passed and r.first_divergence is None and not r.conventions, r.to_markdown()
    phases = {c.phase for c in r.checks}
    assert set(parity.PHASES) - {"convention"} <= phases
    assert all(c.error <= c.bound for c in r.checks if c.can_fail)
    # the one check that cannot fail is Adam's own step bound; the quantile beside it can
    assert [c.quantity for c in r.checks if not c.can_fail] == ["largest parameter error (Adam's own step bound)"]
    # enc.0 feeds a BatchNorm1d: its bias's gradient is zero in exact arithmetic, judged as noise
    fed = [c for c in r.checks if c.quantity.startswith("BatchNorm-fed")]
    assert {c.name for c in fed} == {"torch: enc.0.bias", "Flax: enc.0.bias"}
    assert "| enc.0.weight | (32, 48) | fc1.kernel | (48, 32) |" in r.mapping
    assert "| enc.1.num_batches_tracked | () | bn.count | () |" in r.mapping
    np.testing.assert_array_equal(nnx.state(flax_model, nnx.Param)["fc1"]["kernel"][...], before)  # a copy was used


@pytest.mark.parametrize("transpose_kernel", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_the_correct_conv_port_passes(transpose_kernel):
    r = _report("conv", transpose_kernel=transpose_kernel)
    assert r.passed, r.to_markdown()
    layout = "(in,out,kh,kw) -> (kh,kw,out,in)" if transpose_kernel else "(in,out,kh,kw) -> flip, (kh,kw,in,out)"
    assert f"| dec.0.weight | (16, 8, 4, 4) | t1.kernel | {(4, 4, 8, 16) if transpose_kernel else (4, 4, 16, 8)} |" in (
        r.mapping
    )
    assert layout in r.mapping


BUGS = [
    # (pair, the bug, torch layer named, the convention's words, the numeric phase that fails there)
    ("mlp", {"momentum": 0.9}, "enc.1", "momentum: torch 0.1, Flax 0.9", "bn_stats"),
    ("mlp", {"bn_eps": 1e-3}, "enc.1", "eps: torch 1e-05, Flax 0.001", "forward (eval)"),
    ("mlp", {"plain_bn": True}, "enc.1", "use vae_jax.layers.BatchNorm2d", "bn_stats"),
    ("mlp", {"slope": 0.01}, "enc.3", None, "forward (eval)"),
    ("conv", {"same": True}, "enc.0", "Flax padding='SAME' pads ((0, 1), (0, 1))", "forward (eval)"),
    ("conv", {"nhwc_flatten": True}, "fc_mu", None, "forward (eval)"),
    ("conv", {"tconv_pad": 1}, "dec.0", "pass padding=((2, 2), (2, 2))", "forward (eval)"),
]


@pytest.mark.parametrize("kind,bug,layer,convention,phase", BUGS, ids=[next(iter(b[1])) for b in BUGS])
def test_a_planted_bug_fails_and_its_layer_is_named(kind, bug, layer, convention, phase):
    r = _report(kind, **bug)
    assert not r.passed
    d = r.first_divergence
    assert d.torch_name == layer, r.to_markdown()
    if convention:
        assert d.phase == "convention" and convention in d.detail, d
        assert [c.torch_name for c in r.conventions] == [layer]
    else:
        assert not r.conventions and d.phase == phase and d.max_error > d.bound
    n = r.numeric_divergence()
    assert (n.torch_name, n.phase) == (layer, phase), r.to_markdown()


def test_flax_to_torch_direction_passes():
    torch.manual_seed(5)  # the torch model's own weights are overwritten by the Flax model's
    r = parity.check(TorchMLP(), FlaxMLP(rngs=nnx.Rngs(3)), XM, steps=0, direction="flax->torch")
    assert r.passed, r.to_markdown()


@pytest.mark.slow  # a second compilation in float64
def test_float64_is_scoped_and_its_bounds_are_tighter():
    r = parity.check(_torch(TorchMLP), FlaxMLP(rngs=nnx.Rngs(1)), XM.astype(np.float64), steps=1, dtype="float64")
    assert r.passed, r.to_markdown()
    assert "float64" in r.device and "highest" in r.device
    assert max(c.bound for c in r.checks if c.phase == "grad" and c.metric == "rel") < 1e-12
    assert not jax.config.jax_enable_x64


def test_the_report_as_markdown_and_junit(tmp_path):
    r = _report("mlp", slope=0.01)
    md = r.to_markdown()
    assert "FAILED" in md and "First divergence: **enc.3** (torch) / **fc2** (Flax), forward (eval)" in md
    r.write_junit(tmp_path / "junit.xml")
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert int(suite.get("failures")) == len(failed) > 0
    assert int(suite.get("tests")) == len(r.checks)
    assert failed[0].get("name").startswith("layer output[enc.3 / fc2]")


class _Extra(TorchMLP):
    def __init__(self):
        super().__init__()
        self.extra = torch.nn.Linear(6, 6)

    def forward(self, x):
        recon, mu, logvar = super().forward(x)
        return recon, self.extra(mu), logvar


class _TwoDraws(TorchMLP):
    def forward(self, x):
        torch.randn(3)
        return super().forward(x)


class _Scaled(nnx.Module):  # a layer no conversion rule maps
    def __init__(self):
        self.gain = nnx.Param(np.ones(6, np.float32))


def test_what_cannot_be_paired_is_one_line():
    with pytest.raises(ConversionError, match=r"^torch layer extra \(Linear\) has no counterpart: torch calls 8"):
        parity.check(_torch(_Extra), FlaxMLP(rngs=nnx.Rngs(1)), XM, steps=0)
    with pytest.raises(ConversionError, match="drew noise 2 times in one forward pass"):
        parity.check(_torch(_TwoDraws), FlaxMLP(rngs=nnx.Rngs(1)), XM, steps=0)
    m = FlaxMLP(rngs=nnx.Rngs(1))
    m.scale = _Scaled()
    with pytest.raises(ConversionError, match=r"^scale \(_Scaled\) holds gain, which no conversion rule maps"):
        parity.check(_torch(TorchMLP), m, XM, steps=0)
    with pytest.raises(ConversionError, match="no conversion rule maps"):
        convert.to_torch_state_dict(m)


def test_nnx_batchnorm_is_converted_not_dropped():
    sd = convert.to_numpy_state_dict(FlaxMLP(rngs=nnx.Rngs(0), plain_bn=True))
    assert {k for k in sd if k.startswith("bn.")} == {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"}


PAIRS_FILE = """
import sys
sys.path.insert(0, {root!r})
from tests.parity_pairs import FlaxConv, TorchConv


def FlaxSame(*, rngs):
    return FlaxConv(rngs=rngs, same=True)
"""


def test_the_cli_names_the_first_divergence(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    (tmp_path / "pairs.py").write_text(PAIRS_FILE.format(root=str(Path(__file__).resolve().parent.parent)))
    monkeypatch.chdir(tmp_path)
    args = ["parity", "--torch", "pairs.py:TorchConv", "--input-shape", "4,1,16,16", "--steps", "0"]
    code, err, out = run([*args, "--flax", "pairs.py:FlaxSame", "--report", "rep"], capsys)
    one_line(code, err, "first divergence at enc.0 (torch) / c1 (Flax), convention", "pass padding=((1, 1), (1, 1))")
    assert "# Parity: TorchConv (float32) -- FAILED" in out
    assert (tmp_path / "rep" / "parity.md").read_text() == out.rstrip("\n") + "\n"
    assert ET.parse(tmp_path / "rep" / "junit.xml").getroot().get("failures") != "0"
    code, err, _ = run(
        ["parity", "--torch", "pairs.py:TorchConv", "--flax", "pairs.py:Nope", "--input-shape", "4,1"], capsys
    )
    one_line(code, err, "defines no Nope")


CI_TEST = """
import numpy as np
from flax import nnx
from tests.parity_pairs import FlaxMLP, TorchMLP


def test_my_port(parity):
    x = np.random.default_rng(0).uniform(0, 1, (8, 48)).astype(np.float32)
    report = parity(TorchMLP(), FlaxMLP(rngs=nnx.Rngs(0), slope={slope}), x, steps=1)
    assert report.passed, report.to_markdown()
"""


@pytest.mark.slow  # a pytest run in a subprocess
@pytest.mark.parametrize("slope", [0.2, 0.01])
def test_the_pytest_fixture_writes_the_report(tmp_path, slope):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["vae_jax.pytest_plugin"]\n')
    (tmp_path / "test_port.py").write_text(CI_TEST.format(slope=slope))
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "--parity-report", "rep", "test_port.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert p.returncode == (0 if slope == 0.2 else 1), p.stdout[-3000:] + p.stderr[-3000:]
    md = (tmp_path / "rep" / "parity.md").read_text()
    assert ("PASSED" if slope == 0.2 else "First divergence: **enc.3**") in md


def test_the_optimizer_checks_can_fail():
    import optax

    r = parity.check(_torch(TorchMLP), FlaxMLP(rngs=nnx.Rngs(1)), XM, steps=2,
                     optimizer=(lambda p: torch.optim.Adam(p, lr=1e-3), optax.adam(1e-4)))  # fmt: skip
    d = r.first_divergence
    assert d.phase == "adam" and d.max_error > d.bound, r.to_markdown()
    q90 = next(c for c in r.checks if c.quantity == "90th percentile of the parameter error")
    assert not q90.passed and q90.can_fail
    assert all(c.passed for c in r.checks if c.phase != "adam")


def test_a_loss_pair_and_a_loss_that_differs():
    from vae_jax.losses import elbo
    from vae_torch_ref.losses import elbo_loss

    t_loss = lambda recon, x, mu, logvar: elbo_loss(recon, x, mu, logvar, beta=4.0)
    r = parity.check(_torch(TorchMLP), FlaxMLP(rngs=nnx.Rngs(1)), XM, steps=0,
                     loss=(t_loss, lambda recon, x, mu, logvar: elbo(recon, x, mu, logvar, beta=4.0)))  # fmt: skip
    assert r.passed, r.to_markdown()
    r = parity.check(_torch(TorchMLP), FlaxMLP(rngs=nnx.Rngs(1)), XM, steps=0,
                     loss=(t_loss, lambda recon, x, mu, logvar: elbo(recon, x, mu, logvar, beta=1.0)))  # fmt: skip
    d = r.first_divergence
    assert (d.torch_name, d.phase) == ("loss", "loss") and "term 0" in d.detail, r.to_markdown()


def test_bounds_scale_with_the_model_and_the_dtype():
    from vae_jax.tolerances import scaled

    small, big = scaled("float32", "model_grad", 10.0), scaled("float32", "model_grad", 1000.0)
    assert big.bound == 100 * small.bound and small.metric == "rel"
    assert scaled("float64", "model_grad", 10.0).bound == small.bound * 2.0**-29
    r = _report("mlp", slope=0.01)
    layer = [c.bound for c in r.checks if c.phase == "forward (eval)" and c.quantity == "layer output"]
    assert layer == sorted(layer) and layer[0] < layer[-1]  # S_l grows along the call order
