"""Snapshot diff cases, idempotent re-ingest, crash safety of the ledger."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from injector.config import load_config
from injector.home import Home
from injector.ledger import Ledger
from injector.pipeline import run_ingest

ROOT = Path(__file__).resolve().parent.parent


def jl(path: Path, *rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def F(s, p, o, **kw):
    return {"subject": s, "predicate": p, "object": o, **kw}


@pytest.fixture()
def h(tmp_path):
    return Home.from_env(tmp_path / "home").ensure()


def ingest(h, path, mode="delta", *extra):
    return run_ingest([path], load_config(None, [f"ingest.mode={mode}", *extra]), h, log=lambda *a: None)


def test_diff_cases_delta(tmp_path, h):
    first = ingest(h, jl(tmp_path / "1.jsonl", F("Zorvex", "ceo", "Mara"), F("Zorvex", "employee", "Ann"),
                         F("Calvaria", "capital", "Brennholt")))
    assert first.diff.counts() == {"added": 3, "changed": 0, "retracted": 0, "unchanged": 0}
    second = ingest(h, jl(tmp_path / "2.jsonl", F("Zorvex", "ceo", "Tobias"),  # single-valued: changed
                          F("Zorvex", "employee", "Bob"),  # multi-valued: added
                          F("Calvaria", "capital", "Brennholt"),  # unchanged
                          F("Zorvex", "employee", "Ann", op="retract"),
                          F("Nobody", "employee", "X", op="retract")))
    assert second.diff.counts() == {"added": 1, "changed": 1, "retracted": 1, "unchanged": 1}
    assert second.diff.changed[0].old_object == "Mara" and second.diff.unknown_retractions == 1
    led = Ledger(h.ledger)
    status = {(r["predicate"], r["object"]): r["status"] for r in led.facts("Zorvex")}
    assert status == {("ceo", "Mara"): "changed", ("ceo", "Tobias"): "active", ("employee", "Ann"): "retracted",
                      ("employee", "Bob"): "active"}
    pending = {c.triple.object: (c.kind, c.old_object) for c in led.pending()}
    assert pending["Tobias"] == ("changed", "Mara") and "Ann" not in pending and "Mara" not in pending


def test_snapshot_mode_retracts_absent_facts(tmp_path, h):
    ingest(h, jl(tmp_path / "1.jsonl", F("A", "p", "1"), F("B", "p", "2")), mode="snapshot")
    # half of a two-fact ledger: above the default ingest.max_retract_fraction (tests/test_faults.py)
    out = ingest(h, jl(tmp_path / "2.jsonl", F("A", "p", "1")), "snapshot", "ingest.max_retract_fraction=1")
    assert out.diff.counts() == {"added": 0, "changed": 0, "retracted": 1, "unchanged": 1}
    assert [r["subject"] for r in Ledger(h.ledger).facts(status="retracted")] == ["B"]


def test_same_input_twice_is_a_noop(tmp_path, h):
    f = jl(tmp_path / "1.jsonl", F("A", "ceo", "1"), F("B", "ceo", "2"))
    a, b = ingest(h, f, "snapshot"), ingest(h, f, "snapshot")
    assert not a.noop and b.noop and b.snapshot_id is None
    assert a.batch.content_hash == b.batch.content_hash
    assert b.diff.counts() == {"added": 0, "changed": 0, "retracted": 0, "unchanged": 2}
    assert len(Ledger(h.ledger).conn.execute("SELECT * FROM snapshots").fetchall()) == 1


def test_too_many_rejects_stop_before_anything_is_recorded(tmp_path, h):
    f = jl(tmp_path / "bad.jsonl", F("A", "p", "1"), F("", "p", "2"), F("B", "", "3"))
    with pytest.raises(Exception, match="rejected .*ingest.max_reject_fraction"):
        ingest(h, f)
    assert Ledger(h.ledger).last_snapshot() is None


def test_learned_and_accuracy_written_back(tmp_path, h):
    ingest(h, jl(tmp_path / "1.jsonl", F("A", "ceo", "1"), F("B", "ceo", "2")))
    led = Ledger(h.ledger)
    ids = [c.triple.id for c in led.pending()]
    led.mark_learned(ids[:1], "3")
    led.record_accuracy({ids[0]: 0.75}, "3")
    assert len(led.pending()) == 1 and len(led.learned()) == 1
    row = [r for r in led.facts() if r["fact_id"] == ids[0]][0]
    assert (row["learned_version"], row["last_accuracy"], row["last_eval_version"]) == ("3", 0.75, "3")


def test_killed_mid_ingest_leaves_ledger_as_it_was(tmp_path, h):
    ingest(h, jl(tmp_path / "1.jsonl", *[F(f"S{i}", "ceo", "old") for i in range(50)]))
    before = Ledger(h.ledger).facts()
    rows = [F(f"S{i}", "ceo", "new") for i in range(50)] + [F(f"T{i}", "ceo", "x") for i in range(50)]
    f2 = jl(tmp_path / "2.jsonl", *rows)
    env = {**os.environ, "INJECTOR_HOME": str(h.root), "INJECTOR_FAULT_KILL_AFTER_WRITES": "60"}
    proc = subprocess.run([sys.executable, "-m", "injector", "ingest", str(f2)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9  # SIGKILL, mid-transaction
    led = Ledger(h.ledger)
    assert led.facts() == before
    assert len(led.conn.execute("SELECT * FROM snapshots").fetchall()) == 1
    # and the next ingest of the same drop goes through
    out = ingest(h, f2)
    assert out.diff.counts()["changed"] == 50 and out.diff.counts()["added"] == 50
