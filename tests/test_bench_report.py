"""scripts/bench.py's pure parts on synthetic reports (nothing is timed): the busy rule, the markdown's
warnings and target judgements (jax_step, the train path, against the best torch variant), the
repeats floor, the plot, and re-rendering an older JSON."""

import json

import pytest

from scripts import bench

STEPS, BATCH = 10, 8


def epochs(ms_per_step):
    """Five epoch times (seconds) around a median of ms_per_step per step."""
    t = ms_per_step * STEPS / 1e3
    return [t * f for f in (0.97, 1.0, 1.02, 0.99, 1.05)]


def make_report(models, *, busy=False, repeats=5, load_before=(0.1, 0.1, 0.1), foreign=0.0):
    """A report as bench.main writes it; models: {model: {variant: ms/step}}."""
    results = []
    for name, variants in models.items():
        vs = {}
        for v, ms in variants.items():
            vs[v] = {"status": "ok", "times_s": epochs(ms), "warmup_s": 1.0, "rss_delta_mb": 1.0}
            if v.startswith("jax") and name not in bench.MLP_MODELS:
                vs[v]["conv_form"] = "onednn" if v == "jax_step" else "xla"
        results.append({"model": name, "steps": STEPS, "variants": vs, "flops_per_sample_xla": 1e6})
    _, reasons = bench.busy_state(list(load_before), foreign, 2)
    return {
        "batch": BATCH,
        "steps": STEPS,
        "steps_celeba": STEPS,
        "repeats": repeats,
        "num_workers": 0,
        "recon": "bce_logits",
        "machine": {"cpu": "test", "cpus": 2, "peak_gflops": 100.0, "numpy_gflops": 100.0, "jax_gflops": 90.0},
        "load": {"before": list(load_before), "after": [1.0, 1.0, 1.0], "foreign_cpu_cores": foreign},
        "busy": busy,
        "busy_reasons": reasons,
        "results": results,
        "peak_rss_mb": 100.0,
    }


# jax_scan beats every torch variant, jax_step (the train path) does not: the targets must say NO.
SCAN_FAST_STEP_SLOW = {
    "vae": {"torch_loader": 10.0, "torch_tight": 9.0, "torch_compile": 8.0, "jax_step": 7.0, "jax_scan": 4.0},
    "conv_vae28": {"torch_tight": 50.0, "torch_compile": 60.0, "jax_step": 55.0, "jax_step_xla": 70.0},
    "celeba_vae": {"torch_tight": 500.0, "torch_compile": 450.0, "jax_step": 400.0},
}


@pytest.mark.parametrize(
    "load_before,foreign,cpus,busy",
    [
        ([0.3, 2.0, 3.0], 0.1, 2, False),  # only the 1-min average counts
        ([0.6, 0.1, 0.1], 0.0, 2, True),  # > 0.25 x 2 cores
        ([0.6, 0.1, 0.1], 0.0, 4, False),  # < 0.25 x 4 cores
        ([2.1, 0.1, 0.1], None, 8, True),
        ([0.1, 0.1, 0.1], 0.3, 2, True),  # other processes used > 0.25 cores
        ([0.1, 0.1, 0.1], 0.2, 2, False),
        (None, None, 2, False),  # nothing measured: quiet (a report without load data is not judged)
        (None, 0.5, 2, True),
    ],
)
def test_busy_state(load_before, foreign, cpus, busy):
    got, reasons = bench.busy_state(load_before, foreign, cpus)
    assert got is busy
    assert bool(reasons) is busy


def test_busy_reasons_name_the_numbers():
    busy, reasons = bench.busy_state([1.5, 1.0, 1.0], 0.75, 2)
    assert busy and len(reasons) == 2
    assert "1.50" in reasons[0] and "0.50" in reasons[0]
    assert "0.75" in reasons[1]


def test_busy_report_warns_and_judges_nothing():
    report = make_report(SCAN_FAST_STEP_SLOW, busy=True, load_before=(1.9, 1.5, 1.2), foreign=0.6)
    text = bench.markdown(report)
    assert text.splitlines()[0].startswith("**WARNING: MACHINE BUSY")
    assert "1.90" in text.splitlines()[0]
    rows = bench.target_rows(report)
    judged = [r for r in rows if r["target"]]
    assert {r["model"] for r in judged} == {"vae", "conv_vae28", "celeba_vae"}
    assert all(r["met"] == "not judged (machine busy)" for r in judged)
    assert "| yes |" not in text and "| NO |" not in text
    assert text.count("not judged (machine busy)") == 3


def test_quiet_report_judges_jax_step_against_the_best_torch_variant():
    report = make_report(SCAN_FAST_STEP_SLOW)
    assert not any(line.startswith("**WARNING") for line in bench.markdown(report).splitlines())
    rows = {r["model"]: r for r in bench.target_rows(report)}
    # vae: jax_scan (4 ms) beats torch_compile (8 ms) 2x, jax_step (7 ms) only 1.14x: NO
    assert rows["vae"]["target_vs"] == "torch_compile"
    assert rows["vae"]["ratio_torch_compile"] == pytest.approx(8 / 7)
    assert rows["vae"]["met"] == "NO"
    # conv_vae28: jax_step beats torch_compile but not torch_tight, the best torch variant: NO
    assert rows["conv_vae28"]["best_torch"] == "torch_tight"
    assert rows["conv_vae28"]["ratio_torch_compile"] > 1
    assert rows["conv_vae28"]["ratio_best_torch"] == pytest.approx(50 / 55)
    assert rows["conv_vae28"]["ratio_best_torch_min"] == pytest.approx(50 / 55)
    assert rows["conv_vae28"]["jax_step_conv_form"] == "onednn"
    assert rows["conv_vae28"]["met"] == "NO"
    # celeba_vae: jax_step beats both torch variants
    assert rows["celeba_vae"]["best_torch"] == "torch_compile"
    assert rows["celeba_vae"]["ratio_best_torch"] == pytest.approx(450 / 400)
    assert rows["celeba_vae"]["met"] == "yes"
    text = bench.markdown(report)
    assert "jax_step (vae-jax train)" in text
    assert text.count("| NO |") == 2 and text.count("| yes |") == 1


def test_variant_stats_min_median_spread():
    s = bench.variant_stats([1.0, 2.0, 1.5, 1.2, 1.1], steps=10, batch=8)
    assert s["ms_per_step_min"] == pytest.approx(100.0)
    assert s["ms_per_step"] == pytest.approx(120.0)
    assert s["samples_per_s"] == pytest.approx(80 / 1.2)
    assert s["samples_per_s_best"] == pytest.approx(80.0)
    assert s["spread_pct"] == pytest.approx(100 * 1.0 / 1.2)


def test_too_few_repeats_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--repeats", "2", "--models", "vae"])
    assert e.value.code == 2
    assert "--allow-few-repeats" in capsys.readouterr().err


def test_too_few_repeats_report_judges_nothing():
    report = make_report(SCAN_FAST_STEP_SLOW, repeats=2)
    text = bench.markdown(report)
    assert "too few repeats to judge" in text.splitlines()[0]
    assert all(r["met"] == "not judged (too few repeats)" for r in bench.target_rows(report) if r["target"])


def test_plot_writes_a_png(tmp_path):
    report = make_report(SCAN_FAST_STEP_SLOW, busy=True, load_before=(1.9, 1.5, 1.2), foreign=0.6)
    report["results"][0]["variants"]["torch_loader"] = {"status": "error", "error": "RuntimeError: x"}
    path = tmp_path / "bench.png"
    bench.plot(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_from_json_renders_an_older_report(tmp_path, capsys):
    report = make_report(SCAN_FAST_STEP_SLOW)
    for key in ("load", "busy", "busy_reasons", "peak_rss_mb"):  # as bench.py wrote them before
        del report[key]
    del report["machine"]["numpy_gflops"]
    for res in report["results"]:
        for r in res["variants"].values():
            r.pop("conv_form", None)
    src, md = tmp_path / "old.json", tmp_path / "old.md"
    src.write_text(json.dumps(report))
    bench.main(["--from-json", str(src), "--out-md", str(md), "--out-png", str(tmp_path / "old.png")])
    text = md.read_text()
    assert "no load record" in text and "not judged (load not recorded)" in text
    assert "numpy - GFLOP/s" in text
    assert (tmp_path / "old.png").exists()
    capsys.readouterr()
