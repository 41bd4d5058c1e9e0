"""`vae-jax compare`: JAX and PyTorch runs on one figure and in one table."""

import json

import pytest

from scripts import train_torch
from tests.helpers import one_line, run
from vae_jax import cli, compare
from vae_jax.checkpoints import read_metrics

TINY = ["--train-limit", "100", "--test-limit", "20", "--batch-size", "50"]


@pytest.fixture(scope="module")
def torch_runs(tmp_path_factory):
    """Two PyTorch runs of the chapter's loop (seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("torch")
    for seed, epochs in ((0, 2), (1, 3)):
        args = [*TINY, "--epochs", epochs, "--seed", seed, "--num-workers", "0", "--workdir", root / f"t{seed}"]
        assert train_torch.main([str(a) for a in args]) == 0
    return root / "t0", root / "t1"


def _rows(md, heading):
    """{run label: cells} of the markdown table under `heading`."""
    part = md.split(heading, 1)[1].split("\n### ", 1)[0]
    lines = [line for line in part.splitlines() if line.startswith("| ") and not line.startswith("| run ")]
    return {c[0]: c[1:] for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines)}


@pytest.mark.slow  # a JAX training run (compiles)
def test_jax_and_torch_runs(tmp_path, capsys, torch_runs):
    jax_dir = tmp_path / "jax"
    assert cli.main(["train", *TINY, "--epochs", "2", "--no-progress", "--no-figures", "--workdir", jax_dir]) == 0
    out = tmp_path / "cmp"
    code, err, printed = run(["compare", jax_dir, torch_runs[0], "--out", out], capsys)
    assert code == 0, err
    assert (out / "compare.png").stat().st_size > 20_000
    md = (out / "compare.md").read_text()
    assert printed.startswith(md.split("\n\n", 2)[2])  # the table printed is the one written
    runs = _rows(md, "### Runs")
    assert runs["jax"][0] == "jax" and runs["t0"][0] == "torch" and runs["jax"][-1] == runs["t0"][-1] == "100"
    last = _rows(md, "### Last epoch")
    diff = _rows(md, "### Differences from jax")
    assert set(last) == {"jax", "t0"} and set(diff) == {"t0"}
    jax_final, torch_final = read_metrics(jax_dir)[-1], read_metrics(torch_runs[0])[-1]
    assert float(last["jax"][4]) == pytest.approx(jax_final["test_loss"], abs=1e-4)
    assert float(diff["t0"][3]) == pytest.approx(torch_final["test_loss"] - jax_final["test_loss"], abs=2e-4)
    assert diff["t0"][-1].startswith("x") and float(diff["t0"][-1][1:]) > 0  # throughput ratio


def test_torch_runs_table_and_figure(tmp_path, torch_runs):
    md = compare.compare_runs(torch_runs, tmp_path / "cmp")
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 20_000
    last, diff = _rows(md, "### Last epoch"), _rows(md, "### Differences from t0")
    assert [last["t0"][0], last["t1"][0]] == ["2", "3"]  # each run's own last epoch
    a, b = read_metrics(torch_runs[0])[-1], read_metrics(torch_runs[1])[-1]
    for i, key in enumerate(compare.FINAL):
        assert float(diff["t1"][i]) == pytest.approx(b[key] - a[key], abs=2e-4), key
    # throughput: training images per second of the median epoch time after the first (epochs 2, 3)
    times = [r["train_time_s"] for r in read_metrics(torch_runs[1])]
    r = compare.load_run(torch_runs[1])
    assert r.num_train == 100 and r.throughput() == pytest.approx(100 / ((times[1] + times[2]) / 2))
    assert float(last["t1"][-1]) == pytest.approx(r.throughput(), abs=0.5)


def test_same_folder_name_twice_is_told_apart(tmp_path, torch_runs):
    md = compare.compare_runs([torch_runs[0], torch_runs[0]])
    assert set(_rows(md, "### Last epoch")) == {str(torch_runs[0])}


def test_missing_and_empty_runs_are_one_line(tmp_path, capsys, torch_runs):
    one_line(*run(["compare", torch_runs[0], tmp_path / "nowhere"], capsys)[:2], "no run at", "nowhere")
    (tmp_path / "empty").mkdir()
    one_line(*run(["compare", tmp_path / "empty"], capsys)[:2], "no finished epoch")
    (tmp_path / "file").write_text("x")
    one_line(*run(["compare", tmp_path / "file"], capsys)[:2], "not a folder")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": "?"}\n{"epoch": 2}\n')
    one_line(*run(["compare", tmp_path / "bad"], capsys)[:2], "train_loss")
    code, err, _ = run(["compare"], capsys)
    assert code == 2 and len(err) == 1 and "RUN" in err[0]


def test_out_is_never_overwritten(tmp_path, capsys, torch_runs):
    (tmp_path / "taken").mkdir()
    one_line(*run(["compare", *torch_runs, "--out", tmp_path / "taken"], capsys)[:2], "already exists")
    assert list((tmp_path / "taken").iterdir()) == []
    one_line(*run(["compare", *torch_runs, "--out", tmp_path / "no" / "such"], capsys)[:2], "does not exist")
    code, err, _ = run(["compare", *torch_runs, "--out", tmp_path / "new"], capsys)
    assert code == 0 and not err, err
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [".vae-jax-files", "compare.md", "compare.png"]
    assert json.loads((torch_runs[0] / "config.json").read_text())["framework"] == "torch"


def _fake_run(folder, framework, seed, test_loss):
    """A run directory as compare reads it: one epoch's metrics and the config's setting."""
    folder.mkdir(parents=True)
    row = {"epoch": 1, "train_loss": test_loss + 1, "test_loss": test_loss, "train_time_s": 1.0}
    (folder / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    config = {"model": "vae", "dataset": "digits", "seed": seed, "framework": framework, "train_limit": 10}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    "torch_losses, verdict",
    [((101.0, 103.0, 102.0), "may be seed noise"), ((110.0, 110.5, 111.0), "unlikely to be seed noise")],
)
def test_seeds_per_framework_show_their_spread_and_whether_the_gap_is_real(tmp_path, torch_losses, verdict):
    jax_runs = [_fake_run(tmp_path / f"j{s}", "jax", s, v) for s, v in enumerate((100.0, 102.0, 104.0))]
    torch_runs = [_fake_run(tmp_path / f"t{s}", "torch", s, v) for s, v in enumerate(torch_losses)]
    md = compare.compare_runs([*jax_runs, *torch_runs])
    spread = _rows(md, "### Seed spread")
    assert spread["jax"][:3] == ["3", "102.0000", "2.0000"]
    assert float(spread["torch"][1]) == pytest.approx(sum(torch_losses) / 3, abs=1e-4)
    gap = sum(torch_losses) / 3 - 102.0
    assert f"torch - jax: {gap:+.4f} nats" in md and verdict in md


def test_one_run_per_framework_shows_no_seed_spread(tmp_path):
    runs = [_fake_run(tmp_path / "j", "jax", 0, 100.0), _fake_run(tmp_path / "t", "torch", 0, 101.0)]
    assert "Seed spread" not in compare.compare_runs(runs)
