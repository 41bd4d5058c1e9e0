"""The chapter's five exercises (`vae-jax experiment NAME`) at --size reduced on the embedded digits:
every experiment writes its figures and a table with the expected rows (CSV and markdown agree)."""

import csv
import json

import jax
import pytest

from vae_jax import cli, experiments


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Many sub-runs compile the same steps: a persistent cache keeps the file fast."""
    old = {k: getattr(jax.config, k) for k in ("jax_compilation_cache_dir",
                                                "jax_persistent_cache_min_compile_time_secs",
                                                "jax_persistent_cache_min_entry_size_bytes")}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


def _table(workdir):
    with open(workdir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    md = (workdir / "results.md").read_text().splitlines()
    body = [l for l in md if l.startswith("| ") and not l.startswith("|---")][1:]
    assert len(body) == len(rows), "results.md and results.csv must have the same rows"
    return rows


def _pngs(workdir, names):
    for name in names:
        data = (workdir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name


def _run(name, tmp_path):
    workdir = tmp_path / name
    summary = experiments.run_experiment(name, workdir, dataset="digits", size="reduced", log=lambda s: None)
    assert json.loads((workdir / "summary.json").read_text())["experiment"] == name
    assert summary["statement"] and summary["statement"] in (workdir / "results.md").read_text()
    return workdir, _table(workdir)


def test_beta_vae(tmp_path):
    workdir, rows = _run("beta-vae", tmp_path)
    assert [float(r["beta"]) for r in rows] == list(experiments.BETAS)
    for r in rows:
        assert 0 <= int(r["active_units"]) <= int(r["latent_dim"])
        assert float(r["neg_elbo"]) == pytest.approx(float(r["test_recon"]) + float(r["test_kl"]))
    _pngs(workdir, ["kl_per_dim.png", "recon_vs_kl.png"] + [f"traversal_beta{b:g}.png" for b in experiments.BETAS])
    for b in experiments.BETAS:
        assert (workdir / f"beta{b:g}" / "metrics.jsonl").exists()


def test_cvae(tmp_path):
    workdir, rows = _run("cvae", tmp_path)
    variants = experiments.CVAE_VARIANTS
    assert [r["variant"] for r in rows] == [name for name, _, _ in variants]
    # the chapter's 20-d row stays for comparison; the others change only latent size / beta
    assert (int(rows[0]["latent_dim"]), float(rows[0]["beta"])) == (20, 1.0)
    assert any(int(r["latent_dim"]) < 20 or float(r["beta"]) > 1.0 for r in rows[1:])
    summary = json.loads((workdir / "summary.json").read_text())
    with open(workdir / "per_class.csv", newline="") as f:
        per_class = list(csv.DictReader(f))
    assert [r["variant"] for r in per_class] == [r["variant"] for r in rows]
    for (name, overrides, _), r, pc in zip(variants, rows, per_class):
        assert int(r["latent_dim"]) == overrides["latent_dim"] and float(r["beta"]) == overrides["beta"]
        acc = float(r["classified_as_requested"])
        assert 0.0 <= acc <= 1.0 and int(r["n"]) == 10 * experiments.SIZES["reduced"]["per_class"]
        by_class = [float(pc[str(c)]) for c in range(10)]
        assert acc == pytest.approx(sum(by_class) / 10)  # equal samples per class
        assert float(r["worst_class_acc"]) == pytest.approx(min(by_class))
        assert (name in summary["meets_target"]) == (acc >= experiments.CVAE_TARGET)
        assert summary["final"][name]["test_kl"] == pytest.approx(float(r["test_kl"]))
        _pngs(workdir, [f"class_grid_{name}.png", f"class_interpolation_{name}.png"])
    assert summary["classifier_test_accuracy"] > 0.3  # the classifier learned something


def test_kl_annealing(tmp_path):
    workdir, rows = _run("kl-annealing", tmp_path)
    assert [r["variant"] for r in rows] == ["none", "anneal E=2"]
    none, anneal = rows
    # epoch 1 runs with KL weight 1/2: the logged loss is not the ELBO, the table's columns are
    assert float(anneal["final_neg_elbo"]) == pytest.approx(float(anneal["final_test_recon"]) + float(anneal["final_test_kl"]))
    assert float(none["epoch1_neg_elbo"]) != float(anneal["epoch1_neg_elbo"])
    _pngs(workdir, ["convergence.png"])


def test_mse_vs_bce_through_the_cli(tmp_path):
    workdir = tmp_path / "mse-vs-bce"
    assert cli.main(["experiment", "mse-vs-bce", "--workdir", str(workdir), "--dataset", "digits",
                     "--size", "reduced"]) == 0
    rows = _table(workdir)
    assert [(r["loss"], r["trained_on"]) for r in rows] == [("bce", "bce_logits"), ("mse", "gaussian")]
    for r in rows:
        assert float(r["test_bce_nats"]) > 0 and float(r["test_sse"]) > 0
    _pngs(workdir, ["reconstructions.png", "convergence.png"])


def test_latent_sweep(tmp_path):
    workdir, rows = _run("latent-sweep", tmp_path)
    assert [int(r["latent_dim"]) for r in rows] == list(experiments.LATENT_DIMS)
    for r in rows:
        assert int(r["active_units"]) <= int(r["latent_dim"])
        assert float(r["iwae_nll"]) > 0
    _pngs(workdir, ["dims_vs_performance.png"] + [f"samples_latent{d}.png" for d in experiments.LATENT_DIMS])


def test_unknown_experiment_is_one_line_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["experiment", "nope", "--workdir", "x"])
    assert "invalid choice" in capsys.readouterr().err
