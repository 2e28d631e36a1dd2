"""Prefect flow: the nightly update. The stage sequence is `pipeline.run_train`'s, not a copy of it.

Each stage runs as a Prefect task (so the UI shows where a night went and what failed); decisions (the gate) stay
in the engine. Only the registration retries: it is idempotent (keyed by the MLflow run id, a retry finds the
version its first attempt made). Bad input is never retried; training and evaluation never are.
Run once by hand: `injector nightly --source DIR`; on a schedule: see prefect.yaml and flows/serve.py.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from injector import pipeline
from injector.config import load_config
from injector.errors import InjectorError
from injector.home import Home

IDEMPOTENT = {"record": {"retries": 3, "retry_delay_seconds": [10, 60, 300]}}


def _retry_on_infra_only(task, task_run, state) -> bool:
    """Bad input (an InjectorError that is not an infrastructure fault) fails at once."""
    try:
        state.result()
    except InjectorError as e:
        return e.exit_code == 4
    except Exception:
        return True
    return False


def _as_task(name: str, fn, *args, **kwargs):
    opts = IDEMPOTENT.get(name, {})
    if opts:
        opts = {**opts, "retry_condition_fn": _retry_on_infra_only}
    return task(fn, name=name, cache_policy=NO_CACHE, **opts)(*args, **kwargs)


def _publish(outcome: pipeline.TrainOutcome) -> None:
    lines = ["# injector nightly update", ""]
    if outcome.ingest is not None:
        s = outcome.ingest.summary()
        lines += [f"Read {s['read']} = accepted {s['accepted']} + rejected {s['rejected']} + duplicates "
                  f"{s['duplicates']} (conflicting groups {s['conflicts']}); quarantine: {s['quarantine']}", "",
                  f"Diff: added {s['added']}, changed {s['changed']}, retracted {s['retracted']}, "
                  f"unchanged {s['unchanged']}", ""]
    if outcome.noop:
        lines.append("**No-op**: nothing new in the drop and nothing pending to train; no new model version.")
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
    lines += ["", "## Time per stage", "", "| stage | s |", "|---|---|",
              *[f"| {k} | {v:.1f} |" for k, v in outcome.stage_s.items()]]
    create_markdown_artifact(key="nightly-summary", markdown="\n".join(lines), description="injector nightly")


@flow(name="nightly-update")
def nightly_update(source: str, config: str | None = None, overrides: list[str] | None = None) -> dict:
    """Ingest the drop at `source` and inject what is pending, under the home's single-flight lock."""
    home = Home.from_env().ensure()
    cfg = load_config(config, overrides or [])
    outcome = pipeline.run_train([Path(source)], cfg, home, log=get_run_logger().info, runner=_as_task)
    _publish(outcome)
    out = pipeline.outcome_summary(outcome)
    return {k: out[k] for k in ("noop", "exit_code", "version", "promoted", "gate", "ingest", "stage_s") if k in out}
