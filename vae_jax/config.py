"""The options of a run: `Config`, one field per option of `vae-jax train` (its metadata says how to
parse and check it), and the names every registry offers. Imports nothing heavy, so the command line
(and `--help`) is built without JAX."""

from __future__ import annotations

import dataclasses
import math
import os
import re

from vae_jax.errors import ConfigError

# The registries' names (models.REGISTRY, datasets.load_dataset, losses.recon_loss), listed here
# so that the options can offer them without importing JAX; tests/test_cli.py checks that they agree.
MODEL_NAMES = ("ae", "vae", "cvae", "conv_vae", "conv_vae28", "celeba_vae")
DATASETS = ("digits", "mnist", "fashion_mnist", "binarized_mnist", "celeb_a", "image_folder")
TFDS_DATASETS = tuple(d for d in DATASETS if d not in ("digits", "image_folder"))  # also read through tfds
RECON_KINDS = ("bce", "bce_logits", "gaussian")
CONV_FORM_NAMES = ("auto", "onednn", "xla", "lax")  # layers.named_conv_form
LR_SCHEDULES = ("constant", "cosine")
DATA_MODES = ("auto", "memory", "stream")
BINARIZE_KINDS = ("none", "dynamic")  # dynamic: Bernoulli draws of the pixels from the step's key
FLOAT32_MAX = 3.4028234663852886e38  # float(numpy.finfo(numpy.float32).max)
# A model of one's own (vae_jax.user_models): path/to/file.py:ClassName or package.module:ClassName
MODEL_SPEC = re.compile(r"^(?:.+\.py|[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*):[A-Za-z_]\w*$")
MODEL_SPEC_FORMS = "path/to/file.py:ClassName or package.module:ClassName"


def is_model_spec(name) -> bool:
    """Whether `name` names a model of one's own (a file or module, a colon, a class)."""
    return isinstance(name, str) and bool(MODEL_SPEC.match(name))


def absolute_model_spec(name: str) -> str:
    """A file spec with its path made absolute (config.json's: eval, plot, resume work from any folder)."""
    if is_model_spec(name) and name.rpartition(":")[0].endswith(".py"):
        where, _, cls = name.rpartition(":")
        return f"{os.path.abspath(os.path.expanduser(where))}:{cls}"
    return name


class ModelChoices(list):
    """The registry's model names as argparse's choices, which also admit a model spec (`in`)."""

    def __contains__(self, name) -> bool:
        return list.__contains__(self, name) or is_model_spec(name)


def model_label(name: str) -> str:
    """A short name of a model for folders: the registry's name, or a spec's class name."""
    return name.rpartition(":")[2] if is_model_spec(name) else name


# What an option's value must be: kind -> (cast, ok(value), what is expected). `vae-jax train`
# parses its options with them and Config.validate() checks them again (config.json, Python callers).
KINDS = {
    "positive_int": (int, lambda v: v >= 1, "a positive integer"),
    "nonneg_int": (int, lambda v: v >= 0, "an integer >= 0"),
    "positive_float": (float, lambda v: 0 < v < math.inf, "a positive number"),  # NaN fails both comparisons
    "nonneg_float": (float, lambda v: 0 <= v < math.inf, "a number >= 0"),
}


def option(default, help, *, kind=None, choices=None, names=None, what=None, flag=None, metavar=None):
    """A Config field that is also an option of `vae-jax train`, `--` + its name in kebab-case.

    The field's metadata says how to parse and check it: help (the --help text), kind (a key of
    KINDS), choices (the registry of valid values, offered by argparse), names (a registry checked
    by validate() only, listed in the help; unknown values are reported as "unknown <what>"), flag
    (a bool defaulting to True: the store_true option that turns it off, e.g. --no-figures),
    metavar. A field without metadata (`checkpoint`) is not an option.
    """
    meta = dict(help=help, kind=kind, choices=choices, names=names, what=what, flag=flag, metavar=metavar)
    return dataclasses.field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


def option_name(field: dataclasses.Field) -> str:
    """The command-line option of a Config field: --no-figures for figures, --batch-size for batch_size."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


@dataclasses.dataclass
class Config:
    model: str = option(
        "vae",
        f"model: one of {', '.join(MODEL_NAMES)}, or your own as {MODEL_SPEC_FORMS} (docs/your_model.md)",
        choices=ModelChoices(MODEL_NAMES),
        what="model",
        metavar="MODEL",
    )
    dataset: str = option("digits", "dataset (digits is embedded: no download)", names=DATASETS, what="dataset")
    test_dataset: str | None = option(
        None,
        "evaluate on this dataset's test split instead (same image shape), e.g. train on mnist with "
        "--binarize dynamic and test on binarized_mnist",
        names=DATASETS,
        what="test dataset",
    )
    data_dir: str | None = option(None, "folder with the original files or a prepared tfds data_dir")
    latent_dim: int | None = option(
        None, "latent dimensions (default: the chapter's for the model)", kind="positive_int"
    )
    hidden_dim: int | None = option(
        None, "hidden units of the MLP models (default: the chapter's 400)", kind="positive_int"
    )
    recon: str = option(
        "bce_logits",
        "reconstruction loss: bce_logits trains, bce is the chapter's clamped BCE",
        choices=RECON_KINDS,
        what="reconstruction loss",
    )
    beta: float = option(1.0, "weight of the KL term (beta-VAE)", kind="nonneg_float")
    # KL weight = min(1, epoch / E) (epochs counted from 1)
    kl_anneal_epochs: int = option(0, "KL weight min(1, epoch/E); 0: off", kind="nonneg_int")
    binarize: str = option(
        "none", "dynamic: Bernoulli draws of the pixels at each step", choices=BINARIZE_KINDS, what="binarization"
    )
    epochs: int = option(10, "epochs in all", kind="positive_int")
    batch_size: int = option(128, "the global batch", kind="positive_int")  # split over --devices
    lr: float = option(1e-3, "Adam's learning rate", kind="positive_float")
    lr_schedule: str = option(
        "constant",
        "cosine: decay --lr to 0 over --epochs (a resume must keep --epochs)",
        choices=LR_SCHEDULES,
        what="learning-rate schedule",
    )
    seed: int = option(0, "the run's seed", kind="nonneg_int")
    train_limit: int | None = option(None, "use the first N training images", kind="positive_int")
    test_limit: int | None = option(None, "use the first N test images", kind="positive_int")
    iwae_k: int = option(0, "importance-sampled NLL with k samples at the end", kind="nonneg_int")
    train_k: int = option(
        1,
        "samples per image in the training objective: 1 = the ELBO (the chapter), k > 1 = "
        "the IWAE bound (Bernoulli VAEs); test losses stay the ELBO",
        kind="positive_int",
    )
    init_from: str | None = option(
        None,
        "start from the weights of this run directory's latest checkpoint, or of a torch .pt state_dict "
        "(fine-tuning; fresh Adam state); same model and image shape",
    )
    torch_model: str | None = option(
        None,
        "with --init-from FILE.pt (and import): your torch class the file was saved from, "
        "path/to/file.py:ClassName; its layers paired with --model's by call order (docs/your_model.md)",
        metavar="FILE.py:CLASS",
    )
    init_from_sha256: str | None = option(
        None, "the sha256 of the --init-from .pt file: recorded by train; when given, the file must have it"
    )
    devices: int = option(
        1, "data-parallel over N devices (global batch = --batch-size); see docs/scale.md", kind="positive_int"
    )
    max_steps: int | None = option(
        None, "stop after N optimizer steps in all (checkpointed, resumable), then test and plot", kind="positive_int"
    )
    checkpoint_every: int = option(
        0, "also checkpoint every N optimizer steps inside an epoch (0: at each epoch's end only)", kind="nonneg_int"
    )
    data_mode: str = option(
        "auto",
        "memory: each split whole on the device; stream: Grain decodes batches ahead "
        "of the step; auto: stream splits over 64 MiB (uint8)",
        choices=DATA_MODES,
        what="data mode",
    )
    data_workers: int = option(
        0, "stream: Grain worker processes that decode batches (0: threads in this process)", kind="nonneg_int"
    )
    steps_per_call: int = option(
        0,
        "memory mode, one device: optimizer steps per dispatch (a lax.scan over K batches; the same numbers as "
        "K = 1, but for the conv models in XLA's forms, which round differently in the scan); 0: auto (32 for "
        "the MLP models, 8 for the conv models on oneDNN's kernels, else 1)",
        kind="nonneg_int",
        metavar="K",
    )
    log_every: int = option(
        100, "TensorBoard: the training loss every N optimizer steps (0: per epoch only)", kind="nonneg_int"
    )
    conv_form: str = option(
        "auto",
        "the conv models' convolutions: onednn (oneDNN's kernels, CPU), xla (XLA's exact forms), lax (XLA's own "
        "convolutions); auto: onednn where it is built, else xla. config.json records the form that ran",
        choices=CONV_FORM_NAMES,
        what="conv form",
    )
    tensorboard: bool = option(True, "no event files in <workdir>/tensorboard", flag="--no-tensorboard")
    checkpoint: bool = True  # not an option: tests and experiments turn checkpoints off
    # not an option: a model of one's own's file or module, class, sha256 and constructor arguments
    # (vae_jax.user_models.source), recorded by train
    model_source: dict | None = None
    figures: bool = option(True, "skip the figures at the end", flag="--no-figures")
    progress: bool = option(True, "no progress bars", flag="--no-progress")

    def validate(self):
        fields = [f for f in dataclasses.fields(self) if not (f.default is None and getattr(self, f.name) is None)]
        for f in fields:  # names first (None only where it is the default): from the registries
            valid, v = f.metadata.get("choices", f.metadata.get("names")), getattr(self, f.name)
            if valid is not None and v not in valid:
                own = f", or your own as {MODEL_SPEC_FORMS}" if f.name == "model" else ""
                raise ConfigError(f"unknown {f.metadata['what']} {v!r}: use one of {', '.join(valid)}{own}")
        if self.torch_model is not None and not (is_model_spec(self.torch_model) and is_model_spec(self.model)):
            raise ConfigError(
                f"--torch-model {self.torch_model}: expected path/to/file.py:ClassName, with --model your Flax port "
                "as path/to/file.py:ClassName"
            )
        if self.model_source is not None and not isinstance(self.model_source, dict):
            raise ConfigError(f"model_source must be a JSON object, got {type(self.model_source).__name__}")
        for f in fields:  # then numbers: the kind of each
            v = getattr(self, f.name)
            if "kind" in f.metadata:
                cast, ok, what = KINDS[f.metadata["kind"]]
                if not ok(cast(v)):
                    raise ConfigError(f"{option_name(f)} must be {what}, got {v}")
        if not (0 < self.lr <= FLOAT32_MAX):
            raise ConfigError(f"--lr must be a positive number a float32 can hold (<= 3.4e38), got {self.lr}")
        if not (0 <= self.beta <= FLOAT32_MAX):
            raise ConfigError(f"--beta must be a number >= 0 a float32 can hold (<= 3.4e38), got {self.beta}")
        if not 0 <= int(self.seed) < 2**63:
            raise ConfigError(f"--seed must be an integer in 0 .. 2**63-1 (JAX's 64-bit seeds), got {self.seed}")
        import jax  # imported here: `vae-jax --help` reads the options without JAX

        if int(self.devices) > jax.device_count():
            raise ConfigError(
                f"--devices {self.devices} asks for more devices than JAX sees ({jax.device_count()}): "
                f"on CPU set XLA_FLAGS=--xla_force_host_platform_device_count={self.devices}, "
                "or lower --devices"
            )
        for name, on in (("iwae-k", self.iwae_k), ("train-k", self.train_k > 1)):
            if on and (self.model == "ae" or self.recon not in ("bce", "bce_logits")):
                raise ConfigError(
                    f"--{name} needs a VAE with a Bernoulli decoder, not --model {self.model} "
                    f"--recon {self.recon}: drop --{name} or use another model/--recon"
                )
        if self.train_k > 1 and (self.beta != 1 or self.kl_anneal_epochs):
            raise ConfigError(
                "--train-k > 1 trains the IWAE bound, which has no KL term to weigh: "
                "drop --beta/--kl-anneal-epochs or use --train-k 1"
            )
        return self
