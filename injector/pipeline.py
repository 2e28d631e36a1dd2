"""The recipes behind `injector ingest` and `injector train`, top to bottom (torchtune style).

ingest -> diff -> ledger;  pending facts -> recipes -> train -> evaluate -> gate -> register -> ledger.
Each step calls one stage module; typed records cross the boundaries.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from injector import registry
from injector.config import Config
from injector.errors import InjectorError
from injector.gate import decide, load_thresholds, metrics_of
from injector.home import Home
from injector.ingest import Batch, read_batch, write_quarantine
from injector.ledger import Diff, Ledger
from injector.records import EvalReport, GateDecision, TrainResult


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


def run_train(triples: list[Path] | None, cfg: Config, home: Home, log=print) -> TrainOutcome:
    """Ingest `triples` (if given), then inject every pending fact into the champion (or the base) and gate it."""
    from injector.evaluate import evaluate
    from injector.models import load_tokenizer, load_with_adapter, resolve_base
    from injector.recipes import build_pairs, build_probes, load_recipes
    from injector.train import train_lora

    t0 = time.perf_counter()
    home.ensure()
    ingest = run_ingest(triples, cfg, home, log) if triples else None
    if ingest is not None and ingest.noop:
        return TrainOutcome(ingest=ingest, wall_s=time.perf_counter() - t0)
    ledger = Ledger(home.ledger)
    changes = ledger.pending()
    if not changes:
        ledger.close()
        log("no-op: no pending facts to train")
        return TrainOutcome(ingest=ingest, wall_s=time.perf_counter() - t0)

    recipes = load_recipes(cfg.content_path(cfg.recipes.dir), cfg.recipes.language)
    thresholds = load_thresholds(cfg.content_path(cfg.eval.dir) / "gate.yaml")
    pairs = build_pairs(changes, recipes, seed=cfg.train.seed)
    probes = build_probes(changes, recipes)
    log(f"{len(changes)} facts to inject: {sum(p.kind != 'dev' for p in pairs)} training pairs, {len(probes)} probes")

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
    before = evaluate(reference, tokenizer, probes, **ev)
    del reference

    run_dir = home.runs / time.strftime("%Y%m%d-%H%M%S")
    run_id = registry.start_run({**_flat("", cfg.model_dump(mode="json")), "n_facts": len(changes),
                                 "triples": ",".join(map(str, triples or [])), "base_sha256": base.sha256,
                                 "init_adapter_version": current or "none"}, run_name=f"train-{run_dir.name}")
    try:
        result = train_lora(pairs, base.path, run_dir, cfg.train, init_adapter, sink=registry.log_metrics,
                            quantization=cfg.model.quantization)
        candidate = load_with_adapter(base, result.adapter_dir, cfg.model.quantization)
        after = evaluate(candidate, tokenizer, probes, **ev)
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
