"""Ablations on the embedded model: the demo facts injected under several configs, each in a fresh home.

Each variant runs the real pipeline (ingest -> recipes + replay -> train -> evaluate -> gate) and the table
shows accuracy by probe kind, locality against the base, general-PPL change, KL drift, speed and wall time.

    .venv/bin/python scripts/ablation.py                       # default vs no replay
    .venv/bin/python scripts/ablation.py --variant "lr5e-4=train.learning_rate=5e-4 train.epochs=6"
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from injector.config import load_config
from injector.home import Home
from injector.pipeline import run_train

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VARIANTS = {"injector default": [], "no replay": ["recipes.replay=0"],
                    "no anchors": ["recipes.anchor_share=0"]}


def run_variant(overrides: list[str], triples: Path, config: Path, models_cache: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        home = Home.from_env(tmp)
        home.ensure()
        (home.root / "models").rmdir()
        (home.root / "models").symlink_to(models_cache)  # dequantize the embedded model once, share it
        o = run_train([triples], load_config(config, overrides), home, log=lambda *a: None)
    before, after = o.before, o.after
    row = {k: after.accuracy(k) for k in ("efficacy", "generalisation", "reverse")}
    loc_b, loc_a = before.accuracy("locality"), after.accuracy("locality")
    row["locality_vs_base"] = loc_a / loc_b if loc_b else float("nan")
    row["ppl_change"] = after.extra["general_ppl"] / before.extra["general_ppl"] - 1
    row["kl"] = after.extra.get("kl_drift", float("nan"))
    row["tok_s"], row["wall_s"], row["gate"] = o.train.tokens_per_s, o.wall_s, o.decision.passed
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", default=[], help='"name=key=value key=value"')
    ap.add_argument("--only", action="append", default=[], help="run only these default variants")
    ap.add_argument("--triples", type=Path, default=ROOT / "examples" / "triples.jsonl")
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "demo.yaml")
    args = ap.parse_args()
    variants = {k: v for k, v in DEFAULT_VARIANTS.items() if not args.only or k in args.only}
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        variants[name] = rest.split()
    cache = Home.from_env().ensure().models
    print("| variant | efficacy | generalisation | reverse | locality vs base | general PPL | KL | tok/s | wall s "
          "| gate |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, overrides in variants.items():
        r = run_variant(overrides, args.triples, args.config, cache)
        print(f"| {name} | {r['efficacy']:.2f} | {r['generalisation']:.2f} | {r['reverse']:.2f} | "
              f"{r['locality_vs_base']:.2f} | {r['ppl_change']:+.1%} | {r['kl']:.3f} | {r['tok_s']:.0f} | "
              f"{r['wall_s']:.0f} | {'pass' if r['gate'] else 'FAIL'} |", flush=True)


if __name__ == "__main__":
    main()
