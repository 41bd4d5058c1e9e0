"""Models of one's own: `--model path/to/file.py:ClassName` or `--model package.module:ClassName`.

Any Flax NNX module with the chapter's interface is a model of vae-jax (docs/your_model.md):

    encode(x)                  -> (mu, logvar)
    decode(z)                  -> the decoder's output in [0, 1] (Bernoulli means)
    __call__(x, key, eps=None) -> (decode's output, mu, logvar)
    optional: decode_logits(z) (pre-sigmoid: --recon bce_logits trains on it), sample(n, key),
              reparameterize(mu, logvar, key, eps=None), latent_dim, flat_input

Its constructor takes the sizes it wants by name, from the run's options and the data:
input_dim (H * W * C: it takes flat images), input_channels or image_shape (it takes NHWC images),
latent_dim and hidden_dim (--latent-dim, --hidden-dim; its defaults when not given), num_classes
(a class with conditional = True), conv_form (--conv-form, a vae_jax.layers.ConvForm), param_dtype,
rngs. The layers of vae_jax.layers it builds without a conv_form take --conv-form's
(layers.conv_form_scope). `spec(name)` is the ModelSpec `models.model_spec` hands back for such a
name; `source(name)` is what config.json records of it (`model_source`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vae_jax import layers, models
from vae_jax.config import is_model_spec
from vae_jax.errors import ConfigError

DOCS = "docs/your_model.md"
_REQUIRED = ("encode", "decode", "__call__")
_SIZES = ("input_dim", "input_channels", "image_shape", "latent_dim", "hidden_dim", "num_classes")
_BUILD = ("conv_form", "param_dtype", "rngs")  # not sizes: not recorded
_P = 1e-7  # decode's output is clipped to [_P, 1 - _P] to recover logits from it


class _Interface:
    """What vae-jax's loops call beyond the user's interface, for a class that does not define it
    (the user's class comes first in the adapted class's MRO)."""

    conditional = False
    latent_dim: int

    def reparameterize(self, mu, logvar, key=None, eps=None):
        std = jnp.exp(0.5 * logvar)
        return mu + std * models.draw_eps(key, std.shape, std.dtype, eps)

    def decode_logits(self, z, *cond):
        p = jnp.clip(self.decode(z, *cond), _P, 1 - _P)  # type: ignore[attr-defined]
        return jnp.log(p) - jnp.log1p(-p)

    def forward_logits(self, x, key=None, *cond, eps=None):
        if type(self)._user_logits:  # type: ignore[attr-defined]
            mu, logvar = self.encode(x, *cond)  # type: ignore[attr-defined]
            return self.decode_logits(self.reparameterize(mu, logvar, key, eps), *cond), mu, logvar
        recon, mu, logvar = self(x, key, *cond, eps=eps)  # type: ignore[operator]
        p = jnp.clip(recon, _P, 1 - _P)
        return jnp.log(p) - jnp.log1p(-p), mu, logvar

    def sample(self, num_samples, key, *cond):
        z = jax.random.normal(key, (num_samples, int(self.latent_dim)))
        return self.decode(z, *cond)  # type: ignore[attr-defined]


def parse(name: str) -> tuple[str, str]:
    """(file path or module name, class name) of a model spec."""
    where, _, cls = name.rpartition(":")
    return where, cls


def _signature(cls) -> inspect.Signature:
    """The signature of the class's __init__ (self first)."""
    return inspect.signature(cast(Any, cls).__init__)


def _file_sha256(path) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except (OSError, TypeError):
        return None


_loaded: dict[tuple, object] = {}  # (path, sha256) -> module: a file is executed once per process


def _module(name: str, where: str, option: str = "--model"):
    """The user's module: the file `where` (a .py path) or the importable module `where`."""
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(
                f"{option} {name}: no file {path} -- pass path/to/file.py:ClassName of a file that exists"
            )
        key = (str(path), _file_sha256(path))
        if key not in _loaded:
            mod_name = f"vae_jax_user_model_{key[1][:12] if key[1] else 'x'}_{path.stem}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:  # noqa: BLE001 -- the user's code: whatever it raises is one line
                sys.modules.pop(mod_name, None)
                raise ConfigError(
                    f"{option} {name}: {path} fails to load ({type(e).__name__}: {e}) -- fix the file"
                ) from None
            _loaded[key] = module
        return _loaded[key]
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"{option} {name}: no module named {e.name!r} -- put {where} on PYTHONPATH (or pass path/to/file.py:"
            "ClassName)"
        ) from None
    except Exception as e:  # noqa: BLE001 -- the user's code
        raise ConfigError(f"{option} {name}: module {where} fails to import ({type(e).__name__}: {e})") from None


def load_object(spec: str, option: str = "--model"):
    """The object (class, function, instance) that `spec` names: `path/to/file.py:Name` (the file run
    once per process and content) or `package.module:Name`.

    Args:
        spec: the user's `where:Name`.
        option: the option that gave it, named in the errors (e.g. "--torch-model").
    Returns:
        The module's attribute `Name`.
    Raises:
        ConfigError: one line naming the option, for a malformed spec, a missing file or module, a
            file that fails to load, or a module without `Name`.
    """
    where, cls_name = parse(spec)
    if not where or not cls_name:
        raise ConfigError(f"{option} {spec}: expected path/to/file.py:ClassName or package.module:ClassName")
    module = _module(spec, where, option)
    obj = getattr(module, cls_name, None)
    if obj is None:
        raise ConfigError(
            f"{option} {spec}: {where} has no class {cls_name!r} -- pass one of its classes after the colon"
        )
    return obj


def _user_class(name: str) -> type:
    """The user's class, checked for the interface."""
    cls = load_object(name, "--model")
    cls_name = parse(name)[1]
    if not (isinstance(cls, type) and issubclass(cls, nnx.Module)):
        raise ConfigError(f"--model {name}: {cls_name} is not a flax.nnx.Module subclass -- see {DOCS}")
    missing = [m for m in _REQUIRED if not any(m in vars(c) for c in cls.__mro__ if c is not object)]
    if missing:
        raise ConfigError(
            f"--model {name}: {cls_name} has no {', '.join(missing)} -- a model needs encode(x) -> (mu, logvar), "
            f"decode(z) and __call__(x, key, eps=None) -> (recon, mu, logvar) (see {DOCS})"
        )
    if "rngs" not in _signature(cls).parameters:
        raise ConfigError(f"--model {name}: {cls_name}.__init__ takes no rngs -- add `*, rngs: nnx.Rngs` (see {DOCS})")
    return cls


_adapted: dict[type, type] = {}


def adapted_class(name: str) -> type:
    """The user's class with what vae-jax's loops call added where it has none (`_Interface`)."""
    cls = _user_class(name)
    if cls not in _adapted:
        ns = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "_user_logits": hasattr(cls, "decode_logits"),
        }
        _adapted[cls] = type(cls)(cls.__name__, (cls, _Interface), ns)
    return _adapted[cls]


def takes_flat(cls) -> bool:
    """Whether the class takes flat images: its `flat_input`, else input_dim in its constructor (True)
    or input_channels / image_shape (False); a ConfigError when none says."""
    return _flat(cls, _signature(cls).parameters)


def _flat(cls, params) -> bool:
    if isinstance(getattr(cls, "flat_input", None), bool):
        return cls.flat_input
    if "input_dim" in params:
        return True
    if "input_channels" in params or "image_shape" in params:
        return False
    raise ConfigError(
        f"{cls.__name__}: which images does it take? -- set flat_input = True (B, H*W*C) or False (NHWC) on the "
        f"class, or take input_dim or input_channels (see {DOCS})"
    )


def constructor_args(cls, config, image_shape, num_classes=10) -> dict:
    """The sizes the class's constructor takes, from the run's options and the data (its own
    defaults where the options leave them); an option it cannot take is a ConfigError."""
    params = _signature(cls).parameters
    data = {
        "input_dim": int(np.prod(image_shape)),
        "input_channels": int(image_shape[-1]),
        "image_shape": [int(d) for d in image_shape],
        "num_classes": int(num_classes),
    }
    args = {k: v for k, v in data.items() if k in params}
    for opt in ("latent_dim", "hidden_dim"):
        v = getattr(config, opt)
        if v is not None and opt not in params:
            raise ConfigError(
                f"--{opt.replace('_', '-')} {v}: {cls.__name__}'s constructor takes no {opt} -- drop the option"
            )
        if v is not None:
            args[opt] = int(v)
    return args


def _build(cls, config, image_shape, num_classes, *, rngs, **kwargs):
    """The user's model sized for the data, its layers in --conv-form's form."""
    params = _signature(cls).parameters
    args = constructor_args(cls, config, image_shape, num_classes)
    form = kwargs.pop("conv_form", None) or layers.named_conv_form(getattr(config, "conv_form", "auto"))
    extra = {k: v for k, v in dict(kwargs, conv_form=form).items() if k in params}
    if "image_shape" in args:
        args["image_shape"] = tuple(args["image_shape"])
    with layers.conv_form_scope(form):
        model = cls(**args, **extra, rngs=rngs)
    bound = _signature(cls).bind_partial(None, **args)
    bound.apply_defaults()
    for k in ("latent_dim", "hidden_dim"):
        if not hasattr(model, k) and isinstance(bound.arguments.get(k), int):
            setattr(model, k, bound.arguments[k])
    if not isinstance(getattr(model, "latent_dim", None), int):
        raise ConfigError(f"{cls.__name__} has no latent_dim -- set self.latent_dim or take latent_dim (see {DOCS})")
    model.flat_input = _flat(cls, params)
    if not model.flat_input and not hasattr(model, "input_channels"):
        model.input_channels = int(image_shape[-1])  # what says "a conv model" to the run (its log, K)
    return model


def spec(name: str) -> models.ModelSpec:
    """The ModelSpec of a model of one's own (see the module docstring); ConfigError, one line naming
    it, for a missing file, module or class or a class without the interface."""
    if not is_model_spec(name):
        raise ConfigError(f"--model {name!r}: not a model spec -- pass path/to/file.py:ClassName or module:ClassName")
    return models.ModelSpec(adapted_class(name), _build)


def source(name: str, config, image_shape, num_classes=10) -> dict:
    """What config.json records of a model of one's own (`model_source`): its file or module, class,
    the file's sha256 and the constructor's arguments (the sizes given and its defaults)."""
    where, cls_name = parse(name)
    cls = _user_class(name)
    path = Path(where).resolve() if where.endswith(".py") else Path(inspect.getfile(cls)).resolve()
    args = constructor_args(cls, config, image_shape, num_classes)
    bound = _signature(cls).bind_partial(None, **args)
    bound.apply_defaults()
    recorded = {}
    for k, v in list(bound.arguments.items())[1:]:
        if k not in _BUILD and _jsonable(v):
            recorded[k] = list(v) if isinstance(v, tuple) else v
    out = {"class": cls_name, "path": str(path), "sha256": _file_sha256(path), "args": recorded}
    return out if where.endswith(".py") else {"module": where, **out}


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


def changed_since(recorded: dict | None) -> str | None:
    """A phrase when the model's file is no longer the one a run recorded (its sha256), else None."""
    if not recorded or not recorded.get("sha256"):
        return None
    now = _file_sha256(recorded.get("path"))
    if now == recorded["sha256"]:
        return None
    now = (now or "missing")[:12]
    return f"{recorded.get('path')} changed since the run recorded it (sha256 {recorded['sha256'][:12]}, now {now})"
