"""Reliability, round four (issue 29, items 1-5): vae-jax's own folders are its own, a resume is exact
or refused, checkpoints carry their checksums, import names what it guessed, the environment that
changes numbers is part of the record. Every case goes through the CLI."""

import json
import shutil
import subprocess
from pathlib import Path

import jax
import pytest

from tests.helpers import TINY, console, one_line, run, snapshot
from vae_jax import cli, files

pytestmark = pytest.mark.slow  # end-to-end runs: `make test-fast` leaves this module out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of 2 epochs of 2 steps: checkpoints 2 and 4."""
    work = tmp_path_factory.mktemp("r4") / "run"
    assert cli.main(["train", "--workdir", str(work), *TINY, "--epochs", "2", "--no-figures"]) == 0
    return work


def copy_run(trained, tmp_path, name="run"):
    shutil.copytree(trained, tmp_path / name, symlinks=True)
    return tmp_path / name


def _rows(work):
    return [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]


def _edit_config(work, **changes):
    cfg = json.loads((work / "config.json").read_text())
    for k, v in changes.items():
        if v is KeyError:
            del cfg[k]
        else:
            cfg[k] = v
    (work / "config.json").write_text(json.dumps(cfg))


# ----------------------------------------------------------------------- 1. vae-jax's own folders


@pytest.mark.parametrize(
    "args",
    [
        ["export", "--out", "{run}/checkpoints/2/x.pt"],
        ["eval", "--iwae-k", "2", "--out", "{run}/checkpoints/2/x.json"],
        ["plot", "--out", "{run}/tensorboard/p"],
        ["export", "--out", "{run}/figures/x.pt"],
    ],
)
def test_no_output_inside_a_folder_vae_jax_owns(trained, tmp_path, capsys, args):
    work = copy_run(trained, tmp_path)
    (work / "figures").mkdir()
    before = snapshot(work)
    args = [a.format(run=work) for a in args]
    code, err, _ = run([args[0], "--workdir", work, *args[1:]], capsys)
    one_line(code, err, "a folder vae-jax owns", "choose a path outside it")
    assert snapshot(work) == before


def test_a_run_or_an_experiment_inside_an_owned_folder_is_refused(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path)
    before = snapshot(work)
    one_line(*run(["train", "--workdir", work / "checkpoints" / "mine", *TINY], capsys)[:2], "checkpoints/")
    one_line(*run(["experiment", "beta-vae", "--workdir", work / "tensorboard" / "e"], capsys)[:2], "tensorboard/")
    assert snapshot(work) == before


def test_experiment_refuses_a_run_and_a_folder_of_the_users(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path)
    before = snapshot(work)
    one_line(*run(["experiment", "beta-vae", "--workdir", work], capsys)[:2], "is a run directory")
    assert snapshot(work) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's")
    one_line(*run(["experiment", "beta-vae", "--workdir", mine], capsys)[:2], "not experiment beta-vae's")
    assert snapshot(mine) == {"notes.txt": b"the user's"}
    other = tmp_path / "other"  # another experiment's folder is not this one's either
    other.mkdir()
    (other / ".vae-jax-experiment").write_text("cvae\n")
    one_line(*run(["experiment", "beta-vae", "--workdir", other], capsys)[:2], "not experiment beta-vae's")


@pytest.mark.timeout(300)
def test_two_imports_into_one_new_workdir_one_wins_the_other_is_refused(trained, tmp_path, capsys):
    pt = tmp_path / "vae.pt"
    assert run(["export", "--workdir", trained, "--out", pt], capsys)[0] == 0
    target = tmp_path / "w"
    args = ["import", pt, "--workdir", target, "--dataset", "digits", "--test-limit", "20"]
    procs = [subprocess.Popen(console(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outputs = [p.communicate(timeout=280) for p in procs]
    results = [(p.returncode, err.strip().splitlines()) for p, (_, err) in zip(procs, outputs, strict=True)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    one_line(2, loser[-1:], str(target))
    assert "in use by another vae-jax process" in loser[-1] or "not empty" in loser[-1] or "holds" in loser[-1]
    assert json.loads((target / "import.json").read_text())["parity"]["passed"]
    assert sorted(p.name for p in (target / "checkpoints").iterdir() if not p.name.startswith(".")) == ["0"]


# ------------------------------------------------------------------------ 2. resume: exact or refused


@pytest.mark.parametrize("leave", ["nothing", "tmp"])
def test_resume_without_a_checkpoint_is_refused_and_changes_nothing(trained, tmp_path, capsys, leave):
    work = copy_run(trained, tmp_path)
    shutil.rmtree(work / "checkpoints")
    (work / "checkpoints").mkdir()
    if leave == "tmp":
        (work / "checkpoints" / "4.orbax-checkpoint-tmp-17").mkdir()
    before = snapshot(work)
    code, err, _ = run(["train", "--workdir", work, "--resume", "--epochs", "3"], capsys)
    line = one_line(code, err, "cannot resume", "--restart", "nothing was changed")
    assert ("unfinished 4.orbax-checkpoint-tmp-17" if leave == "tmp" else "checkpoints/ is empty") in line
    assert snapshot(work) == before


def test_a_cut_short_last_row_is_recomputed_from_the_checkpoint(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path)
    rows = _rows(work)
    text = (work / "metrics.jsonl").read_text()
    (work / "metrics.jsonl").write_text(text[: len(text) - 30])  # epoch 2's line cut short
    code, _, out = run(["train", "--workdir", work, "--resume", "--epochs", "3", "--no-figures"], capsys)
    assert code == 0 and "the row of epoch 2 was cut short; recomputed" in out
    after = _rows(work)
    assert [r["epoch"] for r in after] == [1, 2, 3] and after[0] == rows[0]
    kept = ("train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl", "kl_weight")
    assert {k: after[1][k] for k in kept} == {k: rows[1][k] for k in kept}  # bit for bit
    assert after[1]["train_time_s"] is None and after[1]["restored_from_step"] == 4
    assert "done: 6 steps (3 epochs)" in out
    assert json.loads((work / "summary.json").read_text())["epochs"] == 3


def test_a_row_lost_before_the_last_is_refused(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path)
    lines = (work / "metrics.jsonl").read_text().splitlines()
    (work / "metrics.jsonl").write_text(lines[1] + "\n")  # epoch 1's row gone
    before = snapshot(work)
    code, err, _ = run(["train", "--workdir", work, "--resume", "--epochs", "3"], capsys)
    one_line(code, err, "no row for epoch 1", "nothing was changed")
    assert snapshot(work) == before


@pytest.mark.parametrize(
    "change, words",
    [
        ({"latent_dim": 20.5}, ["'latent_dim' is 20.5, not an integer"]),
        ({"epochs": "ten"}, ["'epochs' is \"ten\", not an integer"]),
        ({"beta": KeyError}, ["has no 'beta'"]),
        ({"recon": KeyError}, ["has no 'recon'"]),
        ({"beta": float("nan")}, ["'beta' is NaN, not a finite number"]),
        ({"batch_size": 0}, ["'batch_size' is 0, not a positive integer"]),
    ],
)
def test_config_json_is_checked_against_the_schema(trained, tmp_path, capsys, change, words):
    work = copy_run(trained, tmp_path)
    _edit_config(work, **change)
    before = snapshot(work)
    for args in (["train", "--workdir", work, "--resume", "--epochs", "3"], ["eval", "--workdir", work]):
        code, err, _ = run(args, capsys)
        one_line(code, err, *words, "restore", "config.json")
    assert snapshot(work) == before


def test_epochs_below_what_ran_are_refused_and_a_finished_run_is_not_rewritten(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path)
    before = snapshot(work)
    code, err, _ = run(["train", "--workdir", work, "--resume", "--epochs", "1"], capsys)
    one_line(code, err, "trained 4 steps (2 epochs), more than --epochs 1", "--epochs 2 or more")
    assert snapshot(work) == before
    code, err, out = run(["train", "--workdir", work, "--resume"], capsys)
    assert code == 0 and "nothing to train" in out, (err, out)
    assert snapshot(work) == before


# ------------------------------------------------------------------------------ 3. checksums


def _flip_a_byte_of_the_largest_array(step_dir: Path) -> None:
    largest = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 1
    largest.write_bytes(bytes(data))


def test_checkpoints_carry_checksums_and_a_damaged_one_names_the_last_good(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path)
    for step in ("2", "4"):
        sums = json.loads((work / "checkpoints" / step / files.CHECKSUMS).read_text())
        assert sums and all(len(v) == 64 for v in sums.values())
    _flip_a_byte_of_the_largest_array(work / "checkpoints" / "4")
    before = snapshot(work)
    for args in (
        ["eval", "--workdir", work, "--iwae-k", "2"],
        ["train", "--workdir", work, "--resume", "--epochs", "3"],
    ):
        code, err, _ = run(args, capsys)
        one_line(code, err, "checkpoint 4 in", "is damaged", "the last good checkpoint is step 2", "--step 2")
    assert snapshot(work) == before
    code, _, out = run(["eval", "--workdir", work, "--iwae-k", "2", "--step", "2", "--json"], capsys)
    assert code == 0 and json.loads(out.splitlines()[-1])["step"] == 2


def test_a_damaged_only_checkpoint_says_none_is_kept(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path)
    shutil.rmtree(work / "checkpoints" / "2")
    _flip_a_byte_of_the_largest_array(work / "checkpoints" / "4")
    code, err, _ = run(["export", "--workdir", work, "--out", tmp_path / "x.pt"], capsys)
    one_line(code, err, "checkpoint 4 in", "no earlier checkpoint is kept")
    assert not (tmp_path / "x.pt").exists()


# ------------------------------------------------------------------ 4. import names what it guessed


def _renamed_pt(trained, tmp_path, capsys, renames: dict) -> Path:
    """The run's export in the chapter class's order, its layers renamed (a layout of the user's own)."""
    import torch

    pt = tmp_path / "chapter.pt"
    assert run(["export", "--workdir", trained, "--out", pt], capsys)[0] == 0
    sd = torch.load(pt, weights_only=True)
    layers = ("encoder_fc1", "encoder_fc_mu", "encoder_fc_logvar", "decoder_fc1", "decoder_fc2")
    mine = {f"{renames.get(n, n)}.{p}": sd[f"{n}.{p}"] for n in layers for p in ("weight", "bias")}
    torch.save(mine, tmp_path / "mine.pt")
    return tmp_path / "mine.pt"


def test_rename_of_a_key_the_file_lacks_is_refused(trained, tmp_path, capsys):
    pt = _renamed_pt(trained, tmp_path, capsys, {})
    args = ["import", pt, "--model", "vae", "--workdir", tmp_path / "w", "--rename", "nosuch=encoder_fc1"]
    code, err, _ = run(args, capsys)
    one_line(code, err, "--rename nosuch=encoder_fc1", "has no key 'nosuch'", "encoder_fc1")
    assert not (tmp_path / "w").exists()


def test_a_mapping_by_order_that_contradicts_the_names_is_refused_unless_trusted(trained, tmp_path, capsys):
    # the file lists its heads as logvar_head then mu_head, holding mu's and logvar's weights in that order
    pt = _renamed_pt(trained, tmp_path, capsys, {"encoder_fc_mu": "logvar_head", "encoder_fc_logvar": "mu_head"})
    args = ["import", pt, "--model", "vae", "--test-limit", "20"]
    code, err, _ = run([*args, "--workdir", tmp_path / "w"], capsys)
    one_line(code, err, "logvar_head.weight -> encoder_fc_mu.weight", "--rename", "--trust-order")
    assert not (tmp_path / "w").exists()
    assert run([*args, "--workdir", tmp_path / "t", "--trust-order"], capsys)[0] == 0
    assert json.loads((tmp_path / "t" / "import.json").read_text())["mapping"]


def test_eval_and_export_record_the_step_they_read_in_standard_json(trained, tmp_path, capsys):
    work = copy_run(trained, tmp_path)
    assert run(["eval", "--workdir", work, "--iwae-k", "2", "--out", tmp_path / "e.json"], capsys)[0] == 0
    assert run(["export", "--workdir", work, "--out", tmp_path / "x.pt"], capsys)[0] == 0

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))

    assert strict((tmp_path / "e.json").read_text())["step"] == 4
    assert strict((tmp_path / "x.json").read_text())["step"] == 4
    assert strict(files.json_text({"a": float("nan"), "b": [float("inf"), 1.5]})) == {"a": None, "b": [None, 1.5]}


# ---------------------------------------------------------------- 5. the environment in the record


def test_the_matmul_precision_is_recorded_and_a_resume_under_another_is_refused(tmp_path, capsys):
    work = tmp_path / "run"
    with jax.default_matmul_precision("highest"):
        assert run(["train", "--workdir", work, *TINY, "--no-figures"], capsys)[0] == 0
    env = json.loads((work / "config.json").read_text())["environment"]
    assert env == {"jax_enable_x64": False, "jax_default_matmul_precision": "highest", "xla_flags": []}
    before = snapshot(work)
    code, err, _ = run(["train", "--workdir", work, "--resume", "--epochs", "2"], capsys)
    one_line(code, err, 'JAX_DEFAULT_MATMUL_PRECISION: the run had "highest"', "this process has null")
    assert snapshot(work) == before
    with jax.default_matmul_precision("highest"):
        assert run(["train", "--workdir", work, "--resume", "--epochs", "2", "--no-figures"], capsys)[0] == 0
