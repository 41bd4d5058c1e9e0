"""Torch models of one's own (`--torch-model path/to/file.py:ClassName`): `vae-jax import FILE.pt
--model flax_file.py:Cls --torch-model torch_file.py:Cls`, `vae-jax parity --workdir W --torch-model
torch_file.py:Cls` and `from_pt(path, flax_spec, torch_spec, image_shape)`.

The torch class has the chapter's interface: `forward(x) -> (recon, mu, logvar)`, its noise drawn once
with torch.randn_like (or torch.randn). Its constructor takes the sizes it wants by name, as a Flax
model of one's own (vae_jax.user_models): input_dim (it takes flat images), input_channels or
image_shape (C, H, W: it takes NCHW images), latent_dim, hidden_dim, num_classes. The weights go
between the two models by vae_jax.parity's pairing: the parameter-holding layers of each, matched by
call order and shape, each through vae_jax.convert's rule for its layer (docs/your_model.md).

torch is an optional extra: it is imported only inside the functions.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, cast

import numpy as np
from flax import nnx

from vae_jax import parity, parity_match, parity_taps, train, user_models
from vae_jax.config import is_model_spec
from vae_jax.errors import ConfigError, ConversionError

OPTION = "--torch-model"
SIZES = ("latent_dim", "hidden_dim")


def torch_class(spec: str, option: str = OPTION) -> type:
    """The torch.nn.Module subclass `spec` names (path/to/file.py:ClassName or module:ClassName);
    one-line ConfigError naming --torch-model for a missing file, module or class, or another object."""
    import torch  # optional: the [torch] extra

    cls = user_models.load_object(spec, option)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise ConfigError(f"{option} {spec}: {getattr(cls, '__name__', cls)} is not a torch.nn.Module subclass")
    return cls


def constructor_args(cls, image_shape, sizes: dict, num_classes: int = 10) -> dict:
    """The sizes the torch class's constructor takes, for images of `image_shape` (H, W, C) and the
    `sizes` (latent_dim, hidden_dim; None: its own default)."""
    params = inspect.signature(cast(Any, cls).__init__).parameters
    h, w, c = (int(d) for d in image_shape)
    data: dict[str, Any] = {"input_dim": h * w * c, "input_channels": c, "image_shape": [c, h, w]}
    data["num_classes"] = num_classes
    args = {k: v for k, v in data.items() if k in params}
    return args | {k: int(sizes[k]) for k in SIZES if k in params and sizes.get(k) is not None}


def build(spec: str, image_shape, sizes: dict, num_classes: int = 10, seed: int = 0, option: str = OPTION):
    """The user's torch model for images of `image_shape` (H, W, C), with the `sizes` (latent_dim,
    hidden_dim) its constructor takes (its own defaults for those it leaves None), initialised after
    torch.manual_seed(seed); `flat_input` set on it (user_models.takes_flat)."""
    import torch  # optional: the [torch] extra

    cls = torch_class(spec, option)
    args = constructor_args(cls, image_shape, sizes, num_classes)
    torch.manual_seed(seed)
    try:
        model = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    except Exception as e:  # noqa: BLE001 -- the user's code: whatever it raises is one line
        raise ConfigError(f"{option} {spec}: {cls.__name__}({args}) fails ({type(e).__name__}: {e})") from None
    model.flat_input = user_models.takes_flat(cls)
    return model


def source(spec: str, image_shape, sizes: dict) -> dict:
    """What config.json records of a torch model of one's own: its file (or module), class, the file's
    sha256 and the constructor's arguments (the sizes given and its defaults)."""
    from vae_jax.files import sha256_file

    cls = torch_class(spec)
    where, name = user_models.parse(spec)
    path = Path(where).resolve() if where.endswith(".py") else Path(inspect.getfile(cls)).resolve()
    bound = inspect.signature(cast(Any, cls).__init__).bind_partial(None, **constructor_args(cls, image_shape, sizes))
    bound.apply_defaults()
    args = {k: v for k, v in list(bound.arguments.items())[1:] if isinstance(v, (int, float, str, bool, list))}
    out = {"class": name, "path": str(path), "sha256": sha256_file(path), "args": args}
    return out if where.endswith(".py") else {"module": where, **out}


def torch_input(model, x_nhwc: np.ndarray) -> np.ndarray:
    """A batch of NHWC images as the torch model takes it: flat (B, H*W*C) or NCHW."""
    x = np.asarray(x_nhwc, np.float32)
    return x.reshape(len(x), -1) if model.flat_input else np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def flax_input(flax_model, x_nhwc: np.ndarray) -> np.ndarray:
    x = np.asarray(x_nhwc, np.float32)
    return x.reshape(len(x), -1) if getattr(flax_model, "flat_input", False) else x


def map_weights(torch_model, flax_model, x_nhwc, direction: str = "torch->flax") -> str:
    """Copy the weights between the models, in place, by vae_jax.parity's pairing (call order and
    shape, on one eval-mode forward of each on the images `x_nhwc`); returns the mapping table.

    Raises:
        ConversionError: one line naming the first layer that cannot be paired or mapped.
    """
    import torch  # optional: the [torch] extra

    torch_model.eval()
    flax_model.eval()
    xt = torch.from_numpy(torch_input(torch_model, x_nhwc))
    with torch.no_grad(), parity_taps.inject_eps(None, None), parity_taps.torch_taps(torch_model) as ttaps:
        torch_model(xt)
    eps = np.zeros((len(x_nhwc), int(flax_model.latent_dim)), np.float32)
    with parity_taps.flax_taps(flax_model) as ftaps:
        flax_model(flax_input(flax_model, x_nhwc), None, eps=eps)
    pairs = parity_match.pair_layers(
        ttaps, ftaps, parity_taps.torch_leaves(torch_model), parity_taps.flax_leaves(flax_model)
    )
    parity_match.copy_weights(pairs, direction)
    return parity_match.mapping_table(pairs)


def load_strict(torch_model, tensors: dict, path) -> None:
    """A .pt file's tensors (numpy, vae_jax.torch_import.read_pt) into the user's torch model, strictly;
    a missing, extra or misshapen key is one ConversionError line."""
    import torch  # optional: the [torch] extra

    sd = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    try:
        torch_model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        what = " ".join(str(e).split())[:300]
        raise ConversionError(
            f"{path} does not load into {type(torch_model).__name__} strictly ({what}) -- pass the class it was "
            "saved from, with its sizes (--latent-dim, --hidden-dim)"
        ) from None


def check(torch_model, flax_model, x_nhwc, direction: str, steps: int = 0):
    """vae_jax.parity.check of the pair on the images `x_nhwc` (the weights copied `direction`)."""
    return parity.check(torch_model, flax_model, torch_input(torch_model, x_nhwc), steps=steps, direction=direction)


def rows(report) -> list[dict]:
    """The report's checks as import.json's parity rows."""
    keys = ("phase", "quantity", "name", "error", "bound", "metric", "passed")
    return [{k: getattr(c, k) for k in keys} for c in report.checks]


def failure(report) -> str | None:
    """One line naming the report's first divergence, or None when it passed."""
    d = report.first_divergence
    if d is None:
        return None
    what = d.detail if d.phase == "convention" else f"error {d.max_error:.3g} > {d.bound:.3g}"
    return f"parity check failed: first divergence at {d.torch_name} (torch) / {d.flax_name} (Flax), {d.phase}: {what}"


def _sizes(config, model) -> dict:
    """The sizes the run's Flax model was built with: its recorded constructor args, else its attributes."""
    args = (config.model_source or {}).get("args", {})
    out = {k: args.get(k, getattr(model, k, None) or getattr(config, k, None)) for k in SIZES}
    return {k: v for k, v in out.items() if v is not None}


def check_run(workdir, torch_spec: str, data_dir=None, log=print) -> int:
    """`vae-jax parity --workdir W --torch-model FILE.py:Cls`: the run's Flax model against the user's
    torch class holding the same weights (copied Flax -> torch), by vae_jax.parity.check on the first
    test images of its data (random inputs in [0, 1] when they cannot be read). Prints the report;
    0 when it passes, 1 when it fails (the first diverging layer named)."""
    from vae_jax import torch_import

    torch_class(torch_spec)  # a missing file or class before the run is read
    model, config, image_shape = train.restore_run(workdir)
    tm = build(torch_spec, image_shape, _sizes(config, model))
    config = dataclasses.replace(config, data_dir=data_dir or config.data_dir)
    x, _, what = torch_import.run_inputs(config, image_shape, log)
    report = check(tm, model, x, "flax->torch", steps=5)
    log(report.to_markdown())
    line = failure(report)
    log(f"{line} ({what})" if line else f"parity passed: {workdir} against {torch_spec} ({what})")
    return 1 if line else 0


def from_pt(path, model: str, torch_model: str, image_shape, **sizes):
    """The Flax model of one's own `model` (eval mode) holding a .pt file's weights, loaded strictly
    into the torch class `torch_model` and mapped by vae_jax.parity's pairing.

    Args:
        path: the .pt file (a state_dict, as vae_jax.torch_import.read_pt reads it).
        model: the Flax model's spec, path/to/file.py:ClassName or module:ClassName.
        torch_model: the torch class's spec.
        image_shape: (H, W, C) of the images.
        sizes: latent_dim, hidden_dim (None or missing: the file's entries, else the classes' defaults).
    Returns:
        The Flax model.
    """
    flax_model, _, _ = load(path, model, torch_model, image_shape, sizes)
    return flax_model


def _into(fm, path, torch_spec: str, image_shape, sizes: dict, seed: int = 0):
    """(torch model, meta, under, sha256): the .pt file strictly into the torch class, its weights
    mapped into the Flax model `fm` (in place)."""
    from vae_jax import torch_import

    tensors, meta, under, digest = torch_import.read_pt(path)
    tm = build(torch_spec, image_shape, sizes)
    load_strict(tm, tensors, Path(path))
    x = np.random.default_rng(seed).uniform(0, 1, (2, *image_shape)).astype(np.float32)
    map_weights(tm, fm, x)
    fm.eval()
    return tm, meta, under, digest


def load(path, model: str, torch_spec: str, image_shape, sizes: dict, config=None):
    """(Flax model, torch model, the .pt file's (meta, under, sha256)): the file strictly into the torch
    class, its weights mapped into the Flax model of one's own built for `config` (default: a Config of
    `model` and `sizes`; sizes left None: the file's entries, else the classes' defaults)."""
    from vae_jax import torch_import

    if not is_model_spec(model or ""):
        raise ConfigError(f"{OPTION} needs --model path/to/flax_file.py:ClassName, the Flax port to load it into")
    _, meta, _, _ = torch_import.read_pt(path)
    sizes = {k: sizes.get(k) if sizes.get(k) is not None else meta.get(k) for k in SIZES}
    config = config or train.Config(model=model, **sizes)
    config = dataclasses.replace(config, **{k: v for k, v in sizes.items() if v is not None})
    key = train.purpose_key(config.seed, train.KeyPurpose.INIT)
    fm = train.build_model(config, image_shape, rngs=nnx.Rngs(params=key))
    tm, meta, under, digest = _into(fm, path, torch_spec, image_shape, sizes, config.seed)
    return fm, tm, (meta, under, digest)


def load_pt_into(model, path, config, image_shape) -> str:
    """`train --init-from FILE.pt --torch-model FILE.py:Cls`: the file's weights into the Flax `model`
    (built from `config`) through the torch class `config.torch_model`; returns the file's sha256
    (checked against config.init_from_sha256 when that is set)."""
    sizes = {k: getattr(config, k) if getattr(config, k) is not None else getattr(model, k, None) for k in SIZES}
    _, _, _, digest = _into(model, path, config.torch_model, image_shape, sizes, config.seed)
    if config.init_from_sha256 and config.init_from_sha256 != digest:
        raise ConfigError(
            f"the file has sha256 {digest}, not --init-from-sha256 {config.init_from_sha256} -- pass "
            "the file the run started from"
        )
    return digest


def import_run(path, workdir, kw: dict, given, torch_spec: str, log=print) -> int:
    """`vae-jax import FILE.pt --workdir W --model flax_file.py:Cls --torch-model torch_file.py:Cls`: the
    run directory torch_import.import_run writes (checkpoint 0, config.json with `source` and
    `model_source`, import.json), the weights loaded strictly into the torch class and mapped into the
    Flax model; the parity check (vae_jax.parity.check) recorded in import.json, a failure one line
    after the run is written."""
    from vae_jax import torch_import

    workdir = Path(workdir)
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise ConfigError(f"workdir {workdir} is not empty -- choose a new or empty --workdir; nothing was changed")
    if not is_model_spec(kw.get("model") or ""):
        raise ConfigError(f"{OPTION} needs --model path/to/flax_file.py:ClassName, the Flax port to load it into")
    kw = dict(kw, data_dir=str(Path(kw["data_dir"]).absolute()) if kw.get("data_dir") else None)
    _, test_ds = train.load_data(train.Config(**kw).validate())
    image_shape = tuple(test_ds.image_shape)
    sizes = {k: kw.get(k) for k in SIZES}
    model, tm, (meta, under, digest) = load(path, kw["model"], torch_spec, image_shape, sizes, train.Config(**kw))
    config = train.resolved_sizes(train.Config(**dict(kw, **{k: v for k, v in sizes.items() if v})).validate(), model)
    config = dataclasses.replace(config, model_source=train.model_source(config, image_shape))
    x, _, what = torch_import._inputs(config, image_shape, test_ds)
    report = check(tm, model, x, "torch->flax")
    log(report.to_markdown())
    source = {"path": str(Path(path).absolute()), "sha256": digest, "format": "torch state_dict"}
    record = {
        "source": {**source, "state_dict_under": under, "metadata": meta},
        "model": config.model,
        "torch_model": torch_spec,
        "sizes": {k: getattr(config, k) for k in SIZES},
        "image_shape": list(image_shape),
        "mapping": report.mapping,
        "checkpoint": "checkpoints/0 holds the imported weights (the state before step 1)",
        "optimizer": "fresh Adam state (a state_dict holds no optimizer state)",
        "parity": {"inputs": what, "passed": report.passed, "rows": rows(report)},
    }
    torch_import._write_run(workdir, model, config, image_shape, source, record)
    log(f"wrote {workdir}: {type(model).__name__} for images {image_shape} ({config.dataset}), from {path}")
    line = failure(report)
    if line:
        raise ConversionError(f"{line} ({what}); the run in {workdir} is kept, with the result in import.json")
    return 0
