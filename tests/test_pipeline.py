"""`injector train` end to end on the tiny model: ingest -> train -> eval -> gate -> registry -> ledger."""

import json

import pytest
from conftest import tiny_config

from injector import registry
from injector.ledger import Ledger
from injector.pipeline import run_train


@pytest.fixture()
def lenient_eval(tmp_path):
    """Eval suite with the shipped thresholds but no latency bound (CI machines vary)."""
    d = tmp_path / "eval"
    d.mkdir()
    (d / "gate.yaml").write_text("absolute:\n  min_efficacy: 0.75\n  min_generalisation: 0.0\n"
                                 "  max_latency_ms_p95: 100000\n")
    return d


def test_train_registers_champion_and_is_idempotent(home, tiny_model_dir, tiny_facts_file, lenient_eval):
    cfg = tiny_config(tiny_model_dir, f"eval.dir={lenient_eval}")
    out = run_train([tiny_facts_file], cfg, home, log=lambda *a: None)
    assert out.version == "1" and out.decision.passed and out.promoted, out.decision.table()
    registry.connect(home)
    assert registry.champion() == "1"
    assert registry.version_tags("1")["gate"] == "pass"
    led = Ledger(home.ledger)
    assert not led.pending() and all(r["learned_version"] == "1" for r in led.facts())
    assert all(r["last_accuracy"] is not None for r in led.facts())
    report = json.loads((next(home.runs.iterdir()) / "report" / "eval_after.json").read_text())
    assert report["by_kind"]["efficacy"]["accuracy"] >= 0.75

    again = run_train([tiny_facts_file], cfg, home, log=lambda *a: None)
    assert again.noop and again.ingest.noop
    assert [v["version"] for v in registry.versions()] == ["1"]


def test_failing_gate_leaves_champion_and_keeps_facts_pending(home, tiny_model_dir, tiny_facts_file, tmp_path):
    d = tmp_path / "strict"
    d.mkdir()
    (d / "gate.yaml").write_text("absolute:\n  min_efficacy: 1.0\n  max_latency_ms_p95: 0.001\n")
    cfg = tiny_config(tiny_model_dir, f"eval.dir={d}", "train.epochs=1")
    out = run_train([tiny_facts_file], cfg, home, log=lambda *a: None)
    assert out.version == "1" and not out.decision.passed and not out.promoted
    registry.connect(home)
    assert registry.champion() is None and registry.version_tags("1")["gate"] == "fail"
    assert len(Ledger(home.ledger).pending()) == 4
