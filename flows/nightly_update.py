"""Prefect flow: the nightly update, ingest -> plan -> train -> judge -> record.

Each task is a few lines calling one engine function; decisions (the gate) stay in the engine.
I/O tasks (reading the drop, registry calls) retry with backoff; training and evaluation never do.
Run once by hand: `injector nightly --source DIR`; on a schedule: see prefect.yaml and flows/serve.py.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from injector import pipeline
from injector.config import Config, load_config
from injector.home import Home
from injector.lock import single_flight

IO_RETRIES = {"retries": 3, "retry_delay_seconds": [10, 60, 300]}


@task(name="ingest", **IO_RETRIES)
def ingest(source: str, cfg: Config, home: Home) -> pipeline.IngestOutcome:
    return pipeline.run_ingest([Path(source)], cfg, home, log=get_run_logger().info, locked=True)


@task(name="plan")
def plan(cfg: Config, home: Home) -> pipeline.Plan | None:
    return pipeline.plan_candidate(cfg, home, log=get_run_logger().info)


@task(name="start-run", **IO_RETRIES)
def start_run(p: pipeline.Plan, cfg: Config) -> str:
    return pipeline.start_run(p, cfg)


@task(name="train")
def train(p: pipeline.Plan, cfg: Config, home: Home, run_id: str):
    return pipeline.train_candidate(p, cfg, home, run_id)


@task(name="evaluate-and-gate")
def judge(p: pipeline.Plan, result, cfg: Config, home: Home):
    return pipeline.judge_candidate(p, result, cfg, home)


@task(name="register-and-promote", **IO_RETRIES)
def record(p: pipeline.Plan, result, after, decision, home: Home, run_id: str) -> tuple[str, bool]:
    version, promoted = pipeline.record_candidate(p, result, after, decision, home, run_id,
                                                  log=get_run_logger().info)
    pipeline.registry.end_run(run_id, "FINISHED")
    return version, promoted


def _publish(ing: pipeline.IngestOutcome, outcome: pipeline.TrainOutcome | None) -> None:
    s = ing.summary()
    lines = ["# injector nightly update", "",
             f"Read {s['read']} = accepted {s['accepted']} + rejected {s['rejected']} + duplicates "
             f"{s['duplicates']} (conflicting groups {s['conflicts']}); quarantine: {s['quarantine']}", "",
             f"Diff: added {s['added']}, changed {s['changed']}, retracted {s['retracted']}, "
             f"unchanged {s['unchanged']}", ""]
    if outcome is None or outcome.noop:
        lines.append("**No-op**: " + ("the drop holds nothing new (empty diff)" if ing.noop else
                                      "nothing pending to train") + "; no new model version.")
    else:
        t, d = outcome.train, outcome.decision
        lines += [f"Training: {t.n_examples} examples, {t.steps} steps, {t.epochs:.1f} epochs, "
                  f"{t.tokens_per_s:.0f} tokens/s, {t.wall_s:.0f} s", "",
                  f"## Gate: {'PASS' if d.passed else 'FAIL'} (relative checks vs {d.compared_with})", "",
                  "| check | value | bound | verdict |", "|---|---|---|---|",
                  *[f"| {r['check']} | {r['value']:.4f} | {r['bound']} | {r['verdict']} |" for r in d.table()], "",
                  f"Model version {outcome.version}: " + ("**promoted to champion**." if outcome.promoted else
                  "not promoted: " + (", ".join(c.name for c in d.checks if not c.passed) or
                                      "the champion changed during the run") + ".")]
        before, after = outcome.before.by_kind(), outcome.after.by_kind()
        create_table_artifact(key="accuracy-by-kind", description="Accuracy per probe kind, before/after",
                              table=[{"kind": k, "n": v["n"], "before": round(before.get(k, {}).get("accuracy", 0), 4),
                                      "after": round(v["accuracy"], 4)} for k, v in after.items()])
    create_markdown_artifact(key="nightly-summary", markdown="\n".join(lines), description="injector nightly")


@flow(name="nightly-update")
def nightly_update(source: str, config: str | None = None, overrides: list[str] | None = None) -> dict:
    """Ingest the drop at `source` and inject what is pending, under the home's single-flight lock."""
    home = Home.from_env().ensure()
    cfg = load_config(config, overrides or [])
    with single_flight(home.root, "nightly-update flow"):
        ing = ingest(source, cfg, home)
        p = None if ing.noop else plan(cfg, home)  # an empty diff ends the run early
        if p is None:
            _publish(ing, None)
            return {"noop": True, "ingest": ing.summary()}
        run_id = start_run(p, cfg)
        try:
            result = train(p, cfg, home, run_id)
            after, decision = judge(p, result, cfg, home)
        except BaseException:
            pipeline.registry.end_run(run_id, "FAILED")
            raise
        version, promoted = record(p, result, after, decision, home, run_id)
    outcome = pipeline.TrainOutcome(ingest=ing, before=p.before, after=after, train=result, decision=decision,
                                    version=version, promoted=promoted, previous_champion=p.current, run_id=run_id)
    _publish(ing, outcome)
    return {"noop": False, "version": version, "promoted": promoted, "gate": decision.table(),
            "ingest": ing.summary()}
