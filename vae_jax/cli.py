"""The `vae-jax` command: train, eval, plot, export, prepare, experiment.

Bad input ends with one line `vae-jax: error: ...` naming the problem and the fix, exit code 2.
A non-finite loss ends with one such line and exit code 3 (the last good checkpoint is kept).
Anything else unexpected is reported as one line with exit code 1 (a bug: set VAE_JAX_DEBUG=1
for the traceback).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from pathlib import Path

from vae_jax.errors import ConfigError, ConsoleStderr, VaeJaxError, machine_failure
from vae_jax.files import atomic_dir, atomic_write


def _number(kind):
    """An argparse type for a value of kind `kind` (see train.KINDS): cast the text, then check it; the
    message says what is expected."""
    from vae_jax.train import KINDS

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
    """Config's fields that are train options (see train.option): the others have no metadata."""
    from vae_jax import train

    return [f for f in dataclasses.fields(train.Config) if "help" in f.metadata]


@functools.cache
def _config_help() -> dict[str, str]:
    """{--option: help} of the train options made from Config."""
    from vae_jax import train

    return {train.option_name(f): f.metadata["help"] for f in _config_fields()}


def _dest(option: str) -> str:
    return option[2:].replace("-", "_")


def _add_config_options(parser):
    """One option per Config field, as its metadata says: --kebab-case, the field's default, type and
    range (kind), choices from the registry; a bool that defaults to True is a flag that turns it off."""
    from vae_jax import train

    for f in _config_fields():
        meta, name = f.metadata, train.option_name(f)
        if "flag" in meta:
            parser.add_argument(name, action="store_true", help=meta["help"])
            continue
        kw = {"help": meta["help"] + (f"; one of {', '.join(meta['names'])}" if "names" in meta else "")}
        if "kind" in meta:
            kw["type"] = _number(meta["kind"])
        if "choices" in meta:
            kw["choices"] = list(meta["choices"])
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
    from vae_jax import input_pipeline

    _positive_int, _nonneg_int = _number("positive_int"), _number("nonneg_int")
    p = _Parser(prog="vae-jax", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_SubParser)

    t = sub.add_parser("train", help="train a model (default: the chapter's VAE on the embedded digits)")
    t.add_argument("--workdir", default=None, help="run directory (default runs/<model>_<dataset>_seed<seed>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --workdir from its last checkpoint")
    t.add_argument(
        "--restart",
        action="store_true",
        help="train the run in --workdir again from scratch, deleting what it wrote (e.g. after a "
        "non-finite loss in its first epoch)",
    )
    _add_config_options(t)  # the run's options: one per field of train.Config
    t.add_argument(
        "--coordinator-address",
        default=None,
        help="multi-process: HOST:PORT of process 0 (jax.distributed.initialize); see README",
    )
    t.add_argument("--num-processes", type=_positive_int, default=None, help="multi-process: number of processes")
    t.add_argument("--process-id", type=_nonneg_int, default=None, help="multi-process: this process's index")

    e = sub.add_parser("eval", help="test ELBO and importance-sampled NLL of a trained run")
    e.add_argument("--workdir", required=True)
    e.add_argument("--data-dir", default=None)
    e.add_argument("--iwae-k", type=_positive_int, default=5000)
    e.add_argument("--test-limit", type=_positive_int, default=None, help="use the first N test images")
    e.add_argument(
        "--out", default=None, help="JSON file to write (default <workdir>/eval_k<K>_seed<S>.json); must not exist"
    )
    e.add_argument("--seed", type=_nonneg_int, default=0)
    e.add_argument("--no-progress", action="store_true")

    pl = sub.add_parser("plot", help="the chapter's figures for a trained run")
    pl.add_argument("--workdir", required=True)
    pl.add_argument("--data-dir", default=None)
    pl.add_argument("--out", default=None, help="output folder (default <workdir>/plots); must not exist")
    pl.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    pl.add_argument("--seed", type=_nonneg_int, default=0)

    x = sub.add_parser("export", help="write a trained run's weights as a torch .pt state_dict")
    x.add_argument("--workdir", required=True)
    x.add_argument("--out", required=True, help="the .pt file to write (must not exist)")

    pr = sub.add_parser("prepare", help="prepare a tfds dataset offline from a folder of the original files")
    pr.add_argument(
        "--dataset", default="mnist", help=f"the tfds dataset: one of {', '.join(input_pipeline.TFDS_DATASETS)}"
    )
    pr.add_argument("--manual-dir", required=True, help="folder holding the original files")
    pr.add_argument("--data-dir", required=True, help="tfds data_dir to write")

    from vae_jax.experiments import EXPERIMENTS, SIZES

    ex = sub.add_parser(
        "experiment", help="one of the chapter's exercises: train its variants, write tables and figures"
    )
    ex.add_argument("name", choices=list(EXPERIMENTS))
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
    return p


def _given_options(argv, command) -> set[str]:
    """The destinations of the options given on the command line (not defaults) for `command`."""
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        action.default = argparse.SUPPRESS
    given = set(vars(parser.parse_args(argv)))
    if command == "train":  # a flag such as --no-figures gives its field, figures
        flags = {_dest(f.metadata["flag"]): f.name for f in _config_fields() if "flag" in f.metadata}
        given |= {flags[d] for d in given & flags.keys()}
    return given - {"command"}


def _fresh_path(path, what, *, parent_must_exist=False):
    path = Path(path)
    if os.path.lexists(path):  # a dangling link too: nothing is written through it
        raise ConfigError(f"{what} {path} already exists -- choose another path; nothing was overwritten")
    if parent_must_exist and not path.parent.is_dir():
        raise ConfigError(
            f"cannot write {what} {path}: the folder {path.parent} does not exist -- create it or choose another path"
        )
    return path


def _run(args):
    from vae_jax import train

    if args.command == "train":
        from vae_jax import distributed

        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
        _check_platform()
        fields = {f.name for f in dataclasses.fields(train.Config)}
        kw = _config_options(args)
        given = {k: kw[k] for k in _given_options(args.argv, "train") if k in kw}
        workdir = args.workdir or f"runs/{kw['model']}_{kw['dataset']}_seed{kw['seed']}"
        if args.resume and (Path(workdir) / "config.json").is_file():  # the run's own options, then the given
            from vae_jax.checkpoints import read_config

            saved = read_config(Path(workdir) / "config.json")
            # --max-steps (where this invocation stops) and --devices (this machine's) are not the run's
            kw = {
                **{k: v for k, v in saved.items() if k in fields and k not in ("max_steps", "devices")},
                **{k: kw[k] for k in ("max_steps", "devices")},
                **given,
            }
        for k in ("data_dir", "init_from"):  # stored absolute: eval/plot/resume work from any folder
            if kw.get(k) and k in given:
                kw[k] = os.path.abspath(kw[k])
        try:
            config = train.Config(**kw)
        except TypeError as e:
            raise ConfigError(f"{Path(workdir) / 'config.json'} is damaged ({e}) -- restore it") from None
        same = {  # every process of a multi-process run must train this run (--no-figures: given or not)
            train.option_name(f): (not v if "flag" in f.metadata else v)
            for f in dataclasses.fields(config)
            for v in [getattr(config, f.name)]
        }
        distributed.check_same_options(
            {**same, "--workdir": os.path.abspath(workdir), "--resume": args.resume, "--restart": args.restart}
        )
        train.train_and_evaluate(config, workdir, resume=args.resume, restart=args.restart)
        return 0

    _check_platform()
    if args.command == "experiment":
        from vae_jax import experiments

        experiments.run_experiment(
            args.name, args.workdir, dataset=args.dataset, data_dir=args.data_dir, size=args.size, seed=args.seed
        )
        return 0

    if args.command == "prepare":
        from vae_jax import input_pipeline

        input_pipeline.prepare_tfds(args.dataset, args.manual_dir, args.data_dir)
        print(f"prepared {args.dataset} in {args.data_dir}")
        return 0

    if args.command == "export":
        from vae_jax import convert

        out = _fresh_path(args.out, "export file", parent_must_exist=True)
        model, _, _ = train.restore_run(args.workdir)
        atomic_write(out, convert.pt_bytes(model), replace=False)
        print(f"wrote {out} ({type(model).__name__} state_dict, torch keys)")
        return 0

    model, config, _ = train.restore_run(args.workdir)
    import dataclasses as dc

    import jax

    if getattr(args, "data_dir", None):
        config.data_dir = args.data_dir
    if args.command == "eval":
        from vae_jax import evaluate

        out = _fresh_path(
            args.out or Path(args.workdir) / f"eval_k{args.iwae_k}_seed{args.seed}.json",
            "evaluation file",
            parent_must_exist=True,
        )
        config = dc.replace(config, test_limit=args.test_limit or config.test_limit, seed=args.seed)
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
            )
        result["num_test"] = len(test_ds)
        print(json.dumps(result))  # printed first: a file that cannot be written does not lose it
        atomic_write(out, json.dumps(result, indent=2) + "\n", replace=False)
        return 0
    if args.command == "plot":
        from vae_jax import evaluate

        out = Path(args.out or Path(args.workdir) / "plots")
        if not args.force:
            _fresh_path(out, "plot folder")
        _, test_ds = train.load_data(config)
        from vae_jax.checkpoints import read_metrics

        history = read_metrics(Path(args.workdir))
        with atomic_dir(out, replace=args.force) as tmp:  # all figures or none
            paths = evaluate.make_figures(model, test_ds, history, tmp, key=jax.random.key(args.seed))
        print("\n".join(str(out / Path(p).name) for p in paths.values()))
        return 0
    raise AssertionError(args.command)


def _kept_after_interrupt(args) -> str:
    """What an interrupted command leaves, in words (outputs are written whole or not at all)."""
    if args.command == "train":
        from vae_jax.checkpoints import latest_step_on_disk

        workdir = args.workdir or "the workdir"
        step = latest_step_on_disk(args.workdir) if args.workdir else 0
        return (
            f"the checkpoint of step {step} in {workdir} is kept (continue with --resume)"
            if step
            else "no checkpoint was written yet (start again, or --resume to keep the options)"
        )
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
        return fail(f"vae-jax: interrupted; {_kept_after_interrupt(args)}", 130)
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
        from vae_jax import distributed

        line = machine_failure(e)
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
