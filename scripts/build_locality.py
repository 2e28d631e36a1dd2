"""Build eval/locality.<lang>.jsonl: the candidate questions the base model answers right.

Locality is measured relative to what the base knows (SmolLM2-135M gets ~2/3 of everyday questions right),
so the probe set keeps only the questions the base answers correctly, judged on its generated answer.

    .venv/bin/python scripts/build_locality.py [--base-model embedded] [--lang en]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from injector.evaluate import evaluate
from injector.home import Home
from injector.models import load_tokenizer, load_with_adapter, resolve_base
from injector.probes import read_questions

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-model", default="embedded")
    ap.add_argument("--lang", default="en")
    args = ap.parse_args()
    cand = ROOT / "eval" / f"locality_candidates.{args.lang}.jsonl"
    probes = read_questions(cand, default_kind="locality")
    home = Home.from_env().ensure()
    base = resolve_base(args.base_model, home.models)
    report = evaluate(load_with_adapter(base, None), load_tokenizer(base.path), probes, max_new_tokens=32,
                      latency_samples=1)
    keep = [r.probe for r in report.results if r.correct]
    out = ROOT / "eval" / f"locality.{args.lang}.jsonl"
    with out.open("w") as f:
        for p in keep:
            f.write(json.dumps({"question": p.question, "answers": list(p.answers), "kind": "locality"}) + "\n")
    print(f"{len(keep)} of {len(probes)} candidates answered right by {args.base_model}: wrote {out}")


if __name__ == "__main__":
    main()
