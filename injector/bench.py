"""`injector bench`: injection quality and speed on third-party knowledge-editing data, against baselines.

Two benchmarks (read from ../shared/benchmarks, never copied): zsRE with portability (question-answer facts, the
authors' paraphrases, unrelated NQ locality questions) and MQuAKE-CF (labelled triples, changed facts, multi-hop
questions). A fixed, seeded slice goes through the real pipeline (ingest -> recipes -> train -> eval -> gate) once
per variant, each in its own INJECTOR_HOME under the work dir (model and caches shared), then the benchmark's own
probes are asked of the candidate. Rows: the variants, the in-context baseline and the base model; plus a
continual run of N nightly batches with the accuracy on batch 1 after each night.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from injector.errors import InjectorError
from injector.records import Probe

BENCHMARKS = {"zsre": "zsre_portability_1037.json", "mquake": "mquake_cf_354.json"}
# name -> (config overrides, recipe quota override or None); the pipeline's own stages for every row. The naive row
# is plain LoRA: one question per fact, no replay, no EWC, no distillation and the plain answer loss (no entity weight)
VARIANTS: dict[str, tuple[list[str], dict | None]] = {
    "injector": ([], None),
    "naive LoRA": (["recipes.replay=0", "train.ewc_lambda=0", "train.distill_weight=0", "train.entity_weight=1"],
                   {"forward": 1}),
    "no replay": (["recipes.replay=0", "train.distill_weight=0"], None),
    "no EWC": (["train.ewc_lambda=0"], None),
    "no distillation": (["train.distill_weight=0"], None),
}
MARK = "<!-- injector bench: {name}: {end} -->"  # one generated block per benchmark in the doc


@dataclass(frozen=True)
class Slice:
    name: str
    rows: list[dict]  # triples for the JSONL reader, one fact each
    probes: list[Probe]  # the benchmark's own: paraphrase, portability / multihop, changed, locality_authors
    facts: list[str]  # the facts as sentences (in-context baseline)
    batch_of: dict[str, int] = field(default_factory=dict)  # probe question -> slice row index (continual run)


def _sample(records: list, n: int, seed: int) -> list[int]:
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    return idx[:n]


def load_zsre(path: Path, n: int, seed: int = 0) -> Slice:
    """zsRE: inject `src` -> `alt`; the authors' `rephrase` (paraphrase), `portability`, `loc` (locality)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    rows, probes, facts, batch_of, seen = [], [], [], {}, set()
    for i in _sample(data, len(data), seed):
        r = data[i]
        if len(rows) >= n:
            break
        key = (r["subject"].strip().lower(), r["src"].strip().lower())
        if key in seen or not r.get("alt"):
            continue  # one answer per question in a batch
        seen.add(key)
        k = len(rows)
        rows.append({"subject": r["subject"], "question": r["src"], "object": r["alt"], "source": f"zsre:{i}"})
        facts.append(f"{r['src']} {r['alt']}")
        ps = [Probe(r["rephrase"], (r["alt"],), "paraphrase", fact_id=str(k))]
        port = r.get("portability") or {}
        if port.get("New Question") and port.get("New Answer"):
            ps.append(Probe(port["New Question"], (port["New Answer"],), "portability", fact_id=str(k)))
        if r.get("loc"):
            q = r["loc"].removeprefix("nq question:").strip()
            ps.append(Probe(q[:1].upper() + q[1:] + ("" if q.endswith("?") else "?"), (r.get("loc_ans", ""),),
                            "locality_authors", fact_id=str(k)))
        probes += ps
        batch_of.update({p.question: k for p in ps})
    return Slice("zsre", rows, probes, facts, batch_of)


def load_mquake(path: Path, n: int, seed: int = 0) -> Slice:
    """MQuAKE-CF: each case's edits as labelled triples (target_new); the authors' question per edit, the old
    object forbidden; the case's multi-hop questions. Cases that conflict with an earlier one are skipped."""
    data = json.loads(path.read_text(encoding="utf-8"))
    rows, probes, facts, batch_of, taken = [], [], [], {}, {}
    cases = 0
    for i in _sample(data, len(data), seed):
        if cases >= n:
            break
        case = data[i]
        labels = {tuple(t[:2]): lab for t, lab in zip(case["orig"]["new_triples"], case["orig"]["new_triples_labeled"])}
        edits = []
        for e in case["requested_rewrite"]:
            subj_id = next((t[0] for t in case["orig"]["edit_triples"] if t[1] == e["relation_id"]), None)
            lab = labels.get((subj_id, e["relation_id"])) if subj_id else None
            relation = lab[1] if lab else e["relation_id"]
            edits.append((e, relation))
        keys = [(e["subject"].lower(), rel) for e, rel in edits]
        if any(k in taken and taken[k] != e["target_new"]["str"] for k, (e, _) in zip(keys, edits)):
            continue  # MQuAKE v1: edits of different cases may conflict
        cases += 1
        first = len(rows)
        for k, (e, rel) in zip(keys, edits):
            taken[k] = e["target_new"]["str"]
            j = len(rows)
            rows.append({"subject": e["subject"], "predicate": rel, "object": e["target_new"]["str"],
                         "source": f"mquake:{case['case_id']}"})
            facts.append(e["prompt"].format(e["subject"]) + " " + e["target_new"]["str"] + ".")
            aliases = next((h.get("answer_alias", []) for h in case["new_single_hops"]
                            if h["question"] == e["question"]), [])
            p = Probe(e["question"], (e["target_new"]["str"], *aliases), "paraphrase", fact_id=str(j),
                      forbidden=(e["target_true"]["str"],))
            probes.append(p)
            batch_of[p.question] = j
        for q in case["questions"]:
            p = Probe(q, (case["new_answer"], *case.get("new_answer_alias", [])), "multihop", fact_id=str(first))
            probes.append(p)
            batch_of[p.question] = first
    return Slice("mquake", rows, probes, facts, batch_of)


def load_slice(name: str, data_dir: Path, n: int, seed: int = 0) -> Slice:
    path = data_dir / BENCHMARKS[name]
    if not path.exists():
        raise InjectorError(f"benchmark file not found: {path} (pass --data DIR holding {BENCHMARKS[name]})")
    try:
        return (load_zsre if name == "zsre" else load_mquake)(path, n, seed)
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise InjectorError(f"{path}: not in the expected {name} format ({type(e).__name__}: {e})") from None


# --- one row -------------------------------------------------------------------------------------------------------


def _home(root: Path, name: str, shared: Path):
    """A variant's own INJECTOR_HOME; the model cache and the reference caches are shared across variants."""
    import shutil

    from injector.home import Home

    d = root / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for sub in ("models", "cache"):
        (shared / sub).mkdir(parents=True, exist_ok=True)
        (d / sub).symlink_to((shared / sub).resolve(), target_is_directory=True)
    return Home(root=d.resolve(), tracking_uri=f"sqlite:///{d.resolve() / 'mlflow.db'}").ensure()


def _recipes_dir(cfg, quota: dict | None, where: Path) -> str | None:
    """A copy of the recipes with other quotas (the naive row: one template per fact)."""
    import shutil

    import yaml

    if quota is None:
        return None
    src = cfg.content_path(cfg.recipes.dir)
    dst = where / "recipes"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    mix = yaml.safe_load((dst / "mix.yaml").read_text()) or {}
    mix["quota"] = {k: quota.get(k, 0) for k in (mix.get("quota") or {})}
    (dst / "mix.yaml").write_text(yaml.safe_dump(mix))
    return str(dst.resolve())


def _write_triples(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _ask(base, adapter_dir: str | None, probes: list[Probe], cfg) -> tuple[dict, list]:
    from injector.evaluate import evaluate
    from injector.models import load_tokenizer, load_with_adapter

    model = load_with_adapter(base, adapter_dir, cfg.model.quantization)
    rep = evaluate(model, load_tokenizer(base.path), probes, cfg.eval.max_new_tokens, cfg.eval.batch_size,
                   latency_samples=1)
    return {k: v["accuracy"] for k, v in rep.by_kind().items()}, list(rep.results)


def _write_answers(results: list, path: Path) -> None:
    """Each benchmark probe's question, kind, generated answer and verdict, one JSON line each: which
    paraphrases a row missed, and what it said instead, is read here rather than re-asked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps({"kind": r.probe.kind, "fact_id": r.probe.fact_id, "question": r.probe.question,
                                "accepted": list(r.probe.answers), "answer": r.answer, "correct": r.correct},
                               ensure_ascii=False) + "\n")


LOCALITY_WORDS = 6  # an unrelated answer counts as kept when it has the base answer's first words


def _locality_probes(sl: Slice, base_answers: list) -> list[Probe]:
    """Authors' unrelated questions, judged as unchanged from the base model: the first LOCALITY_WORDS words of
    its answer's first line (an NQ answer names its entity first; a whole 24-token line fails on any later
    rewording, and the in-context row then reads 0 though its answers say the same)."""
    out = []
    for r in base_answers:
        if r.probe.kind == "locality_authors":
            first = " ".join(r.answer.strip().split("\n")[0].split()[:LOCALITY_WORDS])
            if first:
                out.append(Probe(r.probe.question, (first,), "locality_authors", fact_id=r.probe.fact_id))
    return out


def _row(name: str, outcome, acc: dict, wall: float) -> dict:
    from injector.gate import metrics_of

    before, after = metrics_of(outcome.before), metrics_of(outcome.after)

    def rel(key, ratio=True):
        a, b = after.get(key), before.get(key)
        if a is None or not b:
            return float("nan")
        return a / b if ratio else a / b - 1

    return {"row": name, "efficacy": after.get("efficacy", float("nan")),
            "paraphrase": acc.get("paraphrase", float("nan")),
            "portability": acc.get("portability", acc.get("multihop", float("nan"))),
            "locality_authors": acc.get("locality_authors", float("nan")),
            "locality_ours": rel("locality"), "neighbourhood": after.get("neighbourhood", float("nan")),
            "general_ppl_change": rel("general_ppl", ratio=False),
            "kl_drift": after.get("kl_drift", float("nan")), "tokens_per_s": outcome.train.tokens_per_s,
            "wall_s": wall, **_verdict(outcome.decision)}


def run_benchmark(sl: Slice, cfg_file: Path | None, overrides: list[str], work: Path, variants: list[str],
                  nights: int, models_dir: Path, log=print, context_row: bool = True) -> dict:
    """Every row of one benchmark (and the continual run); returns {"rows": [...], "continual": [...]}."""
    from injector.config import load_config
    from injector.evaluate import in_context
    from injector.models import resolve_base
    from injector.pipeline import run_train

    shared = work / "shared"
    (shared / "cache").mkdir(parents=True, exist_ok=True)
    if not (shared / "models").exists():  # the model cache of the user's INJECTOR_HOME (dequantised once)
        (shared / "models").symlink_to(models_dir.resolve(), target_is_directory=True)
    cfg0 = load_config(cfg_file, overrides)
    base = resolve_base(cfg0.model.base, shared / "models")
    rows, fact_probes = [], None
    t0 = time.perf_counter()
    _, base_results = _ask(base, None, sl.probes, cfg0)
    loc = _locality_probes(sl, base_results)
    probes = [p for p in sl.probes if p.kind != "locality_authors"] + loc
    base_acc, base_results = _ask(base, None, probes, cfg0)
    _write_answers(base_results, work / sl.name / "base-answers.jsonl")
    base_wall = time.perf_counter() - t0
    steps = None  # the first trained row's optimizer steps: the naive row gets as many (not 5 steps to 40)
    for name in variants:
        extra, quota = VARIANTS[name]
        home = _home(work / sl.name, name.replace(" ", "_"), shared)
        rdir = _recipes_dir(cfg0, quota, home.root)
        if name == "naive LoRA" and steps:  # train.planned_epochs turns the floor into epochs
            extra = [*extra, f"train.min_steps={max(steps, cfg0.train.min_steps)}"]
        cfg = load_config(cfg_file, [*overrides, *extra, *([f"recipes.dir={rdir}"] if rdir else [])])
        log(f"[{sl.name}] {name}: {len(sl.rows)} facts through the pipeline")
        t = time.perf_counter()
        outcome = run_train([_write_triples(sl.rows, home.root / "triples.jsonl")], cfg, home, log=log)
        acc, results = _ask(base, outcome.train.adapter_dir, probes, cfg)
        _write_answers(results, home.root / "answers.jsonl")
        rows.append(_row(name, outcome, acc, time.perf_counter() - t))
        steps = steps or outcome.train.steps
        if fact_probes is None:
            fact_probes = [r.probe for r in outcome.before.results if r.probe.fact_id and
                           r.probe.kind in ("efficacy", "generalisation")]
            before = outcome.before
    if fact_probes is not None and context_row:
        t = time.perf_counter()
        ctx_acc, _ = _ask(base, None, in_context(fact_probes + probes, sl.facts), cfg0)
        rows.append({"row": "in-context (no training)", "efficacy": ctx_acc.get("efficacy", float("nan")),
                     "paraphrase": ctx_acc.get("paraphrase", float("nan")),
                     "portability": ctx_acc.get("portability", ctx_acc.get("multihop", float("nan"))),
                     "locality_authors": ctx_acc.get("locality_authors", float("nan")), "locality_ours": 1.0,
                     "general_ppl_change": 0.0, "kl_drift": 0.0, "tokens_per_s": float("nan"),
                     "wall_s": time.perf_counter() - t, "gate": "-"})
        rows.append({"row": "base model", "efficacy": before.accuracy("efficacy"),
                     "paraphrase": base_acc.get("paraphrase", float("nan")),
                     "portability": base_acc.get("portability", base_acc.get("multihop", float("nan"))),
                     "locality_authors": base_acc.get("locality_authors", float("nan")), "locality_ours": 1.0,
                     "neighbourhood": before.accuracy("neighbourhood"),
                     "general_ppl_change": 0.0, "kl_drift": 0.0, "tokens_per_s": float("nan"),
                     "wall_s": base_wall, "gate": "-"})
    continual = _continual(sl, probes, cfg_file, overrides, work, shared, nights, base, log) if nights else []
    return {"rows": rows, "continual": continual, "n_facts": len(sl.rows), "n_probes": len(probes)}


def _continual(sl: Slice, probes, cfg_file, overrides, work: Path, shared: Path, nights: int, base, log) -> list:
    """The slice in `nights` sequential batches, each night continuing from the champion; batch 1 re-asked."""
    from injector.config import load_config
    from injector.pipeline import run_train

    cfg = load_config(cfg_file, overrides)
    home = _home(work / sl.name, "continual", shared)
    size = -(-len(sl.rows) // nights)
    batches = [list(range(i, min(i + size, len(sl.rows)))) for i in range(0, len(sl.rows), size)]
    first = set(batches[0])
    out, first_probes = [], None
    for night, idx in enumerate(batches, 1):
        log(f"[{sl.name}] continual night {night}/{len(batches)}: {len(idx)} facts")
        t = time.perf_counter()
        path = _write_triples([sl.rows[i] for i in idx], home.root / f"night-{night}.jsonl")
        outcome = run_train([path], cfg, home, log=log)
        if first_probes is None:
            first_probes = [r.probe for r in outcome.before.results if r.probe.kind == "efficacy"] + \
                           [p for p in probes if p.kind == "paraphrase" and sl.batch_of.get(p.question) in first]
        acc, results = _ask(base, outcome.train.adapter_dir, first_probes, cfg)
        total = sum(r.correct for r in results) / len(results) if results else float("nan")
        out.append({"night": night, "facts": len(idx), "batch1_accuracy": total,
                    "batch1_efficacy": acc.get("efficacy", float("nan")),
                    "batch1_paraphrase": acc.get("paraphrase", float("nan")),
                    **_verdict(outcome.decision), "version": outcome.version,
                    "promoted": outcome.promoted, "wall_s": time.perf_counter() - t})
    return out


# --- report --------------------------------------------------------------------------------------------------------

COLUMNS = [("row", "row"), ("efficacy", "efficacy"), ("paraphrase", "authors' paraphrase"),
           ("portability", "portability / multi-hop"), ("locality_authors", "locality (authors', = base)"),
           ("locality_ours", "locality (ours) / base"), ("neighbourhood", "subjects' other relations"),
           ("general_ppl_change", "general PPL change"),
           ("kl_drift", "KL drift"), ("tokens_per_s", "train tok/s"), ("wall_s", "wall s"), ("gate", "gate")]


def _cell(key: str, v) -> str:
    if isinstance(v, str):
        return v
    if v != v:  # nan
        return "-"
    if key == "general_ppl_change":
        return f"{v:+.1%}"
    if key in ("tokens_per_s", "wall_s"):
        return f"{v:.0f}"
    return f"{v:.2f}"


def _verdict(decision) -> dict:
    """A trained row's gate fields: pass/fail and the names of the checks that refused it."""
    return {"gate": "pass" if decision.passed else "fail", "gate_failed": decision.failed}


def _gate(row: dict) -> str:
    """The gate cell: a refused row names the checks that refused it."""
    return f"fail: {', '.join(row['gate_failed'])}" if row.get("gate_failed") else row["gate"]


def tables(results: dict) -> str:
    out = []
    for name, res in results.items():
        out.append(f"#### {name}: {res['n_facts']} facts, {res['n_probes']} benchmark probes\n")
        out.append("| " + " | ".join(h for _, h in COLUMNS) + " |")
        out.append("|" + "---|" * len(COLUMNS))
        out += ["| " + " | ".join(_cell(k, r.get(k, float("nan"))) if k != "gate" else _gate(r) for k, _ in COLUMNS)
                + " |" for r in res["rows"]]
        if res["continual"]:
            out.append(f"\nContinual ({len(res['continual'])} nightly batches, accuracy on batch 1 after each):\n")
            out.append("| night | facts | batch-1 accuracy | efficacy | authors' paraphrase | gate | promoted "
                       "| wall s |")
            out.append("|---|---|---|---|---|---|---|---|")
            out += [f"| {c['night']} | {c['facts']} | {c['batch1_accuracy']:.2f} | {_cell('', c['batch1_efficacy'])} "
                    f"| {_cell('', c['batch1_paraphrase'])} | {_gate(c)} | {c['promoted']} | {c['wall_s']:.0f} |"
                    for c in res["continual"]]
        out.append("")
    return "\n".join(out)


def write_doc(doc: Path, name: str, body: str) -> None:
    """Replace benchmark `name`'s generated block of `doc` (between its markers), or append one."""
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    start, end = MARK.format(name=name, end="start"), MARK.format(name=name, end="end")
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")


def header(command: str, n: int, seed: int) -> str:
    import platform
    from datetime import date

    from injector.evaluate import hardware

    return (f"Generated by `{command}` on {date.today().isoformat()}; machine: {hardware()} "
            f"({platform.python_implementation()} {platform.python_version()}); slice: {n} per benchmark, "
            f"seed {seed}.\n")
