"""`vae-jax parity --torch FILE.py:NAME --flax FILE.py:NAME --input-shape 8,1,28,28`: vae_jax.parity.check
on a pair of your own models, from the command line.

NAME is a class (torch: built with no arguments; Flax: with `rngs=nnx.Rngs(seed)`), a function
returning the model (called likewise) or a model instance. The batch is uniform in [0, 1) of the
given shape (torch's layout), drawn from --seed. The report is printed; --report DIR writes
DIR/parity.md and DIR/junit.xml. A failed check is one line naming the first divergence (exit 2).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import numpy as np

from vae_jax.errors import ConfigError, ConversionError


def _load(spec: str, option: str):
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise ConfigError(f"{option} {spec}: expected FILE.py:NAME -- name the file and the class in it")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{option} {spec}: no file {file} -- pass the path of a .py file")
    mod_name = f"_vae_jax_parity_{option.strip('-')}_{file.stem}"
    loader = importlib.util.spec_from_file_location(mod_name, file)
    if loader is None or loader.loader is None:
        raise ConfigError(f"{option} {spec}: {file} cannot be imported -- pass a .py file")
    module = importlib.util.module_from_spec(loader)
    sys.modules[mod_name] = module
    sys.path.insert(0, str(file.parent.resolve()))
    try:
        loader.loader.exec_module(module)
    finally:
        sys.path.remove(str(file.parent.resolve()))
    if not hasattr(module, name):
        raise ConfigError(f"{option} {spec}: {file} defines no {name} -- check the name")
    return getattr(module, name)


def _build(obj, flax: bool, seed: int):
    if not (isinstance(obj, type) or inspect.isfunction(obj)):
        return obj  # a model instance
    if flax:
        from flax import nnx

        return obj(rngs=nnx.Rngs(seed))
    import torch  # optional: the [torch] extra

    torch.manual_seed(seed)
    return obj()


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise ConfigError(f"--input-shape {text}: expected the batch's shape in torch's layout, e.g. 8,1,28,28")
    return shape


def run(args, log=print) -> int:
    """Run the check the options name; 0 when it passes (a failure raises ConversionError)."""
    from vae_jax import parity

    if not (args.torch and args.flax and args.input_shape):
        raise ConfigError("vae-jax parity: --torch, --flax and --input-shape go together -- pass all three")
    shape = _shape(args.input_shape)
    torch_model = _build(_load(args.torch, "--torch"), False, args.seed)
    flax_model = _build(_load(args.flax, "--flax"), True, args.seed)
    x = np.random.default_rng(args.seed).uniform(0, 1, shape).astype(np.float32)
    report = parity.check(torch_model, flax_model, x, steps=args.steps, dtype=args.dtype, seeds=args.seeds)
    log(report.to_markdown())
    if args.report:
        folder = Path(args.report)
        folder.mkdir(parents=True, exist_ok=True)
        from vae_jax.files import atomic_write

        atomic_write(folder / "parity.md", report.to_markdown())
        report.write_junit(folder / "junit.xml")
    d = report.first_divergence
    if d is not None:
        what = d.detail if d.phase == "convention" else f"error {d.max_error:.3g} > {d.bound:.3g}"
        raise ConversionError(
            f"parity check failed: first divergence at {d.torch_name} (torch) / {d.flax_name} (Flax), {d.phase}: "
            f"{what} -- see the report above"
        )
    return 0
