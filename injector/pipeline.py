"""The `injector train` recipe, top to bottom: ingest -> recipes -> train -> evaluate -> gate -> register.

Reads like a recipe (torchtune style): each step calls one stage module; records cross the boundaries.
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
from injector.ingest import Batch, read_jsonl
from injector.records import EvalReport, FactChange, GateDecision, TrainResult


@dataclass(frozen=True)
class TrainOutcome:
    batch: Batch
    before: EvalReport
    after: EvalReport
    train: TrainResult
    decision: GateDecision
    version: str
    promoted: bool
    previous_champion: str | None
    run_id: str
    wall_s: float


def _flat(prefix: str, obj) -> dict:
    out = {}
    for k, v in (obj.items() if isinstance(obj, dict) else []):
        key = f"{prefix}{k}"
        out.update(_flat(f"{key}.", v) if isinstance(v, dict) else {key: v})
    return out


def run_train(triples_path: Path, cfg: Config, home: Home, log=print) -> TrainOutcome:
    """Inject the facts in `triples_path` into the current champion (or the base) and gate the result."""
    from injector.evaluate import evaluate
    from injector.models import load_tokenizer, load_with_adapter, resolve_base
    from injector.recipes import build_pairs, build_probes, load_recipes
    from injector.train import train_lora

    t0 = time.perf_counter()
    home.ensure()
    batch = read_jsonl(triples_path)
    log(f"read {batch.read} records: {len(batch.triples)} accepted, {len(batch.rejected)} rejected, "
        f"{batch.duplicates} duplicates")
    for r in batch.rejected:
        log(f"  rejected {r.where}: {r.reason}")
    if not batch.triples:
        raise InjectorError(f"{triples_path}: no valid triples to train on")
    changes = [FactChange(t) for t in batch.triples]

    recipes = load_recipes(cfg.content_path(cfg.recipes.dir), cfg.recipes.language)
    thresholds = load_thresholds(cfg.content_path(cfg.eval.dir) / "gate.yaml")
    pairs = build_pairs(changes, recipes, seed=cfg.train.seed)
    probes = build_probes(changes, recipes)
    log(f"built {sum(p.kind != 'dev' for p in pairs)} training pairs, {len(probes)} probes")

    base = resolve_base(cfg.model.base, home.models)
    registry.connect(home)
    current = registry.champion()
    init_adapter = None
    if current and cfg.train.init == "champion":
        adapter, base_path = registry.fetch_adapter(current, home.adapters)
        if registry.version_tags(current).get("base_sha256") == base.sha256:
            init_adapter = adapter
        else:
            log(f"champion v{current} was trained on another base model; starting from the base")
    tokenizer = load_tokenizer(base.path)
    ev = dict(max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
              latency_samples=cfg.eval.latency_samples)
    reference = load_with_adapter(base, init_adapter, cfg.model.quantization)
    before = evaluate(reference, tokenizer, probes, **ev)
    del reference

    run_dir = home.runs / time.strftime("%Y%m%d-%H%M%S")
    run_id = registry.start_run({**_flat("", cfg.model_dump(mode="json")), "triples": str(triples_path),
                                 "base_sha256": base.sha256, "init_adapter_version": current or "none"},
                                run_name=f"train-{run_dir.name}")
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
                else "fail", "compared_with": decision.compared_with, "triples": str(triples_path),
                **{f"gate.{c.name}": f"{c.value:.4f} {c.op} {c.bound:g}: {'pass' if c.passed else 'FAIL'}"
                   for c in decision.checks}}
        version = registry.log_adapter(result.adapter_dir, base.path, tags)
        promoted = decision.passed and registry.move_champion(version, current, "gate passed")
        if decision.passed and not promoted:
            log("the champion changed while this run was gated; not promoted (run `injector promote` to re-gate)")
        registry.end_run("FINISHED")
    except BaseException:
        registry.end_run("FAILED")
        raise
    return TrainOutcome(batch=batch, before=before, after=after, train=result, decision=decision, version=version,
                        promoted=promoted, previous_champion=current, run_id=run_id,
                        wall_s=time.perf_counter() - t0)


def outcome_summary(o: TrainOutcome) -> dict:
    return {"version": o.version, "promoted": o.promoted, "previous_champion": o.previous_champion,
            "run_id": o.run_id, "gate": o.decision.table(), "train": {k: v for k, v in asdict(o.train).items()
                                                                      if "history" not in k},
            "by_kind_before": o.before.by_kind(), "by_kind_after": o.after.by_kind(), "wall_s": o.wall_s}
