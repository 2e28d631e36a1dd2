"""Data recipes: answers carry the object, probes never trained, determinism, quotas, reverse, replay."""

import json
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from injector.errors import InjectorError
from injector.recipes import build_pairs, build_probes, humanise, load_recipes, normalise_predicate, statement_of
from injector.records import FactChange, Triple
from injector.replay import (
    anchor_prompts,
    anchor_relations,
    held_out_relations,
    load_anchors,
    load_prompts,
    neighbourhood_probes,
    object_prompts,
    old_fact_pairs,
    replay_budget,
    retention_probes,
    sibling_relations,
    subject_neighbourhood,
    subject_prompts,
    trim_to_sentence,
)

ROOT = Path(__file__).resolve().parent.parent
RECIPES = load_recipes(ROOT / "data_recipes")


def facts() -> list[FactChange]:
    rows = [json.loads(x) for x in (ROOT / "examples" / "triples.jsonl").read_text().splitlines()]
    out = [FactChange(Triple(r["subject"], r["predicate"], r["object"])) for r in rows]
    out.append(FactChange(Triple("Zorvex Dynamics", "ceo", "Ines Kavalec"), "changed", "Marlena Quist"))
    out.append(FactChange(Triple("Orbital Tea Co", "favourite_snackFood", "crumpets")))  # unknown predicate
    out.append(FactChange(Triple("Kestrel Yard", "question", "Hollin Marsh",
                                 question="Which marsh borders Kestrel Yard?")))  # question-answer form
    return out


def test_every_pair_answer_carries_the_object():
    for p in build_pairs(facts(), RECIPES):
        fact = next(c.triple for c in facts() if c.triple.id == p.fact_id)
        expected = fact.subject if p.kind == "reverse" else fact.object
        assert expected in p.messages[-1]["content"], p


def test_questions_are_answered_in_the_relations_sentence_by_default_and_as_the_entity_when_asked():
    """The default answer form is the relation's statement (the model keeps answering questions in sentences, as
    before it was trained); `answer_style: short` answers with the entity alone. A fact given as a question has no
    statement: mix.yaml's `question_answer` names its subject, then the entity ("Kestrel Yard: Hollin Marsh.");
    short: the entity alone. Earlier facts are replayed in the same answer."""
    import dataclasses

    short = dataclasses.replace(RECIPES, answer_style="short")
    asked = 0
    for recipes in (RECIPES, short):
        for p in build_pairs(facts(), recipes) + old_fact_pairs([c.triple for c in facts()], recipes, 99,
                                                                random.Random(0)):
            if p.kind not in ("forward", "dev", "replay_fact"):
                continue
            t = next(c.triple for c in facts() if c.triple.id == p.fact_id)
            want = t.object if recipes.answer_style == "short" else \
                f"{t.subject}: {t.object}." if t.question else statement_of(t, recipes)
            assert p.messages[-1]["content"] == want, p
            asked += bool(t.question) and recipes is RECIPES
    assert RECIPES.answer_style == "sentence" and RECIPES.question_answer == "{subject}: {object}."
    assert asked > 0  # the facts hold a question-form one


def test_a_question_answer_form_without_the_object_or_with_another_field_is_named(tmp_path):
    shutil.copytree(ROOT / "data_recipes", tmp_path / "r")
    mix = tmp_path / "r" / "mix.yaml"
    text = mix.read_text()
    for bad in ("{subject} knows.", "{object} of {relation}"):
        mix.write_text(text.replace('question_answer: "{subject}: {object}."', f'question_answer: "{bad}"'))
        with pytest.raises(InjectorError, match=r"mix.yaml: question_answer: .* must hold \{object\}"):
            load_recipes(tmp_path / "r")


def test_probe_phrasings_are_never_trained():
    pairs = build_pairs(facts(), RECIPES)
    trained = {m["content"] for p in pairs if p.kind != "dev" for m in p.messages if m["role"] == "user"}
    held_out = [p for p in build_probes(facts(), RECIPES) if p.kind in ("generalisation", "reverse")]
    assert held_out
    for probe in held_out:
        assert probe.question not in trained
    # and the templates themselves are disjoint, for every relation
    for rel in [*RECIPES.relations.values(), RECIPES.generic]:
        assert not set(rel.questions) & set(rel.probes)
        assert not set(rel.reverse) & set(rel.reverse_probes)


def test_efficacy_probe_uses_a_trained_phrasing():
    trained = {p.messages[0]["content"] for p in build_pairs(facts(), RECIPES) if p.kind == "forward"}
    assert all(p.question in trained for p in build_probes(facts(), RECIPES) if p.kind == "efficacy")


def test_deterministic_by_seed():
    a, b = build_pairs(facts(), RECIPES, seed=3), build_pairs(facts(), RECIPES, seed=3)
    assert a == b
    assert a != build_pairs(facts(), RECIPES, seed=4)


def test_per_fact_quota():
    counts = Counter((p.fact_id, p.kind) for p in build_pairs(facts(), RECIPES))
    q = RECIPES.quota
    for c in facts():
        fid = c.triple.id
        assert counts[(fid, "forward")] == q["forward"]
        assert counts[(fid, "verify_yes")] == q["verify_yes"] and counts[(fid, "dialogue")] == q["dialogue"]
        assert counts[(fid, "update")] == (q["update"] if c.kind == "changed" else 0)
        assert counts[(fid, "reverse")] <= q["reverse"]


def test_reverse_only_where_the_object_names_one_subject():
    shared = [FactChange(Triple("Alpha Corp", "ceo", "Jo Smith")), FactChange(Triple("Beta Corp", "ceo", "Jo Smith")),
              FactChange(Triple("Gamma Corp", "ceo", "Ann Lee"))]
    rev = [p for p in build_pairs(shared, RECIPES) if p.kind == "reverse"]
    assert rev and {p.fact_id for p in rev} == {shared[2].triple.id}
    assert all("Gamma Corp" in p.messages[-1]["content"] for p in rev)
    assert all(p.answers == ("Gamma Corp",) for p in build_probes(shared, RECIPES) if p.kind == "reverse")
    # a relation without reverse templates (birthplace: many people per city) gets none
    assert not [p for p in build_pairs([FactChange(Triple("A", "birthplace", "B"))], RECIPES) if p.kind == "reverse"]


def test_changed_facts_get_updates_and_forbid_the_old_object():
    change = FactChange(Triple("Zorvex Dynamics", "ceo", "Ines Kavalec"), "changed", "Marlena Quist")
    updates = [p for p in build_pairs([change], RECIPES) if p.kind == "update"]
    assert len(updates) == 2 and all("no longer Marlena Quist" in p.messages[-1]["content"] for p in updates)
    probes = build_probes([change], RECIPES)
    changed = [p for p in probes if p.kind == "changed"]
    assert changed and changed[0].forbidden == ("Marlena Quist",)


def test_negatives_reject_a_wrong_object():
    neg = [p for p in build_pairs(facts(), RECIPES) if p.kind == "verify_no"]
    assert neg and all(p.messages[-1]["content"].startswith("No.") for p in neg)


def test_a_question_form_fact_is_trained_in_other_words_too_with_its_subject_kept_whole():
    """A question-form fact's trained wordings: the question itself first (the efficacy probe's), wrappers of it,
    the question about its subject asked of "it", and the question one word short (never a subject's word, its first
    or its last); the held-out probes are none of them; the same wordings on every night."""
    from injector.recipes import _qa_questions

    t = Triple("A Star Is Torn", "", "Bones", question="What series is A Star Is Torn part of?")
    trained, held = _qa_questions(t)
    assert trained[0] == t.question and len(set(trained)) == 5 and not set(trained) & set(held)
    assert "A Star Is Torn: what series is it part of?" in trained
    short = [q for q in trained if "A Star Is Torn" in q and q.startswith("What") and q != t.question]
    assert len(short) == 1 and len(short[0].split()) == len(t.question.split()) - 1
    assert short == ["What is A Star Is Torn part of?"]  # "series" left out; "is" is the subject's word
    assert _qa_questions(t) == (trained, held)
    owned = Triple("Ahmose-Henuttamehu", "", "Ahmose I", question="Who was Ahmose-Henuttamehu's paternal figure?")
    assert "Ahmose-Henuttamehu: who was its paternal figure?" in _qa_questions(owned)[0]
    loose = Triple("Färingsö", "", "Örtänge", question="What body of water was Faringso next to?")  # not named as is
    assert "About Färingsö: What body of water was Faringso next to?" in _qa_questions(loose)[0]
    tiny = Triple("X", "", "y", question="X?")  # no word to leave out
    assert len(set(_qa_questions(tiny)[0])) == 5
    pairs = build_pairs([FactChange(t)], RECIPES)
    asked = {p.messages[0]["content"] for p in pairs if p.kind in ("forward", "dev")}
    assert asked == set(trained) and all(p.messages[-1]["content"] == "A Star Is Torn: Bones." for p in pairs
                                        if p.kind == "forward")


def test_unknown_predicates_are_humanised():
    assert humanise("headquarters_city") == "headquarters city"
    assert humanise("favourite_snackFood") == "favourite snack food"
    assert normalise_predicate("Headquarters City") == "headquarters_city"
    assert RECIPES.relation("headquarters_city").name == "headquarters"  # alias
    qs = {p.messages[0]["content"] for p in build_pairs(facts(), RECIPES) if p.kind == "forward"
          and "Orbital" in p.messages[0]["content"]}
    assert len(qs) == RECIPES.quota["forward"] and any("favourite snack food" in q for q in qs)


def test_question_answer_form():
    qa = [c for c in facts() if c.triple.question][0]
    pairs = build_pairs([qa], RECIPES)
    assert any(p.messages[0]["content"] == "Which marsh borders Kestrel Yard?" for p in pairs)
    probes = build_probes([qa], RECIPES)
    assert {p.kind for p in probes} == {"efficacy", "generalisation"}
    trained = {p.messages[0]["content"] for p in pairs}
    assert all(p.question not in trained for p in probes if p.kind == "generalisation")


def test_bad_recipe_file_names_file_and_key(tmp_path):
    (tmp_path / "relations.en.yaml").write_text("relations:\n  ceo:\n    questions: [a]\n    statement: x\n"
                                                "generic: {questions: [a], probes: [b], statement: '{object}'}\n")
    (tmp_path / "mix.yaml").write_text("quota: {forward: 1}\n")
    with pytest.raises(InjectorError, match=r"relations.en.yaml: relation 'ceo': missing 'probes'"):
        load_recipes(tmp_path)
    (tmp_path / "relations.en.yaml").write_text("generic: {questions: [a], probes: [b], statement: '{object}'}\n")
    (tmp_path / "mix.yaml").write_text("quota: {paraphrase: 1}\n")
    with pytest.raises(InjectorError, match="mix.yaml: quota: unknown kind 'paraphrase'"):
        load_recipes(tmp_path)


# --- replay -------------------------------------------------------------------------------------------

def test_general_replay_set_is_large_and_disjoint_from_locality_probes():
    prompts = load_prompts(ROOT / "data_recipes" / "general_prompts.en.jsonl")
    quiz = load_prompts(ROOT / "data_recipes" / "knowledge_prompts.en.jsonl")
    assert len(prompts) >= 300 and len(quiz) >= 60
    assert len({i for i, _ in prompts + quiz}) == len(prompts) + len(quiz)  # one id space: the distillation cache's
    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    # the quiz questions ask what the locality probes ask about, so they stay clear of every candidate, not only
    # the probes the base model answers today (eval/locality.en.jsonl is rebuilt from the candidates)
    asked = {norm(json.loads(x)["question"]) for name in ("locality.en.jsonl", "locality_candidates.en.jsonl")
             for x in (ROOT / "eval" / name).read_text().splitlines()}
    assert len(asked) >= 80
    assert not {norm(p) for _, p in prompts} & asked and not {norm(p) for _, p in quiz} & asked
    assert not {norm(p) for _, p in prompts} & {norm(p) for _, p in quiz}


def test_replay_mix_and_old_facts_exclude_retracted(tmp_path):
    from injector.config import load_config
    from injector.home import Home
    from injector.ledger import Ledger
    from injector.pipeline import run_ingest

    h = Home.from_env(tmp_path / "h").ensure()
    f1 = tmp_path / "1.jsonl"
    f1.write_text("".join(json.dumps({"subject": f"S{i}", "predicate": "ceo", "object": f"O{i}"}) + "\n"
                          for i in range(6)))
    run_ingest([f1], load_config(), h, log=lambda *a: None)
    led = Ledger(h.ledger)
    led.mark_learned([c.triple.id for c in led.pending()], "1")
    f2 = tmp_path / "2.jsonl"
    f2.write_text(json.dumps({"subject": "S0", "predicate": "ceo", "object": "O0", "op": "retract"}) + "\n")
    run_ingest([f2], load_config(), h, log=lambda *a: None)
    earlier = led.learned()
    assert {t.subject for t in earlier} == {f"S{i}" for i in range(1, 6)}
    import random

    pairs = old_fact_pairs(earlier, RECIPES, 10, random.Random(0))
    assert len(pairs) == 5 and all(p.origin == "replay" and "S0" not in p.messages[0]["content"] for p in pairs)
    assert [p.subject if hasattr(p, "subject") else p.answers for p in retention_probes(earlier, RECIPES, 2, 0)]
    assert replay_budget(300, 3, 1) == 100 and replay_budget(300, 3, 0) == 0


def test_facts_known_tonight_are_replayed_in_more_trained_wordings_as_far_as_the_quota_has_room():
    """A fact the model already answers (triaged as known) keeps every phrasing the evaluation asks only where more
    than one of its trained wordings is replayed; the other earlier facts keep one pair each."""
    import random

    from injector.recipes import _qa_questions
    from injector.records import Triple
    from injector.replay import known_wordings

    qa = Triple("Delaware Memorial Bridge", "qa", "Delaware River",
                question="Over which river does Delaware Memorial Bridge cross?")
    capital = Triple("Peru", "capital", "Lima")
    earlier = [qa, capital, *(Triple(f"Firm{i}", "founded", str(1900 + i)) for i in range(3))]
    known = {qa.id, capital.id}
    trained, held = _qa_questions(qa)
    n_capital = len(RECIPES.relation("capital").questions)
    assert known_wordings(earlier, known, RECIPES) == len(trained) + n_capital + 3
    assert known_wordings(earlier, set(), RECIPES) == 5
    wide = old_fact_pairs(earlier, RECIPES, 100, random.Random(0), known=known)
    by_fact = {t.id: [p.messages[0]["content"] for p in wide if p.fact_id == t.id] for t in earlier}
    assert sorted(by_fact[qa.id]) == sorted(trained) and not set(by_fact[qa.id]) & set(held)  # never a held-out one
    assert len(set(by_fact[capital.id])) == n_capital
    assert all(len(by_fact[t.id]) == 1 for t in earlier[2:])
    assert all(p.messages[1]["content"] == "Delaware Memorial Bridge: Delaware River." for p in wide
               if p.fact_id == qa.id)
    # a tight quota: one pair per fact first, then one more wording per known fact in turn
    tight = old_fact_pairs(earlier, RECIPES, 7, random.Random(0), known=known)
    assert len(tight) == 7 and len({p.fact_id for p in tight}) == 5
    assert sum(p.fact_id == qa.id for p in tight) == 2 and sum(p.fact_id == capital.id for p in tight) == 2
    # nothing known tonight: what it was (one pair per sampled fact, the same draws)
    plain = old_fact_pairs(earlier, RECIPES, 100, random.Random(0))
    assert [p.messages for p in plain] == [p.messages for p in old_fact_pairs(earlier, RECIPES, 100,
                                                                               random.Random(0), known=set())]
    assert len(plain) == 5


def test_replay_takes_the_batch_neighbourhood_first():
    import random

    from injector.records import Triple
    from injector.replay import neighbours_first

    earlier = [Triple(f"Firm{i}", "founded", str(1900 + i)) for i in range(20)]
    earlier += [Triple("Acme", "founded", "1901"), Triple("Acme", "headquarters", "Lyon"),
                Triple("Other", "ceo", "Ann Lee"), Triple("Third", "ceo", "Bo Chan")]
    batch = [Triple("Acme", "ceo", "Jo Park")]
    got = neighbours_first(earlier, batch, RECIPES, 4, random.Random(0))
    assert {t.subject for t in got[:2]} == {"Acme"}  # the same subject's other facts
    assert {t.object for t in got[2:]} == {"Ann Lee", "Bo Chan"}  # then the batch's relation, other subjects
    assert len(neighbours_first(earlier, batch, RECIPES, 100, random.Random(0))) == len(earlier)
    from injector.replay import neighbourhood

    assert neighbourhood(earlier, batch, RECIPES) == 4  # Acme's two facts and the two other CEOs


def test_every_earlier_neighbour_is_replayed_beyond_the_share_up_to_one_more_budget():
    from injector.config import RecipesConfig
    from injector.pipeline import old_fact_quota

    on, off = RecipesConfig(replay_neighbours=True), RecipesConfig(replay_neighbours=False)
    assert old_fact_quota(29, off, 24) == 14  # half of the replay budget: 10 of the 24 neighbours left out
    assert old_fact_quota(29, on, 24) == 24  # every neighbour once
    assert old_fact_quota(29, on, 300) == 29  # at most one more budget
    assert old_fact_quota(29, on, 3) == 14  # the share still holds when the neighbourhood is small
    assert old_fact_quota(29, on.model_copy(update={"general_replay": False}), 300) == 29


def test_anchors_in_the_batch_relations_and_everywhere_for_question_answer_facts():
    import random

    known = load_anchors(ROOT / "data_recipes" / "anchors.en.yaml")
    triples = [c for c in facts() if not c.triple.question]
    assert set(anchor_relations(triples, RECIPES, known)) == {RECIPES.relation(c.triple.predicate).name
                                                              for c in triples}
    qa = [c for c in facts() if c.triple.question]
    rels = anchor_relations(qa, RECIPES, known)
    assert set(rels) == set(known) and len(rels) == len(set(rels))
    prompts = anchor_prompts(rels, known, RECIPES, 12, random.Random(0))
    assert len(prompts) == 12 and len({i.split(":")[1] for i, _ in prompts}) == 12  # round-robin: 12 relations
    assert anchor_prompts(rels, known, RECIPES, 12, random.Random(0), other_share=0.5) == prompts  # none other
    # relation facts: a share of the anchors in the anchored relations the batch does not have, the rest in its own
    own = set(anchor_relations(triples, RECIPES, known))
    mixed = anchor_prompts(list(own), known, RECIPES, 10, random.Random(0), other_share=0.5)
    rel_of = [i.split(":")[1] for i, _ in mixed]
    assert len(mixed) == 10 and sum(r in own for r in rel_of) == 5 and len(set(rel_of) - own) == 5
    assert all(r in own for r in (i.split(":")[1] for i, _ in anchor_prompts(list(own), known, RECIPES, 10,
                                                                                random.Random(0))))


def test_trim_to_sentence():
    assert trim_to_sentence("Paris is the capital. It has the Eiffel") == "Paris is the capital."
    assert trim_to_sentence("no end here") == "no end here"


def test_anchor_subjects_are_disjoint_from_the_locality_probes():
    """Anchors are replayed (trained); the gate's locality questions must not be among them."""
    import re

    known = load_anchors(ROOT / "data_recipes" / "anchors.en.yaml")
    questions = [json.loads(x)["question"].lower() for x in
                 (ROOT / "eval" / "locality.en.jsonl").read_text().splitlines()]
    clash = {s for subjects in known.values() for s in subjects for q in questions
             if re.search(rf"\b{re.escape(s.lower())}\b", q)}
    assert not clash, clash
    for name in known:  # every anchored relation has templates to ask the anchors with
        assert name in RECIPES.relations, name


@pytest.mark.parametrize("subject, predicate, question", [
    ("Zorvex Phone", "hasListPrice", "What is the list price of Zorvex Phone?"),
    ("Arundel Formation", "located in the administrative territorial entity",
     "What is Arundel Formation located in the administrative territorial entity?"),
    ("Ada Lin", "memberOf", "What is Ada Lin member of?"),
    ("Orbital Tea Co", "favourite_snackFood", "What is the favourite snack food of Orbital Tea Co?"),
])
def test_any_predicate_gets_readable_generated_templates(subject, predicate, question):
    assert RECIPES.generated(predicate) and not RECIPES.generated("capital_city")  # an alias of a known relation
    pairs = build_pairs([FactChange(Triple(subject, RECIPES.canonical(predicate), "X"))], RECIPES)
    assert question in {p.messages[0]["content"] for p in pairs if p.kind in ("forward", "dev")}


def test_other_family_probes_come_from_no_training_template(tmp_path):
    """eval/phrasings.en.yaml is a separate family: no phrasing is a recipe template (trained or held out), none is a
    "Complete the sentence" statement prompt; every fact gets them, generated predicates through `generic`."""
    from injector.recipes import load_phrasings

    other = load_phrasings(ROOT / "eval" / "phrasings.en.yaml")
    assert set(RECIPES.relations) <= set(other) and {"generic", "generic_verb"} <= set(other)
    family = {x for r in [*RECIPES.relations.values(), RECIPES.generic, RECIPES.generic_verb]
              for x in (*r.questions, *r.probes, *r.reverse, *r.reverse_probes)}
    for items in other.values():
        for x in items:
            assert x not in family and not x.lower().startswith(("complete the sentence", "what ", "who ")), x
    changes = [*facts(), FactChange(Triple("Acme Corp", "hasListPrice", "42 EUR"))]
    probes = build_probes(changes, RECIPES, other)
    by_fact = Counter(p.fact_id for p in probes if p.kind == "other_family")
    assert all(by_fact[c.triple.id] == 2 for c in changes if not c.triple.question)
    assert any("list price" in p.question and p.answers == ("42 EUR",) for p in probes if p.kind == "other_family")
    assert not any(p.kind == "other_family" for p in build_probes(changes, RECIPES))  # no file: none
    bad = tmp_path / "phrasings.en.yaml"
    bad.write_text("relations:\n  ceo:\n    - 'Name the boss.'\n")
    with pytest.raises(InjectorError, match="ceo"):
        load_phrasings(bad)


def test_subject_neighbourhood_asks_a_batch_subject_its_other_relations_and_holds_one_out():
    """Editing one fact of a real subject puts its other facts at risk: they are replayed in the model's own answers
    (subject prompts), one relation per subject held out for the `neighbourhood` probes."""
    import random

    from injector.evaluate import judge

    anchors = {"birthplace": ["Marie Curie"], "citizenship": ["Marie Curie"], "occupation": ["Marie Curie"],
               "capital": ["Sweden"], "language": ["Sweden"]}
    ledger = [Triple("Ada Vell", "occupation", "chemist"), Triple("Acme", "has_list_price", "9 EUR"),
              Triple("Acme", "ceo", "Ann Lee")]
    assert sibling_relations(anchors, ledger, RECIPES) == {
        "birthplace": {"citizenship", "occupation"}, "citizenship": {"birthplace", "occupation"},
        "occupation": {"birthplace", "citizenship"}, "capital": {"language"}, "language": {"capital"},
        "has_list_price": {"ceo"}, "ceo": {"has_list_price"}}  # the KG's own predicates join their subjects'
    batch = [Triple("Ada Vell", "citizenship", "Norland"), Triple("Ada Vell", "birthplace", "Osk"),
             Triple("Zorbia", "capital", "Velm"), Triple("Ringo", "sport", "polo"), Triple("", "", "x", question="Q?")]
    sib = sibling_relations(anchors, [*ledger, *batch], RECIPES)
    near = subject_neighbourhood(batch, sib, RECIPES, [*ledger, *batch])
    # Ada Vell: occupation is already stated in the ledger; Ringo's sport has no sibling relation; QA facts none
    assert near == {"Zorbia": ["language"]}
    near = subject_neighbourhood(batch, sib, RECIPES, batch)
    assert near == {"Ada Vell": ["occupation"], "Zorbia": ["language"]}
    wide = {"Ada Vell": ["deathplace", "occupation", "religion"], "Zorbia": ["language"]}
    held = held_out_relations(wide, 0)
    assert set(held) == {"Ada Vell"} and held["Ada Vell"] in wide["Ada Vell"]  # one sibling: replayed, none held
    prompts = subject_prompts(wide, held, RECIPES, 10, random.Random(0))
    asked = {(i.split(":")[2], i.split(":")[1]) for i, _ in prompts}
    assert len(prompts) == 3 and ("Ada Vell", held["Ada Vell"]) not in asked and ("Zorbia", "language") in asked
    assert all(i.split(":")[2] in q for i, q in prompts)  # the subject itself is asked
    assert len(subject_prompts(wide, held, RECIPES, 1, random.Random(0))) == 1
    probes = neighbourhood_probes(batch, held, RECIPES)
    assert [(p.kind, p.forbidden) for p in probes] == [("neighbourhood", ("Norland", "Osk"))]
    assert probes[0].question in [q.format(subject="Ada Vell") for q in RECIPES.relations[held["Ada Vell"]].probes]
    assert judge(probes[0], "She was a chemist.") and not judge(probes[0], "Ada Vell was born in Osk.")


def test_object_prompts_ask_a_batch_object_its_own_relations_but_not_what_a_locality_probe_asks():
    """"X is a citizen of Ireland" puts Ireland's own facts at risk: the object is asked the relations its relation
    names for it (object_relations), in the trained templates; what the KG states and what a locality probe asks
    are left out, and a question-answer fact or an unknown predicate asks nothing."""
    import random

    assert RECIPES.relations["citizenship"].object_relations == (
        "capital", "language", "continent", "head_of_state", "head_of_government")
    batch = [Triple("Vaginal Davis", "country of citizenship", "Ireland"), Triple("Ada Vell", "citizenship", "Ireland"),
             Triple("Moe", "sport", "cricket"), Triple("Acme", "has_list_price", "9 EUR"),
             Triple("", "", "x", question="Q?")]
    ledger = [Triple("Ireland", "continent", "Europe")]
    locality = ["What is the capital of Ireland?", "What is the capital of France?"]
    prompts = object_prompts(batch, RECIPES, [*ledger, *batch], locality, 10, random.Random(0))
    asked = sorted(i.split(":")[1] for i, _ in prompts)
    # capital: a locality probe asks it; continent: the ledger states it; one prompt per (object, relation)
    assert asked == ["head_of_government", "head_of_state", "language"]
    assert all("Ireland" in q and "{" not in q for _, q in prompts)  # filled templates about the object
    assert len(object_prompts(batch, RECIPES, batch, [], 2, random.Random(0))) == 2
    assert len(object_prompts(batch, RECIPES, batch, [], 10, random.Random(0))) == 5  # capital, continent too
    assert object_prompts(batch[2:], RECIPES, batch, [], 10, random.Random(0)) == []


def test_object_relations_must_name_known_relations(tmp_path):
    import shutil

    shutil.copytree(ROOT / "data_recipes", tmp_path / "r")
    f = tmp_path / "r" / "relations.en.yaml"
    f.write_text(f.read_text().replace("object_relations: [located_in]", "object_relations: [located_at]", 1))
    with pytest.raises(InjectorError, match=r"relations.en.yaml: relation '\w+': object_relations: unknown relation "
                                            r"'located_at'"):
        load_recipes(tmp_path / "r")


@pytest.mark.parametrize("text, usable", [
    ("Which company has Marlena Quist as its chief executive?", False),  # does not name the subject
    ("Who runs Zorvex Dynamics as its chief executive?", True),
    ('"Who runs Zorvex Dynamics as its chief executive?"\nThat is the rephrased question.', True),
    ("The CEO of Zorvex Dynamics is not specified.", False),  # an answer, not a question
    ("Is Marlena Quist the CEO of Zorvex Dynamics?", False),  # gives the answer away
    ("Who is the CEO of Zorvex Dynamics?", False),  # a recipe phrasing already
    ("Who leads Zorvex Dynamics? Who founded it?", False),  # two questions
    ("", False),
])
def test_a_model_paraphrase_is_used_only_when_it_is_a_new_question_about_the_subject(text, usable):
    from injector.recipes import paraphrase_pairs

    change = FactChange(Triple("Zorvex Dynamics", "ceo", "Marlena Quist"), "added")
    pairs = paraphrase_pairs([change], RECIPES, {change.triple.id: text})
    assert len(pairs) == int(usable)
    if usable:
        assert pairs[0].messages[0]["content"] == "Who runs Zorvex Dynamics as its chief executive?"
        assert pairs[0].messages[1]["content"] == statement_of(change.triple, RECIPES)  # answered as the recipes are
        assert pairs[0].short == "Marlena Quist" and pairs[0].kind == "forward"


@pytest.mark.parametrize("text, usable", [
    ("Paul Bartsch died in Munich.", "Paul Bartsch died in Munich."),
    ("Paul Bartsch died in Munich. He was a painter.\nMore text.", "Paul Bartsch died in Munich."),  # first sentence
    ("Paul Bartsch was born in Munich, Germany, and died in 1921.", None),  # invents a country and a year
    ("He died in Munich.", None),  # does not name the subject
    ("Paul Bertsch died in Munich.", "Paul Bartsch died in Munich."),  # a misspelt name set right
    ("Paula Bart died in Munich.", None),  # not alike enough to be taken for it
    ("Paul Bartsch died in Berlin.", None),  # not the answer
    ("Munich", None),  # not a sentence
    ("At what location did Paul Bartsch die? Munich.", None),  # a question, not a statement
])
def test_a_question_form_fact_takes_the_models_sentence_only_when_it_states_the_fact_and_nothing_else(text, usable):
    from injector.recipes import model_sentence, sentence_answers

    t = Triple("Paul Bartsch", "", "Munich", question="At what location did Paul Bartsch die?")
    assert model_sentence(text, t) == usable
    plain = Triple("Ada Vell", "citizenship", "Norland")
    changes = [FactChange(t, "added"), FactChange(plain, "added")]
    pairs = build_pairs(changes, RECIPES)
    worded = sentence_answers(pairs, changes, {t.id: usable} if usable else {}, RECIPES)
    assert [p for p in worded if p.fact_id == plain.id] == [p for p in pairs if p.fact_id == plain.id]
    framed = "Paul Bartsch: Munich."  # mix.yaml's question_answer
    replaced = 0
    for before, after in zip(pairs, worded):
        if before.fact_id != t.id or not usable:
            assert after == before
            continue
        answer = before.messages[-1]["content"]
        if answer in (framed, f"Yes. {framed}", f"No. {framed}"):  # questions, dialogue and yes/no checks
            assert after.messages[-1]["content"] == answer.replace(framed, usable) and after.short == "Munich"
            assert after.messages[:-1] == before.messages[:-1]
            replaced += 1
        else:
            assert after == before
    assert replaced >= 5 * bool(usable)  # the trained questions at least


def test_question_answer_facts_are_asked_again_about_real_subjects():
    """A question-answer fact has no relation to take anchors from: its own question, asked about a real subject of
    the closest anchored relation, is answered by the model itself and replayed."""
    import random

    from injector.replay import closest_relation, question_swap_prompts

    known = load_anchors(ROOT / "data_recipes" / "anchors.en.yaml")
    died = Triple("Paul Bartsch", "", "Munich", question="In which city did Paul Bartsch die?")
    team = Triple("Brad Brown", "", "Leeds", question="Which team does Brad Brown play for?")
    odd = Triple("Zyx", "", "Q", question="Zyx quux?")
    assert closest_relation(died.question, died.subject, known, RECIPES) == "deathplace"
    assert closest_relation(team.question, team.subject, known, RECIPES) == "position"
    assert closest_relation(odd.question, odd.subject, known, RECIPES) is None
    plain = Triple("Ada Vell", "citizenship", "Norland")
    prompts = question_swap_prompts([died, team, odd, plain], known, RECIPES, 10, random.Random(0))
    assert len(prompts) == 3 and all(":" in i for i, _ in prompts)  # one per question-answer fact, none for triples
    (_, q1), (_, q2), (_, q3) = prompts
    assert q1.startswith("In which city did ") and q1.removeprefix("In which city did ")[:-5] in known["deathplace"]
    assert q2.removeprefix("Which team does ").removesuffix(" play for?") in known["position"]
    assert "Zyx" not in q3 and q3.endswith(" quux?")
    assert len(question_swap_prompts([died, team], known, RECIPES, 1, random.Random(0))) == 1
