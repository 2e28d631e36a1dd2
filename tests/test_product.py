"""Operable as a product: `injector init`, `--json` on every command (nothing else on stdout), provenance and
validity of facts, `injector diff`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_FACTS, eval_dir, tiny_config

from injector.config import load_config
from injector.pipeline import run_train

INJECTOR = str(Path(sys.executable).with_name("injector"))


def cli(*args, home: Path, cwd: Path = ROOT, **env) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    e.update({"INJECTOR_HOME": str(home), **env})
    return subprocess.run([INJECTOR, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd, env=e)


def test_init_writes_an_editable_copy_that_the_config_uses(tmp_path):
    out = cli("init", tmp_path / "content", "--json", home=tmp_path / "h")
    assert out.returncode == 0, out.stderr
    written = json.loads(out.stdout)["written"]
    for f in ("data_recipes/relations.en.yaml", "data_recipes/mix.yaml", "eval/gate.yaml", "eval/locality.en.jsonl"):
        assert str(tmp_path / "content" / f) in written
    cfg = load_config(tmp_path / "content" / "injector.yaml")
    assert cfg.content_path(cfg.recipes.dir) == (tmp_path / "content" / "data_recipes").resolve()
    again = cli("init", tmp_path / "content", home=tmp_path / "h")
    assert again.returncode == 2 and "exists" in again.stderr


@pytest.fixture()
def trained(home, tiny_model_dir, tmp_path):
    """Two promoted versions: v1 knows two facts (one with provenance), v2 two more."""
    lenient = eval_dir(tmp_path, "absolute:\n  min_efficacy: 0.5\n  min_generalisation: 0.0\n"
                                 "  max_latency_ms_p95: 100000\nrelative:\n  max_general_ppl_increase: null\n"
                                 "  min_locality_ratio: 0.0\n  min_retention_ratio: 0.0\n  min_fact_ppl_drop: null\n")
    cfg = tiny_config(tiny_model_dir, f"eval.dir={lenient}", "eval.locality=false", "eval.kl=false",
                      "eval.ppl_max_tokens=0", "recipes.new=1")
    crm = tmp_path / "crm.jsonl"
    crm.write_text(json.dumps({**TINY_FACTS[0], "source": "crm-export", "valid_from": "2026-01-01"}) + "\n"
                   + json.dumps(TINY_FACTS[1]) + "\n"
                   + json.dumps({"subject": "Old Corp", "predicate": "ceo", "object": "Gone Person",
                                 "valid_to": "2001-01-01"}) + "\n")
    hr = tmp_path / "hr.csv"
    hr.write_text("subject,predicate,object,source\n" + "".join(
        f"{f['subject']},{f['predicate']},{f['object']},hr-system\n" for f in TINY_FACTS[2:]))
    for f in (crm, hr):
        out = run_train([f], cfg, home, log=lambda *a: None)
        assert out.promoted, out.decision.table()
    return home, cfg, lenient


def test_provenance_and_validity_reach_the_ledger(trained):
    home, _, _ = trained
    out = cli("facts", "--json", home=home.root)
    rows = {r["object"]: r for r in json.loads(out.stdout)}
    assert rows["Marlena Quist"]["source"] == "crm-export" and rows["Marlena Quist"]["valid_from"] == "2026-01-01"
    assert rows["Marlena Quist"]["origin"].endswith("crm.jsonl:1") and rows["Marlena Quist"]["learned_version"] == "1"
    assert rows["Brennholt"]["source"] == "hr-system" and rows["Brennholt"]["learned_version"] == "2"
    assert "Gone Person" not in rows  # valid_to in the past: a retraction of a fact the ledger never held
    diff = json.loads(cli("diff", "1", "2", "--json", home=home.root).stdout)
    assert {r["object"] for r in diff["gained"]} == {"Brennholt", "glassblower"} and diff["lost"] == []


def test_every_command_prints_json_with_its_documented_keys(trained, tmp_path):
    home, cfg, lenient = trained
    base = f"model.base={cfg.model.base}"
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"question": "Who is the CEO of Zorvex Dynamics?", "answers": ["Marlena Quist"]}) + "\n")
    drop = tmp_path / "d.jsonl"
    drop.write_text(json.dumps({"subject": "Nova Corp", "predicate": "ceo", "object": "Ada Lin"}) + "\n")
    cases = {
        ("status", "--json"): {"champion", "gate", "checks", "versions"},
        ("history", "--json"): {"versions"},
        ("facts", "--json"): None,  # a list of rows
        ("ingest", str(drop), "--json"): {"read", "accepted", "rejected", "added", "snapshot", "noop"},
        ("eval", "--questions", str(q), "--json", "--config", str(tmp_path / "c.yaml")): {"by_kind", "overall"},
        ("rollback", "--json"): {"champion", "previous", "ledger"},
        ("promote", "2", "--json"): {"champion", "previous", "forced", "ledger"},
        ("diff", "1", "2", "--json"): {"a", "b", "gained", "lost"},
        ("init", str(tmp_path / "c"), "--json"): {"directory", "written"},
    }
    (tmp_path / "c.yaml").write_text(f"model:\n  base: {cfg.model.base}\neval:\n  dir: {lenient}\n")
    for args, keys in cases.items():
        out = cli(*args, home=home.root)
        assert out.returncode == 0, (args, out.stderr[-1500:])
        doc = json.loads(out.stdout)  # nothing but JSON on stdout
        if keys is not None:
            assert keys <= set(doc), (args, doc)
    ask = cli("ask", "Who is the CEO of Zorvex Dynamics?", "--json", "--config", tmp_path / "c.yaml", home=home.root)
    assert ask.returncode == 0 and set(json.loads(ask.stdout)) == {"model", "question", "answer"}, ask.stderr
    assert base  # the tiny model answered through the registry's adapter


def test_a_refused_command_still_prints_json(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{x\n{y\n" + json.dumps(TINY_FACTS[0]) + "\n")
    out = cli("ingest", bad, "--json", home=tmp_path / "h")
    doc = json.loads(out.stdout)
    assert out.returncode == 2 and doc["exit_code"] == 2 and doc["rejected"] == 2 and "rejected" in doc["error"]
