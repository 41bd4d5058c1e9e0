#!/usr/bin/env bash
# The checks to run on an accelerator (GPU) machine, in one go, writing one dated JSON:
#   1. the parity suite (parity_tests/ sets jax_default_matmul_precision = "highest": no TF32),
#   2. the benchmark (scripts/bench.py) on the accelerator, PyTorch and JAX side by side,
#   3. the train-path benchmark (scripts/bench_train.py: whole `vae-jax train` epochs against the
#      chapter's PyTorch loops on the same images; its table in OUT/bench_train-<date>.md). It needs
#      MNIST: $VAE_DATA_DIR, else ../shared/data beside the checkout; without either it is skipped.
#
#   bash scripts/device_check.sh                  # -> docs/device/device_check-<UTC date>.json
#   OUT=OUTDIR REPEATS=5 bash scripts/device_check.sh
#
# Exits 2 with one line when no accelerator is visible to JAX (JAX_PLATFORMS is not forced to cpu
# here). Needs the venv of `make install` (or a python with the test extras) in $PY.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-docs/device}
REPEATS=${REPEATS:-5}
DATA=${VAE_DATA_DIR:-$(cd .. && pwd)/shared/data}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
unset JAX_PLATFORMS

platform=$("$PY" -c 'import jax; print(jax.devices()[0].platform)' 2>/dev/null) || platform=none
if [ "$platform" = "cpu" ] || [ "$platform" = "none" ]; then
    echo "device_check: no accelerator visible to JAX (platform: $platform) -- run it on a GPU machine with jax[cuda] installed" >&2
    exit 2
fi

mkdir -p "$OUT"
t0=$(date +%s)
"$PY" -m pytest -q -p no:cacheprovider parity_tests --junitxml "$OUT/parity-$STAMP.xml" > "$OUT/parity-$STAMP.log" 2>&1
parity_rc=$?
t1=$(date +%s)
"$PY" scripts/bench.py --repeats "$REPEATS" --out-json "$OUT/bench-$STAMP.json" --out-md "$OUT/bench-$STAMP.md" \
    > "$OUT/bench-$STAMP.log" 2>&1
bench_rc=$?
t2=$(date +%s)
if compgen -G "$DATA/train-images-idx3-ubyte*" > /dev/null || compgen -G "$DATA/mnist/train-images-idx3-ubyte*" > /dev/null; then
    "$PY" scripts/bench_train.py --data-dir "$DATA" --repeats "$REPEATS" --out-json "$OUT/bench_train-$STAMP.json" \
        --out-md "$OUT/bench_train-$STAMP.md" > "$OUT/bench_train-$STAMP.log" 2>&1
    train_rc=$?
else
    echo "skipped: no MNIST in $DATA (set VAE_DATA_DIR)" > "$OUT/bench_train-$STAMP.log"
    train_rc=skipped
fi
t3=$(date +%s)

"$PY" - "$OUT" "$STAMP" "$parity_rc" "$bench_rc" "$((t1 - t0))" "$((t2 - t1))" "$train_rc" "$((t3 - t2))" <<'EOF'
import json, os, platform, subprocess, sys
import xml.etree.ElementTree as ET

import jax

out, stamp, parity_rc, bench_rc, parity_s, bench_s, train_rc, train_s = sys.argv[1:]
suite = ET.parse(os.path.join(out, f"parity-{stamp}.xml")).getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30).stdout.strip()
except OSError:
    gpu = ""
bench_path = os.path.join(out, f"bench-{stamp}.json")
train_path = os.path.join(out, f"bench_train-{stamp}.json")
report = {
    "date_utc": stamp,
    "hardware": {"devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind,
                 "nvidia_smi": gpu, "host": platform.node(), "cpus": os.cpu_count()},
    "versions": {"jax": jax.__version__, "python": platform.python_version()},
    "matmul_precision": "highest (parity_tests: each test, and harness.precision)",
    "parity": {"exit_code": int(parity_rc), "seconds": int(parity_s), **counts,
               "log": f"parity-{stamp}.log"},
    "bench": {"exit_code": int(bench_rc), "seconds": int(bench_s),
              "report": json.load(open(bench_path)) if os.path.exists(bench_path) else None},
    "bench_train": {"exit_code": None if train_rc == "skipped" else int(train_rc), "seconds": int(train_s),
                    "log": f"bench_train-{stamp}.log", "table": f"bench_train-{stamp}.md",
                    "report": json.load(open(train_path)) if os.path.exists(train_path) else None},
}
path = os.path.join(out, f"device_check-{stamp}.json")
with open(path, "w") as f:
    json.dump(report, f, indent=2)
print(f"device_check: parity {counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']} passed, "
      f"{counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped (exit {parity_rc}); "
      f"bench exit {bench_rc}; train-path bench "
      f"{'skipped (no MNIST)' if train_rc == 'skipped' else 'exit ' + train_rc}; wrote {path}")
EOF
[ "$parity_rc" = 0 ] && [ "$bench_rc" = 0 ] && { [ "$train_rc" = 0 ] || [ "$train_rc" = skipped ]; }
