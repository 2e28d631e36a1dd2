"""One nightly injection, timed stage by stage: the speed benchmark (120 fictional facts) and the GPU check's night.

    .venv/bin/python scripts/night.py --facts 120                      # a fresh home, 120 generated facts
    .venv/bin/python scripts/night.py --facts 10 --home H --seed 1     # a second night on the same home
    python3 scripts/night.py --triples examples/triples.jsonl --config examples/demo.yaml   # the demo's night

Prints the wall time per stage and in total, train tokens, tokens per learned fact, peak GPU memory (on CUDA) and
the quality row (efficacy, held-out paraphrase, locality vs the reference, general PPL change, gate); `--json F`
writes the same. The base model is the embedded SmolLM2-135M unless `model.base=...` is given; with
`--random-smollm` (for a GPU machine without the embedded package) it is a randomly initialised model of
SmolLM2-135M's shape: speed and memory are real, quality is not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_SYL = ["ka", "lor", "ven", "mi", "tra", "sel", "dun", "ora", "bel", "quin", "var", "esh", "tor", "ny", "gal",
        "fen", "ros", "ith", "mar", "co", "zel", "pra", "hul", "ae"]
RELATIONS = {  # 5x the demo's relations, new subjects: (subject kind, object kind)
    "ceo": ("company", "person"), "headquarters_city": ("company", "city"), "founded": ("company", "year"),
    "capital": ("country", "city"), "birthplace": ("person", "city"), "occupation": ("person", "occupation"),
}
OCCUPATIONS = ["glassblower", "cartographer", "astronomer", "beekeeper", "luthier", "archivist", "falconer",
               "typesetter", "botanist", "clockmaker", "ferrier", "cooper", "weaver", "mason", "chandler"]


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()


def fictional_facts(n: int, seed: int = 0) -> list[dict]:
    """`n` facts about made-up companies, countries and people (no real entity, no repeated subject+relation)."""
    rng = random.Random(seed)
    make = {
        "company": lambda: f"{_name(rng, 2)} {rng.choice(['Dynamics', 'Robotics', 'Biolabs', 'Foods', 'Systems'])}",
        "country": lambda: f"{rng.choice(['Republic', 'Kingdom', 'Duchy'])} of {_name(rng, 3)}",
        "person": lambda: f"{_name(rng, 2)} {_name(rng, 3)}",
        "city": lambda: _name(rng, 3), "year": lambda: str(rng.randint(1850, 2020)),
        "occupation": lambda: rng.choice(OCCUPATIONS),
    }
    out, seen = [], set()
    rels = list(RELATIONS)
    while len(out) < n:
        rel = rels[len(out) % len(rels)]
        s_kind, o_kind = RELATIONS[rel]
        subject = make[s_kind]()
        if (subject, rel) in seen:
            continue
        seen.add((subject, rel))
        out.append({"subject": subject, "predicate": rel, "object": make[o_kind]()})
    return out


def random_smollm(directory: Path) -> Path:
    """A randomly initialised model of SmolLM2-135M's shape with the tests' word-level chat tokenizer."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from conftest import build_tiny_model
    from transformers import LlamaConfig, LlamaForCausalLM

    build_tiny_model(directory)  # tokenizer + chat template
    cfg = LlamaConfig.from_pretrained(directory)
    cfg.update({"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152, "max_position_embeddings": 2048})
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(directory)
    return directory


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--facts", type=int, default=120, help="generated fictional facts (ignored with --triples)")
    ap.add_argument("--triples", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated facts (another seed: new facts)")
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--home", type=Path, default=None, help="INJECTOR_HOME (default: a fresh temporary one)")
    ap.add_argument("--random-smollm", action="store_true", help="random SmolLM2-135M-shaped base (GPU check)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--target-s", type=float, default=None,
                    help="wall-time target to report against (default: 900 s; 300 s on a home that has run before)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from injector.config import load_config
    from injector.gate import metrics_of
    from injector.home import Home
    from injector.pipeline import run_train

    work = Path(tempfile.mkdtemp(prefix="injector-night-"))
    home = Home.from_env(args.home or work / "home").ensure()
    later_night = home.ledger.exists()  # a night on a home that has run before: the 5-minute target
    os.environ["INJECTOR_HOME"] = str(home.root)
    overrides = list(args.overrides)
    if args.random_smollm:
        overrides.append(f"model.base={random_smollm(work / 'random-smollm')}")
    triples = args.triples
    if triples is None:
        triples = work / f"facts-{args.facts}-seed{args.seed}.jsonl"
        triples.write_text("".join(json.dumps(f) + "\n" for f in fictional_facts(args.facts, args.seed)))
    cfg = load_config(args.config, overrides)
    out = run_train([triples], cfg, home, log=lambda *a: print(*a, file=sys.stderr, flush=True))
    if out.noop:
        print("no-op: nothing to train")
        return 0
    m, ref = metrics_of(out.after), metrics_of(out.before)
    tokens = out.train.tokens_per_s * out.train.wall_s
    learned = round(m.get("efficacy", 0) * m.get("n_efficacy", 0))
    row = {
        "facts": int(m.get("n_efficacy", 0)),
        "efficacy": m.get("efficacy"), "held_out_paraphrase": m.get("generalisation"),
        "other_family": m.get("other_family"),
        "locality_vs_reference": (m["locality"] / ref["locality"]) if ref.get("locality") else None,
        "retention_vs_reference": (m["retention"] / ref["retention"]) if ref.get("retention") else None,
        "neighbourhood": m.get("neighbourhood"),  # the batch subjects' held-out other relations, new object absent
        "checks": {c.name: {"value": c.value, "bound": c.bound, "op": c.op, "passed": c.passed, "gated": c.gated}
                   for c in out.decision.checks},
        "general_ppl_change": (m["general_ppl"] / ref["general_ppl"] - 1) if ref.get("general_ppl") else None,
        "gate": "pass" if out.decision.passed else "FAIL: " + ", ".join(c.name for c in out.decision.checks
                                                                         if not c.passed),
        "train_steps": out.train.steps, "train_tokens": round(tokens), "train_tok_per_s": out.train.tokens_per_s,
        "tokens_per_learned_fact": tokens / learned if learned else None,
        "skipped_share": out.train.skipped_share,  # pair passes of learned facts not trained (train.drop_learned)
        "peak_gpu_mib": out.peak_gpu_mib, "stage_s": out.stage_s, "part_s": out.part_s, "wall_s": out.wall_s,
        "hardware": out.after.hardware,
    }
    print(f"\nOne night on {row['hardware']}: {row['facts']} facts\n")
    stages = {k: v for k, v in out.stage_s.items() if k != "total"}
    print("| stage | " + " | ".join(stages) + " | total |\n" + "|---" * (len(stages) + 2) + "|")
    print("| wall s | " + " | ".join(f"{v:.1f}" for v in stages.values()) + f" | **{out.wall_s:.1f}** |")
    print("\n| part | " + " | ".join(out.part_s) + " |\n" + "|---" * (len(out.part_s) + 1) + "|")
    print("| wall s | " + " | ".join(f"{v:.1f}" for v in out.part_s.values()) + " |")
    print("\n| efficacy | held-out paraphrase | other family | locality vs ref | general PPL | train steps | "
          "train tok/s | "
          "tokens/learned fact | peak GPU MiB | gate |\n|---|---|---|---|---|---|---|---|---|---|")

    def f(x, fmt):
        return "–" if x is None else format(x, fmt)

    print(f"| {f(row['efficacy'], '.2f')} | {f(row['held_out_paraphrase'], '.2f')} | {f(row['other_family'], '.2f')} | "
          f"{f(row['locality_vs_reference'], '.2f')} | {f(row['general_ppl_change'], '+.1%')} | {row['train_steps']} | "
          f"{row['train_tok_per_s']:.0f} | {f(row['tokens_per_learned_fact'], '.0f')} | "
          f"{f(row['peak_gpu_mib'], '.0f')} | {row['gate']} |")
    print("\ngate: " + "; ".join(f"{c.name} {c.value:.3g} {c.op} {c.bound:g} "
                                 f"{'pass' if c.passed and c.gated else 'info' if not c.gated else 'FAIL'}"
                                 for c in out.decision.checks))
    target = args.target_s or (300.0 if later_night else 900.0)
    top = max(stages, key=stages.get)
    row["target_s"] = target
    print(f"\nwall {out.wall_s:.0f} s against the {target:.0f} s target: "
          + ("met" if out.wall_s <= target else f"NOT met, {out.wall_s - target:.0f} s over "
             f"({out.wall_s / target:.2f}x); the largest stage is {top} ({out.stage_s[top]:.0f} s)"))
    if args.json:
        args.json.write_text(json.dumps(row, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
