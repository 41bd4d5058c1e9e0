"""PyTorch checkpoints into vae-jax: `vae-jax import`, `vae-jax parity`, `train --init-from FILE.pt`, `from_pt`.

A `.pt` file is read with torch.load(weights_only=True): a state_dict, or a dict holding one under
'state_dict', 'model_state_dict' or 'model' (with optional 'model', 'latent_dim', 'hidden_dim'
entries beside it, used where no option says otherwise). Its tensors become the chapter's torch
keys (vae_torch_ref.models): the same keys, keys renamed with `--rename OLD=NEW` (a full key or a
dotted prefix), or -- another layout of the same architecture, e.g. pytorch/examples' VAE (fc1,
fc21, fc22, fc3, fc4) -- the remaining tensors paired with the remaining chapter keys one to one in
the file's order, when every pair has the shape the model expects. Sizes not given are read from
the tensors' shapes. vae_jax.convert then loads them into the Flax model, strictly.

The parity check runs the Flax model and the chapter's PyTorch class holding the same weights on a
few images (or random inputs in [0, 1] from the seed), with the same injected eps, and compares the
weights, the forward outputs and the loss with the bounds of vae_jax.tolerances.

torch is an optional extra: it, and vae_torch_ref (the chapter's PyTorch code), is imported only inside
the functions that need it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import re
import shutil
from collections import OrderedDict
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from vae_jax import __version__, checkpoints, convert, datasets, models, pt_files, train
from vae_jax.config import is_model_spec, model_label
from vae_jax.errors import ConfigError, ConversionError, DataError
from vae_jax.files import atomic_write, json_text, sha256_file, unlock_run_dir
from vae_jax.tolerances import error, tol

COMMON_KEYS = ("state_dict", "model_state_dict", "model")  # where a training script keeps the state_dict
META_KEYS = ("model", "latent_dim", "hidden_dim")  # entries beside it that say what it holds
NUM_IMAGES = 8  # the parity check's batch
# size -> (chapter key, axis) it is read from
_SIZE_KEYS = {
    "ae": {"input_dim": ("fc1.weight", 1), "hidden_dim": ("fc1.weight", 0), "latent_dim": ("fc2.weight", 0)},
    "vae": {
        "input_dim": ("encoder_fc1.weight", 1),
        "hidden_dim": ("encoder_fc1.weight", 0),
        "latent_dim": ("encoder_fc_mu.weight", 0),
    },
    "cvae": {
        "input_dim": ("decoder_fc2.weight", 0),
        "hidden_dim": ("encoder_fc1.weight", 0),
        "latent_dim": ("encoder_fc_mu.weight", 0),
    },
    "conv_vae": {"input_channels": ("encoder_conv.0.weight", 1), "latent_dim": ("fc_mu.weight", 0)},
    "conv_vae28": {"input_channels": ("encoder_conv.0.weight", 1), "latent_dim": ("fc_mu.weight", 0)},
    "celeba_vae": {"input_channels": ("encoder.0.weight", 1), "latent_dim": ("fc_mu.weight", 0)},
}
_SIDE = {"conv_vae": 28, "conv_vae28": 28, "celeba_vae": 64}  # the conv models' chapter image sizes
_DATASET_OF_SHAPE = {(28, 28, 1): "mnist", (64, 64, 3): "celeb_a"}


@dataclasses.dataclass
class Loaded:
    """A .pt file's weights in the chapter's keys, and what they are."""

    path: Path
    sha256: str
    model: str  # a key of models.REGISTRY
    sizes: dict  # input_dim/input_channels, hidden_dim (MLPs), latent_dim
    state_dict: OrderedDict  # chapter key -> numpy array
    mapping: list  # (source key, chapter key, shape) when the keys were not the chapter's, else []
    under: str | None  # the entry of the file's dict that held the state_dict
    meta: dict

    @property
    def source(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "format": "torch state_dict"}


def _read(path: Path):
    """torch.load(weights_only=True) of `path`, its refusals as one line (vae_jax.pt_files)."""
    import warnings

    import torch

    pt_files.check_regular_file(path)
    try:
        with warnings.catch_warnings():  # torch's 2-line UserWarning about a plain pickle's protocol
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises many types for a bad file
        raise ConversionError(pt_files.unreadable(path, e)) from None


def _is_state_dict(obj) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
        t = t.float()  # bfloat16 / float16: numpy has no bfloat16
    return t.numpy()


def read_pt(path):
    """(tensors as numpy in the file's order, metadata, the entry that held them, sha256) of a .pt file."""
    path = Path(path)
    obj, under, meta = _read(path), None, {}
    if isinstance(obj, dict) and not _is_state_dict(obj):
        under = next((k for k in COMMON_KEYS if _is_state_dict(obj.get(k))), None)
        meta = {k: obj[k] for k in META_KEYS if type(obj.get(k)) is (str if k == "model" else int)}
        obj = obj[under] if under else obj
    beside = path.with_suffix(".json")  # `vae-jax export` writes the sizes there
    if not meta and beside.is_file():
        try:
            saved = json.loads(beside.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            saved = {}
        if isinstance(saved, dict):
            meta = {k: saved[k] for k in META_KEYS if type(saved.get(k)) is (str if k == "model" else int)}
    if not _is_state_dict(obj):
        what = f"a dict with keys {sorted(map(str, obj))[:5]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise ConversionError(
            f"{path} holds no state_dict ({what}) -- save model.state_dict(), alone or under "
            f"{', '.join(map(repr, COMMON_KEYS))}"
        )
    for k, v in obj.items():
        pt_files.check_tensor(path, str(k), v)
    tensors = OrderedDict((str(k), _numpy(v)) for k, v in obj.items())
    pt_files.check_finite(path, tensors)
    return tensors, meta, under, sha256_file(path)


def model_name(given, meta, path, default=None) -> str:
    """The registry name of the model: --model, else the file's 'model' entry (a name or a class name),
    else `default`."""
    name = next((n for n in (given, meta.get("model"), default) if n is not None), None)
    if name is None:
        raise ConfigError(f"which model does {path} hold? -- pass --model, one of {', '.join(models.MODELS)}")
    by_class = {cls.__name__.lower(): n for n, cls in models.MODELS.items()}
    found = name if name in models.MODELS else by_class.get(str(name).lower())
    if found is None:
        raise ConfigError(f"unknown model {name!r} (from {path}) -- pass --model, one of {', '.join(models.MODELS)}")
    return found


def chapter_shapes(name: str, sizes: dict) -> OrderedDict:
    """{chapter key: shape} of the chapter's torch class for `name` with `sizes`, in definition order
    (built on torch's meta device: no memory, no initialisation)."""
    import torch

    import vae_torch_ref as R

    with torch.device("meta"):
        tm = R.MODELS[name](**sizes)
    return OrderedDict((k, tuple(v.shape)) for k, v in tm.state_dict().items())


def _renamed(keys, renames) -> list[str]:
    """`keys` after the --rename rules OLD=NEW (a full key, or a dotted prefix: OLD.x -> NEW.x)."""
    rules = []
    for r in renames:
        old, sep, new = r.partition("=")
        if not sep or not old:
            raise ConfigError(f"--rename {r!r}: expected OLD=NEW (a key or a key prefix of the file)")
        rules.append((old.rstrip("."), new.rstrip(".")))
    for old, new in rules:
        if not any(k == old or k.startswith(old + ".") for k in keys):
            raise ConfigError(
                f"--rename {old}={new}: the file has no key {old!r} (nor keys under {old + '.'!r}) -- "
                f"rename one of its layers: {_layers(keys)}"
            )
    out = []
    for k in keys:
        rule = next(((o, n) for o, n in rules if k == o or k.startswith(o + ".")), None)
        out.append(rule[1] + k[len(rule[0]) :] if rule else k)
    if len(set(out)) < len(out):
        twice = next(k for k in out if out.count(k) > 1)
        raise ConfigError(f"--rename gives two tensors the key {twice!r} -- rename only one of them")
    return out


def _infer_sizes(name, sd, given) -> dict:
    """The constructor sizes: given, else read from the shapes of the chapter keys that carry them."""
    sizes = {}
    for size, (key, axis) in _SIZE_KEYS[name].items():
        if given.get(size) is not None:
            sizes[size] = int(given[size])
        elif key in sd and sd[key].ndim > axis:
            sizes[size] = int(sd[key].shape[axis])
    return sizes


def _layers(keys) -> str:
    """The layers (key prefixes) of tensor keys, in order: 'fc1, fc21, fc3'."""
    names = list(dict.fromkeys(k.rpartition(".")[0] or k for k in keys))
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "") or "none"


def _pairs(keys, chapter, path, name):
    """source key -> chapter key: the same key where it is one, the rest one to one in order."""
    rest_src = [k for k in keys if k not in chapter]
    rest_ch = [k for k in chapter if k not in set(keys)]
    if len(rest_src) != len(rest_ch):
        raise ConversionError(
            f"cannot map {path} to the chapter's {models.MODELS[name].__name__}: {len(rest_ch)} of its tensors "
            f"have no match (in {_layers(rest_ch)}), {len(rest_src)} of the file's have no place (in "
            f"{_layers(rest_src)}) -- check --model, or map them with `vae-jax import --rename OLD=NEW`"
        )
    return {**{k: k for k in keys if k in chapter}, **dict(zip(rest_src, rest_ch, strict=True))}


# The words of a key that say what a layer is for: a mapping by order that pairs a key with a chapter key
# whose word of the same group differs (logvar_head -> encoder_fc_mu) contradicts the keys' own names.
ROLE_WORDS = {
    "mu": ("head", "mu"),
    "mean": ("head", "mu"),
    "logvar": ("head", "logvar"),
    "log_var": ("head", "logvar"),
    "var": ("head", "logvar"),
    "sigma": ("head", "logvar"),
    "enc": ("side", "encoder"),
    "encoder": ("side", "encoder"),
    "dec": ("side", "decoder"),
    "decoder": ("side", "decoder"),
}


def _roles(key: str) -> dict:
    """{group: role} that a key's words name ('logvar_head.weight' -> {'head': 'logvar'})."""
    words = re.split(r"[^a-z0-9]+|_", key.lower())
    words += ["_".join(p) for p in itertools.pairwise(words)]  # log_var
    return dict(ROLE_WORDS[w] for w in words if w in ROLE_WORDS)


def _contradictions(moved) -> list[str]:
    """'src -> chapter' for each pair of a mapping by order whose names say different roles."""
    out = []
    for src, chapter in moved:
        a, b = _roles(src), _roles(chapter)
        if any(a[g] != b[g] for g in a.keys() & b.keys()):
            out.append(f"{src} -> {chapter}")
    return out


def load_source(path, model=None, renames=(), *, default=None, trust_order=False, **sizes) -> Loaded:
    """A .pt file's weights in the chapter's keys for `model` (None: the file's 'model' entry, else
    `default`), with `sizes` (latent_dim, hidden_dim; None or missing: the file's entries, else the
    tensors' shapes). A mapping by order that contradicts the keys' names (a logvar layer to the
    chapter's mu) is refused unless trust_order."""
    tensors, meta, under, digest = read_pt(path)
    path = Path(path).absolute()
    name = model_name(model, meta, path, default)
    given = {k: sizes.get(k) if sizes.get(k) is not None else meta.get(k) for k in ("latent_dim", "hidden_dim")}
    keys = _renamed(list(tensors), renames)
    pairs = _pairs(keys, chapter_shapes(name, {}), path, name)
    by_chapter = {pairs[k]: tensors[src] for k, src in zip(keys, tensors, strict=True)}
    sizes = _infer_sizes(name, by_chapter, given)
    if name in ("conv_vae", "conv_vae28", "celeba_vae"):
        sizes.pop("hidden_dim", None)
    expected = chapter_shapes(name, sizes)
    moved = [(src, pairs[k]) for k, src in zip(keys, tensors, strict=True) if pairs[k] != src]
    bad = [(s, c) for s, c in moved if tuple(tensors[s].shape) != expected[c]]
    if bad:
        raise ConversionError(
            f"cannot map {path} to the chapter's {models.MODELS[name].__name__} by order and shape: "
            + "; ".join(f"{s} {tuple(tensors[s].shape)} -> {c} expects {expected[c]}" for s, c in bad[:4])
            + (" ..." if len(bad) > 4 else "")
            + f" (sizes this order gives: {', '.join(f'{k} {v}' for k, v in sizes.items())}) -- map the keys "
            "out of order with `vae-jax import --rename OLD=NEW` (or check --model and its sizes)"
        )
    contradict = [] if trust_order else _contradictions(moved)
    if contradict:
        raise ConversionError(
            f"{path}: mapping its keys by order gives {'; '.join(contradict[:3])}, which their names "
            "contradict -- map them with `vae-jax import --rename OLD=NEW`, or pass --trust-order if the "
            "order is right"
        )
    sd = OrderedDict((c, by_chapter[c]) for c in expected)
    mapping = [(s, c, tuple(tensors[s].shape)) for s, c in sorted(moved, key=lambda m: list(expected).index(m[1]))]
    return Loaded(path, digest, name, sizes, sd, mapping, under, meta)


def implied_shape(name: str, sizes: dict):
    """The image shape (H, W, C) the model's sizes imply, or None: an MLP's square 1- or 3-channel image
    of input_dim values, a conv model's chapter size."""
    if name in _SIDE:
        return (_SIDE[name], _SIDE[name], int(sizes.get("input_channels", 3 if name == "celeba_vae" else 1)))
    n = int(sizes.get("input_dim", 784))
    for c in (1, 3):
        side = math.isqrt(n // c)
        if n % c == 0 and side * side * c == n:
            return (side, side, c)
    return None


def mapping_table(mapping) -> str:
    rows = [("source key", "chapter key", "shape")] + [(s, c, str(shape)) for s, c, shape in mapping]
    w = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"  {s:<{w[0]}}  ->  {c:<{w[1]}}  {shape}" for s, c, shape in rows)


def from_pt(path, model=None, *, rename=(), **sizes):
    """The Flax model (eval mode) holding a .pt file's weights: `model` a registry name (None: the file's
    'model' entry), sizes as `vae-jax import` (latent_dim, hidden_dim; default: from the tensors)."""
    src = load_source(path, model, rename, **sizes)
    shape = implied_shape(src.model, src.sizes) or (1, 1, int(src.sizes.get("input_dim", 784)))
    config = train.Config(
        model=src.model, latent_dim=src.sizes.get("latent_dim"), hidden_dim=src.sizes.get("hidden_dim")
    )
    m = train.build_model(config, shape, rngs=nnx.Rngs(0))
    _load(m, src)
    m.eval()
    return m


def load_pt_into(model, path, config) -> str:
    """`train --init-from FILE.pt`: the file's weights into `model` (built from `config`), strictly;
    returns the file's sha256 (checked against config.init_from_sha256 when that is set)."""
    src = load_source(path, config.model, latent_dim=config.latent_dim, hidden_dim=config.hidden_dim)
    if config.init_from_sha256 and config.init_from_sha256 != src.sha256:
        raise ConfigError(
            f"the file has sha256 {src.sha256}, not --init-from-sha256 {config.init_from_sha256} -- pass "
            "the file the run started from"
        )
    _load(model, src)
    return src.sha256


def _load(model, src: Loaded) -> None:
    try:
        convert.load_torch_state_dict(model, src.state_dict)
    except ConversionError as e:
        raise ConversionError(f"{src.path}: {e}") from None


def init_options(path, kw: dict, given) -> dict:
    """`train --init-from FILE.pt`: --model (given, else the file's, else the default), --latent-dim,
    --hidden-dim (given, else the file's entries, else its shapes), as for `vae-jax import`."""
    model = kw["model"] if "model" in given else None
    src = load_source(
        path, model, default=kw["model"], latent_dim=kw.get("latent_dim"), hidden_dim=kw.get("hidden_dim")
    )
    return {"model": src.model, **{k: src.sizes.get(k) for k in ("latent_dim", "hidden_dim")}}


# ------------------------------------------------------------------------------------------ parity


def _torch_model(name, image_shape, model, state_dict):
    """The chapter's torch class for `model`'s sizes, holding `state_dict` (strict), in eval mode."""
    import torch

    import vae_torch_ref as R

    if name in _SIDE:
        sizes = {"input_channels": int(image_shape[-1]), "latent_dim": int(model.latent_dim)}
    else:
        hidden = int(model.fc1.out_features if name == "ae" else model.encoder_fc1.out_features)
        sizes = {"input_dim": int(model.input_dim), "hidden_dim": hidden, "latent_dim": int(model.latent_dim)}
    with torch.device("meta"):
        tm = R.MODELS[name](**sizes)
    tm.load_state_dict(state_dict, strict=True, assign=True)
    return tm.eval()


def parity_rows(model, config, image_shape, x, y, seed: int) -> list[dict]:
    """The Flax `model` against the chapter's torch class holding its weights, on images x (NHWC in
    [0, 1]) with labels y: weights, forward outputs (eps drawn from `seed`, injected into both) and
    the loss of config.recon / config.beta. One row per quantity: quantity, metric, max_error, bound,
    passed."""
    import torch

    import vae_torch_ref as R
    import vae_torch_ref.train as RT
    from vae_jax.parity_taps import inject_eps

    model.eval()
    exported = convert.to_numpy_state_dict(model)
    tm = _torch_model(config.model, image_shape, model, convert.to_torch_state_dict(model))
    got = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    rows = [("weights", "exact", max(error(got[k], v, "exact") for k, v in exported.items()))]
    ae, flat = getattr(model, "reparameterize", None) is None, getattr(model, "flat_input", False)
    x = np.asarray(x, np.float32)
    xin, cond = models.model_inputs(model, x, np.asarray(y, np.int32))
    eps = None if ae else np.array(jax.random.normal(jax.random.key(seed), (len(x), model.latent_dim)), np.float32)
    xt = torch.from_numpy(np.array(xin if flat else x.transpose(0, 3, 1, 2), order="C"))  # NCHW, C strides
    yt = torch.from_numpy(np.asarray(y, np.int64))
    condt = tuple(torch.from_numpy(np.array(c)) for c in cond)
    with jax.default_matmul_precision("highest"):
        out = model(xin) if ae else model(xin, None, *cond, eps=eps)
        total, (rec, kl) = train.loss_terms(
            model, x, y, None, recon=config.recon, beta=config.beta, kl_weight=1.0, eps=eps
        )
    with torch.no_grad():
        if ae:
            tout = tm(xt)
            z = tout[1]
            logits = R.decode_logits(tm, z) if config.recon == "bce_logits" else tm.decode(z)
            zero = torch.zeros_like(z)
            tloss = R.elbo_loss(logits, xt, zero, zero, recon=config.recon, beta=config.beta, kl_weight=1.0)
        else:
            with inject_eps(torch.from_numpy(eps)):
                tout = tm(xt, *condt)
            with inject_eps(torch.from_numpy(eps)):
                tloss = RT.batch_loss(
                    tm, xt, yt, "cpu", flatten=flat, conditional=model.conditional,
                    recon=config.recon, beta=config.beta, kl_weight=1.0,
                )  # fmt: skip
    names = ("x_recon", "z") if ae else ("x_recon", "mu", "logvar")
    for n, a, b in zip(names, out, tout, strict=True):
        b = b.numpy()
        rows.append((f"forward.{n}", "forward", error(a, b.transpose(0, 2, 3, 1) if b.ndim == 4 else b, "abs")))
    rows.append(("loss.total", "loss", error(total, tloss[0].numpy(), "rel")))
    rows.append(("loss.recon", "loss", error(rec, tloss[1].numpy(), "rel")))
    if ae:
        rows.append(("loss.kl", "exact", error(kl, tloss[2].numpy(), "exact")))
    else:
        mu, logvar = tout[1], tout[2]
        scale = 0.5 * float((1 + logvar.abs() + mu.pow(2) + logvar.exp()).sum())
        rows.append(("loss.kl", "kl", error(kl, tloss[2].numpy(), "rel_scale", scale)))
    table = []
    for quantity, entry, err in rows:
        t = tol("float32", entry)
        table.append(
            {"quantity": quantity, "metric": t.metric, "max_error": err, "bound": t.bound, "passed": err <= t.bound}
        )
    return table


def parity_table(rows, what: str) -> str:
    lines = [f"parity with the chapter's PyTorch class ({what}):", f"  {'quantity':<16} {'max error':>10}  bound"]
    for r in rows:
        bound = f"{r['bound']:.0e} ({r['metric']})" if r["metric"] != "exact" else "0 (exact)"
        lines.append(f"  {r['quantity']:<16} {r['max_error']:>10.2e}  {bound:<18} {'pass' if r['passed'] else 'FAIL'}")
    return "\n".join(lines)


def _inputs(config, image_shape, test_ds=None):
    """(x, y, what): the first NUM_IMAGES images of `test_ds`, or random inputs in [0, 1] from the seed."""
    if test_ds is not None:
        part = test_ds.take(NUM_IMAGES)
        images = np.asarray(part.images, np.float32).reshape(len(part), *image_shape)
        labels = part.labels if part.labels is not None else np.zeros(len(part), np.int32)
        return images, np.asarray(labels, np.int32), f"{len(part)} test images of {config.dataset}"
    key = jax.random.fold_in(jax.random.key(config.seed), 1)
    x = np.asarray(jax.random.uniform(key, (NUM_IMAGES, *image_shape)), np.float32)
    return x, np.arange(NUM_IMAGES, dtype=np.int32) % 10, f"{NUM_IMAGES} random inputs in [0, 1], seed {config.seed}"


def _check(rows, what: str, where: str):
    failed = [r for r in rows if not r["passed"]]
    if failed:
        r = failed[0]
        raise ConversionError(
            f"parity check failed: {r['quantity']} differs by {r['max_error']:.3g} > {r['bound']:.0e} between the "
            f"Flax model and the chapter's PyTorch class holding the same weights ({what}); {where} -- check the "
            "weights for non-finite or extreme values, or report it with the file"
        )


def run_inputs(config, image_shape, log=print):
    """(x, y, what) for a parity check of a run: its first test images, or random inputs in [0, 1]
    (said in one line) when its data cannot be read here."""
    try:
        test_ds = datasets.load_dataset(config.test_dataset or config.dataset, "test", config.data_dir)
    except DataError as e:
        test_ds = None
        log(f"the run's data cannot be read ({str(e)[:120]}): random inputs instead")
    return _inputs(config, image_shape, test_ds)


def check_run(workdir, data_dir=None, log=print) -> int:
    """`vae-jax parity --workdir W`: a run's weights exported to the chapter's torch class, compared on
    the first test images of its data (random inputs in [0, 1] when they cannot be read)."""
    model, config, image_shape = train.restore_run(workdir)
    if is_model_spec(config.model):  # vae_jax.user_models: no chapter class to hold its weights
        raise ConfigError(
            f"parity compares a run with the chapter's PyTorch classes, and {workdir} trained a model of your own "
            f"({model_label(config.model)}) -- pass your torch class too: vae-jax parity --workdir W --torch-model "
            "path/to/torch_file.py:ClassName (docs/your_model.md)"
        )
    config = dataclasses.replace(config, data_dir=data_dir or config.data_dir)
    x, y, what = run_inputs(config, image_shape, log)
    rows = parity_rows(model, config, image_shape, x, y, config.seed)
    log(parity_table(rows, f"{type(model).__name__}, {what}"))
    _check(rows, what, f"run {workdir}")
    return 0


# ------------------------------------------------------------------------------------------ import


def _resolve(src: Loaded, kw: dict, given):
    """(the run's options: kw with the model, sizes and dataset filled in, its image shape, the test
    split of --dataset or None)."""
    kw = dict(kw, model=src.model, **{k: src.sizes.get(k) for k in ("latent_dim", "hidden_dim")})
    if kw.get("data_dir"):
        kw["data_dir"] = str(Path(kw["data_dir"]).absolute())
    if "dataset" in given:
        _, test = train.load_data(train.Config(**kw).validate())
        return kw, tuple(test.image_shape), test
    shape = implied_shape(src.model, src.sizes)
    if shape not in _DATASET_OF_SHAPE:
        raise ConfigError(
            f"{src.path} holds a {src.model} for images of {shape or src.sizes.get('input_dim')} values, which no "
            "default dataset has -- pass --dataset (and --data-dir) with images of that shape"
        )
    return dict(kw, dataset=_DATASET_OF_SHAPE[shape]), shape, None


def import_run(path, workdir, kw: dict, given, renames=(), log=print, trust_order=False) -> int:
    """`vae-jax import FILE.pt --workdir W`: a run directory holding the file's weights at checkpoint 0
    (the state before step 1, with a fresh Adam state), config.json (the resolved options, image_shape
    and 'source': path and sha256) and import.json (source, key mapping, parity)."""
    src = load_source(
        path,
        kw["model"],  # None: the file's 'model' entry
        renames,
        trust_order=trust_order,
        latent_dim=kw["latent_dim"],
        hidden_dim=kw["hidden_dim"],
    )
    workdir = Path(workdir)
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise ConfigError(f"workdir {workdir} is not empty -- choose a new or empty --workdir; nothing was changed")
    if src.mapping:
        log(f"{src.path.name}: keys mapped to the chapter's {models.MODELS[src.model].__name__}:")
        log(mapping_table(src.mapping))
    kw, image_shape, test_ds = _resolve(src, kw, given)
    config = train.Config(**kw).validate()
    train.check_model_fits(config, image_shape)
    model = train.build_model(
        config, image_shape, rngs=nnx.Rngs(params=train.purpose_key(config.seed, train.KeyPurpose.INIT))
    )
    _load(model, src)
    x, y, what = _inputs(config, image_shape, test_ds)
    rows = parity_rows(model, config, image_shape, x, y, config.seed)
    log(parity_table(rows, f"{type(model).__name__}, {what}"))
    record = {
        "source": {**src.source, "state_dict_under": src.under, "metadata": src.meta},
        "model": src.model,
        "sizes": src.sizes,
        "image_shape": list(image_shape),
        "mapping": [{"source": s, "chapter": c, "shape": list(shape)} for s, c, shape in src.mapping],
        "renames": list(renames),
        "checkpoint": "checkpoints/0 holds the imported weights (the state before step 1)",
        "optimizer": "fresh Adam state (a state_dict holds no optimizer state)",
        "parity": {"inputs": what, "passed": all(r["passed"] for r in rows), "rows": rows},
    }
    _write_run(workdir, model, config, image_shape, src.source, record)
    log(
        f"wrote {workdir}: {src.model} ({', '.join(f'{k} {v}' for k, v in src.sizes.items())}) for images "
        f"{image_shape} ({config.dataset}); eval, plot, export, parity and train --resume (fresh Adam state) read it"
    )
    _check(rows, what, f"the run in {workdir} is kept, with the result in import.json")
    return 0


def _write_run(workdir: Path, model, config, image_shape, source: dict, record: dict) -> None:
    """The run directory, whole or not at all: checkpoint 0 (the model's weights, a fresh Adam state,
    step 0) written with checkpoints.RunDir, config.json (as train writes it, plus 'source'), import.json;
    built beside `workdir`, then renamed onto it while this process holds its writer lock (an import
    started at the same time into the same folder is refused, never replaced)."""
    claim = checkpoints.RunDir(workdir, config)  # creates it, takes its lock, refuses one that holds anything
    tmp = workdir.parent / f".{workdir.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        tmp.mkdir()
        run = checkpoints.RunDir(tmp, config)
        try:
            run.save(0, train.Trainer(model, config, steps_per_epoch=1).init_state)
            run.manager.close()
        finally:
            unlock_run_dir(tmp)
        cfg = dict(
            dataclasses.asdict(config), image_shape=list(image_shape), source=source, vae_jax_version=__version__
        )
        cfg["environment"] = checkpoints.numerics_environment()
        atomic_write(tmp / "import.json", json_text(record) + "\n")
        atomic_write(tmp / "config.json", json.dumps(cfg, indent=2) + "\n")
        os.rename(tmp, workdir)  # onto the empty folder, at once (ENOTEMPTY if anything appeared in it)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if claim.created:
            with contextlib.suppress(OSError):
                workdir.rmdir()
        raise
    finally:
        unlock_run_dir(workdir)
