"""The `vae-jax` command: train, eval, plot, export, import, parity, compare, prepare, experiment.

Bad input ends with one line `vae-jax: error: ...` naming the problem and the fix, exit code 2.
A non-finite loss ends with one such line and exit code 3 (the last good checkpoint is kept).
Anything else unexpected is reported as one line with exit code 1 (a bug: set VAE_JAX_DEBUG=1
for the traceback).

JAX, and the vae_jax modules that import JAX or numpy, are imported inside the command functions:
`vae-jax --help` and the first console line come without loading JAX.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from pathlib import Path

from vae_jax import __version__, configs, distributed, jax_env, signals
from vae_jax.config import KINDS, TFDS_DATASETS, Config, ModelChoices, absolute_model_spec, model_label, option_name
from vae_jax.configs.exercises import EXPERIMENTS, SIZES
from vae_jax.errors import ConfigError, ConsoleStderr, VaeJaxError, machine_failure
from vae_jax.files import atomic_dir, atomic_write, check_outside_owned, json_text, writer_lock_if_inside


def _number(kind):
    """An argparse type for a value of kind `kind` (see config.KINDS): cast the text, then check it; the
    message says what is expected."""
    cast, ok, what = KINDS[kind]

    def parse(s):
        try:
            v = cast(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {s!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {s}")
        return v

    parse.__name__ = kind
    return parse


_positive_int, _nonneg_int = _number("positive_int"), _number("nonneg_int")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): `vae-jax: error: ... (see ...--help)`, exit 2."""

    def error(self, message):
        message = " ".join(message.split())
        self.exit(2, f"vae-jax: error: {message} (see `{self.prog} --help`)\n")


class _SubParser(_Parser):
    """A subcommand's parser: one-line errors, and --help shows every option's default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        if "help" not in kwargs and args and args[0].startswith("--"):  # a help text, so the default shows
            kwargs["help"] = _HELP.get(args[0]) or _config_help().get(args[0], args[0][2:].replace("-", " "))
        return super().add_argument(*args, **kwargs)


# Help of the other subcommands' options that are not train options (those take Config's help).
_HELP = {"--workdir": "the run directory", "--dataset": "dataset"}


def _config_fields():
    """Config's fields that are train options (see config.option): the others have no metadata."""
    return [f for f in dataclasses.fields(Config) if "help" in f.metadata]


@functools.cache
def _config_help() -> dict[str, str]:
    """{--option: help} of the train options made from Config."""
    return {option_name(f): f.metadata["help"] for f in _config_fields()}


def _dest(option: str) -> str:
    return option[2:].replace("-", "_")


def _add_config_options(parser, skip=()):
    """One option per Config field, as its metadata says: --kebab-case, the field's default, type and
    range (kind), choices from the registry; a bool that defaults to True is a flag that turns it off.
    The fields in `skip` get no option (their defaults stay)."""
    for f in _config_fields():
        if f.name in skip:
            parser.set_defaults(**{f.name: f.default})
            continue
        meta, name = f.metadata, option_name(f)
        if "flag" in meta:
            parser.add_argument(name, action="store_true", help=meta["help"])
            continue
        kw = {"help": meta["help"] + (f"; one of {', '.join(meta['names'])}" if "names" in meta else "")}
        if "kind" in meta:
            kw["type"] = _number(meta["kind"])
        if "choices" in meta:
            choices = meta["choices"]  # config.ModelChoices as it is: it also admits a model spec
            kw["choices"] = choices if isinstance(choices, ModelChoices) else list(choices)
        if "metavar" in meta:
            kw["metavar"] = meta["metavar"]
        parser.add_argument(name, default=f.default, **kw)


def _config_options(args) -> dict:
    """{Config field: value} of parsed train arguments (--no-figures: figures=False)."""
    return {
        f.name: (not getattr(args, _dest(f.metadata["flag"])) if "flag" in f.metadata else getattr(args, f.name))
        for f in _config_fields()
    }


def _one_line(e) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _parser():
    p = _Parser(prog="vae-jax", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"vae-jax {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_SubParser)
    _train_parser(sub)
    _run_readers_parsers(sub)
    _data_parsers(sub)
    _torch_parsers(sub)
    return p


def _train_parser(sub):
    t = sub.add_parser("train", help="train a model (default: the chapter's VAE on the embedded digits)")
    t.add_argument("--workdir", default=None, help="run directory (default runs/<model>_<dataset>_seed<seed>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --workdir from its last checkpoint")
    t.add_argument(
        "--restart",
        action="store_true",
        help="train the run in --workdir again from scratch, deleting what it wrote (e.g. after a "
        "non-finite loss in its first epoch)",
    )
    t.add_argument(
        "--config",
        default=None,
        choices=configs.NAMES,
        help="a preset (vae_jax/configs/NAME.py) whose options replace the defaults below; default: the "
        "preset named after --dataset if there is one (so `vae-jax train` alone is `digits`, the main job: "
        "150 epochs of batch 32), else none. Options given here win",
    )
    _add_config_options(t)  # the run's options: one per field of config.Config
    t.add_argument(
        "--coordinator-address",
        default=None,
        help="multi-process: HOST:PORT of process 0 (jax.distributed.initialize); see docs/scale.md",
    )
    t.add_argument("--num-processes", type=_positive_int, default=None, help="multi-process: number of processes")
    t.add_argument("--process-id", type=_nonneg_int, default=None, help="multi-process: this process's index")


def _run_readers_parsers(sub):
    """eval, plot, export: the commands that read a trained run."""
    step_help = "the checkpoint of this step (default: the latest)"
    e = sub.add_parser("eval", help="test ELBO and importance-sampled NLL of a trained run")
    e.add_argument("--workdir", required=True)
    e.add_argument("--data-dir", default=None)
    e.add_argument("--iwae-k", type=_positive_int, default=5000, help="importance samples per test image for the NLL")
    e.add_argument("--test-limit", type=_positive_int, default=None, help="use the first N test images")
    e.add_argument(
        "--out", default=None, help="JSON file to write (default <workdir>/eval_k<K>_seed<S>.json); must not exist"
    )
    e.add_argument("--seed", type=_nonneg_int, default=0, help="the key of the samples (the ELBO's z, the NLL's)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar (there is none in a log)")
    e.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    e.add_argument("--step", type=_nonneg_int, default=None, help=step_help)

    pl = sub.add_parser("plot", help="the chapter's figures for a trained run")
    pl.add_argument("--workdir", required=True)
    pl.add_argument("--data-dir", default=None)
    pl.add_argument("--out", default=None, help="output folder (default <workdir>/plots); must not exist")
    pl.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    pl.add_argument("--seed", type=_nonneg_int, default=0)
    pl.add_argument("--step", type=_nonneg_int, default=None, help=step_help)

    x = sub.add_parser("export", help="write a trained run's weights as a torch .pt state_dict")
    x.add_argument("--workdir", required=True)
    x.add_argument(
        "--out", required=True, help="the .pt file to write, and its sizes as .json beside it (neither may exist)"
    )
    x.add_argument("--step", type=_nonneg_int, default=None, help=step_help)


def _data_parsers(sub):
    """prepare (a tfds dataset) and experiment (the chapter's exercises)."""
    pr = sub.add_parser("prepare", help="prepare a tfds dataset offline from a folder of the original files")
    pr.add_argument("--dataset", default="mnist", help=f"the tfds dataset: one of {', '.join(TFDS_DATASETS)}")
    pr.add_argument("--manual-dir", required=True, help="folder holding the original files")
    pr.add_argument("--data-dir", required=True, help="tfds data_dir to write")

    ex = sub.add_parser(
        "experiment", help="one of the chapter's exercises: train its variants, write tables and figures"
    )
    ex.add_argument("name", choices=EXPERIMENTS)
    ex.add_argument("--workdir", required=True, help="output folder; each variant trains in <workdir>/<variant>/")
    ex.add_argument("--data-dir", default=None)
    ex.add_argument("--dataset", default="digits", choices=["mnist", "digits"])
    ex.add_argument(
        "--size",
        default="reduced",
        choices=list(SIZES),
        help="reduced: a tiny run (tests); full: 10 epochs, batch 128, Adam 1e-3",
    )
    ex.add_argument("--seed", type=_nonneg_int, default=0)


def _torch_parsers(sub):
    """import, parity, compare: runs and checkpoints between vae-jax and PyTorch."""
    im = sub.add_parser("import", help="make a run directory from a PyTorch checkpoint (.pt state_dict)")
    im.add_argument("file", help="the .pt file: a state_dict, or a dict holding one under 'state_dict', ...")
    im.add_argument("--workdir", required=True, help="the run directory to make (new or empty)")
    im.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="rename the file's key (or dotted key prefix) OLD to the chapter's NEW; repeatable",
    )
    im.add_argument(
        "--trust-order",
        action="store_true",
        help="accept a mapping of the file's keys by order that their names contradict (a logvar layer "
        "to the chapter's mu)",
    )
    _add_config_options(im, skip=("init_from", "init_from_sha256"))  # the run's options, as train's
    im.set_defaults(model=None)  # the file's 'model' entry

    pa = sub.add_parser("parity", help="compare a run's Flax model with the chapter's PyTorch class, or your own pair")
    pa.add_argument("--workdir", default=None, help="a run directory: its model against the chapter's class")
    pa.add_argument("--data-dir", default=None)
    pa.add_argument(
        "--torch-model", metavar="FILE.py:CLASS", help="with --workdir: your torch class, not the chapter's"
    )
    pa.add_argument("--torch", default=None, metavar="FILE.py:NAME", help="your torch model (class or factory)")
    pa.add_argument("--flax", default=None, metavar="FILE.py:NAME", help="its Flax NNX port (built with rngs=)")
    pa.add_argument("--input-shape", default=None, metavar="B,C,H,W", help="the batch, in torch's layout")
    pa.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    pa.add_argument("--steps", type=int, default=5, help="optimizer steps compared (Adam, lr 1e-3)")
    pa.add_argument("--seeds", type=int, default=1)
    pa.add_argument("--seed", type=int, default=0, help="initialisation and the batch")
    pa.add_argument("--report", default=None, metavar="DIR", help="write DIR/parity.md and DIR/junit.xml")

    cp = sub.add_parser("compare", help="runs of vae-jax or scripts/train_torch.py on one figure and one table")
    cp.add_argument("runs", nargs="+", metavar="RUN", help="run directories; differences are from the first")
    cp.add_argument("--out", default=None, help="new folder for compare.png and compare.md (must not exist)")


def _given_options(argv, command) -> set[str]:
    """The destinations of the options given on the command line (not defaults) for `command`."""
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        action.default = argparse.SUPPRESS
    sub._defaults.clear()  # set_defaults' too (import's model and skipped fields)
    given = set(vars(parser.parse_args(argv)))
    if command in ("train", "import"):  # a flag such as --no-figures gives its field, figures
        flags = {_dest(f.metadata["flag"]): f.name for f in _config_fields() if "flag" in f.metadata}
        given |= {flags[d] for d in given & flags.keys()}
    return given - {"command"}


def _fresh_path(path, what, *, parent_must_exist=False):
    path = Path(path)
    if os.path.lexists(path):  # a dangling link too: nothing is written through it
        raise ConfigError(f"{what} {path} already exists -- choose another path; nothing was overwritten")
    check_outside_owned(path, what)
    if parent_must_exist and not path.parent.is_dir():
        raise ConfigError(
            f"cannot write {what} {path}: the folder {path.parent} does not exist -- create it or choose another path"
        )
    return path


def _check_plot_out(out: Path, workdir: Path, *, force: bool) -> None:
    """plot --out: a new path, or with --force a folder of figures vae-jax wrote -- never a run directory
    or a folder above one, nor anything holding the user's files (files.check_replaceable)."""
    check_outside_owned(out, "plot folder")
    if not force:
        _fresh_path(out, "plot folder")
        return
    real, run = os.path.realpath(out), os.path.realpath(workdir)
    if (out / "config.json").exists() or real == run or run.startswith(real.rstrip(os.sep) + os.sep):
        raise ConfigError(
            f"plot --out {out} is a run directory (or holds one) -- choose another --out, e.g. "
            f"{workdir / 'plots'}; nothing was deleted"
        )


def _train_config(args):
    """(Config, workdir) of `vae-jax train`: the defaults, then the preset (--config, or the one named
    after --dataset), then the options given; a resume starts from its config.json instead
    (checkpoints.resumed_options)."""
    kw = _config_options(args)
    given = {k: kw[k] for k in _given_options(args.argv, "train") if k in kw}
    if args.config and args.resume:
        raise ConfigError("--config starts a new run; a resumed run keeps its own options -- drop --config")
    preset = args.config or configs.for_dataset(given.get("dataset", kw["dataset"]))
    if preset and not args.resume:
        kw = {**kw, **configs.get_config(preset), **given}
    if "model" in given:  # a model file's path stored absolute: eval/plot/resume work from any folder
        kw["model"] = given["model"] = absolute_model_spec(kw["model"])
    workdir = args.workdir or f"runs/{model_label(kw['model'])}_{kw['dataset']}_seed{kw['seed']}"
    if args.resume and (Path(workdir) / "config.json").is_file():
        from vae_jax import checkpoints

        path = Path(workdir) / "config.json"
        saved = checkpoints.check_saved_config(checkpoints.read_config(path), path)
        kw = checkpoints.resumed_options(saved, kw, given)
    for k in ("data_dir", "init_from"):  # stored absolute: eval/plot/resume work from any folder
        if kw.get(k) and k in given:
            kw[k] = os.path.abspath(kw[k])
    if kw.get("torch_model") and "torch_model" in given:  # vae_jax.torch_models
        if not (kw.get("init_from") and Path(kw["init_from"]).is_file()):
            raise ConfigError("--torch-model goes with --init-from FILE.pt -- pass the .pt file saved from the class")
        kw["torch_model"] = absolute_model_spec(kw["torch_model"])
    elif "init_from" in given and os.path.exists(kw["init_from"]) and not os.path.isdir(kw["init_from"]):  # a .pt
        from vae_jax import torch_import

        kw.update(torch_import.init_options(kw["init_from"], kw, given))
    try:
        return Config(**kw), workdir
    except TypeError as e:
        raise ConfigError(f"{Path(workdir) / 'config.json'} is damaged ({e}) -- restore it") from None


def _train(args):
    config, workdir = _train_config(args)
    args.resolved_workdir = workdir  # for the line after an interrupt
    if not args.process_id:  # within a second of the start: what happens next (JAX loads in seconds)
        what = "resuming" if args.resume else "training"
        print(f"{what} {config.model} on {config.dataset} in {workdir}: loading JAX and the data", flush=True)
    from vae_jax import train

    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    _check_platform()
    same = {  # every process of a multi-process run must train this run (--no-figures: given or not)
        option_name(f): (not v if "flag" in f.metadata else v)
        for f in dataclasses.fields(config)
        for v in [getattr(config, f.name)]
    }
    distributed.check_same_options(
        {**same, "--workdir": os.path.abspath(workdir), "--resume": args.resume, "--restart": args.restart}
    )
    train.train_and_evaluate(config, workdir, resume=args.resume, restart=args.restart)
    return 0


def _compare(args):
    from vae_jax import compare

    if args.out:
        check_outside_owned(args.out, "compare folder")
    print(compare.compare_runs(args.runs, args.out), end="")
    if args.out:
        print(f"wrote {Path(args.out) / 'compare.png'} and {Path(args.out) / 'compare.md'}")
    return 0


def _experiment(args):
    from vae_jax import experiments

    experiments.run_experiment(
        args.name, args.workdir, dataset=args.dataset, data_dir=args.data_dir, size=args.size, seed=args.seed
    )
    return 0


def _import(args):
    from vae_jax import torch_import

    options, named = _config_options(args), _given_options(args.argv, "import")
    if options.get("torch_model"):
        from vae_jax import torch_models

        options["model"] = absolute_model_spec(options["model"]) if options.get("model") else None
        options["torch_model"] = absolute_model_spec(options["torch_model"])
        return torch_models.import_run(args.file, args.workdir, options, named, options["torch_model"])
    return torch_import.import_run(
        args.file, args.workdir, options, named, renames=args.rename, trust_order=args.trust_order
    )


def _parity(args):
    from vae_jax import torch_import

    if args.torch_model and args.workdir and not (args.torch or args.flax):
        from vae_jax import torch_models

        return torch_models.check_run(args.workdir, args.torch_model, args.data_dir)
    if args.torch or args.flax or not args.workdir:
        from vae_jax import parity_cli

        return parity_cli.run(args)
    return torch_import.check_run(args.workdir, args.data_dir)


def _prepare(args):
    from vae_jax import tfds_data

    tfds_data.prepare_tfds(args.dataset, args.manual_dir, args.data_dir)
    print(f"prepared {args.dataset} in {args.data_dir}")
    return 0


def _export(args):
    """The chapter's state_dict, and beside it (same name, .json) the sizes and the run it came from,
    which `vae-jax import` reads."""
    from vae_jax import convert, train

    out = _fresh_path(args.out, "export file", parent_must_exist=True)
    sizes = _fresh_path(out.with_suffix(".json"), "export's sizes file")
    step = _step_to_read(args)
    model, config, image_shape = train.restore_run(args.workdir, step)
    atomic_write(out, convert.pt_bytes(model), replace=False)
    meta = dict(
        model=config.model,
        latent_dim=int(model.latent_dim),
        hidden_dim=getattr(model, "hidden_dim", None),
        image_shape=list(image_shape),
        dataset=config.dataset,
        run=str(Path(args.workdir).absolute()),
        step=step,
        vae_jax_version=__version__,
    )
    if config.model_source:  # a model of one's own: its file, class, sha256, constructor arguments
        meta["model_source"] = config.model_source
    atomic_write(sizes, json_text(meta) + "\n", replace=False)
    print(f"wrote {out} ({type(model).__name__} state_dict, torch keys) and {sizes} (its sizes)")
    return 0


def _step_to_read(args) -> int:
    """The checkpoint eval and export read, recorded in what they write: --step, else the newest there."""
    from vae_jax.checkpoints import latest_step_on_disk

    return args.step if args.step is not None else latest_step_on_disk(args.workdir)


def _eval(args):
    """Test ELBO (and the importance-sampled NLL for a Bernoulli VAE): a table, or one JSON line with
    --json; the result also goes to a new JSON file."""
    import jax

    from vae_jax import evaluate, train

    step = _step_to_read(args)
    model, config, _ = train.restore_run(args.workdir, step)
    out = _fresh_path(
        args.out or Path(args.workdir) / f"eval_k{args.iwae_k}_seed{args.seed}.json",
        "evaluation file",
        parent_must_exist=True,
    )
    config = dataclasses.replace(
        config,
        data_dir=args.data_dir or config.data_dir,
        test_limit=args.test_limit or config.test_limit,
        seed=args.seed,  # the test ELBO's z too
    )
    _, test_ds = train.load_data(config)
    result = train.evaluate_model(model, config, test_ds)
    if getattr(model, "reparameterize", None) is not None and config.recon in ("bce", "bce_logits"):
        test_x, test_y = train.device_arrays(test_ds)
        result["iwae_k"] = args.iwae_k
        result["iwae_nll"] = evaluate.iwae_nll(
            model,
            test_x,
            test_y,
            k=args.iwae_k,
            key=jax.random.key(args.seed),
            recon=config.recon,
            progress=not args.no_progress,
            say=functools.partial(print, file=sys.stderr if args.json else sys.stdout, flush=True),
            brief=args.json,  # stdout holds the JSON line; stderr hears only of an evaluation of minutes
        )
    result.update(num_test=len(test_ds), step=step)
    print(json_text(result, indent=None) if args.json else _eval_table(result, config))  # before the file
    atomic_write(out, json_text(result) + "\n", replace=False)
    return 0


def _eval_table(result: dict, config) -> str:
    rows = [
        ("test images", f"{result['num_test']}" + (f" ({config.test_dataset or config.dataset})")),
        ("test loss (ELBO)", f"{result['test_loss']:.4f} nats per image"),
        ("  reconstruction", f"{result['test_recon']:.4f}"),
        ("  KL", f"{result['test_kl']:.4f}"),
    ]
    if "iwae_nll" in result:
        rows.append((f"NLL (k={result['iwae_k']})", f"{result['iwae_nll']:.4f} nats per image"))
    return "\n".join(f"{k:<18} {v}" for k, v in rows)


def _plot(args):
    import jax

    from vae_jax import evaluate, train
    from vae_jax.checkpoints import read_metrics

    model, config, _ = train.restore_run(args.workdir, args.step)
    out = Path(args.out or Path(args.workdir) / "plots")
    _check_plot_out(out, Path(args.workdir), force=args.force)
    _, test_ds = train.load_data(dataclasses.replace(config, data_dir=args.data_dir or config.data_dir))
    history = read_metrics(Path(args.workdir))
    with writer_lock_if_inside(out, Path(args.workdir)), atomic_dir(out, replace=args.force, what="--out") as tmp:
        paths = evaluate.make_figures(model, test_ds, history, tmp, key=jax.random.key(args.seed))
    print("\n".join(str(out / Path(p).name) for p in paths.values()))
    return 0


COMMANDS = {
    "train": _train,
    "eval": _eval,
    "plot": _plot,
    "export": _export,
    "import": _import,
    "parity": _parity,
    "compare": _compare,
    "prepare": _prepare,
    "experiment": _experiment,
}


def _run(args):
    jax_env.check_xla_flags()
    if args.command not in ("train", "compare"):  # train checks it once the processes have joined
        _check_platform()
    return COMMANDS[args.command](args)


def _kept_after_interrupt(args) -> str:
    """What an interrupted command leaves, in words (outputs are written whole or not at all); a run's
    folder that was removed (interrupted before its first file) or holds no checkpoint is never
    advised a --resume."""
    if args.command == "train":
        workdir = Path(getattr(args, "resolved_workdir", None) or args.workdir or "the workdir")
        loaded = sys.modules.get("vae_jax.checkpoints")  # not loaded yet (or half): nothing was written
        latest = getattr(loaded, "latest_step_on_disk", None)
        step = latest(workdir) if latest else 0
        if step or (workdir / "checkpoints" / "0").is_dir():  # step 0: an imported run's weights
            return f"the checkpoint of step {step} in {workdir} is kept -- continue with --resume"
        if (workdir / "config.json").is_file():
            return f"no checkpoint was written yet in {workdir} -- start again with --restart"
        return f"nothing of the run was written in {workdir} -- start again with the same command"
    if args.command == "experiment":
        return "the variants trained so far are kept (run the same command again to continue)"
    return "nothing was written (outputs appear only when complete)"


def _check_platform():
    """JAX_PLATFORMS naming a backend this machine does not have: one line, not JAX's AssertionError."""
    wanted = os.environ.get("JAX_PLATFORMS")
    if not wanted:
        return
    import jax

    try:
        jax.devices()
    except Exception as e:  # noqa: BLE001 -- jax raises AssertionError/RuntimeError for a missing backend
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise ConfigError(
            f"JAX_PLATFORMS={wanted}: no such backend here ({detail}) -- unset JAX_PLATFORMS to use "
            "the CPU, or install the jax build for that accelerator (e.g. pip install "
            "'jax[cuda12]')"
        ) from None


def main(argv=None, *, console=False):
    """Run one command; on failure write ONE line to stderr and return the exit code.

    console=True (the `vae-jax` script, which exits right after): stderr is silenced before the
    line is written to a saved copy of it, so nothing a library's background thread prints late
    (orbax/tensorstore after a failed restore) can join it.
    """
    if console:  # SIGTERM as SIGINT, and no interrupt dropped inside a GC callback (vae_jax.signals)
        signals.install()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = _parser().parse_args(argv)
    args.argv = argv
    ConsoleStderr.console = console

    def fail(line, code):
        if console:
            sys.stdout.flush()
            sys.stderr.flush()
            err = ConsoleStderr.silence()
            # sys.__stderr__ too (typeshed marks it Final): late writers that fall back to it stay silent
            sys.stderr = sys.__stderr__ = open(os.devnull, "w")  # type: ignore[misc]  # noqa: SIM115 -- open until the process exits
            os.write(err, (line + "\n").encode())
        else:
            print(line, file=sys.stderr)
        return code

    try:
        return _run(args)
    except VaeJaxError as e:
        return fail(f"vae-jax: error: {_one_line(e)}", 2)
    except FloatingPointError as e:
        return fail(f"vae-jax: error: {_one_line(e)}", 3)
    except KeyboardInterrupt:
        signals.ignore_more()
        return fail(f"vae-jax: {signals.name()}; {_kept_after_interrupt(args)}", signals.exit_code())
    except (OSError, MemoryError) as e:  # the machine, not the options: disk full, read-only, memory
        line = machine_failure(e)
        if line:
            return fail(f"vae-jax: error: {line}", 2)
        filename = getattr(e, "filename", None)  # OSError's; MemoryError has none
        where = f" {filename}" if filename else ""
        return fail(
            f"vae-jax: error: cannot access{where}: {getattr(e, 'strerror', None) or _one_line(e)} -- "
            "check the path, its permissions and the free space",
            2,
        )
    except Exception as e:
        line = machine_failure(e) or jax_env.jax_flag_line(e)
        if line:
            return fail(f"vae-jax: error: {line}", 2)

        if "jax" in sys.modules and distributed.is_peer_failure(e):
            return fail(
                f"vae-jax: error: another process of this multi-process run failed or is unreachable "
                f"({_one_line(e)[:160]}) -- see its output, then restart every process with --resume",
                2,
            )
        if os.environ.get("VAE_JAX_DEBUG"):
            raise
        return fail(
            f"vae-jax: internal error: {type(e).__name__}: {_one_line(e)[:300]} -- this is a bug, please "
            "report it with the command line (VAE_JAX_DEBUG=1 shows the traceback)",
            1,
        )


def console_main():
    """The `vae-jax` console script: main(console=True), and on failure an immediate exit
    (everything the run wrote is already on disk: checkpoints are written synchronously)."""
    code = main(console=True)
    if code:
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(console_main())
