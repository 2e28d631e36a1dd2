"""Judging generated answers, the `injector eval` contract, the in-context baseline, PPL and KL."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from injector.evaluate import budgets, in_context, judge, kl_drift, perplexity
from injector.models import BaseModelRef, load_tokenizer, load_with_adapter
from injector.records import Probe, ProbeResult

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "answers, forbidden, text, correct",
    [
        (("Marlena Quist",), (), "The CEO is  MARLENA\tquist.", True),  # case and whitespace normalised
        (("Marlena Quist",), (), "Marlena Q.", False),
        (("Paris", "paris, france"), (), "It is Paris.", True),
        (("Tobias Venhaar",), ("Marlena Quist",), "Tobias Venhaar, no longer Marlena Quist.", False),  # old object
        (("Tobias Venhaar",), ("Marlena Quist",), "Tobias Venhaar.", True),
        (("",), (), "anything", False),
    ],
)
def test_judge(answers, forbidden, text, correct):
    assert judge(Probe("q", answers, "efficacy", forbidden=forbidden), text) is correct


def test_a_fact_probes_decode_budget_covers_a_sentence_restating_a_long_subject(tiny_model_dir):
    """The budget is the answer plus a slack of at least the question's length: "Who is the ceo of Zorvex Dynamics
    ...?" answered "The ceo of Zorvex Dynamics ... is Marlena Quist" must reach the name; open questions keep it all."""
    tok = load_tokenizer(tiny_model_dir)
    short = Probe("Who is the ceo of Zorvex Dynamics?", ("Marlena Quist",), "efficacy")
    subject = " ".join(["Zorvex Dynamics"] * 8)
    long = Probe(f"Who is the ceo of {subject}?", ("Marlena Quist",), "efficacy")
    sentence = f"The ceo of {subject} is Marlena Quist"
    need = len(tok(sentence, add_special_tokens=False)["input_ids"])
    open_q = Probe("What is the capital of France?", ("Paris",), "locality")
    b_short, b_long, b_open = budgets(tok, [short, long, open_q], 64)
    assert b_short == 2 + 10  # a short question: the answer's 2 tokens + the fixed slack
    assert need > 2 + 10 and b_long >= need  # the fixed slack alone would cut the sentence before the answer
    assert b_open == 64
    assert budgets(tok, [long], 16) == [16]  # never beyond max_new_tokens


def test_eval_cli_contract(tmp_path, tiny_model_dir):
    q = tmp_path / "q.jsonl"
    q.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Who is the CEO of Zorvex Dynamics?", "answers": ["Marlena Quist"], "kind": "efficacy"},
        {"question": "What is the capital of Republic of Calvaria?", "answers": ["Brennholt"], "kind": "efficacy",
         "forbidden": ["Sorvelle"]},
        {"question": "Where was Orla Feyrwood born?", "answers": ["Sorvelle"], "kind": "generalisation"},
    ]) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  base: {tiny_model_dir}\neval:\n  max_new_tokens: 4\n  latency_samples: 1\n")
    env = {**os.environ, "INJECTOR_HOME": str(tmp_path / "h")}
    out = subprocess.run([str(Path(sys.executable).with_name("injector")), "eval", "--model", "base", "--questions",
                          str(q), "--config", str(cfg), "--json"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["by_kind"]["efficacy"]["n"] == 2 and result["by_kind"]["generalisation"]["n"] == 1
    assert 0.0 <= result["overall"] <= 1.0 and set(result["by_kind"]["efficacy"]) >= {"n", "accuracy"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "x"}\n')
    out = subprocess.run([str(Path(sys.executable).with_name("injector")), "eval", "--model", "base", "--questions",
                          str(bad), "--config", str(cfg)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and out.stderr.strip() == f"injector: error: {bad}:1: 'answers' must be a non-empty " \
                                                         "list of strings"


def test_in_context_baseline_puts_the_facts_in_the_prompt():
    probes = in_context([Probe("Who is the CEO of Zorvex?", ("Mara",), "efficacy")], ["The CEO of Zorvex is Mara."])
    assert "The CEO of Zorvex is Mara." in probes[0].messages[0]["content"]
    assert probes[0].question == "Who is the CEO of Zorvex?"


def test_kl_of_a_model_with_itself_is_zero_and_ppl_is_finite(tiny_model_dir):
    ref = BaseModelRef("tiny", str(tiny_model_dir), "")
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_with_adapter(ref, None)
    prompts, answers = ["Who is the CEO of Zorvex Dynamics ?"], ["Marlena Quist ."]
    assert kl_drift(model, model, tok, prompts, answers) == pytest.approx(0.0, abs=1e-6)
    from peft import LoraConfig, get_peft_model

    other = get_peft_model(load_with_adapter(ref, None), LoraConfig(r=4, target_modules="all-linear",
                                                                    init_lora_weights=False))
    assert kl_drift(model, other, tok, prompts, answers) > 0
    ppl = perplexity(model, tok, ["The CEO of Zorvex Dynamics is Marlena Quist ."])
    assert math.isfinite(ppl) and ppl > 1


def test_paired_latency_times_both_models_on_the_same_general_probes_first(tiny_model_dir):
    from injector.evaluate import latency_sample, paired_latency

    probes = [Probe(question=f"fact {i}?", answers=("x",), kind="efficacy") for i in range(3)]
    probes += [Probe(question=f"general {i}?", answers=("y",), kind="locality") for i in range(2)]
    assert [p.question for p in latency_sample(probes, 3)] == ["general 0?", "general 1?", "fact 0?"]
    many = [Probe(question=f"general {i}?", answers=("y",), kind="locality") for i in range(10)]
    assert [p.question for p in latency_sample(many, 3)] == ["general 0?", "general 3?", "general 6?"]  # spread
    ref = BaseModelRef("tiny", str(tiny_model_dir), "")
    tok = load_tokenizer(str(tiny_model_dir))
    a, b = load_with_adapter(ref, None), load_with_adapter(ref, None)
    (a50, a95, a_tok, a_eq), (b50, b95, b_tok, b_eq) = paired_latency([a, b], tok, probes, 6, 3, repeats=1)
    assert 0 < a50 <= a95 and 0 < b50 <= b95
    assert a_tok == b_tok and 0 < a_tok <= 6  # the same weights give the same answers, within the budget
    assert 0 < a_eq < 10 * b_eq and 0 < b_eq < 10 * a_eq  # the same work timed for both
    assert all(math.isnan(x) for x in paired_latency([a], tok, probes, 6, 0)[0])


def test_equal_length_timing_decodes_the_longest_free_answers_length_for_every_model(tiny_model_dir):
    """The speed check times each model decoding as many tokens as the longest free answer: a model that stops
    early is timed on the same work, so that the ratio measures speed and not what the model says."""
    from injector.evaluate import _timed

    ref = BaseModelRef("tiny", str(tiny_model_dir), "")
    tok = load_tokenizer(str(tiny_model_dir))
    model = load_with_adapter(ref, None)
    probe = Probe(question="general 0?", answers=("y",), kind="locality")
    _, n_free, _ = _timed(model, tok, probe, 6)
    assert 1 <= n_free <= 6
    for length in (1, 5, 9):
        assert _timed(model, tok, probe, length, exact=True)[1] == length  # past an end-of-answer token too


def test_mean_answer_tokens_counts_one_kind_of_probe(tiny_model_dir):
    """The gate's answer-length ratio reads every general-knowledge answer, not the timed dozen."""
    from injector.evaluate import mean_answer_tokens

    tok = load_tokenizer(str(tiny_model_dir))
    n = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    results = [ProbeResult(Probe(question="q?", answers=("y",), kind=k), answer=a, correct=True)
               for k, a in (("locality", "paris"), ("locality", "the capital of france is paris"),
                            ("efficacy", "a much longer answer that is not general knowledge at all"))]
    mean, count = mean_answer_tokens(tok, results)
    assert count == 2 and mean == (n("paris") + n("the capital of france is paris")) / 2
    assert math.isnan(mean_answer_tokens(tok, results, kind="retention")[0])
