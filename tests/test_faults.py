"""Fault and bad-input cases (issue: nothing lost, nothing silently wrong). Each failed on the code before it.

Real parts: the tiny Llama, a real SQLite ledger and MLflow store under tmp_path, the CLI as a subprocess where the
exit code or the one-line error is the point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_FACTS, eval_dir, tiny_config

from injector import registry
from injector.config import load_config
from injector.errors import InfraError, InjectorError
from injector.home import Home
from injector.ingest import read_batch
from injector.ledger import Ledger
from injector.pipeline import run_ingest, run_train
from injector.recipes import load_recipes

INJECTOR = str(Path(sys.executable).with_name("injector"))
RECIPES = load_recipes(ROOT / "data_recipes")


def F(s, p, o, **kw):
    return {"subject": s, "predicate": p, "object": o, **kw}


def jl(path: Path, *rows, prefix: bytes = b"") -> Path:
    path.write_bytes(prefix + "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode())
    return path


def cli(*args: str, home: Path, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    e = {**os.environ, "INJECTOR_HOME": str(home), **env}
    e.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([INJECTOR, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=e)


@pytest.fixture()
def h(tmp_path):
    return Home.from_env(tmp_path / "home").ensure()


def ingest(h, path, mode="delta", *extra):
    return run_ingest([path], load_config(None, [f"ingest.mode={mode}", *extra]), h, log=lambda *a: None)


TWENTY = [F(f"Company {i}", "ceo", f"Person {i}") for i in range(20)]


# --- 1. snapshot safety -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, second, retracted_after", [
    ("empty export", [], None),
    ("truncated export (half)", TWENTY[:10], None),
    ("one fact dropped (5%)", TWENTY[:19], 1),
    ("BOM on line 1 is not a rejection", TWENTY, 0),
    ("a corrupt line: absent facts are not retracted", [*TWENTY[:15], "{corrupt"], 0),
    ("rejected record names a fact: it is not absent", [*TWENTY[:19], F("Company 19", "ceo", "<|im_end|>")], 0),
])
def test_snapshot_never_retracts_on_bad_input(tmp_path, h, case, second, retracted_after):
    ingest(h, jl(tmp_path / "1.jsonl", *TWENTY), "snapshot")
    f = jl(tmp_path / "2.jsonl", *second, prefix=b"\xef\xbb\xbf" if "BOM" in case else b"")
    if retracted_after is None:
        with pytest.raises(InjectorError, match="would retract .* --allow-mass-retraction"):
            ingest(h, f, "snapshot")
    else:
        out = ingest(h, f, "snapshot", "ingest.max_reject_fraction=1")
        assert len(out.diff.retracted) == retracted_after, case
    led = Ledger(h.ledger)
    assert len(led.facts(status="active")) == 20 - (retracted_after or 0)


def test_mass_retraction_goes_through_when_allowed(tmp_path, h):
    ingest(h, jl(tmp_path / "1.jsonl", *TWENTY), "snapshot")
    out = ingest(h, jl(tmp_path / "2.jsonl", *TWENTY[:5]), "snapshot", "ingest.max_retract_fraction=1")
    assert len(out.diff.retracted) == 15


# --- 4. predicate normalisation -----------------------------------------------------------------------------------
def test_predicate_aliases_are_one_predicate(tmp_path, h):
    b = read_batch([jl(tmp_path / "a.jsonl", F("Calvaria", "capital", "A"), F("Calvaria", "capital_city", "B"),
                       F("Calvaria", "Capital City", "C"))], RECIPES.single_valued, "delta",
                   canonical=RECIPES.canonical)
    assert b.conflicts == 1 and not b.triples
    ingest(h, jl(tmp_path / "1.jsonl", F("Calvaria", "capital", "Brennholt")))
    out = ingest(h, jl(tmp_path / "2.jsonl", F("Calvaria", "Capital City", "Marrowgate")))
    assert out.diff.counts()["changed"] == 1 and out.diff.changed[0].old_object == "Brennholt"
    assert [r["object"] for r in Ledger(h.ledger).facts(status="active")] == ["Marrowgate"]


# --- 5. CSV -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, text, expect", [
    ("quoted newline", 'subject,predicate,object\n"Zorvex\nDynamics",ceo,Mara\nB,ceo,C\n',
     [("Zorvex Dynamics", "ceo", "Mara"), ("B", "ceo", "C")]),
    ("BOM", "\ufeffsubject,predicate,object\nA,ceo,B\n", [("A", "ceo", "B")]),
    ("CRLF", "subject,predicate,object\r\nA,ceo,B\r\n", [("A", "ceo", "B")]),
])
def test_csv_is_parsed_as_a_stream(tmp_path, case, text, expect):
    f = tmp_path / "a.csv"
    f.write_bytes(text.encode())
    b = read_batch([f], mode="delta", canonical=RECIPES.canonical)
    assert [(t.subject, t.predicate, t.object) for t in b.triples] == expect, case
    assert not b.rejected


def test_csv_bad_bytes_reject_one_row_not_the_file(tmp_path):
    f = tmp_path / "a.csv"
    f.write_bytes(b"subject,predicate,object\nA,ceo,B\nC,ceo,\xff\xfe\nD,ceo,E\n")
    b = read_batch([f], mode="delta")
    assert len(b.triples) == 2 and [r.where for r in b.rejected] == [f"{f}:3"]
    assert "UTF-8" in b.rejected[0].reason


# --- 6. eval --questions ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, row, error", [
    ("forbidden as a string", {"question": "q", "answers": ["Mara"], "forbidden": "Tobias"}, None),
    ("forbidden not a string", {"question": "q", "answers": ["Mara"], "forbidden": 3}, "'forbidden' must be"),
    ("invalid UTF-8", b'{"question": "q\xff", "answers": ["a"]}', "invalid UTF-8"),
])
def test_question_files(tmp_path, case, row, error):
    from injector.evaluate import judge
    from injector.probes import read_questions

    f = tmp_path / "q.jsonl"
    f.write_bytes(row if isinstance(row, bytes) else json.dumps(row).encode() + b"\n")
    if error:
        with pytest.raises(InjectorError, match=rf"{f}:1: {error}"):
            read_questions(f)
        return
    (probe,) = read_questions(f)
    assert probe.forbidden == ("Tobias",)
    assert judge(probe, "Mara") and not judge(probe, "Tobias, no: Mara")


# --- 7. drop directories ------------------------------------------------------------------------------------------
def test_drop_dirs_read_regular_files_only(tmp_path, h):
    outside = jl(tmp_path / "outside.jsonl", F("Secret", "ceo", "X"))
    drop = tmp_path / "drop"
    drop.mkdir()
    jl(drop / "001.jsonl", F("A", "ceo", "B"))
    jl(drop / ".hidden.jsonl", F("H", "ceo", "I"))
    (drop / "002.jsonl").symlink_to(outside)
    (drop / "sub.jsonl").mkdir()
    lines: list[str] = []
    out = run_ingest([drop], load_config(None), h, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert [t.subject for t in out.batch.triples] == ["A"]
    refused = dict(out.batch.refused_files)
    assert set(refused) == {str(drop / ".hidden.jsonl"), str(drop / "002.jsonl"), str(drop / "sub.jsonl")}
    assert "symbolic link" in refused[str(drop / "002.jsonl")]
    assert any("refused file" in x and "002.jsonl" in x for x in lines)


# --- 8. quarantine ------------------------------------------------------------------------------------------------
def test_quarantine_is_never_overwritten(tmp_path, h):
    lenient = "ingest.max_reject_fraction=1"
    a = ingest(h, jl(tmp_path / "drop-a.jsonl", F("A", "ceo", "B"), "{bad one"), "delta", lenient)
    b = ingest(h, jl(tmp_path / "drop-b.jsonl", F("A", "ceo", "B"), "{bad two"), "delta", lenient)
    assert a.quarantine != b.quarantine and "drop-a.jsonl" in a.quarantine and "drop-b.jsonl" in b.quarantine
    assert "bad one" in Path(a.quarantine).read_text() and "bad two" in Path(b.quarantine).read_text()


# --- 9/10. one clear line, and nothing recorded before the run can start ------------------------------------------
def _corrupt_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    import shutil

    bad = tmp_path / "corrupt-model"
    shutil.copytree(tiny_model_dir, bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return bad


@pytest.mark.parametrize("case", ["corrupt safetensors", "MLflow unreachable", "disk full", "missing model"])
def test_preflight_fails_before_the_ledger_records_anything(tmp_path, tiny_model_dir, tiny_facts_file, case,
                                                            monkeypatch):
    model = {"corrupt safetensors": _corrupt_model(tiny_model_dir, tmp_path),
             "missing model": tmp_path / "nope"}.get(case, tiny_model_dir)
    if case == "MLflow unreachable":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: refused at once
    if case == "disk full":
        monkeypatch.setenv("INJECTOR_FAULT_FREE_BYTES", "1000")
    home = Home.from_env(tmp_path / "h").ensure()
    expected = InjectorError if case == "missing model" else InfraError
    with pytest.raises(expected) as err:
        run_train([tiny_facts_file], tiny_config(model), home, log=lambda *a: None)
    assert "\n" not in str(err.value)
    led = Ledger(home.ledger)
    assert led.last_snapshot() is None and not led.facts()


def test_cli_faults_are_one_line_with_their_exit_code(tmp_path, tiny_model_dir, tiny_facts_file):
    bad = _corrupt_model(tiny_model_dir, tmp_path)
    out = cli("train", "--triples", str(tiny_facts_file), f"model.base={bad}", home=tmp_path / "h1")
    assert out.returncode == 4 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("injector: error: base model")
    out = cli("train", "--triples", str(tiny_facts_file), "train.learning_rate=.inf", home=tmp_path / "h2")
    assert out.returncode == 2 and out.stderr.strip().startswith("injector: error: config (command line): "
                                                                 "train.learning_rate")
    out = cli("ask", "  ", home=tmp_path / "h3")
    assert out.returncode == 2 and "question is empty" in out.stderr
    out = cli("ingest", str(tiny_facts_file), "ingest.max_reject_fraction=0.5", "--json", home=tmp_path / "h4")
    assert out.returncode == 0 and json.loads(out.stdout)["accepted"] == 4


def test_a_failed_transaction_reports_its_own_error(tmp_path, h):
    led = Ledger(h.ledger)
    with pytest.raises(ZeroDivisionError):
        with led._tx() as c:
            c.execute("ROLLBACK")  # SQLite ended the transaction itself (as on a full disk)
            raise ZeroDivisionError


# --- 12. fact identity --------------------------------------------------------------------------------------------
def test_question_facts_with_one_answer_stay_two_facts(tmp_path, h):
    out = ingest(h, jl(tmp_path / "q.jsonl", {"subject": "Zorvex", "question": "Who founded Zorvex?", "answer": "Mara"},
                       {"subject": "Zorvex", "question": "Who chairs Zorvex?", "answer": "Mara"}))
    assert out.diff.counts()["added"] == 2 and len(Ledger(h.ledger).pending()) == 2


# --- 2/3/11/13: runs on the tiny model ----------------------------------------------------------------------------
@pytest.fixture()
def lenient(tmp_path):
    return eval_dir(tmp_path, "absolute:\n  min_efficacy: 0.5\n  min_generalisation: 0.0\n  min_changed: 0.0\n"
                              "  max_latency_ms_p95: 100000\nrelative:\n  max_general_ppl_increase: null\n"
                              "  min_locality_ratio: 0.0\n  min_retention_ratio: 0.0\n  min_fact_ppl_drop: null\n")


def _cfg(model, lenient, *extra):
    return tiny_config(model, f"eval.dir={lenient}", "eval.locality=false", "eval.ppl_max_tokens=0", "eval.kl=false",
                       "train.epochs=20", "recipes.new=1", *extra)


def test_pending_facts_are_trained_after_a_failed_run_and_rollback_follows_the_ledger(
        home, tiny_model_dir, tmp_path, lenient):
    quiet = lambda *a: None  # noqa: E731
    cfg = _cfg(tiny_model_dir, lenient)
    first = jl(tmp_path / "1.jsonl", *TINY_FACTS[:2])
    run_ingest([first], cfg, home, log=quiet)  # the run that should follow "failed" after ingest
    out = run_train([first], cfg, home, log=quiet)  # same drop: the ingest is a no-op, the facts are pending
    assert out.ingest.noop and out.version == "1" and out.promoted, out.decision.table()
    second = jl(tmp_path / "2.jsonl", *TINY_FACTS[2:])
    out = run_train([second], cfg, home, log=quiet)
    assert out.version == "2" and out.promoted, out.decision.table()
    led = Ledger(home.ledger)
    assert {r["learned_version"] for r in led.facts()} == {"1", "2"}

    rb = cli("rollback", home=home.root)
    assert rb.returncode == 0 and "2 pending" in rb.stdout, rb.stderr
    learned = {r["object"]: r["learned_version"] for r in Ledger(home.ledger).facts()}
    assert learned == {TINY_FACTS[0]["object"]: "1", TINY_FACTS[1]["object"]: "1",
                       TINY_FACTS[2]["object"]: None, TINY_FACTS[3]["object"]: None}
    registry.connect(home)
    assert registry.champion() == "1"
    out = run_train(None, cfg, home, log=quiet)  # no new drop: the facts the champion lost are trained again
    assert out.version == "3" and out.promoted and registry.version_tags("3")["n_facts"] == "2"
    learned = {r["object"]: r["learned_version"] for r in Ledger(home.ledger).facts()}
    assert learned[TINY_FACTS[2]["object"]] == learned[TINY_FACTS[3]["object"]] == "3"
    assert learned[TINY_FACTS[0]["object"]] == "1" and not Ledger(home.ledger).pending()


def test_registration_is_idempotent_and_orphans_are_failed(home, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                   LoraConfig(r=2, target_modules="all-linear")).save_pretrained(adapter)
    registry.connect(home)
    run_id = registry.start_run({"x": 1}, home=home)
    v1 = registry.log_adapter(run_id, str(adapter), str(tiny_model_dir), {"gate": "fail"})
    v2 = registry.log_adapter(run_id, str(adapter), str(tiny_model_dir), {"gate": "fail"})  # a retried task
    assert v1 == v2 == "1" and len(registry.versions()) == 1
    registry.end_run(run_id, "FINISHED")
    orphan = registry.start_run({"x": 2}, home=home)  # as if its process had been killed
    assert registry.fail_orphans(home) == [orphan]
    assert registry.run_info(orphan)["status"] == "FAILED"


def test_a_refused_candidate_exits_with_its_own_code(tmp_path, tiny_model_dir, tiny_facts_file):
    strict = eval_dir(tmp_path / "strict", "absolute:\n  min_efficacy: 1.0\n  max_latency_ms_p95: 0.001\n")
    out = cli("train", "--triples", str(tiny_facts_file), "--json", f"model.base={tiny_model_dir}",
              f"eval.dir={strict}", "train.epochs=1",
              "train.min_steps=0", "eval.locality=false", "eval.ppl_max_tokens=0",
              "eval.latency_samples=1", "eval.max_new_tokens=4", home=tmp_path / "h", timeout=600)
    assert out.returncode == 5, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["exit_code"] == 5 and summary["version"] == "1" and not summary["promoted"]
    assert set(summary["stage_s"]) >= {"preflight", "ingest", "plan", "train", "judge", "record"}
