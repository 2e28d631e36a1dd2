"""`injector bench` on the tiny model and a 5-fact slice of each benchmark (files in the benchmarks' own schema)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from injector import bench

INJECTOR = str(Path(sys.executable).with_name("injector"))
SHARED = ROOT.parent / "shared" / "benchmarks"


def _zsre(i: int) -> dict:
    return {"subject": f"Zorvex Dynamics {i}", "src": f"Who is the ceo of Zorvex Dynamics {i}?",
            "rephrase": f"Who leads Zorvex Dynamics {i}?", "alt": f"Marlena Quist {i}", "answers": ["x"],
            "pred": "y", "loc": "nq question: what is the capital of france", "loc_ans": "Paris",
            "cond": "", "portability": {"New Question": f"Where does the ceo of Zorvex Dynamics {i} work?",
                                        "New Answer": f"Zorvex Dynamics {i}", "Recalled Relation": ""}}


def _mquake(i: int) -> dict:
    subj, new, old = f"Orla Feyrwood {i}", f"Brennholt {i}", "Paris"
    hop = {"question": f"Where is the capital of {subj}?", "cloze": "", "answer": new, "answer_alias": []}
    return {"case_id": i, "requested_rewrite": [{
        "prompt": "The capital of {} is", "relation_id": "P36", "subject": subj, "question": hop["question"],
        "target_new": {"str": new, "id": f"Q{i}"}, "target_true": {"str": old, "id": "Q90"}}],
        "questions": [f"Who is the ceo of the capital of {subj}?"] * 3, "answer": "x", "answer_alias": [],
        "new_answer": "Marlena Quist", "new_answer_alias": [], "single_hops": [], "new_single_hops": [hop],
        "orig": {"triples": [[f"S{i}", "P36", "Q90"]], "triples_labeled": [[subj, "capital", old]],
                 "new_triples": [[f"S{i}", "P36", f"Q{i}"]], "new_triples_labeled": [[subj, "capital", new]],
                 "edit_triples": [[f"S{i}", "P36", f"Q{i}"]]}}


@pytest.fixture()
def data(tmp_path) -> Path:
    d = tmp_path / "benchmarks"
    d.mkdir()
    (d / bench.BENCHMARKS["zsre"]).write_text(json.dumps([_zsre(i) for i in range(8)]))
    (d / bench.BENCHMARKS["mquake"]).write_text(json.dumps([_mquake(i) for i in range(8)]))
    return d


def test_slices_are_seeded_and_map_onto_triples(data):
    a, b = bench.load_slice("zsre", data, 5, seed=1), bench.load_slice("zsre", data, 5, seed=1)
    assert a.rows == b.rows and len(a.rows) == 5
    assert all(r["question"] and r["object"] for r in a.rows)
    assert {p.kind for p in a.probes} == {"paraphrase", "portability", "locality_authors"}
    m = bench.load_slice("mquake", data, 5)
    assert len(m.rows) == 5 and all(r["predicate"] == "capital" for r in m.rows)
    para = [p for p in m.probes if p.kind == "paraphrase"]
    assert para and all(p.forbidden == ("Paris",) for p in para)  # the old object must disappear
    assert {p.kind for p in m.probes} == {"paraphrase", "multihop"}


@pytest.mark.skipif(not SHARED.exists(), reason="no ../shared/benchmarks beside the checkout")
def test_the_real_benchmark_files_load():
    for name in bench.BENCHMARKS:
        sl = bench.load_slice(name, SHARED, 100)
        assert len(sl.rows) >= 100 and len(sl.probes) >= 100


def test_bad_benchmark_file_is_one_clear_line(tmp_path):
    (tmp_path / bench.BENCHMARKS["zsre"]).write_text(json.dumps([{"subject": "x"}]))
    from injector.errors import InjectorError

    with pytest.raises(InjectorError, match="zsre_portability_1037.json: not in the expected zsre format"):
        bench.load_slice("zsre", tmp_path, 5)


def test_bench_runs_end_to_end_on_the_tiny_model(tmp_path, data, tiny_model_dir, home):
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(f"model:\n  base: {tiny_model_dir}\n")
    doc = tmp_path / "BENCH.md"
    start, end = bench.MARK.format(name="zsre", end="start"), bench.MARK.format(name="zsre", end="end")
    doc.write_text(f"# Benchmarks\n\nhand-written reading\n\n{start}\nold\n{end}\n\ntail\n")
    raw = tmp_path / "raw.json"
    out = subprocess.run(
        [INJECTOR, "bench", "--data", str(data), "--n", "5", "--config", str(cfg), "--nights", "2",
         "--variants", "injector,naive LoRA",
         "--out", str(doc), "--results", str(raw), "--work", str(tmp_path / "work"),
         "train.learning_rate=0.003", "train.epochs=4", "train.batch_size=8", "train.grad_accum=1",
         "train.max_length=96", "train.patience=0",
         "train.min_steps=0", "eval.max_new_tokens=8", "eval.latency_samples=1",
         "eval.ppl_max_tokens=500", "recipes.distill_max_new_tokens=8"],
        capture_output=True, text=True, timeout=900, cwd=ROOT, env={**os.environ})
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(raw.read_text())
    for name in ("zsre", "mquake"):
        rows = {r["row"]: r for r in results[name]["rows"]}
        assert set(rows) == {"injector", "naive LoRA", "in-context (no training)", "base model"}
        assert all(0.0 <= rows[r]["efficacy"] <= 1.0 for r in ("injector", "naive LoRA", "base model"))
        assert rows["injector"]["tokens_per_s"] > 0 and rows["injector"]["gate"] in ("pass", "fail")
        # a refused row says which checks refused it; a passed one names none
        assert (rows["injector"]["gate"] == "fail") == bool(rows["injector"]["gate_failed"])
        assert [c["night"] for c in results[name]["continual"]] == [1, 2]
        for row, answers in (("base model", "base-answers.jsonl"), ("injector", "injector/answers.jsonl")):
            lines = [json.loads(x) for x in (tmp_path / "work" / name / answers).read_text().splitlines()]
            assert len(lines) == results[name]["n_probes"] and {"question", "answer", "correct"} <= set(lines[0])
            correct = [x["correct"] for x in lines if x["kind"] == "paraphrase"]  # the row's column, probe by probe
            assert correct and sum(correct) / len(correct) == pytest.approx(rows[row]["paraphrase"])
    text = doc.read_text()
    assert "hand-written reading" in text and "tail" in text and "\nold\n" not in text
    assert text.index("#### zsre") < text.index("tail") < text.index("#### mquake")  # in place; appended
    assert "#### zsre: 5 facts" in text and "#### mquake: 5 facts" in text and "| naive LoRA |" in text


def test_bench_needs_no_checkout_file_by_default(tmp_path):
    """Run outside the checkout with no --config, the rows use the built-in defaults (as `injector train` does): the
    first thing missing is the benchmark data, not a config file of the source tree."""
    out = subprocess.run([INJECTOR, "bench", "-b", "zsre", "--n", "2", "--data", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "INJECTOR_HOME": str(tmp_path / "home")})
    assert out.returncode != 0 and "benchmark file not found" in out.stderr and "config" not in out.stderr, \
        out.stderr[-2000:]
