"""Evaluation speed on this machine: 1,000 probes by batched generation, and single-probe latency.

Probes: the `src` questions of the shared zsRE benchmark (third-party, read in place). Prints wall time for
1,000 probes at several batch sizes (left padding, KV cache, greedy) and p50/p95 latency of one probe alone.

    .venv/bin/python scripts/bench_eval.py [--benchmarks ../shared/benchmarks] [--n 1000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from injector.evaluate import evaluate, generate, hardware, measure_latency
from injector.home import Home
from injector.models import load_tokenizer, load_with_adapter, resolve_base
from injector.records import Probe

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmarks", type=Path, default=ROOT.parent / "shared" / "benchmarks")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--batch-sizes", default="32,64")
    args = ap.parse_args()
    rows = json.loads((args.benchmarks / "zsre_portability_1037.json").read_text())[: args.n]
    probes = [Probe(question=r["src"], answers=tuple(r["answers"]), kind="zsre") for r in rows]
    home = Home.from_env().ensure()
    base = resolve_base("embedded", home.models)
    model, tok = load_with_adapter(base, None), load_tokenizer(base.path)
    generate(model, tok, [[{"role": "user", "content": "Hello"}]], 4, 1)  # warm-up
    print(f"{len(probes)} zsRE probes, max_new_tokens={args.max_new_tokens}, on {hardware()}")
    print("| batch | wall s | probes/s | accuracy (base) |\n|---|---|---|---|")
    for bs in (int(x) for x in args.batch_sizes.split(",")):
        t0 = time.perf_counter()
        rep = evaluate(model, tok, probes, args.max_new_tokens, bs, latency_samples=1, progress=False)
        wall = time.perf_counter() - t0
        print(f"| {bs} | {wall:.1f} | {len(probes) / wall:.1f} | {rep.accuracy():.3f} |")
    p50, p95 = measure_latency(model, tok, probes[:40], args.max_new_tokens, 40)
    print(f"\nsingle-probe latency over 40 probes: p50 {p50:.0f} ms, p95 {p95:.0f} ms "
          f"(full greedy answer up to {args.max_new_tokens} tokens, batch 1, KV cache)")


if __name__ == "__main__":
    main()
