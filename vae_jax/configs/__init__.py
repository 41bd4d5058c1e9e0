"""Presets of `vae-jax train`, one file each (as big_vision's configs): `get_config()` returns the
options that differ from `train.Config`'s defaults, which are the chapter's (10 epochs of batch 128,
Adam 1e-3).

Which preset a run takes: `--config NAME`; without it, the preset named after `--dataset` when there is
one (`vae-jax train` alone is `digits`, the main job), else none. Options given on the command line win
over the preset. A resume takes its options from the run's config.json, never from a preset.
"""

from __future__ import annotations

import importlib

from vae_jax.errors import ConfigError

NAMES = ("digits", "mnist", "celeba", "binarized_mnist_nll", "binarized_mnist_iwae")


def get_config(name: str) -> dict:
    """The options of preset `name` (a fresh dict)."""
    if name not in NAMES:
        raise ConfigError(f"unknown --config {name!r}: use one of {', '.join(NAMES)}")
    return dict(importlib.import_module(f"vae_jax.configs.{name}").get_config())


def for_dataset(dataset: str) -> str | None:
    """The preset a run on `dataset` takes when no --config is given."""
    return {"digits": "digits", "mnist": "mnist", "celeb_a": "celeba"}.get(dataset)
