"""A night's adapter, scaled and at its earlier checkpoints: does the general drift follow how far it moved?

    .venv/bin/python scripts/scan_night.py --home H final:1.0 final:0.8 final:0.6 72:1.0 54:1.0

Each spec is CHECKPOINT:SCALE, where CHECKPOINT is `final` (the night's adapter) or an optimizer step that the night
checkpointed (runs/<run>/checkpoints/checkpoint-<step>), and SCALE multiplies the LoRA update (1.0: as trained).
The base model (cached in H/models) gets the adapter merged, then answers the night's efficacy, held-out paraphrase
(`generalisation`) and locality probes by generation (the evaluation's decode budgets and judge; the questions are
read from the night's report/eval_after.json). Prints one line of counts per spec and the locality probes it got
wrong, with the start of each answer. Run it on a home that `scripts/night.py` left behind (the latest run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KINDS = ("efficacy", "generalisation", "locality")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--base", default="embedded", help="model.name of the night's config (default: embedded)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("specs", nargs="+", help="CHECKPOINT:SCALE, e.g. final:1.0 72:1.0 final:0.8")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from injector.errors import InjectorError
    from injector.evaluate import evaluate
    from injector.home import Home
    from injector.models import load_tokenizer, load_with_adapter, resolve_base
    from injector.records import Probe

    home = Home.from_env(args.home)
    reports = sorted(home.runs.glob("*/report/eval_after.json"))
    if not reports:
        sys.exit(f"{home.runs}: no */report/eval_after.json (run scripts/night.py --home {args.home} first)")
    run = reports[-1].parent.parent
    names = set(Probe.__dataclass_fields__)  # the rows are the probes as report.py wrote them, with their answers
    probes = [Probe(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items() if k in names})
              for r in json.loads(reports[-1].read_text())["rows"] if r["kind"] in KINDS]
    try:
        ref = resolve_base(args.base, home.models)
    except InjectorError as e:
        sys.exit(str(e))
    tok = load_tokenizer(ref.path)
    print(f"run {run.name}: " + ", ".join(f"{sum(p.kind == k for p in probes)} {k}" for k in KINDS))
    for spec in args.specs:
        ck, _, scale = spec.partition(":")
        path = run / "adapter" if ck == "final" else run / "checkpoints" / f"checkpoint-{ck}"
        if not path.is_dir():
            sys.exit(f"{spec}: no adapter at {path}")
        model = load_with_adapter(ref, str(path), merge=False)  # a fresh base each spec: merging changes it
        for module in model.modules():  # LoRA layers: the update is scaling x B @ A
            if isinstance(getattr(module, "scaling", None), dict) and "default" in module.scaling:
                module.scaling["default"] *= float(scale or 1)
        model = model.merge_and_unload().eval()
        report = evaluate(model, tok, probes, max_new_tokens=args.max_new_tokens, latency_samples=0, progress=False)
        counts = {k: [r.correct for r in report.results if r.probe.kind == k] for k in KINDS}
        print(f"{spec:12} " + "  ".join(f"{k} {sum(v)}/{len(v)}" for k, v in counts.items()), flush=True)
        for r in report.results:
            if r.probe.kind == "locality" and not r.correct:
                print(f"    {r.probe.question[:48]:48} -> {r.answer[:40]!r}", flush=True)


if __name__ == "__main__":
    main()
