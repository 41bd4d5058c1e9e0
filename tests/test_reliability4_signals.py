"""Reliability, round four (issue 29 items 6 and 7, issue 30 item 5): SIGINT and SIGTERM at any moment
are one line and exit 130/143, limits are refused up front, unclear lines name the problem.
Every case goes through the `vae-jax` console script."""

import json
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import TINY, console, one_line, run
from vae_jax import cli, evaluate

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _signalled(args, sig, *, after: str, delay: float = 0.0):
    """(exit code, stderr lines) of `vae-jax args` sent `sig` `delay` seconds after the first stdout
    line holding `after`."""
    with subprocess.Popen(console(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) as p:
        line = p.stdout.readline()
        while after not in line:
            assert line, "the run ended before the signal"
            line = p.stdout.readline()
        time.sleep(delay)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
    return p.returncode, err.strip().splitlines()


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
@pytest.mark.parametrize("delay", [0.0, 1.5])
def test_a_signal_while_loading_is_one_line_and_never_advises_resume(tmp_path, sig, code, said, delay):
    work = tmp_path / "run"
    rc, err = _signalled(["train", "--workdir", work, *TINY, "--no-figures"], sig, after="loading JAX", delay=delay)
    assert rc == code and len(err) == 1 and err[0].startswith(f"vae-jax: {said}"), (rc, err)
    if not (work / "config.json").exists():  # removed as unused (or never made): start again
        assert "--resume" not in err[0] and "start again" in err[0], err


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_training_keeps_the_last_checkpoint(tmp_path, sig, code):
    work = tmp_path / "run"
    args = ["train", "--workdir", work, *TINY, "--train-limit", "400", "--epochs", "60", "--no-figures"]
    rc, err = _signalled(args, sig, after="Epoch 2/")
    assert rc == code and len(err) == 1, (rc, err)
    assert "is kept -- continue with --resume" in err[0], err
    step = int(err[0].split("checkpoint of step ")[1].split()[0])
    assert step >= 16 and (work / "checkpoints" / str(step)).is_dir(), err
    assert not (work / "summary.json").exists()  # the run stopped


# ------------------------------------------------------------------------------- limits of the machine


def _console(args, env=None, **kw):
    r = subprocess.run(console(args), capture_output=True, text=True, env={**ENV, **(env or {})}, timeout=300, **kw)
    return r.returncode, r.stderr.strip().splitlines(), r.stdout


@pytest.mark.slow
def test_a_file_size_limit_is_the_disk_line(tmp_path):
    # `ulimit -f 1000` (1000 blocks of 1024 bytes) in a shell: no fork with a preexec_fn from this
    # process, which JAX's threads make unsafe
    cmd = shlex.join(console(["train", "--workdir", tmp_path / "run", *TINY, "--no-figures"]))
    r = subprocess.run(
        ["bash", "-c", f"ulimit -f 1000; exec {cmd}"], capture_output=True, text=True, env=ENV, timeout=300
    )
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "internal error" not in err[0], err
    assert "ulimit -f" in err[0] and " -- " in err[0] and "no checkpoint was written before it" in err[0], err


def test_a_bad_matmul_precision_names_the_variable_and_its_values(tmp_path):
    code, err, _ = _console(["eval", "--workdir", tmp_path], env={"JAX_DEFAULT_MATMUL_PRECISION": "bogus"})
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("vae-jax: error: JAX_DEFAULT_MATMUL_PRECISION=bogus") and "highest" in err[0], err


@pytest.mark.parametrize("flags", ["--garbage_flag_xyz", "--xla_force_host_platform_device_count=abc"])
def test_xla_flags_xla_refuses_are_one_line_before_anything_runs(tmp_path, flags):
    code, err, _ = _console(["train", "--workdir", tmp_path / "run", *TINY], env={"XLA_FLAGS": flags})
    assert code == 2 and len(err) == 1 and err[0].startswith("vae-jax: error: XLA_FLAGS="), err
    assert flags.split("=")[0].lstrip("-") in err[0] and "unset XLA_FLAGS" in err[0], err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------- the importance-sampled NLL's cost


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(["train", "--workdir", str(work), *TINY, "--no-figures"]) == 0
    return work


@pytest.mark.parametrize("k", ["1000000000000", "99999999999999999999999"])  # far past a day on any machine
def test_an_iwae_k_past_a_day_is_refused_up_front_with_one_that_fits(trained, tmp_path, capsys, k):
    code, err, _ = run(["eval", "--workdir", trained, "--iwae-k", k, "--out", tmp_path / "e.json"], capsys)
    line = one_line(code, err, f"--iwae-k {k} would take about", "(about 24 h)")
    fit = int(line.split("use --iwae-k ")[1].split()[0])
    assert 1 <= fit < int(k) and not (tmp_path / "e.json").exists()
    code, err, _ = run(["train", "--workdir", tmp_path / "run", *TINY, "--no-figures", "--iwae-k", k], capsys)
    one_line(code, err, f"--iwae-k {k} would take about", "use --iwae-k")
    assert not (tmp_path / "run").exists()  # refused before the first step, and before tensorboardX


def test_eval_says_the_nll_cost_first_and_a_line_per_tenth_off_a_terminal(trained, tmp_path, capsys, monkeypatch):
    code, err, out = run(["eval", "--workdir", trained, "--iwae-k", "30", "--out", tmp_path / "a.json"], capsys)
    assert code == 0 and err == [], err
    assert out.splitlines()[0].startswith("NLL (k=30): 20 test images x 30 samples, about ") and "% done" not in out
    monkeypatch.setattr(evaluate, "PROGRESS_AFTER_SECONDS", 0)  # as for an evaluation of minutes
    args = ["eval", "--workdir", trained, "--iwae-k", "3000", "--json", "--out", tmp_path / "b.json"]
    code, err, out = run(args, capsys)
    assert code == 0 and [line.split(": ")[1].split()[0] for line in err[1:]] == [f"{t}0%" for t in range(1, 10)], err
    assert err[0].startswith("NLL (k=3000): 20 test images x 3000 samples") and json.loads(out)["iwae_k"] == 3000


# ------------------------------------------------------------------------------- files that are not a .pt state_dict


class _Payload:
    def __reduce__(self):  # would run `true` if the file were unpickled without weights_only
        return (os.system, ("true",))


def _bad_files(tmp_path):
    """{name: (path, words of its one line)}: the files `import` and `--init-from` must name."""
    torch = pytest.importorskip("torch")
    import collections
    import pickle
    import zipfile

    good = tmp_path / "good.pt"
    torch.save({"encoder_fc1.weight": torch.zeros(400, 64), "encoder_fc1.bias": torch.zeros(400)}, good)
    files = {}

    def made(name, words):
        files[name] = (tmp_path / name, words)
        return tmp_path / name

    torch.save({"w": torch.zeros(3, 3).to_sparse()}, made("sparse.pt", ["tensor 'w' is sparse_coo", "dense"]))
    torch.save({"a": torch.zeros(2), "x": _Payload()}, made("payload.pt", ["pickled posix.system", "weights-only"]))
    made("raw.pkl", ["a plain pickle"]).write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with zipfile.ZipFile(made("other.zip", ["it is a zip but not a torch file"]), "w") as z:
        z.writestr("hello.txt", "hi")
    made("cut.pt", ["a truncated file"]).write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    storage = torch.zeros(10).untyped_storage()

    class Huge:  # a header declaring 2e9 elements over a storage of 10
        def __reduce__(self):
            typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True)
            return (
                torch._utils._rebuild_tensor_v2,
                (typed, 0, (2_000_000_000,), (1,), False, collections.OrderedDict()),
            )

    torch.save({"w": Huge()}, made("huge.pt", ["declares more elements than the file holds"]))
    nan = {"encoder_fc1.weight": torch.zeros(400, 64), "encoder_fc1.bias": torch.full((400,), float("nan"))}
    torch.save(nan, made("nan.pt", ["nan.pt", "tensor 'encoder_fc1.bias'", "NaN"]))
    os.mkfifo(made("fifo.pt", ["it is a named pipe (FIFO)"]))
    made("folder.pt", ["it is a directory"]).mkdir()
    files["zero"] = (Path("/dev/zero"), ["it is a character device"])
    return files


def test_import_names_what_a_bad_file_is(tmp_path, capsys):
    for name, (path, words) in _bad_files(tmp_path).items():
        code, err, _ = run(["import", path, "--model", "vae", "--workdir", tmp_path / f"w_{name}"], capsys)
        line = one_line(code, err, *words)
        assert "no such file" not in line and "RuntimeError" not in line and "Warning" not in line, (name, line)
        assert not (tmp_path / f"w_{name}").exists()


@pytest.mark.parametrize("name", ["sparse.pt", "nan.pt", "fifo.pt", "zero"])
def test_init_from_a_bad_file_names_it_and_the_tensor(tmp_path, capsys, name):
    path, words = _bad_files(tmp_path)[name]
    code, err, _ = run(["train", "--workdir", tmp_path / "run", *TINY, "--no-figures", "--init-from", path], capsys)
    one_line(code, err, *words)
    assert not (tmp_path / "run").exists()


def test_a_plain_pickle_prints_no_torch_warning(tmp_path):
    path, words = _bad_files(tmp_path)["raw.pkl"]
    code, err, _ = _console(["import", path, "--model", "vae", "--workdir", tmp_path / "w"])
    assert code == 2 and len(err) == 1 and words[0] in err[0], err  # torch's 2-line UserWarning silenced


# ------------------------------------------------------------------------------- compare, experiment, messages


def test_compare_says_when_runs_are_not_comparable(trained, tmp_path, capsys):
    for name, extra in (("ae", ["--model", "ae"]), ("small", ["--latent-dim", "2"])):
        assert run(["train", "--workdir", tmp_path / name, *TINY, "--no-figures", *extra], capsys)[0] == 0
    code, err, out = run(["compare", trained, tmp_path / "ae", tmp_path / "small"], capsys)
    assert code == 0 and err == [], err
    first = out.splitlines()[0]
    assert first.startswith("Not comparable: the runs differ in model (vae in run, ae in ae") and "latent_dim" in first
    code, _, out = run(["compare", trained, trained], capsys)
    assert code == 0 and "Not comparable" not in out


def test_a_failed_experiment_leaves_no_empty_folder_and_data_lines_use_the_separator(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = ["--dataset", "mnist", "--data-dir", tmp_path / "empty"]
    code, err, _ = run(["experiment", "beta-vae", "--workdir", tmp_path / "exp", *args], capsys)
    line = one_line(code, err, "MNIST file not found", " -- pass --data-dir")
    assert "—" not in line and not (tmp_path / "exp").exists()
    (tmp_path / "mine").mkdir()  # the user's folder stays, without the variant's empty folder
    one_line(*run(["experiment", "beta-vae", "--workdir", tmp_path / "mine", *args], capsys)[:2])
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())
    code, err, _ = run(["train", "--workdir", tmp_path / "run", *TINY, *args], capsys)
    assert "—" not in one_line(code, err, "MNIST file not found", " -- ")


DATA = os.environ.get("VAE_DATA_DIR")


@pytest.mark.slow
@pytest.mark.skipif(not DATA or not (Path(DATA) / "mnist").is_dir(), reason="needs VAE_DATA_DIR with mnist/")
def test_prepare_prints_no_absl_warning_nor_progress_bars(tmp_path):
    pytest.importorskip("tensorflow")
    args = ["prepare", "--dataset", "mnist", "--manual-dir", Path(DATA) / "mnist", "--data-dir", tmp_path / "tfds"]
    code, err, out = _console(args)
    assert code == 0 and err == [], err[:3]  # was `WARNING:absl:Variant folder ...` and tfds's bars
    assert out.strip().splitlines()[-1] == f"prepared mnist in {tmp_path / 'tfds'}"
