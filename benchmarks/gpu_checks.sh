#!/usr/bin/env bash
# The GPU checks in one go, for a machine with CUDA (the figures of docs/benchmarks/gpu.md came from this):
#   1. the GPU tests (skipped on machines without CUDA),
#   2. benchmarks/bench_trainer.py on the GPU: plain loop, archsearch with and without CUDA graphs, side by side,
#   3. fused trials: benchmarks/bench_search.py, K = 8 trials of the 9.7k and 68.6k search models (each its own
#      recipe) as one fused model, against one trial at a time (the target: at least 5x per model),
#   4. the full reproduction (17 rows x 5 runs x 50 epochs), timed.
# Everything lands in OUT (default runs/gpu-checks): run.log, bench.json, search.json, repro.json, the study database,
# REPORT.md.
# LIMIT (seconds) stops the reproduction early; it keeps every finished row and resumes when the script is rerun.
#
#   benchmarks/gpu_checks.sh                               # with the project's .venv, on CUDA
#   PY=python3 OUT=/tmp/checks LIMIT=300 benchmarks/gpu_checks.sh
#   DEVICE=cpu ROWS=0 STEPS=201 EST_ROWS=0 ... benchmarks/gpu_checks.sh   # the same plumbing on a CPU (tests/bench/test_benchmarks.py)
set -u
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu-checks}
LIMIT=${LIMIT:-3600}
mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "=== [$(($(date +%s) - T0)) s] $*"; }
exec > >(tee "$OUT/run.log") 2>&1

log environment
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__,
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')" || exit 1

log "GPU tests"
$PY -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tail -25

log benchmark
$PY benchmarks/bench_trainer.py --device "$DEVICE" --rows "${ROWS:-6,10,15,16}" --workers "${WORKERS:-1}" \
  --repeats "${REPEATS:-2}" --steps "${STEPS:-1200}" --plain-steps "${PLAIN_STEPS:-300}" \
  --estimate-steps "${EST_STEPS:-400}" ${EST_ROWS:+--estimate-rows "$EST_ROWS"} --json > "$OUT/bench.json" || exit 1
$PY - "$OUT/bench.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['device']}: float32 matmul peak {r['matmul_peak_gflops']:.0f} GFLOP/s; "
      f"estimated full reproduction {r['full_reproduction_estimate_min']:.1f} min")
for m in r["rows"]:
    eager = m["archsearch_no_graphs_steps_per_s"]
    print(f"row {m['row']:2d} {m['spec']:34s} plain {m['plain_steps_per_s']:7.0f}  archsearch "
          f"{m['archsearch_steps_per_s']:7.0f}  no graphs {eager or float('nan'):7.0f}  x{m['ratio']:6.1f}  "
          f"{m['peak_pct']:5.2f}% of peak")
EOF

log "fused trials"
$PY benchmarks/bench_search.py --device "$DEVICE" --contenders archsearch,fused --trials \
  --models "${SEARCH_MODELS:-9.7k,68.6k}" --k "${SEARCH_K:-1,8}" --steps "${SEARCH_STEPS:-200}" \
  --repeats "${REPEATS:-2}" --json > "$OUT/search.json" || exit 1
$PY - "$OUT/search.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for m in r["rate"]:
    print(f"{m['model']:6s} K={m['k']} {m['contender']:10s} {m.get('engine_step', ''):16s} "
          f"{m['rate']:8.1f} model-steps/s  x{m['ratio']:5.2f} of one trial at a time")
EOF

log reproduce
start=$(date +%s)
timeout -s INT -k 20 "$LIMIT" $PY -m archsearch reproduce --device "$DEVICE" ${REPRO_ARGS:-} \
  --storage "sqlite:///$OUT/repro.db" --out "$OUT/report" --json > "$OUT/repro.json"
echo "reproduce exit $? after $(($(date +%s) - start)) s"
log done
