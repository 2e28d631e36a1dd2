"""`injector train` end to end on the tiny model: ingest -> train -> eval -> gate -> registry -> ledger."""

import json
import re
import shutil

import pytest
from conftest import TINY_FACTS, eval_dir, short_recipes, tiny_config

from injector import registry
from injector.ledger import Ledger
from injector.pipeline import run_train
from injector.replay import model_key


@pytest.fixture()
def lenient_eval(tmp_path):
    """The shipped eval suite with lenient thresholds: a random tiny model has no general knowledge to keep."""
    return eval_dir(tmp_path, "absolute:\n  min_efficacy: 0.75\n  min_generalisation: 0.0\n"
                              "  max_latency_ms_p95: 100000\nrelative:\n  max_general_ppl_increase: null\n"
                              "  min_locality_ratio: 0.0\n")


def test_train_registers_champion_and_is_idempotent(home, tiny_model_dir, tiny_facts_file, lenient_eval):
    cfg = tiny_config(tiny_model_dir, f"eval.dir={lenient_eval}", "recipes.subject_share=0.5")
    lines: list[str] = []
    out = run_train([tiny_facts_file], cfg, home, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert out.version == "1" and out.decision.passed and out.promoted, out.decision.table()
    # each subject's other relations: replayed in the model's own answers, one held out and asked before and after
    replay = next(x for x in lines if x.startswith("replay: "))
    assert int(replay.split(" anchors, ")[1].split()[0]) > 0, replay
    held = [r.probe for r in out.after.results if r.probe.kind == "neighbourhood"]
    assert len(held) == 4 and {p.forbidden for p in held} == {(f["object"],) for f in TINY_FACTS}
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
    d = eval_dir(tmp_path / "strict", "absolute:\n  min_efficacy: 1.0\n  max_latency_ms_p95: 0.001\n")
    cfg = tiny_config(tiny_model_dir, f"eval.dir={d}", "train.epochs=1")
    out = run_train([tiny_facts_file], cfg, home, log=lambda *a: None)
    assert out.version == "1" and not out.decision.passed and not out.promoted
    registry.connect(home)
    assert registry.champion() is None and registry.version_tags("1")["gate"] == "fail"
    assert len(Ledger(home.ledger).pending()) == 4


def _cli(args, home_dir, env_extra=None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "INJECTOR_HOME": str(home_dir), **(env_extra or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run([str(Path(sys.executable).with_name("injector")), *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_killed_run_resumes_to_the_same_adapter(tmp_path, tiny_model_dir, tiny_facts_file, lenient_eval):
    import torch
    from safetensors.torch import load_file

    # 6 passes: at 4 the random tiny model learned 2 or 3 of its 4 facts depending on the recipes' content (the
    # gate's 0.75 bar exactly); this test is about resuming, not learning
    overrides = [f"model.base={tiny_model_dir}", "train.learning_rate=0.003", "train.epochs=6", "train.batch_size=8",
                 "train.grad_accum=1", "train.max_length=96", "train.warmup_ratio=0.0", "train.patience=0",
                 "train.min_steps=0", "train.ewc_lambda=0",
                 "train.dev_fraction=0", "eval.max_new_tokens=8", "eval.latency_samples=1", "eval.locality=false",
                 f"eval.dir={lenient_eval}", f"recipes.dir={short_recipes(tmp_path)}", "recipes.replay=0"]
    full = _cli(["train", "--triples", str(tiny_facts_file), *overrides], tmp_path / "full")
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-1000:]

    crashed = _cli(["train", "--triples", str(tiny_facts_file), *overrides], tmp_path / "crash",
                   {"INJECTOR_FAULT_KILL_AFTER_CHECKPOINTS": "1"})  # killed right after epoch 1's checkpoint
    assert crashed.returncode == -9
    changed = _cli(["train", "--resume", *overrides, "train.learning_rate=0.004"], tmp_path / "crash")
    assert changed.returncode == 2 and "cannot resume" in changed.stderr and "config hash" in changed.stderr
    resumed = _cli(["train", "--resume", *overrides], tmp_path / "crash")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def adapter(home):
        return load_file(str(next((home / "runs").glob("*/adapter/adapter_model.safetensors"))))

    a, b = adapter(tmp_path / "full"), adapter(tmp_path / "crash")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_train_on_a_file_with_bad_lines_trains_the_good_ones(home, tiny_model_dir, tmp_path, lenient_eval):

    f = tmp_path / "mixed.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in TINY_FACTS) + "{broken\n" +
                 json.dumps({"subject": "X", "predicate": "ceo", "object": "<|im_end|>"}) + "\n")
    cfg = tiny_config(tiny_model_dir, f"eval.dir={lenient_eval}", "ingest.max_reject_fraction=0.5")
    lines: list[str] = []
    out = run_train([f], cfg, home, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert out.ingest.summary()["rejected"] == 2 and out.ingest.summary()["accepted"] == 4
    assert any(f"{f}:5" in line and "malformed JSON" in line for line in lines)
    assert any(f"{f}:6" in line and "control token" in line for line in lines)
    quarantined = [json.loads(x) for x in open(out.ingest.quarantine)]
    assert [q["where"] for q in quarantined] == [f"{f}:5", f"{f}:6"]
    assert out.version == "1" and registry.version_tags("1")["n_facts"] == "4"


def test_second_night_reuses_the_champions_judged_answers(home, tiny_model_dir, tmp_path, lenient_eval):
    """The reference's general-knowledge answers depend only on (model, probe): the champion answered them when it
    was judged, so the next night does not generate them again; every night reports its time by stage and part."""

    cfg = tiny_config(tiny_model_dir, f"eval.dir={lenient_eval}", "eval.kl=false",
                      f"recipes.dir={short_recipes(tmp_path)}")
    first, second = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in TINY_FACTS[:2]))
    second.write_text("".join(json.dumps(r) + "\n" for r in TINY_FACTS[2:]))
    out = run_train([first], cfg, home, log=lambda *a: None)
    assert out.promoted, out.decision.table()
    assert {"preflight", "ingest", "plan", "train", "judge", "record", "total"} <= set(out.stage_s)
    assert {"recipes", "replay_self_distill", "reference_eval", "teacher_pass", "training", "candidate_eval",
            "registration"} <= set(out.part_s)
    lines: list[str] = []
    again = run_train([second], cfg, home, log=lambda *a: lines.append(" ".join(map(str, a))))
    n_locality = sum(r.probe.kind == "locality" for r in again.before.results)
    assert n_locality > 0 and any(f"reusing {n_locality} cached reference answers" in x for x in lines), lines
    # the reused answers are the ones the champion gave when it was judged
    judged = {r.probe.question: r.answer for r in out.after.results if r.probe.kind == "locality"}
    assert {r.probe.question: r.answer for r in again.before.results if r.probe.kind == "locality"} == judged
    # the base's answers, cached on the first night, bound the drift of every later night against the base
    base_acc = out.before.by_kind()["locality"]["accuracy"]
    assert again.before.extra["base_locality"] == pytest.approx(base_acc)
    assert again.before.extra["base_general_ppl"] == pytest.approx(out.before.extra["general_ppl"])
    assert not any("base model: answering" in x for x in lines), lines  # nothing generated again
    rows = {r["check"]: r for r in again.decision.table()}
    loc = again.after.by_kind()["locality"]["accuracy"]
    assert rows["locality_vs_base"]["value"] == pytest.approx(loc / base_acc if base_acc else 1.0)
    assert "locality_vs_base" not in {r["check"] for r in out.decision.table()}  # the first night's reference is it
    # a home without them (older, or another decode budget): the base answers once, the same as on the first night
    from injector.models import load_tokenizer, resolve_base
    from injector.pipeline import _base_reference

    base = resolve_base(cfg.model.base, home.models)
    for f in (*home.cache.glob(f"answers-{model_key(base.sha256, None)}-*"),
              *home.cache.glob(f"ppl-{model_key(base.sha256, None)}-*")):
        f.unlink()
    said: list[str] = []
    got = _base_reference(home, base, load_tokenizer(base.path), cfg, [r.probe for r in again.before.results],
                          said.append)
    assert any(f"base model: answering {n_locality} general-knowledge probes" in x for x in said), said
    assert got == pytest.approx({"base_locality": base_acc, "base_general_ppl": out.before.extra["general_ppl"]})


def test_turtle_with_unseen_predicates_trains_with_generated_templates(home, tiny_model_dir, tmp_path, lenient_eval):
    """A KG's own predicates (a company's hasListPrice, a Wikidata P-code with an rdfs:label) get templates from
    their label, and the log says which."""
    ttl = tmp_path / "kg.ttl"
    ttl.write_text('@prefix ex: <http://example.org/> .\n@prefix wd: <http://www.wikidata.org/entity/> .\n'
                   '@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .\n'
                   'ex:phone rdfs:label "Zorvex Phone"@en ; ex:hasListPrice "499 EUR" .\n'
                   'wd:P131 rdfs:label "located in the administrative territorial entity"@en .\n'
                   'ex:arundel rdfs:label "Arundel Formation"@en ; wd:P131 ex:sussex .\n'
                   'ex:sussex rdfs:label "West Sussex"@en .\n')
    cfg = tiny_config(tiny_model_dir, f"eval.dir={lenient_eval}", "eval.locality=false", "eval.kl=false",
                      "recipes.model_paraphrases=true")
    lines: list[str] = []
    out = run_train([ttl], cfg, home, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert out.version == "1"
    # the model's own rephrasings are asked for each fact (a random tiny model's are not usable questions)
    assert any(x.startswith("model paraphrases: ") and x.endswith("of 2 facts rephrased usably by the model itself")
               for x in lines), lines
    assert "model_paraphrases" in out.part_s
    generated = next(x for x in lines if "have no recipe" in x)
    assert "list price" in generated and "located in the administrative territorial entity" in generated
    questions = {r.probe.question for r in out.after.results if r.probe.kind == "efficacy"}
    assert questions == {"What is the list price of Zorvex Phone?",
                         "What is Arundel Formation located in the administrative territorial entity?"}


def test_question_form_facts_are_reworded_by_the_model_when_answers_are_sentences(home, tiny_model_dir, tmp_path,
                                                                                 lenient_eval):
    """Facts that arrive as questions have no statement template: the reference is asked to reword each as one
    sentence (a random tiny model's words are never usable: they keep mix.yaml's question_answer), timed as its own
    part."""
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"subject": f["subject"], "question": f"Who leads {f['subject']}?",
                                      "object": f["object"]}) + "\n" for f in TINY_FACTS[:2]))
    cfg = tiny_config(tiny_model_dir, f"eval.dir={lenient_eval}", "eval.locality=false", "eval.kl=false",
                      "train.epochs=1", "recipes.model_sentences=true")
    lines: list[str] = []
    out = run_train([qa], cfg, home, log=lambda *a: lines.append(" ".join(map(str, a))))
    assert out.version == "1" and "model_sentences" in out.part_s
    assert "model sentences: 0 of 2 question-form facts answered in the model's own sentence; the others as " \
           "data_recipes/mix.yaml's question_answer" in lines, lines


def test_known_facts_are_triaged_out_of_training(home, tiny_model_dir, tmp_path, lenient_eval):
    """A pending fact the champion already answers in every phrasing is recorded as known, not trained, and kept
    as a retention probe; the unknown one is trained."""

    lenient = eval_dir(tmp_path / "t", "absolute:\n  min_efficacy: 0.75\n  min_generalisation: 0.0\n"
                                       "  max_latency_ms_p95: 100000\nrelative:\n  max_general_ppl_increase: null\n"
                                       "  min_locality_ratio: 0.0\n  min_retention_ratio: 0.0\n")
    cfg = tiny_config(tiny_model_dir, f"eval.dir={lenient}", "eval.kl=false", "eval.locality=false",
                      f"recipes.dir={short_recipes(tmp_path)}")
    first = tmp_path / "1.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in TINY_FACTS[:2]))
    assert run_train([first], cfg, home, log=lambda *a: None).promoted
    led = Ledger(home.ledger)
    led.conn.execute("UPDATE facts SET learned_version = NULL")  # the KG restates them (e.g. a rebuilt ledger)
    second = tmp_path / "2.jsonl"
    second.write_text(json.dumps(TINY_FACTS[2]) + "\n")
    lines: list[str] = []
    out = run_train([second], cfg, home, log=lambda *a: lines.append(" ".join(map(str, a))))
    line = next(x for x in lines if x.startswith("triage: ") and "known (not trained)" in x)
    known = int(line.split()[1])
    assert known >= 1, lines  # v1 answers at least one of its two facts in every phrasing
    assert out.version == "2" and out.promoted and registry.version_tags("2")["n_facts"] == str(3 - known)
    kinds = {r.probe.answers[0]: r.probe.kind for r in out.after.results if r.probe.kind in ("efficacy", "retention")}
    learned = {r["object"]: r["learned_version"] for r in Ledger(home.ledger).facts()}
    assert kinds[TINY_FACTS[2]["object"]] == "efficacy" and learned[TINY_FACTS[2]["object"]] == "2"
    kept = [f["object"] for f in TINY_FACTS[:2] if kinds[f["object"]] == "retention"]
    assert len(kept) == known and all(learned[o] == "1" for o in kept)  # known: v1's, asked as retention
    # and replayed: the known facts are the night's closest neighbourhood
    said = [re.search(rf"\({known} of them triaged as known tonight, in (\d+) wordings\)", x) for x in lines
            if x.startswith("replay: ")]
    assert said and said[0] and int(said[0][1]) >= known, lines  # each in one wording at least, more where room


def test_a_night_short_of_the_step_floor_trains_fresh_replay_not_the_same_replay_again(home, tiny_model_dir,
                                                                                       tiny_facts_file, lenient_eval):
    """The floor's extra passes at full-size steps (`train.shrink_steps=false`): k x the mix's replay (each prompt
    about `epochs` times), each new pair k x a pass; the optimizer steps stay at the floor. With smaller steps (the
    default) the floor is reached in `epochs` passes over the mix as it is."""
    def night(home, fresh: bool, shrink: bool = False):
        cfg = tiny_config(tiny_model_dir, f"eval.dir={lenient_eval}", "train.min_steps=40", "train.epochs=2",
                          "eval.locality=false", "eval.kl=false", f"recipes.fresh_replay={str(fresh).lower()}",
                          f"train.shrink_steps={str(shrink).lower()}")
        lines: list[str] = []
        out = run_train([tiny_facts_file], cfg, home, log=lambda *a: lines.append(" ".join(map(str, a))))
        n = next(x for x in lines if " facts to inject: " in x)
        return out, int(n.split(" new + ")[1].split()[0]), lines, int(n.split(": ")[1].split(" new")[0])

    from injector.home import Home

    other = Home.from_env(shutil.copytree(home.root, home.root.parent / "other"))  # before any night: pristine
    third = Home.from_env(shutil.copytree(home.root, home.root.parent / "third"))
    from injector.replay import replay_budget

    plain, plain_replay, lines, new = night(other, False)
    assert not any("fresh replay" in x for x in lines)
    fresh, fresh_replay, lines, _ = night(home, True)
    k = int(next(x for x in lines if "fresh replay for the passes" in x).split(": ")[1].split("x")[0])
    # k x the mix's replay (the plain night's own, distilled by KD alone, is as large as its distillation needs)
    once = replay_budget(new, 3, 1)
    assert k >= 3 and fresh_replay >= (k - 1) * once, (k, once, plain_replay, fresh_replay)
    assert plain.train.epochs > 2 * fresh.train.epochs  # the floor's passes: over the same pairs vs fresh ones
    assert abs(fresh.train.steps - plain.train.steps) <= 0.25 * plain.train.steps, (plain.train, fresh.train)
    shrunk, shrunk_replay, lines, _ = night(third, True, shrink=True)
    assert not any("fresh replay" in x for x in lines) and shrunk_replay >= once
    assert shrunk.train.epochs == 2 and shrunk.train.steps >= 40, shrunk.train  # the floor in 2 passes


def test_answer_starts_are_every_general_instruction_but_no_locality_probe_and_no_anchor():
    """`train.start_kd`'s prompts (on by default): the general instructions, never a locality probe, and no anchor
    question (those ask the facts' own form of question); none when it, distillation or general replay is off."""
    from conftest import ROOT

    from injector.config import load_config
    from injector.pipeline import _start_prompts
    from injector.recipes import _fill, load_recipes
    from injector.records import Probe, Triple
    from injector.replay import load_anchors, load_prompts

    cfg, recipes = load_config(), load_recipes(ROOT / "data_recipes")
    assert cfg.train.start_kd == 2
    general = [p for _, p in load_prompts(ROOT / "data_recipes" / "general_prompts.en.jsonl")]
    locality = [Probe("What is the capital of France?", ("Paris",), "locality"),
                Probe(general[0], ("light",), "locality"), Probe(general[1], ("x",), "efficacy")]
    got = _start_prompts(cfg, locality)
    assert got == tuple(general[1:]) and len(got) > 300  # a locality probe left out, another kind's question kept
    quiz = [p for _, p in load_prompts(ROOT / "data_recipes" / "knowledge_prompts.en.jsonl")]
    assert quiz and not set(quiz) & set(got)  # replayed, but no answer start: they ask in a fact's form
    asked = {_fill(x, Triple(s, rel, "")) for rel, subjects in load_anchors(ROOT / "data_recipes" / "anchors.en.yaml")
             .items() for s in subjects for x in recipes.relation(rel).questions}
    assert len(asked) > 200 and not asked & set(got)
    for off in ("train.start_kd=0", "train.start_weight=0", "train.distill_weight=0", "recipes.general_replay=false"):
        assert _start_prompts(load_config(overrides=[off]), locality) == (), off


def test_general_replay_draws_from_the_instructions_and_the_knowledge_questions_where_the_language_has_them(
        tmp_path):
    """The self-distilled general replay's pool: the instructions and the everyday-knowledge quiz questions; a
    language with no `knowledge_prompts.<lang>.jsonl` replays its instructions alone."""
    import shutil

    from conftest import ROOT

    from injector.config import load_config
    from injector.pipeline import _general_prompts
    from injector.replay import load_prompts

    general = load_prompts(ROOT / "data_recipes" / "general_prompts.en.jsonl")
    quiz = load_prompts(ROOT / "data_recipes" / "knowledge_prompts.en.jsonl")
    assert _general_prompts(load_config()) == general + quiz
    assert _general_prompts(load_config(), knowledge=False) == general
    assert _general_prompts(load_config(overrides=["recipes.knowledge_replay=false"])) == general
    shutil.copytree(ROOT / "data_recipes", tmp_path / "r")
    (tmp_path / "r" / "knowledge_prompts.en.jsonl").unlink()
    assert _general_prompts(load_config(overrides=[f"recipes.dir={tmp_path / 'r'}"])) == general
