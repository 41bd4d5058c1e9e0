"""Shared machinery of the parity suite: model pairs, inputs, both frameworks'
computations, and one comparison helper in Hugging Face's equivalence-test style.

Noise (eps): JAX models take `eps=`; the torch reference draws eps with torch.randn_like inside
`reparameterize`. `inject_eps` monkeypatches torch.randn_like for the duration of a `with` block,
so that the reference's own forward / batch_loss code runs unchanged and receives the same eps
(it checks shape, dtype and that exactly one draw was made).

Directions:
  torch->flax  torch.manual_seed(s) initialises the torch model; its state_dict is loaded with
               convert.load_torch_state_dict into a JAX model initialised from another seed.
  flax->torch  the JAX model is initialised with nnx.Rngs(s); convert.to_torch_state_dict is
               loaded with load_state_dict(strict=True) into a torch model built from another seed.
For CelebAVAE the BatchNorm parameters and buffers (weight 1, bias 0, mean 0, var 1, count 0 at
init) are first set to random values in the source framework, so that a swapped or untransposed
BatchNorm tensor cannot go unnoticed.

float64: torch models are .double(); JAX models are built with param_dtype=jnp.float64 (inside
jax.enable_x64) and hold their seed's float32 initialisation exactly (every float32 is a
float64), so XLA:CPU compiles no float64 random init -- the float64 suite checks arithmetic,
not the initialiser.

Layout: JAX conv models take NHWC, torch NCHW. Inputs are generated in NHWC and transposed for
torch; torch's image outputs (and activations) are transposed back before comparing.

ReLU kinks: a gradient is discontinuous where a ReLU input is 0. When an input lies within
float32 rounding of 0 (|v| ~ 1e-6: it happened for ~1 in 3 CelebAVAE batches of 4, which hold
~5e5 ReLU inputs), the two frameworks can take different branches, and the gradients then differ
by one element's whole contribution (measured: 2-9 % of a layer's gradient) although both are
correct to rounding. Both frameworks' ReLU inputs are therefore tapped during the loss's forward
pass (`tap_relu` stands in for jax.nn.relu -- same function -- in the JAX models' Sequentials and
for jax.nn.relu itself during the pass; torch.nn.functional.relu, which nn.ReLU calls, is wrapped
likewise). Every branch disagreement must lie within the forward tolerance of 0 (else the case
fails as a forward mismatch); a batch with any is redrawn (a new salt), so that gradients are
compared only where the loss is differentiable at float32 resolution. Redraws are counted and
shown in the parity report. (Adam runs are not redrawn: see tolerances.py, "adam".)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections import defaultdict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from flax import nnx

import vae_torch_ref as R
import vae_torch_ref.train as RT
from vae_jax import convert, layers, models
from vae_jax import train as T

try:  # as a package (pytest)
    from parity_tests.report import Record
    from parity_tests.tolerances import error, tol
except ImportError:  # pragma: no cover
    from report import Record
    from tolerances import error, tol

SEEDS = (0, 1, 2)
DIRECTIONS = ("torch->flax", "flax->torch")
RECONS = ("bce", "bce_logits", "gaussian")
ADAM_STEPS = 5
ADAM_LR = 1e-3  # torch.optim.Adam's and Trainer's default; betas (0.9, 0.999), eps 1e-8 in both
# (beta, kl_weight) per seed: the defaults once, then a beta-VAE and an annealed-KL setting.
LOSS_WEIGHTS = {0: (1.0, 1.0), 1: (4.0, 0.25), 2: (0.5, 1.0)}
MAX_REDRAWS = 8


# ------------------------------------------------------------------------------------ models


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    jax_cls: Any
    torch_cls: Any
    x_shape: tuple  # per example, JAX layout (NHWC for conv models)
    loss_x_shape: tuple  # the input the loss is evaluated on (output shape == input shape)
    batch: int
    latent: int
    ae: bool = False
    conditional: bool = False
    bn: bool = False

    @property
    def conv(self):
        return len(self.x_shape) == 3

    @property
    def flat(self):
        return not self.conv


SPECS = {
    s.name: s
    for s in [
        Spec("Autoencoder", models.Autoencoder, R.Autoencoder, (784,), (784,), 5, 20, ae=True),
        Spec("VAE", models.VAE, R.VAE, (784,), (784,), 5, 20),
        Spec("CVAE", models.CVAE, R.CVAE, (784,), (784,), 5, 20, conditional=True),
        # The chapter's ConvVAE returns 24x24 for a 28x28 input (its BCE against the input fails in
        # both frameworks); a 24x24 input encodes to the same 3x3 and decodes to 24x24, so its loss
        # is compared on 24x24 inputs. Forward is compared on 28x28 (output 24x24 in both).
        Spec("ConvVAE", models.ConvVAE, R.ConvVAE, (28, 28, 1), (24, 24, 1), 4, 128),
        Spec("ConvVAE28", models.ConvVAE28, R.ConvVAE28, (28, 28, 1), (28, 28, 1), 4, 128),
        Spec("CelebAVAE", models.CelebAVAE, R.CelebAVAE, (64, 64, 3), (64, 64, 3), 2, 256, bn=True),
    ]
}
MODEL_NAMES = tuple(SPECS)

DTYPES = {"float32": (jnp.float32, torch.float32, np.float32), "float64": (jnp.float64, torch.float64, np.float64)}


@contextlib.contextmanager
def precision(dtype: str):
    """float64: jax.enable_x64 for the block only (a thread-local context manager in jax 0.10;
    nothing outside the block sees x64). float32: explicitly not x64. Both at the highest matmul
    precision, for the block only: TF32 / bf16 passes on accelerators would wreck float32 parity
    (harmless on CPU), and a global setting would reach every other test of the session."""
    with jax.enable_x64(dtype == "float64"), jax.default_matmul_precision("highest"):
        yield


# ------------------------------------------------------------------------------- ReLU taps

_REAL_RELU = jax.nn.relu
_TAPS: list = [None]


def tap_relu(x):
    """jax.nn.relu, recording its input while a `jax_taps()` block is tracing."""
    if _TAPS[0] is not None:
        _TAPS[0].append(x)
    return _REAL_RELU(x)


@contextlib.contextmanager
def jax_taps():
    prev = _TAPS[0]
    _TAPS[0] = rec = []
    jax.nn.relu = tap_relu  # the MLP models call jax.nn.relu at run time
    try:
        yield rec
    finally:
        _TAPS[0] = prev
        jax.nn.relu = _REAL_RELU


@contextlib.contextmanager
def torch_taps():
    real = F.relu
    rec = []

    def relu(input, inplace=False):
        rec.append(input.detach().clone())
        return real(input, inplace=inplace)

    F.relu = relu  # nn.ReLU.forward and the chapter's F.relu both look it up at call time
    try:
        yield rec
    finally:
        F.relu = real


def _instrument(model):
    """The Sequentials hold jax.nn.relu itself (captured at construction): use tap_relu."""
    for _, mod in nnx.iter_modules(model):
        if isinstance(mod, nnx.Sequential):
            for i, layer in enumerate(mod.layers):
                if layer is _REAL_RELU:
                    mod.layers[i] = tap_relu
    return model


# ---------------------------------------------------------------------------- model pairs


@functools.cache
def _jax_init(name: str, dtype: str, seed: int):
    """(graphdef, state) of SPECS[name].jax_cls(rngs=nnx.Rngs(seed)), cached: XLA:CPU compiles
    each random init per shape, which would otherwise dominate the suite's time."""
    cls = SPECS[name].jax_cls
    if dtype == "float32":
        with jax.enable_x64(False):
            return nnx.split(_instrument(cls(rngs=nnx.Rngs(seed))))
    _gd32, st32 = _jax_init(name, "float32", seed)
    with jax.enable_x64(True):
        abstract = _instrument(nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(seed), param_dtype=jnp.float64)))
        gd, ast = nnx.split(abstract)
        st = jax.tree.map(lambda a, s: jnp.asarray(np.asarray(a), s.dtype), st32, ast)
    return gd, st


def jax_model(name: str, dtype: str, seed: int):
    """A fresh JAX model initialised with nnx.Rngs(seed) (a copy of the cached one).
    float64: call inside `precision('float64')`."""
    return nnx.merge(*_jax_init(name, dtype, seed), copy=True)


def torch_model(name: str, dtype: str, seed: int):
    torch.manual_seed(seed)
    m = SPECS[name].torch_cls()
    return m.double() if dtype == "float64" else m


def _bn_random_values(rng, n):
    return dict(
        weight=rng.uniform(0.5, 1.5, n),
        bias=rng.normal(0, 0.2, n),
        running_mean=rng.normal(0, 0.2, n),
        running_var=rng.uniform(0.5, 2.0, n),
        num_batches_tracked=int(rng.integers(1, 100)),
    )


def perturb_bn_torch(tm, seed):
    rng = np.random.default_rng(10_000 + seed)
    with torch.no_grad():
        for mod in tm.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                v = _bn_random_values(rng, mod.num_features)
                for k in ("weight", "bias", "running_mean", "running_var"):
                    getattr(mod, k).copy_(torch.from_numpy(v[k]))
                mod.num_batches_tracked.fill_(v["num_batches_tracked"])


def perturb_bn_jax(jm, seed):
    rng = np.random.default_rng(20_000 + seed)
    for _, mod in nnx.iter_modules(jm):
        if isinstance(mod, layers.BatchNorm2d):
            v = _bn_random_values(rng, mod.num_features)
            for attr, k in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var")):
                var = getattr(mod, attr)
                var.set_value(jnp.asarray(v[k], var.get_value().dtype))
            mod.count.set_value(jnp.asarray(v["num_batches_tracked"], jnp.int32))


def make_pair(name: str, direction: str, seed: int, dtype: str):
    """(jax model, torch model) holding the same parameters, built in `direction`.
    Call inside `precision(dtype)`."""
    spec = SPECS[name]
    other = (seed + 1) % len(SEEDS)  # the destination starts from an unrelated initialisation
    if direction == "torch->flax":
        tm = torch_model(name, dtype, seed)
        if spec.bn:
            perturb_bn_torch(tm, seed)
        jm = jax_model(name, dtype, other)
        convert.load_torch_state_dict(jm, tm.state_dict())
    elif direction == "flax->torch":
        jm = jax_model(name, dtype, seed)
        if spec.bn:
            perturb_bn_jax(jm, seed)
        tm = torch_model(name, dtype, 1000 + seed)
        tm.load_state_dict(convert.to_torch_state_dict(jm), strict=True)
    else:
        raise ValueError(direction)
    return jm, tm


# ------------------------------------------------------------------------------------ inputs


@dataclasses.dataclass
class Batch:
    x: np.ndarray  # JAX layout
    y: np.ndarray  # int labels
    eps: np.ndarray
    z: np.ndarray


def make_batch(name: str, dtype: str, seed: int, *, for_loss=False, salt=0) -> Batch:
    spec = SPECS[name]
    npdt = DTYPES[dtype][2]
    rng = np.random.default_rng([seed, salt, 7 if for_loss else 3])
    shape = spec.loss_x_shape if for_loss else spec.x_shape
    return Batch(
        x=rng.uniform(0, 1, (spec.batch, *shape)).astype(npdt),
        y=rng.integers(0, 10, spec.batch).astype(np.int32),
        eps=rng.standard_normal((spec.batch, spec.latent)).astype(npdt),
        z=rng.standard_normal((spec.batch, spec.latent)).astype(npdt),
    )


def to_torch_x(spec, x):
    """NHWC -> NCHW with canonical contiguous strides. (`permute(...).contiguous()` is a no-op for
    a 1-channel batch: torch ignores size-1 dims in is_contiguous, the strides stay channels-last,
    conv2d then returns channels-last activations, and the chapter's `h.view(B, -1)` raises.)"""
    if spec.conv:
        x = x.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.array(x, order="C", copy=True))


def nhwc(a):
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


# ------------------------------------------------------------------------ torch's eps injection

from vae_jax.parity_taps import inject_eps  # noqa: E402 -- the package's (vae_jax.parity), re-exported

# ------------------------------------------------------------------- JAX: one jitted case


def _jax_forward_dict(m, x, onehot, z, eps):
    cond = (onehot,) if m.conditional else ()
    if isinstance(m, models.Autoencoder):
        xr, zz = m(x)
        return {
            "encode": m.encode(x),
            "decode": m.decode(z),
            "decode_logits": m.decode_logits(z),
            "forward.x_recon": xr,
            "forward.z": zz,
        }
    mu, logvar = m.encode(x, *cond)
    out = {
        "encode.mu": mu,
        "encode.logvar": logvar,
        "decode": m.decode(z, *cond),
        "decode_logits": m.decode_logits(z, *cond),
    }
    xr, mu2, lv2 = m(x, None, *cond, eps=eps)
    out.update({"forward.x_recon": xr, "forward.mu": mu2, "forward.logvar": lv2})
    return out


@functools.partial(nnx.jit, static_argnames=("recons",))
def _jax_case(m, x, onehot, z, eps, xl, yl, epsl, beta, kl_weight, recons=RECONS):
    """Forward outputs on (x, z, eps), then for each recon variant (total, recon, kl, grads, ReLU
    inputs) through vae_jax.train.loss_terms -- the trainer's one loss path -- on (xl, yl, epsl).
    In train mode every pass updates the BatchNorm running stats, in this order."""
    fwd = _jax_forward_dict(m, x, onehot, z, eps)
    out = {}
    for r in recons:

        def f(m, r=r):
            with jax_taps() as taps:
                total, (rec, kl) = T.loss_terms(m, xl, yl, None, recon=r, beta=beta, kl_weight=kl_weight, eps=epsl)
            return total, (rec, kl, tuple(taps))

        (total, (rec, kl, taps)), g = nnx.value_and_grad(f, has_aux=True)(m)
        out[r] = (total, rec, kl, g, taps)
    return fwd, out


def grads_torch_layout(jm, grads):
    """JAX grads (an nnx.State of Params) in torch's keys/layout, via the converter itself: the
    grads are merged into a copy of the model and exported with convert.to_numpy_state_dict
    (every rule is linear -- transpose / flip -- so it maps gradients as it maps weights)."""
    graphdef, _, rest = nnx.split(jm, nnx.Param, ...)
    return convert.to_numpy_state_dict(nnx.merge(graphdef, grads, rest, copy=True))


# ------------------------------------------------------------------------------ torch: a case


def _onehot_t(b, tdt):
    return F.one_hot(torch.from_numpy(b.y).long(), 10).to(tdt)


def _torch_forward_dict(spec, tm, b: Batch, tdt):
    x = to_torch_x(spec, b.x)
    z, eps = torch.from_numpy(b.z), torch.from_numpy(b.eps)
    cond = (_onehot_t(b, tdt),) if spec.conditional else ()
    with torch.no_grad():
        if spec.ae:
            xr, zz = tm(x)
            return {
                "encode": tm.encode(x).numpy(),
                "decode": tm.decode(z).numpy(),
                "decode_logits": R.decode_logits(tm, z).numpy(),
                "forward.x_recon": xr.numpy(),
                "forward.z": zz.numpy(),
            }
        mu, logvar = tm.encode(x, *cond)
        out = {
            "encode.mu": mu.numpy(),
            "encode.logvar": logvar.numpy(),
            "decode": nhwc(tm.decode(z, *cond)),
            "decode_logits": nhwc(R.decode_logits(tm, z, *cond)),
        }
        with inject_eps(eps):
            xr, mu2, lv2 = tm(x, *cond)
        out.update({"forward.x_recon": nhwc(xr), "forward.mu": mu2.numpy(), "forward.logvar": lv2.numpy()})
    return out


def torch_loss(spec, tm, x, labels, eps, *, recon, beta, kl_weight):
    """The reference's loss: vae_torch_ref.batch_loss (train_epoch_general's path) with eps
    injected. Returns (total, recon, kl, kl_scale) where kl_scale = 0.5 * sum(1 + |logvar| + mu^2 +
    exp(logvar)), the size of what the KL sums (see tolerances.py, "kl"). The Autoencoder has no
    KL and batch_loss cannot unpack its (x_recon, z): it goes through elbo_loss with mu = logvar =
    0, whose KL term is exactly 0."""
    if spec.ae:
        data = x.view(x.size(0), -1)
        z = tm.encode(data)
        out = R.decode_logits(tm, z) if recon == "bce_logits" else tm.decode(z)
        zero = torch.zeros_like(z)
        return (*R.elbo_loss(out, data, zero, zero, recon=recon, beta=beta, kl_weight=kl_weight), 0.0)
    seen = {}
    real = RT.elbo_loss

    def spy(x_recon, x, mu, logvar, **kw):
        seen["scale"] = 0.5 * float((1 + logvar.abs() + mu.pow(2) + logvar.exp()).sum().detach())
        return real(x_recon, x, mu, logvar, **kw)

    RT.elbo_loss = spy
    try:
        with inject_eps(eps):
            total, rec, kl = R.batch_loss(
                tm,
                x,
                labels,
                "cpu",
                flatten=spec.flat,
                conditional=spec.conditional,
                recon=recon,
                beta=beta,
                kl_weight=kl_weight,
            )
    finally:
        RT.elbo_loss = real
    return total, rec, kl, seen["scale"]


def _torch_case(spec, tm, fb: Batch, lb: Batch, tdt, beta, kl_weight, recons=RECONS):
    fwd = _torch_forward_dict(spec, tm, fb, tdt)
    x, labels, eps = to_torch_x(spec, lb.x), torch.from_numpy(lb.y).long(), torch.from_numpy(lb.eps)
    out = {}
    params = dict(tm.named_parameters())
    for r in recons:
        tm.zero_grad(set_to_none=True)
        with torch_taps() as taps:
            total, rec, kl, scale = torch_loss(spec, tm, x, labels, eps, recon=r, beta=beta, kl_weight=kl_weight)
        total.backward()
        out[r] = (
            total.item(),
            rec.item(),
            kl.item(),
            {k: p.grad.numpy().copy() for k, p in params.items()},
            taps,
            scale,
        )
    tm.zero_grad(set_to_none=True)
    return fwd, out


# ---------------------------------------------------------------------- comparison (HF style)


RECORDS: list[Record] = []  # every comparison made in this process, in order (the parity report)
REDRAWS: dict = defaultdict(int)  # (model, dtype) -> batches redrawn for a ReLU kink


@dataclasses.dataclass
class Check:
    """One comparison of several named outputs under one tolerance entry (evaluated eagerly, so
    that cached cases hold only these summaries, not the arrays)."""

    context: str
    dtype: str
    quantity: str
    errors: dict
    bad: list

    @property
    def worst(self):
        return max(self.errors.items(), key=lambda kv: kv[1]) if self.errors else ("-", 0.0)

    def message(self):
        t = tol(self.dtype, self.quantity)
        k, v = self.worst
        return (
            f"{self.context}: {len(self.bad)} of {len(self.errors)} outputs exceed ({self.dtype}, "
            f"{self.quantity}) [{t.metric} <= {t.bound:.1e}]; max error {v:.3e} at {k}\n" + "\n".join(self.bad)
        )

    def assert_ok(self):
        assert not self.bad, self.message()


def compare(
    actual: dict,
    expected: dict,
    *,
    dtype: str,
    quantity: str,
    context: str,
    model: str | None = None,
    report_as: str | None = None,
    scales: dict | None = None,
) -> Check:
    """Compare every output of `actual` (JAX) with `expected` (torch) under TOLERANCES[(dtype,
    quantity)]; the Check names each failing output with its error and the bound, and the
    largest error of all. Records the largest error in RECORDS (under `report_as` when given)."""
    t = tol(dtype, quantity)
    bad, errs = [], {}
    if set(actual) != set(expected):
        bad.append(
            f"  outputs differ: only JAX {sorted(set(actual) - set(expected))}, "
            f"only torch {sorted(set(expected) - set(actual))}"
        )
    for k in sorted(set(actual) & set(expected)):
        a, e = np.asarray(actual[k]), np.asarray(expected[k])
        if a.shape != e.shape:
            bad.append(f"  {k}: shape {a.shape} (JAX) vs {e.shape} (torch)")
            errs[k] = float("inf")
            continue
        if t.metric != "exact" and (not np.all(np.isfinite(a)) or not np.all(np.isfinite(e))):
            bad.append(f"  {k}: non-finite values")
            errs[k] = float("inf")
            continue
        errs[k] = error(a, e, t.metric, None if scales is None else scales[k])
        if errs[k] > t.bound:
            bad.append(f"  {k}: {t.metric} error {errs[k]:.3e} > {t.bound:.1e}")
    check = Check(context, dtype, quantity, errs, bad)
    RECORDS.append(Record(dtype, report_as or quantity, check.worst[1], t.bound, not bad, model))
    return check


def assert_close(actual: dict, expected: dict, **kw) -> float:
    check = compare(actual, expected, **kw)
    check.assert_ok()
    return check.worst[1]


def relu_flips(jtaps, ttaps, dtype):
    """(number of ReLU inputs whose sign differs between the frameworks, [unexplained ones]):
    a disagreement is explained when both values lie within the forward tolerance of 0."""
    assert len(jtaps) == len(ttaps), f"{len(jtaps)} JAX ReLU calls vs {len(ttaps)} torch"
    bound = tol(dtype, "forward").bound
    n, unexplained = 0, []
    for i, (j, t) in enumerate(zip(jtaps, ttaps, strict=False)):
        j, t = np.asarray(j), nhwc(t)
        assert j.shape == t.shape, f"ReLU {i}: JAX {j.shape} vs torch {t.shape}"
        f = (j > 0) != (t > 0)
        n += int(f.sum())
        if f.any():
            worst = max(float(np.abs(j[f]).max()), float(np.abs(t[f]).max()))
            if worst > bound:
                unexplained.append(f"ReLU {i}: branch disagreement at |input| {worst:.2e} > {bound:.0e}")
    return n, unexplained


# ------------------------------------------------------------- the cases (cached summaries)


def _ctx(name, direction, seed, dtype, what):
    return f"{name} {direction} seed={seed} {dtype} {what}"


def bn_buffers(jm, tm):
    """BatchNorm buffers in torch's keys: ((jax floats, jax counts), (torch floats, torch counts))."""
    jsd = convert.to_numpy_state_dict(jm)
    tsd = {k: v.numpy() for k, v in tm.state_dict().items()}
    out = []
    for sd in (jsd, tsd):
        out.append(
            (
                {k: sd[k] for k in tsd if k.endswith(("running_mean", "running_var"))},
                {k: sd[k] for k in tsd if k.endswith("num_batches_tracked")},
            )
        )
    return out


def bn_fed_biases(tm, name):
    """{torch key of a conv bias that feeds a BatchNorm2d: key prefix of that BatchNorm}. In train
    mode these biases have an exactly zero gradient (BatchNorm cancels a per-channel shift). Found by
    the package from the graph of one forward (vae_jax.parity.bn_fed_biases), not from names."""
    from vae_jax import parity

    b = make_batch(name, "float64" if next(tm.parameters()).dtype == torch.float64 else "float32", 0)
    return parity.bn_fed_biases(tm, to_torch_x(SPECS[name], b.x))


@functools.cache
def run_case(name: str, direction: str, seed: int, dtype: str) -> dict:
    """All forward / loss / gradient comparisons of one (model, direction, seed, dtype), as
    {"forward": [Check], "loss": [Check], "grad": [Check]}: forward in eval mode; for BatchNorm
    models forward in train mode too; losses and gradients in train mode (the trainer's), for every
    recon variant. Train-mode passes run in the same order in both frameworks, so the BatchNorm
    running stats must agree after each phase."""
    spec = SPECS[name]
    jdt, tdt, _ = DTYPES[dtype]
    beta, kl_weight = LOSS_WEIGHTS[seed]
    w = f"(beta={beta}, kl_weight={kl_weight})"
    ctx = functools.partial(_ctx, name, direction, seed, dtype)
    res = {"forward": [], "loss": [], "grad": []}
    with precision(dtype):
        jm, tm = make_pair(name, direction, seed, dtype)
        fb = make_batch(name, dtype, seed)
        args = (
            jnp.asarray(fb.x),
            jax.nn.one_hot(jnp.asarray(fb.y), 10, dtype=jdt),
            jnp.asarray(fb.z),
            jnp.asarray(fb.eps),
        )
        if spec.bn:  # eval-mode forward (running statistics)
            jm.eval(), tm.eval()
            jf, _ = _jax_case(jm, *args, *args[:1], jnp.asarray(fb.y), args[3], beta, kl_weight, recons=())
            tf, _ = _torch_case(spec, tm, fb, fb, tdt, beta, kl_weight, recons=())
            res["forward"].append(
                compare(
                    {k: np.asarray(v) for k, v in jf.items()},
                    tf,
                    dtype=dtype,
                    quantity="forward",
                    model=name,
                    context=ctx("forward (eval)"),
                )
            )
            (jfl, jcnt), (tfl, tcnt) = bn_buffers(jm, tm)
            res["forward"].append(
                compare(jcnt, tcnt, dtype=dtype, quantity="exact", context=ctx("eval mode must not count batches"))
            )
        jm.train(), tm.train()
        mode = "train" if spec.bn else "eval = train"
        for attempt in range(MAX_REDRAWS):
            lb = make_batch(name, dtype, seed, for_loss=True, salt=attempt)
            jf, jl = _jax_case(jm, *args, jnp.asarray(lb.x), jnp.asarray(lb.y), jnp.asarray(lb.eps), beta, kl_weight)
            tf, tl = _torch_case(spec, tm, fb, lb, tdt, beta, kl_weight)
            flips, unexplained = 0, []
            for r in RECONS:
                n, u = relu_flips(jl[r][4], tl[r][4], dtype)
                flips, unexplained = flips + n, unexplained + u
            if unexplained or not flips:
                break
            REDRAWS[(name, dtype)] += 1
        if unexplained or flips:
            why = unexplained or [f"  a ReLU input within rounding of 0 in each of {MAX_REDRAWS} batches"]
            res["grad"].append(Check(ctx("ReLU branches"), dtype, "forward", {"-": float("inf")}, why))
        res["forward"].append(
            compare(
                {k: np.asarray(v) for k, v in jf.items()},
                tf,
                dtype=dtype,
                quantity="forward",
                model=name,
                context=ctx(f"forward ({mode})"),
            )
        )
        losses_j, losses_t, kl_j, kl_t, scales, gj, gt = {}, {}, {}, {}, {}, {}, {}
        for r in RECONS:
            jtot, jrec, jkl, jg, _ = jl[r]
            ttot, trec, tkl, tg, _, scale = tl[r]
            losses_j.update({f"{r}.total": jtot, f"{r}.recon": jrec})
            losses_t.update({f"{r}.total": ttot, f"{r}.recon": trec})
            kl_j[f"{r}.kl"], kl_t[f"{r}.kl"], scales[f"{r}.kl"] = jkl, tkl, scale
            gsd = grads_torch_layout(jm, jg)
            for k in tg:
                gj[f"{r}:{k}"], gt[f"{r}:{k}"] = gsd[k], tg[k]
        res["loss"].append(
            compare(
                losses_j,
                losses_t,
                dtype=dtype,
                quantity="loss_jit",
                model=name,
                context=ctx(f"loss total/recon {w}, loss_terms under jit"),
            )
        )
        if spec.ae:
            res["loss"].append(compare(kl_j, kl_t, dtype=dtype, quantity="exact", context=ctx("Autoencoder: KL == 0")))
        else:
            res["loss"].append(
                compare(kl_j, kl_t, dtype=dtype, quantity="kl", model=name, scales=scales, context=ctx(f"KL {w}"))
            )
        fed = bn_fed_biases(tm, name) if spec.bn else {}
        regular = [k for k in gt if k.split(":", 1)[1] not in fed]
        res["grad"].append(
            compare(
                {k: gj[k] for k in regular},
                {k: gt[k] for k in regular},
                dtype=dtype,
                quantity="grad",
                model=name,
                context=ctx(f"gradients {w}"),
            )
        )
        for who, g in (("JAX", gj), ("torch", gt)) if fed else ():
            noise = {
                k: np.abs(g[k]).max() / np.abs(g[k[: -len("bias")] + "weight"]).max()
                for k in gt
                if k.split(":", 1)[1] in fed
            }
            res["grad"].append(
                compare(
                    noise,
                    dict.fromkeys(noise, 0.0),
                    dtype=dtype,
                    quantity="grad_bn_bias",
                    model=name,
                    context=ctx(f"{who}: |grad| of BatchNorm-fed biases {w}"),
                )
            )
        if spec.bn:
            (jfl, jcnt), (tfl, tcnt) = bn_buffers(jm, tm)
            res["forward"].append(
                compare(
                    jfl,
                    tfl,
                    dtype=dtype,
                    quantity="forward",
                    model=name,
                    context=ctx("BatchNorm running stats after the train-mode passes"),
                )
            )
            res["forward"].append(
                compare(
                    jcnt,
                    tcnt,
                    dtype=dtype,
                    quantity="exact",
                    context=ctx("num_batches_tracked after the train-mode passes"),
                )
            )
    return res


# ---------------------------------------------------------------------------------------- Adam

_ADAM = optax.adam(ADAM_LR, b1=0.9, b2=0.999, eps=1e-8)


@functools.partial(jax.jit, static_argnums=0)
def _jax_adam_step(graphdef, params, batch_stats, opt_state, x, y, eps, beta):
    """vae_jax.train.Trainer._train_step with the noise injected (Trainer draws eps from a key)."""

    def loss_fn(params):
        model = nnx.merge(graphdef, params, batch_stats, copy=True)
        total, _ = T.loss_terms(model, x, y, None, recon="bce_logits", beta=beta, kl_weight=1.0, eps=eps)
        return total, nnx.state(model, nnx.BatchStat)

    (total, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = _ADAM.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, total


def adam_trajectories(name: str, direction: str, seed: int, dtype: str):
    """ADAM_STEPS Adam steps in both frameworks on the same batches and eps ('bce_logits', the
    trainer's default loss; beta from LOSS_WEIGHTS), train mode: torch.optim.Adam vs optax.adam
    (lr 1e-3, betas (0.9, 0.999), eps 1e-8). Returns (jax state_dict, torch state_dict, initial
    state_dict, jax losses, torch losses, {BatchNorm-fed bias: [torch - jax before each step]})."""
    spec = SPECS[name]
    beta = LOSS_WEIGHTS[seed][0]
    with precision(dtype):
        jm, tm = make_pair(name, direction, seed, dtype)
        jm.train(), tm.train()
        sd0 = {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}
        graphdef, params, stats = nnx.split(jm, nnx.Param, nnx.BatchStat)
        opt_state = _ADAM.init(params)
        opt = torch.optim.Adam(tm.parameters(), lr=ADAM_LR, betas=(0.9, 0.999), eps=1e-8)
        fed = bn_fed_biases(tm, name) if spec.bn else {}
        bias_hist = {k: [] for k in fed}
        jloss, tloss = {}, {}
        for step in range(ADAM_STEPS):
            b = make_batch(name, dtype, seed, for_loss=True, salt=100 + step)
            if fed:
                jsd = convert.to_numpy_state_dict(nnx.merge(graphdef, params, stats, copy=True))
                for k in fed:
                    bias_hist[k].append(tm.state_dict()[k].numpy() - jsd[k])
            params, stats, opt_state, jtotal = _jax_adam_step(
                graphdef, params, stats, opt_state, jnp.asarray(b.x), jnp.asarray(b.y), jnp.asarray(b.eps), beta
            )
            opt.zero_grad(set_to_none=True)
            x, labels, eps = to_torch_x(spec, b.x), torch.from_numpy(b.y).long(), torch.from_numpy(b.eps)
            total = torch_loss(spec, tm, x, labels, eps, recon="bce_logits", beta=beta, kl_weight=1.0)[0]
            total.backward()
            opt.step()
            jloss[f"step{step}"], tloss[f"step{step}"] = np.asarray(jtotal), total.item()
        nnx.update(jm, params, stats)
        jsd = convert.to_numpy_state_dict(jm)
    tsd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    return jsd, tsd, sd0, jloss, tloss, fed, bias_hist


@functools.cache
def run_adam(name: str, direction: str, seed: int, dtype: str) -> list:
    """[Check] of adam_trajectories: each step's loss, the parameters, the BatchNorm buffers."""
    ctx = functools.partial(_ctx, name, direction, seed, dtype)
    jsd, tsd, _sd0, jloss, tloss, fed, bias_hist = adam_trajectories(name, direction, seed, dtype)
    checks = [
        compare(jloss, tloss, dtype=dtype, quantity="adam_loss", model=name, context=ctx("Adam: each step's loss"))
    ]
    pnames = [k for k in tsd if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    regular = [k for k in pnames if k not in fed]
    checks.append(
        compare(
            {k: jsd[k] for k in regular},
            {k: tsd[k] for k in regular},
            dtype=dtype,
            quantity="adam",
            model=name,
            context=ctx(f"parameters after {ADAM_STEPS} Adam steps"),
        )
    )
    diffs = np.concatenate([np.abs(jsd[k].astype(np.float64) - tsd[k]).ravel() for k in regular])
    # the bulk of the elements, for the parity report (not asserted)
    RECORDS.append(Record(dtype, "adam_q999", float(np.quantile(diffs, 0.999)), None, True, name, direction))
    if fed:
        checks.append(
            compare(
                {k: jsd[k] for k in fed},
                {k: tsd[k] for k in fed},
                dtype=dtype,
                quantity="adam_bn_bias",
                model=name,
                context=ctx("BatchNorm-fed biases (zero true gradient) after Adam"),
            )
        )
        # BatchNorm's running_mean includes the bias that feeds it. The part of the running_mean
        # difference that the bias difference explains, exactly: running_mean_N = sum_k m (1-m)^(N-1-k)
        # batch_mean_k + (1-m)^N running_mean_0 (m = 0.1), and batch_mean_k contains bias_k.
        corr = {}
        for k, bn in fed.items():
            n = len(bias_hist[k])
            corr[f"{bn}.running_mean"] = sum(0.1 * 0.9 ** (n - 1 - i) * d for i, d in enumerate(bias_hist[k]))
        bn_keys = [k for k in tsd if k.endswith(("running_mean", "running_var"))]
        checks.append(
            compare(
                {k: jsd[k] + corr.get(k, 0.0) for k in bn_keys},
                {k: tsd[k] for k in bn_keys},
                dtype=dtype,
                quantity="adam_bn_stats",
                model=name,
                context=ctx(
                    "BatchNorm running stats after Adam (running_mean net of the BatchNorm-fed bias difference)"
                ),
            )
        )
        cnt = [k for k in tsd if k.endswith("num_batches_tracked")]
        checks.append(
            compare(
                {k: jsd[k] for k in cnt},
                {k: tsd[k] for k in cnt},
                dtype=dtype,
                quantity="exact",
                context=ctx("num_batches_tracked after Adam"),
            )
        )
    return checks
