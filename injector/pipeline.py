"""The recipes behind `injector ingest` and `injector train`, top to bottom (torchtune style).

ingest -> diff -> ledger;  pending facts -> recipes -> train -> evaluate -> gate -> register -> ledger.
Each step calls one stage module; typed records cross the boundaries.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from injector import registry
from injector.config import Config
from injector.errors import InjectorError
from injector.gate import decide, load_thresholds, metrics_of
from injector.home import Home
from injector.ingest import Batch, read_batch, write_quarantine
from injector.ledger import Diff, Ledger
from injector.probes import read_questions
from injector.records import EvalReport, GateDecision, TrainResult
from injector.replay import model_key, retention_probes
from injector.train import EwcSpec, fingerprint


@dataclass(frozen=True)
class IngestOutcome:
    batch: Batch
    diff: Diff
    snapshot_id: int | None  # None: nothing was recorded (no-op)
    quarantine: str | None
    noop: bool

    def summary(self) -> dict:
        b = self.batch
        return {"read": b.read, "accepted": len(b.triples), "rejected": len(b.rejected), "duplicates": b.duplicates,
                "conflicts": b.conflicts, "labels": b.labels, **self.diff.counts(),
                "unknown_retractions": self.diff.unknown_retractions, "quarantine": self.quarantine,
                "content_hash": b.content_hash, "snapshot": self.snapshot_id, "noop": self.noop}


@dataclass(frozen=True)
class TrainOutcome:
    ingest: IngestOutcome | None
    before: EvalReport | None = None
    after: EvalReport | None = None
    train: TrainResult | None = None
    decision: GateDecision | None = None
    version: str | None = None
    promoted: bool = False
    previous_champion: str | None = None
    run_id: str | None = None
    wall_s: float = 0.0

    @property
    def noop(self) -> bool:
        return self.version is None


def run_ingest(paths: list[Path], cfg: Config, home: Home, log=print) -> IngestOutcome:
    """Read, validate, diff against the ledger and record the snapshot (all or nothing)."""
    from injector.recipes import load_recipes

    home.ensure()
    recipes = load_recipes(cfg.content_path(cfg.recipes.dir), cfg.recipes.language)
    batch = read_batch(paths, recipes.single_valued, cfg.ingest.mode, cfg.ingest.language,
                       cfg.ingest.max_field_length)
    quarantine = write_quarantine(batch, home.quarantine)
    assert batch.read == len(batch.triples) + len(batch.rejected) + batch.duplicates  # every record accounted for
    log(f"read {batch.read} = accepted {len(batch.triples)} + rejected {len(batch.rejected)} + duplicates "
        f"{batch.duplicates}" + (f" (conflicting groups: {batch.conflicts})" if batch.conflicts else ""))
    for r in batch.rejected[:20]:
        log(f"  rejected {r.where}: {r.reason}")
    if len(batch.rejected) > 20:
        log(f"  ... and {len(batch.rejected) - 20} more in {quarantine}")
    if batch.read and batch.rejected_fraction > cfg.ingest.max_reject_fraction:
        raise InjectorError(f"{batch.rejected_fraction:.0%} of the records were rejected (limit "
                            f"{cfg.ingest.max_reject_fraction:.0%}, ingest.max_reject_fraction): stopped before "
                            f"training; see {quarantine}")
    ledger = Ledger(home.ledger)
    try:
        last = ledger.last_snapshot()
        diff = ledger.diff(batch, cfg.ingest.mode, recipes.single_valued)
        if diff.empty:
            same = last is not None and last["content_hash"] == batch.content_hash
            log("no-op: " + ("the same input as the last snapshot" if same else "nothing added, changed or retracted"))
            return IngestOutcome(batch, diff, None, str(quarantine) if quarantine else None, True)
        snap = ledger.commit(batch, diff, cfg.ingest.mode, ", ".join(map(str, paths)),
                             str(quarantine) if quarantine else None)
    finally:
        ledger.close()
    log("diff: " + ", ".join(f"{k} {v}" for k, v in diff.counts().items()) + f" (snapshot {snap})")
    return IngestOutcome(batch, diff, snap, str(quarantine) if quarantine else None, False)


def _flat(prefix: str, obj) -> dict:
    out = {}
    for k, v in (obj.items() if isinstance(obj, dict) else []):
        key = f"{prefix}{k}"
        out.update(_flat(f"{key}.", v) if isinstance(v, dict) else {key: v})
    return out


def run_train(triples: list[Path] | None, cfg: Config, home: Home, log=print, resume: bool = False) -> TrainOutcome:
    """Ingest `triples` (if given), then inject every pending fact into the champion (or the base) and gate it."""
    from injector.evaluate import evaluate, kl_drift
    from injector.models import load_tokenizer, load_with_adapter, resolve_base
    from injector.recipes import build_pairs, build_probes, load_recipes, statement_of
    from injector.train import train_lora

    t0 = time.perf_counter()
    home.ensure()
    ingest = run_ingest(triples, cfg, home, log) if triples else None
    ledger = Ledger(home.ledger)
    changes = ledger.pending()  # new and changed facts, and any an earlier run failed to get promoted
    if not changes:
        ledger.close()
        log("no-op: no pending facts to train; no new model version")
        return TrainOutcome(ingest=ingest, wall_s=time.perf_counter() - t0)
    if ingest is not None and ingest.noop:
        log(f"{len(changes)} facts are still pending from an earlier run that was not promoted: training them")

    recipes = load_recipes(cfg.content_path(cfg.recipes.dir), cfg.recipes.language)
    thresholds = load_thresholds(cfg.content_path(cfg.eval.dir) / "gate.yaml")
    pairs = build_pairs(changes, recipes, seed=cfg.train.seed)
    probes = build_probes(changes, recipes)
    earlier = ledger.learned(exclude={c.triple.id for c in changes})
    probes += retention_probes(earlier, recipes, cfg.eval.retention_samples, cfg.train.seed)
    if cfg.eval.locality:
        probes += read_questions(cfg.content_path(cfg.eval.dir) / f"locality.{cfg.recipes.language}.jsonl",
                                 default_kind="locality")

    base = resolve_base(cfg.model.base, home.models)
    registry.connect(home)
    current = registry.champion()
    init_adapter = None
    if current and cfg.train.init == "champion":
        if registry.version_tags(current).get("base_sha256") == base.sha256:
            init_adapter, _ = registry.fetch_adapter(current, home.adapters)
        else:
            log(f"champion v{current} was trained on another base model; starting from the base")
    tokenizer = load_tokenizer(base.path)
    ev = dict(max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
              latency_samples=cfg.eval.latency_samples)
    reference = load_with_adapter(base, init_adapter, cfg.model.quantization)
    pairs += _replay(pairs, changes, earlier, recipes, cfg, reference, tokenizer, home, base.sha256,
                     current if init_adapter else None)
    n_new = sum(p.origin == "new" and p.kind != "dev" for p in pairs)
    log(f"{len(changes)} facts to inject: {n_new} new + {sum(p.origin == 'replay' for p in pairs)} replay pairs, "
        f"{len(probes)} probes")
    before = evaluate(reference, tokenizer, probes, **ev)
    statements = [statement_of(c.triple, recipes) for c in changes]
    ref_key = model_key(base.sha256, current if init_adapter else None)
    before = replace(before, extra=_measure(reference, tokenizer, cfg, home, statements, ref_key))
    del reference

    run_dir = _run_dir(home, resume)
    run_id = registry.start_run({**_flat("", cfg.model_dump(mode="json")), "n_facts": len(changes),
                                 "triples": ",".join(map(str, triples or [])), "base_sha256": base.sha256,
                                 "init_adapter_version": current or "none"}, run_name=f"train-{run_dir.name}")
    try:
        replay = tuple(p for p in pairs if p.origin == "replay")
        ewc_spec = EwcSpec(cfg.train.ewc_lambda, replay, home.cache / f"fisher-{model_key(base.sha256, current)}-"
                           f"{fingerprint(list(replay), base.sha256, cfg.train, None)['data']}.safetensors") \
            if cfg.train.ewc_lambda > 0 else None  # first run: anchored at the zero-init adapter (the base)
        result = train_lora(pairs, base.path, run_dir, cfg.train, init_adapter, sink=registry.log_metrics,
                            quantization=cfg.model.quantization, ewc_spec=ewc_spec, base_sha=base.sha256,
                            resume=resume)
        candidate = load_with_adapter(base, result.adapter_dir, cfg.model.quantization)
        after = evaluate(candidate, tokenizer, probes, **ev)
        extra = _measure(candidate, tokenizer, cfg, home, statements)
        if cfg.eval.kl:
            loc = [r for r in before.results if r.probe.kind == "locality"]
            reference = load_with_adapter(base, init_adapter, cfg.model.quantization)
            extra["kl_drift"] = kl_drift(reference, candidate, tokenizer, [r.probe.question for r in loc],
                                         [r.answer for r in loc], cfg.eval.batch_size)
            del reference
        after = replace(after, extra=extra)
        del candidate
        metrics = metrics_of(after)
        decision = decide(metrics, thresholds, reference=metrics_of(before),
                          compared_with=f"v{current}" if current else "base")
        registry.log_metrics({**{f"eval_{k}": v for k, v in metrics.items()},
                              "train_tokens_per_s": result.tokens_per_s, "train_wall_s": result.wall_s})
        from injector.report import write_run_report

        registry.log_artifacts(write_run_report(run_dir / "report", before, after, result, decision), "report")
        tags = {"base_model_path": base.path, "base_sha256": base.sha256, "gate": "pass" if decision.passed
                else "fail", "compared_with": decision.compared_with, "n_facts": str(len(changes)),
                "triples": ",".join(map(str, triples or [])),
                **{f"gate.{c.name}": f"{c.value:.4f} {c.op} {c.bound:g}: {'pass' if c.passed else 'FAIL'}"
                   for c in decision.checks}}
        version = registry.log_adapter(result.adapter_dir, base.path, tags)
        promoted = decision.passed and registry.move_champion(version, current, "gate passed")
        if decision.passed and not promoted:
            log("the champion changed while this run was gated; not promoted (run `injector promote` to re-gate)")
        ledger.record_accuracy(per_fact_accuracy(after), version)
        if promoted:
            ledger.mark_learned([c.triple.id for c in changes], version)
        registry.end_run("FINISHED")
    except BaseException:
        registry.end_run("FAILED")
        raise
    finally:
        ledger.close()
    return TrainOutcome(ingest=ingest, before=before, after=after, train=result, decision=decision, version=version,
                        promoted=promoted, previous_champion=current, run_id=run_id, wall_s=time.perf_counter() - t0)


def _measure(model, tokenizer, cfg: Config, home: Home, statements: list[str], key: str | None = None) -> dict:
    """Perplexity on the general corpus (cached per reference model) and on the facts' statements."""
    import json

    from injector.evaluate import perplexity

    out = {"fact_ppl": perplexity(model, tokenizer, statements, batch_size=cfg.eval.batch_size)}
    if cfg.eval.ppl_max_tokens:
        cache = home.cache / f"ppl-{key}-{cfg.eval.ppl_max_tokens}.json" if key else None
        if cache is not None and cache.exists():
            out["general_ppl"] = json.loads(cache.read_text())["general_ppl"]
        else:
            corpus = cfg.content_path(cfg.eval.dir) / f"general_corpus.{cfg.recipes.language}.txt"
            if not corpus.exists():
                raise InjectorError(f"general-text corpus not found: {corpus} (or set eval.ppl_max_tokens=0)")
            paras = [p for p in corpus.read_text(encoding="utf-8").split("\n\n") if not p.startswith("#")]
            out["general_ppl"] = perplexity(model, tokenizer, paras, max_tokens=cfg.eval.ppl_max_tokens)
            if cache is not None:
                cache.write_text(json.dumps({"general_ppl": out["general_ppl"]}))
    return out


def _run_dir(home: Home, resume: bool) -> Path:
    """A new run dir, or with `resume` the newest one that holds checkpoints."""
    if resume:
        runs = sorted(p for p in home.runs.iterdir() if (p / "checkpoints").is_dir()) if home.runs.exists() else []
        if not runs:
            raise InjectorError(f"nothing to resume: no run with checkpoints under {home.runs}")
        return runs[-1]
    return home.runs / time.strftime("%Y%m%d-%H%M%S")


def _replay(pairs, changes, earlier, recipes, cfg: Config, model, tokenizer, home: Home, base_sha: str,
            adapter_version: str | None) -> list:
    """Replay for a new:replay mix: earlier facts (up to their share), anchors in the batch's relations (up to
    theirs), self-distilled general instructions for the rest."""
    import random

    from injector.replay import (
        anchor_prompts,
        distilled_pairs,
        load_anchors,
        load_prompts,
        model_key,
        old_fact_pairs,
        replay_budget,
        self_distill,
    )

    r = cfg.recipes
    budget = replay_budget(sum(p.kind != "dev" for p in pairs), r.new, r.replay)
    if budget == 0:
        return []
    rng = random.Random(cfg.train.seed)
    old = old_fact_pairs(earlier, recipes, round(budget * r.old_fact_share) if r.general_replay else budget, rng)
    rest = budget - len(old)
    if rest <= 0 or not r.general_replay:
        return old
    rels = [recipes.relation(c.triple.predicate).name for c in changes if not c.triple.question]
    anchors = anchor_prompts(rels, load_anchors(cfg.content_path(r.dir) / f"anchors.{r.language}.yaml"), recipes,
                             round(rest * r.anchor_share), rng)
    prompts = load_prompts(cfg.content_path(r.dir) / f"general_prompts.{r.language}.jsonl")
    general = rng.sample(prompts, min(rest - len(anchors), len(prompts)))
    cache = home.cache / f"distill-{model_key(base_sha, adapter_version)}.jsonl"
    answers = self_distill(model, tokenizer, anchors + general, cache, r.distill_max_new_tokens, cfg.eval.batch_size)
    ask = dict(anchors + general)
    return (old + distilled_pairs({i: answers[i] for i, _ in anchors}, ask, "anchor")
            + distilled_pairs({i: answers[i] for i, _ in general}, ask, "general"))


def per_fact_accuracy(report: EvalReport) -> dict[str, float]:
    acc: dict[str, list[bool]] = {}
    for r in report.results:
        if r.probe.fact_id:
            acc.setdefault(r.probe.fact_id, []).append(r.correct)
    return {k: sum(v) / len(v) for k, v in acc.items()}


def outcome_summary(o: TrainOutcome) -> dict:
    out: dict = {"noop": o.noop, "ingest": o.ingest.summary() if o.ingest else None, "wall_s": o.wall_s}
    if o.noop:
        return out
    return {**out, "version": o.version, "promoted": o.promoted, "previous_champion": o.previous_champion,
            "run_id": o.run_id, "gate": o.decision.table(),
            "train": {k: v for k, v in asdict(o.train).items() if "history" not in k},
            "by_kind_before": o.before.by_kind(), "by_kind_after": o.after.by_kind()}
