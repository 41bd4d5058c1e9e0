"""vae_jax.configs: the presets of `vae-jax train`, and which one a command line takes."""

import dataclasses
import json

import pytest

from vae_jax import cli, configs, train
from vae_jax.errors import ConfigError


def resolved(*argv):
    args = cli._parser().parse_args(["train", *argv])
    args.argv = ["train", *argv]
    return cli._train_config(args)[0]


@pytest.mark.parametrize("name", configs.NAMES)
def test_every_preset_is_a_valid_config(name):
    options = configs.get_config(name)
    fields = {f.name for f in dataclasses.fields(train.Config)}
    assert options and set(options) <= fields, set(options) - fields
    train.Config(**options).validate()


def test_no_options_is_the_main_job():
    config = resolved()
    assert (config.dataset, config.model, config.epochs, config.batch_size) == ("digits", "vae", 150, 32)


def test_another_dataset_gets_the_chapters_setting_not_the_main_jobs():
    for argv in (["--dataset", "mnist"], ["--dataset", "fashion_mnist"], ["--config", "mnist"]):
        config = resolved(*argv)
        assert (config.epochs, config.batch_size, config.lr) == (10, 128, 1e-3), argv


def test_options_given_win_over_the_preset():
    config = resolved("--config", "binarized_mnist_nll", "--epochs", "3", "--iwae-k", "0")
    assert (config.epochs, config.iwae_k, config.binarize, config.lr_schedule) == (3, 0, "dynamic", "cosine")
    assert resolved("--epochs", "2").batch_size == 32  # the main job's batch, the given epochs


def test_a_resume_takes_its_run_options_not_a_preset(tmp_path):
    saved = {**dataclasses.asdict(train.Config()), "dataset": "digits", "epochs": 7, "batch_size": 50, "lr": 0.01}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = resolved("--workdir", str(tmp_path), "--resume")
    assert (config.epochs, config.batch_size, config.lr) == (7, 50, 0.01)
    with pytest.raises(ConfigError, match="--config starts a new run"):
        resolved("--workdir", str(tmp_path), "--resume", "--config", "mnist")


def test_an_unknown_preset_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse's choices: one line, exit 2
        cli.main(["train", "--config", "nope"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--config" in err[0] and "digits" in err[0]
    with pytest.raises(ConfigError, match="unknown --config"):
        configs.get_config("nope")


def test_the_names_the_options_offer_are_the_registries():
    from vae_jax import config, experiments, losses, models
    from vae_jax.configs import exercises

    assert tuple(models.REGISTRY) == config.MODEL_NAMES
    assert tuple(experiments.EXPERIMENTS) == exercises.EXPERIMENTS
    assert set(config.RECON_KINDS) == set(losses.RECON_KINDS)  # losses.recon_loss accepts each


def test_help_needs_no_jax():
    import subprocess
    import sys

    script = "import sys; from vae_jax import cli; cli._parser(); print('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True).stdout.strip() == "False"
