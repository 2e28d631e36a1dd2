"""Replay against forgetting: earlier facts from the ledger and self-distilled general instructions.

General replay targets are the current model's own greedy answers (self-distillation), so replay keeps
behaviour with no external dataset. They are cached per model (base sha256 + adapter version) and prompt.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from injector.errors import InjectorError
from injector.recipes import Recipes, _fill, _short, fact_answer, humanise, trained_questions
from injector.records import InstructionPair, Probe, Triple

_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def load_prompts(path: Path) -> list[tuple[str, str]]:
    """(id, prompt) rows of a JSONL prompt file."""
    if not path.exists():
        raise InjectorError(f"general replay prompts not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
                rows.append((str(rec["id"]), str(rec["prompt"])))
            except (json.JSONDecodeError, KeyError) as e:
                raise InjectorError(f"{path}:{n}: expected {{\"id\", \"prompt\"}} ({e})") from None
    return rows


def trim_to_sentence(text: str) -> str:
    """Cut a length-limited generation back to its last full sentence (a truncated target teaches cut-offs)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else text.strip()


def model_key(base_sha256: str, adapter_version: str | None) -> str:
    return hashlib.sha256(f"{base_sha256}:{adapter_version or 'base'}".encode()).hexdigest()[:16]


def self_distill(model, tokenizer, prompts: list[tuple[str, str]], cache_file: Path, max_new_tokens: int = 48,
                 batch_size: int = 32) -> dict[str, str]:
    """The model's own answers to `prompts`, generated once per model and cached in `cache_file`."""
    from injector.evaluate import generate

    cached: dict[str, str] = {}
    if cache_file.exists():
        for line in cache_file.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            cached[rec["id"]] = rec["answer"]
    todo = [(i, p) for i, p in prompts if i not in cached]
    if todo:
        answers = generate(model, tokenizer, [[{"role": "user", "content": p}] for _, p in todo], max_new_tokens,
                           batch_size, progress=True)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with cache_file.open("a", encoding="utf-8") as f:
            for (i, _), a in zip(todo, answers):
                cached[i] = trim_to_sentence(a)
                f.write(json.dumps({"id": i, "answer": cached[i]}, ensure_ascii=False) + "\n")
    return {i: cached[i] for i, _ in prompts}


def replay_budget(n_new: int, new: int, replay: int) -> int:
    """How many replay pairs go with `n_new` new pairs at a new:replay mix."""
    return round(n_new * replay / new) if replay else 0


def _tiers(facts: list[Triple], batch: list[Triple], recipes: Recipes) -> list[list[Triple]]:
    """Earlier facts as [same subject as the batch, same relation, the rest]."""
    subjects = {t.subject.lower() for t in batch}
    relations = {recipes.relation(t.predicate).name for t in batch if not t.question}
    tiers: list[list[Triple]] = [[], [], []]
    for t in facts:
        tier = 0 if t.subject.lower() in subjects else 1 if (not t.question and recipes.relation(
            t.predicate).name in relations) else 2
        tiers[tier].append(t)
    return tiers


def neighbourhood(facts: list[Triple], batch: list[Triple], recipes: Recipes) -> int:
    """How many earlier facts share a subject or a relation with the batch: what training it puts at risk."""
    return sum(len(t) for t in _tiers(facts, batch, recipes)[:2])


def neighbours_first(facts: list[Triple], batch: list[Triple], recipes: Recipes, n: int,
                     rng: random.Random) -> list[Triple]:
    """Up to `n` earlier facts, the batch's neighbourhood first: the same subject's other facts (what an edit of the
    subject puts at risk), then other subjects' facts of the batch's relations, then the rest; random within each."""
    out: list[Triple] = []
    for tier in _tiers(facts, batch, recipes):
        out += rng.sample(tier, min(n - len(out), len(tier)))
    return out


def known_wordings(facts: list[Triple], known: set[str], recipes: Recipes) -> int:
    """The replay pairs `old_fact_pairs` can make of these earlier facts: one each, and every trained wording of
    those in `known`."""
    return sum(len(trained_questions(t, recipes)) if t.id in known else 1 for t in facts)


def old_fact_pairs(facts: list[Triple], recipes: Recipes, n: int, rng: random.Random,
                   batch: list[Triple] = (), known: set[str] = frozenset()) -> list[InstructionPair]:
    """One forward question per sampled earlier fact (active, learned; the ledger never returns retracted), the
    batch's neighbours first (`neighbours_first`). Where the `n` pairs leave room, the facts in `known` (triaged as
    known tonight: the model answers them in every phrasing the evaluation asks, held-out ones included, and their
    retention probes are those phrasings) are replayed in their other trained wordings too, one more per fact in
    turn: a question-form fact is trained in five rewordings, and one of them a night did not hold the others
    (zsRE 40: "Over which river does Delaware Memorial Bridge cross?" lost in 1 of 3 phrasings, whichever was
    replayed)."""
    pairs, extra = [], []
    for t in neighbours_first(facts, list(batch), recipes, n, rng):
        rel = recipes.relation(t.predicate)
        asked = trained_questions(t, recipes)
        q = asked[0] if t.question else rng.choice(asked)
        a = fact_answer(t, recipes)
        made = [InstructionPair(messages=({"role": "user", "content": x}, {"role": "assistant", "content": a}),
                                fact_id=t.id, kind="replay_fact", template_id=f"{rel.name}:replay", origin="replay",
                                short=_short(t.object) if a != _short(t.object) else "")
                for x in [q, *(y for y in asked if y != q and t.id in known)]]
        pairs.append(made[0])
        extra.append(made[1:])
    while len(pairs) < n and any(extra):  # round robin: every known fact one more wording before any gets two
        for more in extra:
            if more and len(pairs) < n:
                pairs.append(more.pop(0))
    return pairs


def retention_probes(facts: list[Triple], recipes: Recipes, n: int, seed: int) -> list[Probe]:
    """Earlier learned facts, asked with their first (trained) phrasing."""
    rng = random.Random(seed)
    out = []
    for t in rng.sample(facts, min(n, len(facts))):
        rel = recipes.relation(t.predicate)
        q = t.question or _fill(rel.questions[0], t)
        out.append(Probe(question=q, answers=(t.object,), kind="retention", fact_id=t.id,
                         relation=rel.name if not t.question else humanise("qa")))
    return out


def load_anchors(path: Path) -> dict[str, list[str]]:
    """Real subjects per relation (data_recipes/anchors.<lang>.yaml); missing file: no anchors."""
    import yaml

    from injector.recipes import normalise_predicate

    if not path.exists():
        return {}
    tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(tree, dict) or not all(isinstance(v, list) for v in tree.values()):
        raise InjectorError(f"{path}: expected a mapping of relation -> list of subjects")
    return {normalise_predicate(k): [str(s) for s in v] for k, v in tree.items()}


def anchor_relations(changes, recipes: Recipes, anchors: dict[str, list[str]]) -> list[str]:
    """The relations whose anchors guard a batch: its facts' relations; with question-answer facts (no relation)
    every anchored one, so that short factual answers about real subjects stay in place (zsRE: docs/BENCHMARKS.md)."""
    rels = [recipes.relation(c.triple.predicate).name for c in changes if not c.triple.question]
    if any(c.triple.question for c in changes):
        rels += [r for r in anchors if r not in rels]
    return rels


def anchor_prompts(relations: list[str], anchors: dict[str, list[str]], recipes: Recipes, n: int,
                   rng: random.Random, other_share: float = 0.0) -> list[tuple[str, str]]:
    """Up to `n` questions about real subjects, in the trained templates of the batch's relations; `other_share` of
    them (where the batch's relations leave anchored ones out) in the other anchored relations, round-robin."""
    others = sorted(set(anchors) - set(relations))
    n_other = round(n * other_share) if others else 0
    own = _anchor_pool(relations, anchors, recipes, n - n_other, rng)
    return own + _anchor_pool(others, anchors, recipes, n - len(own), rng)


def _anchor_pool(relations: list[str], anchors: dict[str, list[str]], recipes: Recipes, n: int,
                 rng: random.Random) -> list[tuple[str, str]]:
    pool = []
    for name in sorted(set(relations)):
        rel = recipes.relations.get(name)
        if rel is None:
            continue
        for subject in anchors.get(name, []):
            qi = rng.randrange(len(rel.questions))
            q = _fill(rel.questions[qi], Triple(subject, name, ""))
            pool.append((f"anchor:{name}:{subject}:{qi}", q))
    rng.shuffle(pool)
    # round-robin over relations so that each gets its anchors even when n is small
    by_rel: dict[str, list] = {}
    for item in pool:
        by_rel.setdefault(item[0].split(":")[1], []).append(item)
    return _round_robin(by_rel, n)


def _round_robin(groups: dict[str, list], n: int) -> list:
    """Up to `n` items taken one per group in turn (from each group's end), so every group gets its share when n
    is small."""
    out: list = []
    while len(out) < n and any(groups.values()):
        for items in groups.values():
            if items and len(out) < n:
                out.append(items.pop())
    return out


def sibling_relations(anchors: dict[str, list[str]], facts, recipes: Recipes) -> dict[str, set[str]]:
    """Relations asked of the same kind of subject: two are siblings when one subject has both, in the anchors'
    seed lists (Einstein: birthplace, occupation, citizenship) or in the knowledge graph itself (the ledger and the
    batch). Learned from the data, so a KG's own predicates join their subjects' other relations."""
    by_subject: dict[str, set[str]] = {}
    for rel, subjects in anchors.items():
        for s in subjects:
            by_subject.setdefault(s.lower(), set()).add(rel)
    for t in facts:
        if not t.question:
            by_subject.setdefault(t.subject.lower(), set()).add(recipes.canonical(t.predicate))
    out: dict[str, set[str]] = {}
    for rels in by_subject.values():
        for r in rels:
            out.setdefault(r, set()).update(rels - {r})
    return out


def subject_neighbourhood(batch, siblings: dict[str, set[str]], recipes: Recipes,
                          stated) -> dict[str, list[str]]:
    """Per subject of the batch, the sibling relations of its batch relations that neither the batch nor the ledger
    (`stated`: triples) gives it: its other facts as the model knows them, which an edit of the subject puts at
    risk. Sorted, so a night's split between replayed and held-out relations is reproducible."""
    have: dict[str, set[str]] = {}
    for t in stated:
        if not t.question:
            have.setdefault(t.subject.lower(), set()).add(recipes.canonical(t.predicate))
    out: dict[str, list[str]] = {}
    for t in batch:
        if t.question or t.subject in out:
            continue
        rels = have.get(t.subject.lower(), set())
        near = set().union(*(siblings.get(r, set()) for r in rels)) - rels
        if near:
            out[t.subject] = sorted(near)
    return out


def held_out_relations(near: dict[str, list[str]], seed: int) -> dict[str, str]:
    """One sibling relation per subject kept for evaluation only (`neighbourhood` probes), never replayed; a subject
    with a single sibling relation has it replayed and none held out."""
    rng = random.Random(seed)
    return {s: rng.choice(rels) for s, rels in near.items() if len(rels) > 1}


def subject_prompts(near: dict[str, list[str]], held: dict[str, str], recipes: Recipes, n: int,
                    rng: random.Random) -> list[tuple[str, str]]:
    """Up to `n` questions about the batch's subjects in their other (sibling) relations, in the trained templates,
    round-robin over subjects; the current model answers them itself (self-distilled replay), so that editing one
    fact of a real subject leaves its other facts as they were."""
    by_subject: dict[str, list[tuple[str, str]]] = {}
    for subject, rels in near.items():
        items = []
        for name in rels:
            if held.get(subject) == name:
                continue
            rel = recipes.relation(name)
            qi = rng.randrange(len(rel.questions))
            items.append((f"subject:{name}:{subject}:{qi}", _fill(rel.questions[qi], Triple(subject, name, ""))))
        rng.shuffle(items)
        by_subject[subject] = items
    return _round_robin(by_subject, n)


_WORD = re.compile(r"[a-z]+")
_FUNCTION_WORDS = {"what", "which", "who", "whom", "whose", "where", "when", "how", "is", "are", "was", "were", "the",
                   "a", "an", "of", "in", "on", "at", "to", "for", "by", "does", "did", "do", "has", "have", "tell",
                   "me", "name", "and", "or", "its", "it", "this", "that", "from", "as", "with", "be", "been"}


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _FUNCTION_WORDS and len(w) > 2}


def closest_relation(question: str, subject: str, anchors: dict[str, list[str]], recipes: Recipes) -> str | None:
    """The anchored relation whose templates share the most word stems with a question-answer fact's question, per
    square root of the templates' vocabulary ("Which team does X play for?" -> position; "In which city did X die?"
    -> deathplace); None when none shares one. A rough guess of the subject's kind: on 40 zsRE questions it named
    a relation for 31, not always the right one (a wrong kind only makes an odd question for the model to answer)."""
    words = _content_words(question.replace(subject, " "))
    best, score = None, 0.0
    for name in sorted(anchors):
        rel = recipes.relations.get(name)
        if rel is None:
            continue
        tw = {w for x in (*rel.questions, *rel.probes) for w in _content_words(x.replace("{subject}", " "))}
        # a shared stem ("die"/"died", "located"/"location"), weighed by how specific it is to the relation's templates
        hits = sum(1 for w in words if any(t.startswith(w[:4]) or w.startswith(t[:4]) for t in tw))
        if hits and hits / len(tw) ** 0.5 > score:
            best, score = name, hits / len(tw) ** 0.5
    return best


def question_swap_prompts(batch, anchors: dict[str, list[str]], recipes: Recipes, n: int,
                          rng: random.Random) -> list[tuple[str, str]]:
    """Up to `n` of the batch's question-answer facts asked again about a real subject instead of theirs (one per
    fact): the subject of the anchored relation closest to the question (`closest_relation`), else any anchor. The
    model answers them itself, so that the trained question form keeps depending on its subject (zsRE: an edited
    "What state is X located?" must not answer the capital of France)."""
    everyone = sorted({s for subjects in anchors.values() for s in subjects})
    out: list[tuple[str, str]] = []
    for t in batch:
        if len(out) >= n or not everyone or not t.question or not t.subject or t.subject not in t.question:
            continue
        rel = closest_relation(t.question, t.subject, anchors, recipes)
        other = rng.choice(anchors.get(rel) or everyone)
        out.append((f"swap:{t.id}:{other}", t.question.replace(t.subject, other)))
    return out


def object_prompts(batch, recipes: Recipes, stated, exclude: list[str], n: int,
                   rng: random.Random) -> list[tuple[str, str]]:
    """Up to `n` questions about the batch's objects in the relations their relation names for them
    (`object_relations`: a new citizenship's country asked its capital, language, continent), in the trained
    templates, round-robin over objects; the current model answers them itself. "X is a citizen of Ireland" puts
    Ireland's own facts at risk (after such edits the embedded model answered Ireland's capital in prose about
    Ireland, and other capitals in the country's language). Left out: what the batch or the ledger (`stated`)
    states about the object, and any (relation, object) that a question in `exclude` (the locality probes) asks,
    so that those stay held out."""
    have = {(recipes.canonical(t.predicate), t.subject.lower()) for t in stated if not t.question}
    everything = {name: [] for name in recipes.relations}
    by_object: dict[str, list[tuple[str, str]]] = {}
    for t in batch:
        if t.question or not t.object.strip():
            continue
        obj = t.object.strip()
        if obj in by_object:
            continue
        asked = {closest_relation(q, obj, everything, recipes) for q in exclude if obj.lower() in q.lower()}
        items = []
        for name in recipes.relation(t.predicate).object_relations:
            if (name, obj.lower()) in have or name in asked:
                continue
            rel = recipes.relation(name)
            qi = rng.randrange(len(rel.questions))
            items.append((f"object:{name}:{obj}:{qi}", _fill(rel.questions[qi], Triple(obj, name, ""))))
        rng.shuffle(items)
        if items:
            by_object[obj] = items
    return _round_robin(by_object, n)


def neighbourhood_probes(batch, held: dict[str, str], recipes: Recipes) -> list[Probe]:
    """One held-out question per subject in a sibling relation no training pair asks (`held_out_relations`), in the
    relation's held-out phrasing: correct while the answer does not carry the subject's new object(s) over."""
    new: dict[str, set[str]] = {}
    for t in batch:
        if not t.question:
            new.setdefault(t.subject, set()).add(t.object)
    out = []
    for subject, name in held.items():
        rel = recipes.relation(name)
        q = _fill((rel.probes or rel.questions)[0], Triple(subject, name, ""))
        out.append(Probe(question=q, answers=(), kind="neighbourhood", relation=rel.name,
                         forbidden=tuple(sorted(new.get(subject, ())))))
    return out


def distilled_pairs(answers: dict[str, str], prompts: dict[str, str], kind: str) -> list[InstructionPair]:
    return [InstructionPair(messages=({"role": "user", "content": prompts[i]}, {"role": "assistant", "content": a}),
                            fact_id="", kind=kind, template_id=i, origin="replay")
            for i, a in answers.items() if a]
