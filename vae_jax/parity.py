"""Parity for your own model: `check(torch_model, flax_model, x)` compares a PyTorch VAE with its
Flax NNX port, layer by layer, and names the first layer that diverges.

    from vae_jax import parity
    report = parity.check(torch_model, flax_model, x)      # x: numpy, torch's layout (NCHW)
    assert report.passed, report.to_markdown()

The models follow the chapter's interface: torch `forward(x) -> (recon, mu, logvar)` drawing its
noise with torch.randn_like / torch.randn; Flax `__call__(x, key=None, eps=None)` with NHWC images.
The Flax model is built from nnx.Linear, nnx.Conv, nnx.ConvTranspose and vae_jax.layers' layers
(BatchNorm2d is torch's BatchNorm, on the last axis, for BatchNorm1d too; nnx.BatchNorm follows
other conventions, which the report names). Neither model is changed: the check works on copies.

What it does, in order (docs/parity_your_model.md):
  1. both forwards once, recording the call order of every parameter-holding layer; layers paired
     by call order and kind, torch's weights copied into the Flax copy (or the other direction),
     each through vae_jax.convert's rule for its layer (`report.mapping`)
  2. conventions before numbers: BatchNorm momentum/eps/affine, conv padding/stride/dilation
  3. for each seed, eps drawn once and injected into both: eval-mode forward (outputs and every
     layer's output), a train-mode forward and backward (outputs, layer outputs, the loss and its
     terms, the gradient at every layer output, every parameter's gradient, BatchNorm-fed biases,
     the running statistics), then `steps` optimizer steps (the loss after each, the parameters)
  4. bounds from the one tolerance table, scaled with the model's sizes (vae_jax.tolerances.scaled)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import xml.etree.ElementTree as ET
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vae_jax import convert, parity_match, parity_taps
from vae_jax.files import atomic_write
from vae_jax.parity_taps import bn_fed_biases
from vae_jax.tolerances import error, scaled, tol

MAX_REDRAWS = 8
__all__ = ["PHASES", "Check", "Divergence", "Report", "bn_fed_biases", "check"]
PHASES = ("convention", "forward (eval)", "forward (train)", "loss", "backward", "grad", "bn_stats", "adam")


@dataclasses.dataclass
class Check:
    """One comparison: its quantity and phase, the largest error, the bound and its metric, whether
    an error could exceed the bound (can_fail False: shown, never failing) and whether it passed."""

    phase: str
    quantity: str
    name: str
    error: float
    bound: float
    metric: str
    can_fail: bool = True
    passed: bool = True
    seed: int = 0
    torch_name: str | None = None
    flax_name: str | None = None
    order: int = 0  # position of its layer in call order (backward: reversed)


@dataclasses.dataclass
class Divergence:
    """Where the port first differs: the layer's names in both models, the phase, the error."""

    torch_name: str
    flax_name: str
    phase: str
    max_error: float
    bound: float
    detail: str = ""


@dataclasses.dataclass
class Report:
    """The outcome of `check`: `passed`, every check, the mapping, the conventions that differ."""

    name: str
    dtype: str
    device: str
    mapping: str
    conventions: list = dataclasses.field(default_factory=list)
    checks: list = dataclasses.field(default_factory=list)
    redraws: int = 0
    first_divergence: Divergence | None = None

    @property
    def passed(self) -> bool:
        return not self.conventions and all(c.passed for c in self.checks)

    def numeric_divergence(self) -> Divergence | None:
        """The first failing numeric check (conventions aside), in phase and call order."""
        return _first_divergence(dataclasses.replace(self, conventions=[]))

    def to_markdown(self) -> str:
        """The report as markdown: verdict, device, first divergence, conventions, mapping, checks."""
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"# Parity: {self.name} ({self.dtype}) -- {verdict}", "", f"Device and precision: {self.device}."]
        d = self.first_divergence
        if d:
            lines += ["", f"First divergence: **{d.torch_name}** (torch) / **{d.flax_name}** (Flax), {d.phase}: "]
            lines[-1] += (
                d.detail if d.phase == "convention" else f"error {d.max_error:.2e} > bound {d.bound:.2e}, {d.detail}."
            )
        if self.conventions:
            lines += ["", "## Conventions that differ", ""] + [f"- {c.line()}" for c in self.conventions]
        lines += ["", "## Mapping (call order)", "", self.mapping, "", "## Checks", ""]
        lines += ["| phase | quantity | name | seed | max error | bound | metric | can fail | result |"]
        lines += ["|---|---|---|---|---|---|---|---|---|"]
        for c in self.checks:
            res = "ok" if c.passed else "FAIL"
            lines.append(
                f"| {c.phase} | {_cell(c.quantity)} | {_cell(c.name)} | {c.seed} | {c.error:.2e} | {c.bound:.2e} | "
                f"{c.metric} | "
                f"{'yes' if c.can_fail else 'no (shown)'} | {res} |"
            )
        lines += ["", f"Batches redrawn because a layer output lay within rounding of a kink at 0: {self.redraws}."]
        return "\n".join(lines) + "\n"

    def write_junit(self, path) -> None:
        """A JUnit XML file, one testcase per check (and per convention), written atomically."""
        suite = ET.Element("testsuite", name=f"parity.{self.name}.{self.dtype}")
        failures = 0
        for c in self.conventions:
            case = ET.SubElement(suite, "testcase", classname=f"parity.{self.name}.convention", name=c.torch_name)
            ET.SubElement(case, "failure", message=c.line())
            failures += 1
        for c in self.checks:
            name = f"{c.quantity}[{c.name}] seed={c.seed}"
            case = ET.SubElement(suite, "testcase", classname=f"parity.{self.name}.{c.phase}", name=name)
            if not c.passed:
                msg = f"{c.metric} error {c.error:.3e} > {c.bound:.3e}"
                ET.SubElement(case, "failure", message=msg)
                failures += 1
            ET.SubElement(case, "system-out").text = f"error {c.error:.3e} bound {c.bound:.3e} can_fail {c.can_fail}"
        suite.set("tests", str(len(self.conventions) + len(self.checks)))
        suite.set("failures", str(failures))
        atomic_write(path, ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


# ------------------------------------------------------------------------------------ the runs


def _nhwc(a):
    a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    return np.moveaxis(a, 1, -1) if a.ndim >= 3 else a


def _outputs(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _terms(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _default_losses():
    from vae_jax.losses import vae_loss
    from vae_torch_ref.losses import vae_loss as torch_vae_loss

    return torch_vae_loss, vae_loss


@dataclasses.dataclass
class _Setup:
    tm: Any
    fm: Any
    pairs: list
    x: np.ndarray
    eps_shape: tuple
    losses: tuple
    dtype: str
    sizes: list  # S_l per flax tap (call order)
    n_loss: int
    flax_names: list = dataclasses.field(default_factory=list)  # the Flax layers' calls, in order
    flax_shapes: list = dataclasses.field(default_factory=list)  # and their output shapes
    fns: dict = dataclasses.field(default_factory=dict)  # the jitted Flax functions of this check


def _torch_run(s, tm, eps, *, train, grads):
    import torch  # optional: the [torch] extra

    tm.train(train)
    x = torch.from_numpy(np.array(s.x, order="C", copy=True))
    inject = parity_taps.inject_eps(torch.from_numpy(eps))
    with inject, parity_taps.torch_taps(tm, grads=grads) as taps, torch.set_grad_enabled(grads):
        out = _outputs(tm(x))
        terms = _terms(s.losses[0](out[0], x, *out[1:3])) if grads else ()
    if grads:
        tm.zero_grad(set_to_none=True)
        terms[0].backward()
    return [_nhwc(o) for o in out], [float(t.detach()) for t in terms], taps


def _flax_call(s, m, x, eps, probes, want_loss):
    with parity_taps.flax_taps(m, probes) as taps:
        out = _outputs(m(x, key=None, eps=eps))
    terms = _terms(s.losses[1](out[0], x, *out[1:3])) if want_loss else (jnp.zeros(()),)
    return out, terms, taps


def _flax_fn(s, graphdef, want_loss):
    """The Flax model's forward (and loss) as one jitted function of (params, rest, probes, x, eps),
    compiled once per check and mode; with the loss, its value and gradient with respect to the
    parameters and the probes (the gradient at each layer output)."""
    key = (graphdef, want_loss)
    if key not in s.fns:

        def apply(params, rest, probes, x, eps):
            m = nnx.merge(graphdef, params, rest, copy=True)
            out, terms, taps = _flax_call(s, m, x, eps, probes, want_loss)
            return terms[0], (out, terms, [t.out for t in taps], nnx.state(m, nnx.Not(nnx.Param)))

        s.fns[key] = jax.jit(jax.value_and_grad(apply, argnums=(0, 2), has_aux=True) if want_loss else apply)
    return s.fns[key]


def _split(fm):
    """(graphdef, params, the rest: batch statistics and counters) of a Flax model."""
    graphdef, params, rest = nnx.split(fm, nnx.Param, ...)  # type: ignore[misc]
    return graphdef, params, rest


def _xf(s):
    return jnp.asarray(_nhwc(s.x))


def _flax_eval(s, fm, eps):
    fm.eval()
    graphdef, params, rest = _split(fm)
    _, (out, _, touts, _) = _flax_fn(s, graphdef, False)(params, rest, None, _xf(s), jnp.asarray(eps))
    taps = [parity_taps.Tap(n, None, (), np.asarray(t)) for n, t in zip(s.flax_names, touts, strict=False)]
    return [np.asarray(o) for o in out], taps


def _probes(s):
    return [jnp.zeros(shape, _xf(s).dtype) for shape in s.flax_shapes]


def _flax_grad_run(s, fm, eps):
    """Train mode: outputs, loss terms, layer outputs, the gradient at each layer output (d/d probe),
    parameter gradients in torch's layout per layer, and the updated model (a copy)."""
    fm.train()
    graphdef, params, rest = _split(fm)
    fn = _flax_fn(s, graphdef, True)
    (_, (out, terms, touts, new_rest)), (gp, gprobe) = fn(params, rest, _probes(s), _xf(s), jnp.asarray(eps))
    updated = nnx.merge(graphdef, params, new_rest, copy=True)
    gmodel = nnx.merge(graphdef, gp, rest, copy=True)
    grads = {".".join(str(p) for p in path): convert.layer_tensors(mod) for path, mod in nnx.iter_modules(gmodel)}
    return (
        [np.asarray(o) for o in out],
        [float(t) for t in terms],
        [parity_taps.Tap(n, None, (), np.asarray(t)) for n, t in zip(s.flax_names, touts, strict=False)],
        [np.asarray(g) for g in gprobe],
        grads,
        updated,
    )


def _cmp(checks, phase, quantity, name, a, b, t, seed, pair=(None, None), order=0, scale=None, can_fail=True):
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        e = math.inf
    else:
        e = error(a, b, t.metric, scale)
    checks.append(Check(phase, quantity, name, e, t.bound, t.metric, can_fail, e <= t.bound or not can_fail, seed,
                        pair[0], pair[1], order))  # fmt: skip


def _layer_checks(s, checks, phase, ttaps, ftaps, seed):
    """Each layer output (call order), paired by position; a count mismatch is one failing check."""
    if len(ttaps) != len(ftaps):
        t = tol(s.dtype, "exact")
        checks.append(Check(phase, "layer calls", f"torch {len(ttaps)}, Flax {len(ftaps)}", math.inf, 0.0,
                            t.metric, True, False, seed))  # fmt: skip
    for i, (tt, ft) in enumerate(zip(ttaps, ftaps, strict=False)):
        t = scaled(s.dtype, "model_forward", s.sizes[min(i, len(s.sizes) - 1)])
        fo = ft.out if isinstance(ft.out, np.ndarray) else np.asarray(ft.out)
        _cmp(checks, phase, "layer output", f"{tt.name} / {ft.name}", fo, _nhwc(tt.out), t, seed, (tt.name, ft.name), i)


def _output_checks(s, checks, phase, fout, tout, seed):
    names = ("recon", "mu", "logvar")
    t = scaled(s.dtype, "model_forward", s.sizes[-1])
    for i, (a, b) in enumerate(zip(fout, tout, strict=False)):
        n = names[i] if i < 3 else f"output {i}"
        _cmp(checks, phase, "output", n, a, b, t, seed, (f"output:{n}", f"output:{n}"), 10_000 + i)


def _kinks(s, ttaps, ftouts) -> int:
    """Elements whose sign differs between the frameworks while both lie within the forward bound
    of 0 (a kink at 0 -- ReLU, LeakyReLU -- can take different branches there)."""
    n = 0
    for i, (tt, fo) in enumerate(zip(ttaps, ftouts, strict=False)):
        b, a = _nhwc(tt.out), np.asarray(fo)
        if a.shape != b.shape:
            continue
        tolerance = scaled(s.dtype, "model_forward", s.sizes[i]).bound * max(float(np.abs(b).max()), 1e-30)
        flip = ((a > 0) != (b > 0)) & (np.maximum(np.abs(a), np.abs(b)) <= tolerance)
        n += int(flip.sum())
    return n


def _grad_checks(s, checks, tm_grads, fgrads, fed, seed):
    big = 2 * s.sizes[-1]
    for i, p in enumerate(s.pairs):
        tg, fg = tm_grads[p.torch_name], fgrads.get(p.flax_name, {})
        for k, g in tg.items():
            name = f"{p.torch_name}.{k}"
            if p.torch_name in fed and k == "bias":
                t = tol(s.dtype, "grad_bn_bias")
                wmax = {"torch": float(np.abs(tg["weight"]).max()), "Flax": float(np.abs(fg["weight"]).max())}
                for who, v in (("torch", g), ("Flax", fg.get(k, np.zeros_like(g)))):
                    noise = float(np.abs(v).max()) / max(wmax[who], 1e-30)
                    what = "BatchNorm-fed bias: max abs grad / max abs weight grad"
                    _cmp(checks, "grad", what, f"{who}: {name}", noise, 0.0, t, seed, (p.torch_name, p.flax_name), i)
                continue
            t = scaled(s.dtype, "model_grad", big)
            _cmp(checks, "grad", "parameter gradient", name, fg.get(k, np.zeros(0)), g, t, seed,
                 (p.torch_name, p.flax_name), i)  # fmt: skip


def _bn_stat_checks(s, checks, tm, updated, seed):
    mods = {".".join(str(q) for q in path): m for path, m in nnx.iter_modules(updated)}
    for i, p in enumerate(s.pairs):
        if not type(p.torch_module).__name__.startswith("BatchNorm"):
            continue
        tsd = parity_match._torch_tensors(tm.get_submodule(p.torch_name))
        fsd = convert.layer_tensors(mods[p.flax_name])
        t = scaled(s.dtype, "model_bn_stats", s.sizes[-1])
        for k in ("running_mean", "running_var"):
            if k in tsd:
                _cmp(checks, "bn_stats", "running statistic", f"{p.torch_name}.{k}", fsd.get(k, np.zeros(0)),
                     tsd[k], t, seed, (p.torch_name, p.flax_name), i)  # fmt: skip
        if "num_batches_tracked" in fsd:
            _cmp(checks, "bn_stats", "num_batches_tracked", f"{p.torch_name}", fsd["num_batches_tracked"],
                 tsd["num_batches_tracked"], tol(s.dtype, "exact"), seed, (p.torch_name, p.flax_name), i)  # fmt: skip


def _eps(s, seed, salt):
    dt = np.float64 if s.dtype == "float64" else np.float32
    return np.random.default_rng([seed, salt]).standard_normal(s.eps_shape).astype(dt)


def _torch_param_grads(s, tm):
    mods = dict(tm.named_modules())
    out = {}
    for p in s.pairs:
        own = dict(mods[p.torch_name].named_parameters(recurse=False))
        out[p.torch_name] = {
            k: (v.grad.detach().cpu().numpy().copy() if v.grad is not None else np.zeros(tuple(v.shape)))
            for k, v in own.items()
        }
    return out


def _train_step(s, checks, seed) -> int:
    """One train-mode forward and backward from the pair's state (copies); returns the redraws."""
    redraws = 0
    for salt in range(MAX_REDRAWS):
        eps = _eps(s, seed, salt)
        tm, fm = copy.deepcopy(s.tm), nnx.clone(s.fm)
        tout, tterms, ttaps = _torch_run(s, tm, eps, train=True, grads=True)
        fout, fterms, ftaps, fgout, fgrads, updated = _flax_grad_run(s, fm, eps)
        if not _kinks(s, ttaps, [t.out for t in ftaps]) or salt == MAX_REDRAWS - 1:
            break
        redraws += 1
    tmods = _torch_param_grads(s, tm)
    fnames = [t.name for t in ftaps] + ["?"] * max(len(ttaps) - len(ftaps), 0)
    _layer_checks(s, checks, "forward (train)", ttaps, ftaps, seed)
    _output_checks(s, checks, "forward (train)", fout, tout, seed)
    names = ("total", "recon", "kl") if s.losses == _default_losses() else tuple(f"term {i}" for i in range(9))
    t = scaled(s.dtype, "model_loss", s.sizes[-1] + math.sqrt(s.n_loss))
    for i, (a, b) in enumerate(zip(fterms, tterms, strict=False)):
        _cmp(checks, "loss", "loss", names[i], a, b, t, seed, ("loss", "loss"), i)
    tg = scaled(s.dtype, "model_grad", 2 * s.sizes[-1])
    n = len(ttaps)
    for i, (tt, g) in reversed(list(enumerate(zip(ttaps, fgout, strict=False)))):
        if tt.grad is not None:
            _cmp(checks, "backward", "gradient at layer output", f"{tt.name} / {fnames[i]}", g, _nhwc(tt.grad), tg,
                 seed, (tt.name, fnames[i]), n - i)  # fmt: skip
    _grad_checks(s, checks, tmods, fgrads, parity_taps.bn_fed(ttaps), seed)
    _bn_stat_checks(s, checks, tm, updated, seed)
    return redraws


def _eval_checks(s, checks, seed):
    eps = _eps(s, seed, 0)
    tm, fm = copy.deepcopy(s.tm), nnx.clone(s.fm)
    tout, _, ttaps = _torch_run(s, tm, eps, train=False, grads=False)
    fout, ftaps = _flax_eval(s, fm, eps)
    _layer_checks(s, checks, "forward (eval)", ttaps, ftaps, seed)
    _output_checks(s, checks, "forward (eval)", fout, tout, seed)


def _optimizers(optimizer, tm):
    import optax
    import torch  # optional: the [torch] extra

    if optimizer is None:
        return torch.optim.Adam(tm.parameters(), lr=1e-3), optax.adam(1e-3), 1e-3
    make_torch, tx = optimizer
    opt = make_torch(tm.parameters())
    return opt, tx, float(opt.param_groups[0]["lr"])


def _adam_checks(s, checks, steps, optimizer, seed):
    """`steps` optimizer steps in train mode, a new eps each: the loss of each step (can fail), the
    90th percentile of the parameters' elementwise error (can fail), their largest (shown)."""
    import optax

    tm, fm = copy.deepcopy(s.tm), nnx.clone(s.fm)
    tm.train(), fm.train()
    opt, tx, lr = _optimizers(optimizer, tm)
    graphdef, params, rest = _split(fm)
    state = tx.init(params)
    fn = _flax_fn(s, graphdef, True)

    @jax.jit
    def update(g, state, params):
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state

    tl = scaled(s.dtype, "model_loss", s.sizes[-1] + math.sqrt(s.n_loss))
    adam_loss = tol(s.dtype, "adam_loss")
    for step in range(steps):
        eps = _eps(s, seed, 1000 + step)
        _, tterms, _ = _torch_run(s, tm, eps, train=True, grads=True)
        opt.step()
        (total, (_, _, _, rest)), (g, _) = fn(params, rest, _probes(s), _xf(s), jnp.asarray(eps))
        params, state = update(g, state, params)
        bound = tl if step == 0 else type(tl)(tl.metric, max(tl.bound, adam_loss.bound), tl.why)
        _cmp(checks, "adam", "loss before the step", f"step {step}", float(total), tterms[0], bound, seed,
             ("step", "step"), step)  # fmt: skip
    final = nnx.merge(graphdef, params, rest, copy=True)
    mods = {".".join(str(q) for q in path): m for path, m in nnx.iter_modules(final)}
    diffs = []
    for p in s.pairs:
        fsd = convert.layer_tensors(mods[p.flax_name])
        own = dict(tm.get_submodule(p.torch_name).named_parameters(recurse=False))
        for k, v in own.items():
            diffs.append(np.abs(fsd[k].astype(np.float64) - v.detach().cpu().numpy()).ravel())
    d = np.concatenate(diffs) if diffs else np.zeros(1)
    q = scaled(s.dtype, "model_adam_q90", lr * max(steps, 1))
    q90 = float(np.quantile(d, 0.9))
    after = f"after {steps} steps"
    what = "90th percentile of the parameter error"
    checks.append(Check("adam", what, after, q90, q.bound, q.metric, True, q90 <= q.bound, seed, "step", "step", steps))
    hard, what = 2 * 1.01 * lr * steps, "largest parameter error (Adam's own step bound)"
    checks.append(Check("adam", what, after, float(d.max()), hard, "abs", False, True, seed, "step", "step", steps + 1))


# ------------------------------------------------------------------------------------ the check


def _copies(torch_model, flax_model, dtype):
    tm = copy.deepcopy(torch_model)
    tm = tm.double() if dtype == "float64" else tm.float()
    graphdef, state = nnx.split(flax_model)
    want = jnp.float64 if dtype == "float64" else jnp.float32
    state = jax.tree.map(lambda a: jnp.asarray(a, want) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    return tm, nnx.merge(graphdef, state, copy=True)


def _float32_only(flax_model) -> None:
    """One line for a layer computed by oneDNN's float32-only kernels (vae_jax.layers' "onednn" form)."""
    from vae_jax import layers
    from vae_jax.errors import ConversionError

    for name, m in parity_taps.flax_leaves(flax_model):  # a BatchNorm2d's "onednn" impl computes float64 in jnp
        if isinstance(m, (layers.OnednnConv, layers.OnednnConvTranspose)):
            raise ConversionError(
                f"Flax layer {name} ({type(m).__name__}) computes with oneDNN's float32 kernels, which float64 cannot "
                "use -- build the model with conv_form=vae_jax.layers.DEFAULT_CONV_FORM (the XLA forms) for float64"
            )


def _setup(torch_model, flax_model, x, loss, dtype, direction) -> _Setup:
    import torch  # optional: the [torch] extra

    if dtype == "float64":
        _float32_only(flax_model)
    tm, fm = _copies(torch_model, flax_model, dtype)
    x = np.asarray(x, np.float64 if dtype == "float64" else np.float32)
    losses = _default_losses() if loss is None else tuple(loss)
    shapes: list = []
    tm.eval()
    with torch.no_grad(), parity_taps.inject_eps(None, None, shapes), parity_taps.torch_taps(tm) as ttaps:
        tm(torch.from_numpy(np.array(x, order="C", copy=True)))
    if len(shapes) != 1:
        raise parity_taps.DrawCountError(
            f"the torch model drew noise {len(shapes)} times in one forward pass, the Flax model takes one eps "
            "-- draw eps once (torch.randn_like(std)) in reparameterize, as the chapter's models do"
        )
    s = _Setup(tm, fm, [], x, shapes[0], losses, dtype, [], int(x.size))
    fm.eval()
    _, _, ftaps = _flax_call(s, fm, _xf(s), jnp.asarray(_eps(s, 0, 0)), None, False)
    s.flax_names, s.flax_shapes = [t.name for t in ftaps], [tuple(t.out.shape) for t in ftaps]
    s.pairs = parity_match.pair_layers(ttaps, ftaps, parity_taps.torch_leaves(tm), parity_taps.flax_leaves(fm))
    parity_match.copy_weights(s.pairs, direction)
    total, s.sizes = 0.0, []
    for t in ftaps:
        total += math.sqrt(parity_match.fan_in(t.module, t.in_shape))
        s.sizes.append(total)
    return s


def _first_divergence(report: Report) -> Divergence | None:
    if report.conventions:
        c = report.conventions[0]
        return Divergence(c.torch_name, c.flax_name, "convention", math.inf, 0.0, c.line())
    bad = [c for c in report.checks if not c.passed]
    if not bad:
        return None
    first = min(bad, key=lambda c: (PHASES.index(c.phase), c.order, c.seed))
    detail = f"{first.quantity} {first.name} (seed {first.seed}, {first.metric})"
    return Divergence(first.torch_name or "-", first.flax_name or "-", first.phase, first.error, first.bound, detail)


def check(
    torch_model,
    flax_model,
    x,
    *,
    steps: int = 5,
    loss=None,
    optimizer=None,
    dtype: str = "float32",
    seeds: int = 1,
    direction: str = "torch->flax",
    name: str | None = None,
) -> Report:
    """Compare a torch VAE with its Flax NNX port; neither model is changed (copies are compared).

    Args:
        torch_model: a torch.nn.Module, `forward(x) -> (recon, mu, logvar)`, drawing its noise once
            with torch.randn_like or torch.randn.
        flax_model: a flax.nnx.Module, `__call__(x, key=None, eps=None) -> (recon, mu, logvar)`, built
            from nnx.Linear / nnx.Conv / nnx.ConvTranspose / nnx.BatchNorm and vae_jax.layers.
        x: a numpy batch in torch's layout (NCHW images; the Flax model gets NHWC).
        steps: optimizer steps compared after the gradients (0: none).
        loss: None (the chapter's ELBO, vae_torch_ref.losses.vae_loss and vae_jax.losses.vae_loss), or
            a pair (torch_fn, flax_fn), each (recon, x, mu, logvar) -> total or (total, *terms).
        optimizer: None (Adam, lr 1e-3, in both), or a pair (make_torch(params) -> torch optimizer,
            an optax GradientTransformation).
        dtype: "float32" or "float64" (float64 within this call only).
        seeds: how many noise draws to compare; the report holds every check of every seed.
        direction: "torch->flax" (torch's weights into the Flax copy) or "flax->torch".
        name: the report's name (default: the torch model's class).
    Returns:
        A Report: `passed`, `checks`, `mapping`, `conventions`, `first_divergence`.
    Raises:
        ConversionError: a layer that cannot be paired or mapped, or noise drawn another number of
            times than once (one line naming it).
    """
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype {dtype!r}: use float32 or float64")
    with parity_taps.precision(dtype) as device:
        s = _setup(torch_model, flax_model, x, loss, dtype, direction)
        report = Report(name or type(torch_model).__name__, dtype, device, parity_match.mapping_table(s.pairs))
        report.conventions = parity_match.conventions(s.pairs)
        for seed in range(seeds):
            phase = "forward (eval)"
            try:
                _eval_checks(s, report.checks, seed)
                phase = "forward (train)"
                report.redraws += _train_step(s, report.checks, seed)
                phase = "adam"
                if steps:
                    _adam_checks(s, report.checks, steps, optimizer, seed)
            except (TypeError, ValueError) as e:  # shapes that do not fit: the conventions say why
                if not report.conventions:
                    raise
                what = str(e).splitlines()[0][:200]
                report.checks.append(Check(phase, "run", what, math.inf, 0.0, "abs", True, False, seed, order=10**6))
                break
    report.first_divergence = _first_divergence(report)
    return report
