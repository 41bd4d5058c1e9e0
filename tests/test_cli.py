"""`vae-jax train`'s options are made from train.Config's fields: one source for names, defaults,
types, ranges, choices and help."""

import argparse
import dataclasses

import pytest

from vae_jax import cli, config, losses, models, train
from vae_jax.errors import ConfigError


def train_parser():
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices["train"]


def run_cli(args, capsys):
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


OPTION_FIELDS = [f for f in dataclasses.fields(train.Config) if f.metadata]
BAD = {"positive_int": "0", "nonneg_int": "-1", "positive_float": "0", "nonneg_float": "-1"}


def test_every_config_field_is_a_train_option_with_its_default():
    parser, t = train_parser()
    options = {s: a for a in t._actions for s in a.option_strings}
    assert {f.name for f in dataclasses.fields(train.Config)} - {f.name for f in OPTION_FIELDS} == {
        "checkpoint",
        "model_source",
    }
    for f in OPTION_FIELDS:
        assert config.option_name(f) in options, f.name
    args = parser.parse_args(["train"])
    assert train.Config(**cli._config_options(args)) == train.Config()
    for f in OPTION_FIELDS:  # and each one reaches its field
        if "flag" in f.metadata:
            value, argv = False, [f.metadata["flag"]]
        elif "choices" in f.metadata:
            value = next(c for c in f.metadata["choices"] if c != f.default)
            argv = [config.option_name(f), value]
        elif "kind" in f.metadata:
            value = 3 if "int" in f.metadata["kind"] else 0.5
            argv = [config.option_name(f), str(value)]
        else:
            value, argv = "x", [config.option_name(f), "x"]
        assert cli._config_options(parser.parse_args(["train", *argv]))[f.name] == value, f.name
        assert cli._given_options(["train", *argv], "train") & {f.name} == {f.name}, f.name


def test_the_old_command_line_still_parses():
    parser, _ = train_parser()
    args = parser.parse_args(
        [
            "train",
            "--workdir",
            "w",
            "--resume",
            "--restart",
            "--no-figures",
            "--no-progress",
            "--no-tensorboard",
            "--coordinator-address",
            "h:1",
            "--num-processes",
            "2",
            "--process-id",
            "1",
            "--dataset",
            "mnist",
            "--test-dataset",
            "binarized_mnist",
            "--lr-schedule",
            "cosine",
            "--data-mode",
            "stream",
            "--binarize",
            "dynamic",
        ]
    )
    kw = cli._config_options(args)
    assert (args.workdir, args.resume, args.restart, args.num_processes, args.process_id) == ("w", True, True, 2, 1)
    assert not kw["figures"] and not kw["progress"] and not kw["tensorboard"]
    assert (kw["dataset"], kw["test_dataset"], kw["lr_schedule"], kw["data_mode"], kw["binarize"]) == (
        "mnist",
        "binarized_mnist",
        "cosine",
        "stream",
        "dynamic",
    )


def test_choices_come_from_the_registries():
    _, t = train_parser()
    choices = {a.dest: a.choices for a in t._actions}
    assert choices["model"] == list(models.MODELS)
    assert choices["recon"] == list(losses.RECON_KINDS)
    assert choices["lr_schedule"] == list(config.LR_SCHEDULES)
    assert choices["data_mode"] == list(config.DATA_MODES)
    assert choices["binarize"] == list(config.BINARIZE_KINDS)
    assert choices["dataset"] is None  # checked by Config.validate (one line naming the registry)


def test_help_shows_every_option_and_its_default():
    _, t = train_parser()
    text = " ".join(t.format_help().split())
    for f in OPTION_FIELDS:
        assert config.option_name(f) in text
    formatter = t._get_formatter()
    for action in t._actions[1:]:  # after -h
        assert "%(default)s" in formatter._get_help_string(action), action.option_strings
    assert ", ".join(config.DATASETS) in text


def test_bad_model_lists_the_registry(tmp_path, capsys):
    code, err = run_cli(["train", "--workdir", tmp_path / "run", "--model", "nope"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert all(repr(name) in err for name in models.MODELS), err
    with pytest.raises(ConfigError, match=", ".join(models.MODELS)):
        train.Config(model="nope").validate()
    with pytest.raises(ConfigError, match="unknown model None"):  # None passes only where it is the default
        train.Config(model=None).validate()


def test_bad_dataset_lists_the_registry(tmp_path, capsys):
    for option in ("--dataset", "--test-dataset"):
        code, err = run_cli(["train", "--workdir", tmp_path / "run", option, "cifar10"], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "'cifar10'" in err and f"use one of {', '.join(config.DATASETS)}" in err, err
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field", [f for f in OPTION_FIELDS if "kind" in f.metadata], ids=lambda f: f.name)
def test_each_kind_is_checked_by_argparse_and_by_validate(field, capsys):
    name, bad = config.option_name(field), BAD[field.metadata["kind"]]
    expected = config.KINDS[field.metadata["kind"]][2]
    code, err = run_cli(["train", name, bad], capsys)
    assert code == 2 and f"argument {name}: expected {expected}, got {bad}" in err, err
    with pytest.raises(ConfigError, match=f"{name} must be"):
        train.Config(**{field.name: config.KINDS[field.metadata["kind"]][0](bad)}).validate()


def test_a_model_that_does_not_fit_the_images_names_those_that_do(tmp_path, capsys, monkeypatch):
    """The list comes from the registry: a model registered for 28x28 images appears in it."""
    monkeypatch.setitem(models.REGISTRY, "vae_copy", models.REGISTRY["vae"])
    code, err = run_cli(["train", "--model", "celeba_vae", "--workdir", str(tmp_path / "w")], capsys)
    err = err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "--model celeba_vae does not fit the digits images of shape (28, 28, 1)" in err[0], err
    assert err[0].endswith("use a model that does: ae, vae, cvae, conv_vae28, vae_copy"), err


def test_version(capsys):
    import vae_jax

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"vae-jax {vae_jax.__version__}"


def test_data_that_needs_tfds_without_it_is_one_line(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as when the tfds extra is not installed
    code, err = run_cli(["train", "--workdir", tmp_path / "run", "--dataset", "celeb_a"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "vae-jax[tfds]" in lines[0] and "--data-dir" in lines[0], err
