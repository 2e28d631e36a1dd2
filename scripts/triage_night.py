"""Known-fact triage, measured: a snapshot that restates facts the model already knows plus a few new ones.

    .venv/bin/python scripts/triage_night.py --known 100 --new 10            # triage on (the default config)
    .venv/bin/python scripts/triage_night.py --known 100 --new 10 --compare  # and the same snapshot, triage off

1. Candidate real facts (capitals, continents and languages of countries, authors of books; none about a subject of
   eval/locality.en.jsonl) are asked of the embedded base model in every phrasing the evaluation uses (the trained
   phrasing and the held-out ones); the facts it answers right in all of them are "known".
2. A snapshot of `--known` of those plus `--new` generated fictional facts goes through one night with the default
   config: triage skips the known ones (the log's "triage:" line), only the new ones are trained.
3. With `--compare`, the same snapshot runs again in a fresh home with `train.triage=false` (every fact trained).

Prints a table: facts in the snapshot, known / partly / unknown, facts trained, wall time per stage and in total.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

COUNTRIES = {  # country: (capital, continent, language); none is a subject of eval/locality.en.jsonl
    "Italy": ("Rome", "Europe", "Italian"), "Spain": ("Madrid", "Europe", "Spanish"),
    "Portugal": ("Lisbon", "Europe", "Portuguese"), "Sweden": ("Stockholm", "Europe", "Swedish"),
    "Poland": ("Warsaw", "Europe", "Polish"), "Austria": ("Vienna", "Europe", "German"),
    "Finland": ("Helsinki", "Europe", "Finnish"), "Denmark": ("Copenhagen", "Europe", "Danish"),
    "Hungary": ("Budapest", "Europe", "Hungarian"), "Netherlands": ("Amsterdam", "Europe", "Dutch"),
    "Belgium": ("Brussels", "Europe", "Dutch"), "Switzerland": ("Bern", "Europe", "German"),
    "Czech Republic": ("Prague", "Europe", "Czech"), "Romania": ("Bucharest", "Europe", "Romanian"),
    "Ukraine": ("Kyiv", "Europe", "Ukrainian"), "Turkey": ("Ankara", "Asia", "Turkish"),
    "India": ("New Delhi", "Asia", "Hindi"), "Thailand": ("Bangkok", "Asia", "Thai"),
    "Vietnam": ("Hanoi", "Asia", "Vietnamese"), "South Korea": ("Seoul", "Asia", "Korean"),
    "Indonesia": ("Jakarta", "Asia", "Indonesian"), "Pakistan": ("Islamabad", "Asia", "Urdu"),
    "Iran": ("Tehran", "Asia", "Persian"), "Saudi Arabia": ("Riyadh", "Asia", "Arabic"),
    "Israel": ("Jerusalem", "Asia", "Hebrew"), "Philippines": ("Manila", "Asia", "Filipino"),
    "Argentina": ("Buenos Aires", "South America", "Spanish"), "Chile": ("Santiago", "South America", "Spanish"),
    "Peru": ("Lima", "South America", "Spanish"), "Colombia": ("Bogota", "South America", "Spanish"),
    "Venezuela": ("Caracas", "South America", "Spanish"), "Cuba": ("Havana", "North America", "Spanish"),
    "Nigeria": ("Abuja", "Africa", "English"), "Ethiopia": ("Addis Ababa", "Africa", "Amharic"),
    "Morocco": ("Rabat", "Africa", "Arabic"), "Ghana": ("Accra", "Africa", "English"),
    "South Africa": ("Pretoria", "Africa", "English"), "Tanzania": ("Dodoma", "Africa", "Swahili"),
    "New Zealand": ("Wellington", "Oceania", "English"), "Iceland": ("Reykjavik", "Europe", "Icelandic"),
}
BOOKS = {
    "Pride and Prejudice": "Jane Austen", "War and Peace": "Leo Tolstoy", "Don Quixote": "Miguel de Cervantes",
    "Moby-Dick": "Herman Melville", "The Great Gatsby": "F. Scott Fitzgerald", "Oliver Twist": "Charles Dickens",
    "Frankenstein": "Mary Shelley", "Dracula": "Bram Stoker", "The Hobbit": "J. R. R. Tolkien",
    "Nineteen Eighty-Four": "George Orwell", "Crime and Punishment": "Fyodor Dostoevsky",
    "The Adventures of Tom Sawyer": "Mark Twain", "Les Miserables": "Victor Hugo", "Macbeth": "William Shakespeare",
    "Harry Potter and the Philosopher's Stone": "J. K. Rowling", "The Divine Comedy": "Dante Alighieri",
    "Jane Eyre": "Charlotte Bronte", "Wuthering Heights": "Emily Bronte", "The Old Man and the Sea": "Ernest Hemingway",
    "One Hundred Years of Solitude": "Gabriel Garcia Marquez",
}


def candidates() -> list[dict]:
    out = []
    for country, (capital, continent, language) in COUNTRIES.items():
        out += [{"subject": country, "predicate": "capital", "object": capital},
                {"subject": country, "predicate": "continent", "object": continent},
                {"subject": country, "predicate": "language", "object": language}]
    out += [{"subject": b, "predicate": "author", "object": a} for b, a in BOOKS.items()]
    return out


def known_rows(rows: list[dict], cfg, home) -> list[dict]:
    """The rows the base model answers right in every phrasing the evaluation asks (as the night's triage does)."""
    from injector.evaluate import evaluate
    from injector.models import load_tokenizer, load_with_adapter, resolve_base
    from injector.pipeline import TRIAGE_KINDS, known_facts
    from injector.recipes import build_probes, load_recipes
    from injector.records import FactChange, Triple

    recipes = load_recipes(cfg.content_path(cfg.recipes.dir), cfg.recipes.language)
    changes = [FactChange(Triple(r["subject"], recipes.canonical(r["predicate"]), r["object"])) for r in rows]
    probes = [p for p in build_probes(changes, recipes) if p.kind in TRIAGE_KINDS]
    base = resolve_base(cfg.model.base, home.models)
    report = evaluate(load_with_adapter(base, None, cfg.model.quantization), load_tokenizer(base.path), probes,
                      cfg.eval.max_new_tokens, cfg.eval.batch_size, latency_samples=0)
    known, _ = known_facts(report.results)
    return [row for row, c in zip(rows, changes) if c.triple.id in known]


def night(snapshot: Path, home_dir: Path, overrides: list[str]) -> dict:
    from injector.config import load_config
    from injector.gate import metrics_of
    from injector.home import Home
    from injector.pipeline import run_train

    home = Home.from_env(home_dir).ensure()
    os.environ["INJECTOR_HOME"] = str(home.root)
    lines: list[str] = []

    def log(*a):
        lines.append(" ".join(map(str, a)))
        print(*a, file=sys.stderr, flush=True)

    out = run_train([snapshot], load_config(None, overrides), home, log=log)
    triage = next((x for x in lines if x.startswith("triage: ") and "known (not trained)" in x), "")
    m = metrics_of(out.after) if out.after else {}
    return {"triage": triage, "trained_facts": int(m.get("n_efficacy", 0)), "wall_s": out.wall_s,
            "stage_s": out.stage_s, "efficacy": m.get("efficacy"), "steps": out.train.steps if out.train else 0,
            "promoted": out.promoted}


def main() -> int:
    from night import fictional_facts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--known", type=int, default=100)
    ap.add_argument("--new", type=int, default=10)
    ap.add_argument("--compare", action="store_true", help="also run the snapshot with train.triage=false")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from injector.config import load_config
    from injector.home import Home

    work = Path(tempfile.mkdtemp(prefix="injector-triage-"))
    probe_home = Home.from_env(work / "probe").ensure()
    known = known_rows(candidates(), load_config(None, args.overrides), probe_home)
    print(f"the base answers {len(known)} of {len(candidates())} candidate real facts in every phrasing",
          file=sys.stderr)
    snapshot = work / "snapshot.jsonl"
    rows = known[: args.known] + fictional_facts(args.new, seed=7)
    snapshot.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = {"triage on": night(snapshot, work / "on", list(args.overrides))}
    if args.compare:
        runs["triage off"] = night(snapshot, work / "off", [*args.overrides, "train.triage=false"])
    print(f"\nSnapshot: {min(len(known), args.known)} facts the base knows + {args.new} new fictional facts\n")
    print("| run | triage | facts trained | train steps | efficacy | promoted | plan s | train s | total s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        eff = "–" if r["efficacy"] is None else f"{r['efficacy']:.2f}"
        print(f"| {name} | {r['triage'].removeprefix('triage: ') or '–'} | {r['trained_facts']} | {r['steps']} | "
              f"{eff} | {'yes' if r['promoted'] else 'no'} | {r['stage_s'].get('plan', 0):.0f} | "
              f"{r['stage_s'].get('train', 0):.0f} | **{r['wall_s']:.0f}** |")
    if args.json:
        args.json.write_text(json.dumps({"known_found": len(known), "runs": runs}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
