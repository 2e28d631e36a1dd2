#!/usr/bin/env bash
# Several `injector bench` one-night runs at once on one GPU (a 135M model's step is bound by launching kernels, so
# a GPU runs a few processes side by side for about the time of one): the spread of a benchmark's quality over seeds
# and settings in one device call. Each run: a fresh home, the default config plus its overrides. OUT_DIR gets
# summary.md (each run's row) and bench.tgz (each run's table, raw results, answers and log: one file, since a
# device call brings back only a few).
# Usage: scripts/gpu_bench.sh OUT_DIR DATA_DIR 'name:bench:override,override[:VAR=value,VAR=value]' ...
#   e.g. scripts/gpu_bench.sh $OUT .bench 'z0:zsre:train.seed=0' 'z1:zsre:train.seed=1' 'm0:mquake:'
#   'z0f:zsre:train.seed=0:INJECTOR_DTYPE=float32' computes as the CPU does (fp32 weights and compute)
#   GPU_BENCH_N (default 40) facts per slice, GPU_BENCH_S (default 480) the wall-time bound of each run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=$1; DATA=$2; shift 2
mkdir -p "$OUT_DIR"
RUNS=$(mktemp -d)
PY=${PY:-python3}
N=${GPU_BENCH_N:-40}
LIMIT=${GPU_BENCH_S:-480}
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# dequantize the GGUF once; every run's home links the cache
models=$(mktemp -d)/home
$PY -c "import sys; from pathlib import Path; from injector.models import resolve_base; resolve_base('embedded', Path(sys.argv[1]))" \
    "$models/models" >/dev/null \
    || { echo "no base model"; exit 1; }
pids=()
for spec in "$@"; do
    IFS=: read -r name bench overrides envs <<<"$spec"
    mkdir -p "$RUNS/$name"
    home=$(mktemp -d)/home && mkdir -p "$home" && ln -s "$models/models" "$home/models"
    # shellcheck disable=SC2086
    ( env ${envs//,/ } INJECTOR_HOME=$home timeout "$LIMIT" $PY -m injector bench -b "$bench" --n "$N" --variants injector \
        --nights 0 --no-in-context --out '' --data "$DATA" --work "$home/work" \
        --results "$RUNS/$name/results.json" ${overrides//,/ } >"$RUNS/$name/table.md" 2>"$RUNS/$name/log"
      rc=$?; cp "$home/work/$bench/injector/answers.jsonl" "$RUNS/$name/" 2>/dev/null
      echo "$name ($bench ${overrides:-defaults} ${envs}) rc=$rc $(date +%T)" ) &
    pids+=($!)
done
wait "${pids[@]}"
for spec in "$@"; do
    echo "$spec $(grep -m1 '^| injector' "$RUNS/${spec%%:*}/table.md")"
done | tee "$OUT_DIR/summary.md"
cat "$RUNS"/*/table.md | grep -m1 '^| row' | tee -a "$OUT_DIR/summary.md"
tar czf "$OUT_DIR/bench.tgz" -C "$RUNS" .
