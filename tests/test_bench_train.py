"""scripts/bench_train.py (the train-path benchmark): its arithmetic and target judgements on synthetic
reports (nothing is timed), its command line, and one tiny end-to-end run (slow)."""

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scripts import bench, bench_train, make_celeba_like

ROOT = Path(__file__).resolve().parents[1]
FLOPS = {"vae": 3e6, "conv_vae28": 3e7, "celeba_vae": 3e8}


def make_report(models, *, busy=False, repeats=5, peak=200.0, load_before=(0.1, 0.1, 0.1)):
    """A report as bench_train.main writes it; models: {model: {variant: [samples/s of each repeat] or None
    (failed)}}; each repeat is 2 epochs of 1000 images."""
    results = []
    for name, variants in models.items():
        vs = {}
        for v, rates in variants.items():
            if rates is None:
                vs[v] = {"status": "error", "error": "RuntimeError: boom", "repeat_samples_per_s": []}
                continue
            times = [[1000 / r, 1000 / r] for r in rates]
            vs[v] = {"status": "ok", "repeat_samples_per_s": list(rates), "epoch_times_s": times, "warmup_s": 2.0}
        results.append({"model": name, "images": 1000, "variants": vs, "flops_per_sample_xla": FLOPS[name]})
    return {
        "batch": 128,
        "epochs": 3,
        "torch_epochs": 2,
        "repeats": repeats,
        "recon": "bce_logits",
        "machine": {"cpu": "test", "cpus": 2, "peak_gflops": peak, "numpy_gflops": peak, "jax_gflops": peak},
        "load": {"before": list(load_before), "after": [1.0] * 3, "foreign_cpu_cores": 0.0},
        "busy": busy,
        "busy_reasons": ["test"] if busy else [],
        "results": results,
        "peak_rss_mb": 100.0,
    }


def five(x):
    return [x * f for f in (0.98, 1.0, 1.01, 0.99, 1.03)]


# vae: 2.0x torch_compile and 3e6 x 40000 / 200e9 = 60% of the limit (both at the bound: met);
# conv_vae28: 3000 / 2100 = 1.43x (< 1.5x); celeba_vae: 360 / 320 = 1.125x (>= 1.1x).
MODELS = {
    "vae": {
        "jax_train": five(40000),
        "torch_loader": five(15000),
        "torch_tight": five(18000),
        "torch_compile": five(20000),
    },
    "conv_vae28": {"jax_train": five(3000), "torch_tight": five(2100), "torch_compile": five(2000)},
    "celeba_vae": {"jax_train": five(360), "torch_tight": five(300), "torch_compile": five(320)},
}


def rows_of(report):
    return {r["model"]: r for r in bench_train.target_rows(report)}


def test_timed_epochs_skip_the_first_and_sort_by_epoch():
    text = "\n".join(json.dumps({"epoch": e, "train_time_s": t}) for e, t in ((2, 1.5), (1, 9.0), (3, 2.5))) + "\n"
    assert bench_train.timed_epochs(text) == [1.5, 2.5]
    assert bench_train.timed_epochs(text, skip=0) == [9.0, 1.5, 2.5]
    with pytest.raises(ValueError, match="none left"):
        bench_train.timed_epochs(json.dumps({"epoch": 1, "train_time_s": 3.0}))


def test_samples_per_s_and_summary():
    assert bench_train.samples_per_s([0.5, 1.5], 1000) == pytest.approx(1000.0)  # 2000 images in 2 s
    s = bench_train.summarize([100.0, 200.0, 150.0])
    assert s == pytest.approx(
        {"samples_per_s": 150.0, "samples_per_s_min": 100.0, "samples_per_s_max": 200.0, "spread_pct": 100 * 100 / 150}
    )
    assert bench_train.summarize([]) == {}


def test_fraction_of_limit():
    # 3.3 MFLOP/sample x 30000 samples/s = 99 GFLOP/s of a 198 GFLOP/s peak
    assert bench_train.fraction_of_limit(3.3e6, 30000, 198.0) == pytest.approx(0.5)
    assert bench_train.fraction_of_limit(float("nan"), 30000, 198.0) is None
    assert bench_train.fraction_of_limit(3.3e6, None, 198.0) is None
    assert bench_train.fraction_of_limit(3.3e6, 30000, 0) is None
    # the analytic count stands in where XLA's cost analysis failed
    assert bench_train.flops_of({"flops_per_sample_xla": float("nan"), "flops_per_sample_analytic": 2e6}) == 2e6


def test_targets_on_a_quiet_run():
    rows = rows_of(make_report(MODELS))
    vae = rows["vae"]
    assert vae["best_torch"] == "torch_compile"
    assert vae["ratio"] == pytest.approx(2.0) and vae["fraction_of_limit"] == pytest.approx(0.6)
    assert vae["met"] == "yes"
    conv = rows["conv_vae28"]
    assert conv["best_torch"] == "torch_tight" and conv["ratio"] == pytest.approx(3000 / 2100)
    assert conv["met"].startswith("NO") and "1.43x < 1.5x" in conv["met"]
    assert rows["celeba_vae"]["ratio"] == pytest.approx(1.125) and rows["celeba_vae"]["met"] == "yes"


def test_the_mlp_target_needs_the_fraction_of_the_limit_too():
    report = make_report(MODELS, peak=250.0)  # 120 GFLOP/s of 250: 48%, while the ratio stays 2.0x
    vae = rows_of(report)["vae"]
    assert vae["ratio"] == pytest.approx(2.0)
    assert vae["met"] == "NO (48% < 60% of the limit)"
    slow = {"vae": {**MODELS["vae"], "jax_train": five(30000)}}  # 1.5x, and 45% of 200
    assert rows_of(make_report(slow))["vae"]["met"] == "NO (1.50x < 1.8x; 45% < 60% of the limit)"
    no_peak = make_report(MODELS)
    no_peak["machine"]["peak_gflops"] = None
    assert rows_of(no_peak)["vae"]["met"] == "not judged (no fraction_of_limit)"
    assert rows_of(no_peak)["conv_vae28"]["met"].startswith("NO")  # needs no peak


def test_best_torch_is_the_highest_median_and_failed_variants_do_not_count():
    models = {
        "conv_vae28": {
            "jax_train": five(3000),
            "torch_tight": [1000, 1000, 1000, 1000, 9000],  # one fast outlier: median 1000
            "torch_compile": five(1900),
            "torch_loader": None,  # failed
        }
    }
    row = rows_of(make_report(models))["conv_vae28"]
    assert row["best_torch"] == "torch_compile" and row["met"] == "yes"
    text = bench_train.markdown(make_report(models))
    assert "| conv_vae28 | 1000 | torch_loader | failed: RuntimeError: boom |" in text


@pytest.mark.parametrize(
    "kwargs,why",
    [
        ({"busy": True}, "machine busy"),
        ({"repeats": 3}, "too few repeats"),
        ({"busy": None}, "load not recorded"),
    ],
)
def test_nothing_is_judged_when_busy_short_or_unrecorded(kwargs, why):
    report = make_report(MODELS, **kwargs)
    for row in bench_train.target_rows(report):
        assert row["met"].startswith("not judged") and why in row["met"], row
    text = bench_train.markdown(report)
    assert "| yes |" not in text and "NO" not in text.split("Speed targets")[1]


def test_markdown_names_the_train_path_and_the_fraction():
    text = bench_train.markdown(make_report(MODELS))
    assert "`vae-jax train`" in text and "WARNING" not in text
    # the vae rows: jax_train 40000 samples/s = 120 GFLOP/s = 60.0% of 200; torch_compile 20000 = 30.0%
    assert "| vae | 1000 | jax_train (`vae-jax train`) | 40000 |" in text
    assert "| 2.00x | 120.0 | 60.0 |" in text and "| 1.00x | 60.0 | 30.0 |" in text
    assert (
        "| vae | 40000 | torch_compile | 20000 | 2.00x (2.00x) | 60.0 | >= 1.8x best torch, >= 60% of the limit" in text
    )
    assert "WARNING: MACHINE BUSY" in bench_train.markdown(make_report(MODELS, busy=True))


def test_from_json_renders_the_same_table(tmp_path, capsys):
    report = make_report(MODELS)
    src, md = tmp_path / "r.json", tmp_path / "r.md"
    src.write_text(json.dumps(report))
    bench_train.main(["--from-json", str(src), "--out-md", str(md)])
    assert md.read_text() == bench_train.markdown(report) + "\n"
    assert "Speed targets" in capsys.readouterr().out


def test_celeba_folder_size():
    for n in (1, 64, 2560, 12800):
        num = bench_train.celeba_num_for(n)
        assert make_celeba_like.split_sizes(num)[0] >= n
        assert num == 3 or make_celeba_like.split_sizes(num - 1)[0] < n


def test_the_cli_command_is_the_train_path(tmp_path):
    a = bench_train.parse_args(["--data-dir", "D", "--train-args", "--seed 3", "--epochs", "4"])
    cmd = bench_train.cli_command("celeba_vae", "C", 2560, a, tmp_path / "w")
    assert cmd[:4] == [sys.executable, "-m", "vae_jax.cli", "train"]
    pairs = dict(zip(cmd[4::2], cmd[5::2], strict=False))
    assert pairs["--model"] == "celeba_vae" and pairs["--dataset"] == "celeb_a" and pairs["--data-dir"] == "C"
    assert pairs["--train-limit"] == "2560" and pairs["--epochs"] == "4" and pairs["--batch-size"] == "128"
    assert "--no-figures" in cmd and cmd[-2:] == ["--seed", "3"]
    assert a.torch_epochs == 3  # epochs - 1: the PyTorch variants time as many epochs per repeat


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--epochs", "2"], "at least 3"),
        (["--repeats", "2"], "--allow-few-repeats"),
        (["--models", "cvae"], "unknown model"),
        (["--variants", "jax_scan"], "unknown variant"),
    ],
)
def test_bad_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--data-dir", "D", *argv])
    assert message in capsys.readouterr().err


def write_tiny_mnist(folder, n=64):
    rng = np.random.default_rng(0)
    for images_name, labels_name in (("train-images", "train-labels"), ("t10k-images", "t10k-labels")):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        header = struct.pack(">IIII", 0x803, n, 28, 28)
        (folder / f"{images_name}-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
        (folder / f"{labels_name}-idx1-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">II", 0x801, n) + labels.tobytes())
        )


@pytest.mark.slow
def test_a_tiny_run_end_to_end(tmp_path):
    """The real CLI and one PyTorch variant on 64 images: three epochs, two timed, one table."""
    write_tiny_mnist(tmp_path)
    out = tmp_path / "r.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--data-dir", str(tmp_path)]
    cmd += ["--models", "conv_vae28", "--variants", "jax_train,torch_tight", "--train-limit", "64"]
    cmd += ["--test-limit", "16", "--batch", "32", "--repeats", "1", "--allow-few-repeats", "--out-json", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(out.read_text())
    res = report["results"][0]
    assert res["images"] == 64 and res["flops_per_sample_xla"] > 0
    jx, tt = res["variants"]["jax_train"], res["variants"]["torch_tight"]
    assert jx["status"] == "ok" and len(jx["epoch_times_s"]) == 1 and len(jx["epoch_times_s"][0]) == 2
    assert tt["status"] == "ok" and len(tt["epoch_times_s"][0]) == 2
    assert jx["repeat_samples_per_s"][0] == pytest.approx(64 * 2 / sum(jx["epoch_times_s"][0]))
    assert "too few repeats" in report["targets"][0]["met"]
    assert "| conv_vae28 | 64 | jax_train (`vae-jax train`) |" in r.stdout
    assert bench.BUSY_RULE in r.stdout


FAKE_PY = """#!/usr/bin/env bash
# stands in for python in device_check.sh: an accelerator, a passing parity suite, benchmarks that
# write their outputs; runs the real python for the final summary
case "$1" in
  -c) echo gpu ;;
  -m) while [ $# -gt 0 ]; do [ "$1" = --junitxml ] && echo '<testsuite tests="2"/>' > "$2"; shift; done ;;
  scripts/bench.py) while [ $# -gt 0 ]; do [ "$1" = --out-json ] && echo '{}' > "$2"; shift; done ;;
  scripts/bench_train.py) echo "$@" > "$OUT/train_args"
    while [ $# -gt 0 ]; do
      [ "$1" = --out-json ] && echo '{"kind": "train_path"}' > "$2"; [ "$1" = --out-md ] && echo '| t |' > "$2"; shift
    done ;;
  -) JAX_PLATFORMS=cpu exec "$REAL_PY" "$@" ;;
esac
"""


@pytest.mark.parametrize("with_data", [True, False])
def test_device_check_runs_the_train_path_benchmark(tmp_path, with_data):
    """device_check.sh (with a stand-in python: no accelerator here) runs bench_train.py on $VAE_DATA_DIR,
    writes its table into OUT and its report into the dated JSON; without MNIST it says it skipped it."""
    fake = tmp_path / "py"
    fake.write_text(FAKE_PY)
    fake.chmod(0o755)
    data = tmp_path / "data"
    (data / "mnist").mkdir(parents=True)
    if with_data:
        (data / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    out = tmp_path / "out"
    env = dict(os.environ, PY=str(fake), REAL_PY=sys.executable, OUT=str(out), VAE_DATA_DIR=str(data), REPEATS="7")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (report_path,) = out.glob("device_check-*.json")
    train = json.loads(report_path.read_text())["bench_train"]
    if with_data:
        assert "train-path bench exit 0" in r.stdout
        assert (out / "train_args").read_text().split()[:5] == [
            "scripts/bench_train.py",
            "--data-dir",
            str(data),
            "--repeats",
            "7",
        ]
        assert train["exit_code"] == 0 and train["report"] == {"kind": "train_path"}
        assert (out / train["table"]).read_text() == "| t |\n"
    else:
        assert "train-path bench skipped (no MNIST)" in r.stdout
        assert train["exit_code"] is None and train["report"] is None
        assert "no MNIST" in (out / train["log"]).read_text()
