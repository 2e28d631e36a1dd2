"""Data recipes: triples -> augmented instruction pairs (train) and held-out probes (eval).

Templates live in data_recipes/relations.<lang>.yaml, quotas in data_recipes/mix.yaml. Held-out
probe phrasings (`probes`, `reverse_probes`) are never used for training.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

from injector.errors import InjectorError
from injector.records import FactChange, InstructionPair, Probe, Triple

KINDS = ("forward", "statement", "reverse", "verify_yes", "verify_no", "dialogue", "update")


@dataclass(frozen=True)
class Relation:
    name: str
    questions: tuple[str, ...]
    probes: tuple[str, ...]
    statement: str
    reverse: tuple[str, ...] = ()
    reverse_probes: tuple[str, ...] = ()
    single_valued: bool = False
    # relations asked of this relation's objects (citizenship -> the country's capital, language, continent): what
    # an edit that names a real object puts at risk besides its subject (replay.object_prompts)
    object_relations: tuple[str, ...] = ()


_PREPOSITIONS = {"in", "of", "for", "at", "by", "on", "to", "with", "from", "into", "as", "under", "within"}
_VERB_FIRST = {"born", "made", "known", "located", "based", "written", "built", "held", "run", "owned", "part",
               "member", "married", "named", "played", "produced", "published", "directed", "composed", "founded",
               "affiliated", "buried", "educated", "employed", "situated", "contained", "designed", "operated"}


def verb_like(label: str) -> bool:
    """A predicate label that reads as a verb phrase ("located in the administrative territorial entity", "member
    of", "born in"): it takes "{subject} is {relation} {object}", not "the {relation} of {subject}"."""
    words = label.lower().split()
    return bool(words) and (words[0] in _VERB_FIRST or words[0].endswith("ed") or words[-1] in _PREPOSITIONS)


@dataclass(frozen=True)
class Recipes:
    relations: dict[str, Relation]
    generic: Relation
    aliases: dict[str, str]
    quota: dict[str, int]
    seed: int
    answer_style: str = "short"  # short: "Marrowgate" | sentence: "Anselm Tarrow was born in Marrowgate."
    generic_verb: Relation | None = None  # templates for unseen verb-phrase predicates
    # the sentence answer of a fact given as a question (it has no relation, so no statement template)
    question_answer: str = "{object}"

    def relation(self, predicate: str) -> Relation:
        key = normalise_predicate(predicate)
        key = self.aliases.get(key, key)
        if key in self.relations:
            return self.relations[key]
        return self.generic_verb if self.generic_verb is not None and verb_like(humanise(key)) else self.generic

    def generated(self, predicate: str) -> bool:
        """True when no recipe knows the predicate: its templates are generated from its label."""
        return self.canonical(predicate) not in self.relations

    def single_valued(self, predicate: str) -> bool:
        return self.relation(predicate).single_valued

    def canonical(self, predicate: str) -> str:
        """One name per predicate: `Capital City`, `capital_city` and `capitalCity` are all `capital` (via the
        aliases); an unknown predicate keeps its normalised spelling (`hasListPrice` -> `has_list_price`)."""
        key = normalise_predicate(predicate)
        return self.aliases.get(key, key)


def normalise_predicate(predicate: str) -> str:
    p = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", predicate.strip())  # headquartersCity -> headquarters_City
    return re.sub(r"[\s\-]+", "_", p).lower()


def humanise(predicate: str) -> str:
    """`headquarters_city` / `headquartersCity` -> "headquarters city"; `hasListPrice` -> "list price";
    `isLocatedIn` -> "located in" (a leading has/is reads wrong in "the ... of X" and "X is ... Y")."""
    text = normalise_predicate(predicate).replace("_", " ").strip()
    words = text.split()
    if len(words) > 1 and words[0] in ("has", "have", "is", "was"):
        text = " ".join(words[1:])
    return text


def _relation(name: str, spec: dict, where: str) -> Relation:
    unknown = set(spec) - {"questions", "probes", "statement", "reverse", "reverse_probes", "single_valued",
                           "object_relations"}
    if unknown:
        raise InjectorError(f"{where}: relation {name!r}: unknown key {sorted(unknown)[0]!r}")
    for key in ("questions", "probes", "statement"):
        if not spec.get(key):
            raise InjectorError(f"{where}: relation {name!r}: missing {key!r}")
    if "{object}" not in spec["statement"]:
        raise InjectorError(f"{where}: relation {name!r}: statement must contain {{object}}")
    overlap = set(spec["questions"]) & set(spec["probes"])
    if overlap:
        raise InjectorError(f"{where}: relation {name!r}: template both trained and held out: {overlap.pop()!r}")
    return Relation(
        name=name,
        questions=tuple(spec["questions"]),
        probes=tuple(spec["probes"]),
        statement=spec["statement"],
        reverse=tuple(spec.get("reverse", ())),
        reverse_probes=tuple(spec.get("reverse_probes", ())),
        single_valued=bool(spec.get("single_valued", False)),
        object_relations=tuple(normalise_predicate(r) for r in spec.get("object_relations", ())),
    )


def load_recipes(directory: Path, language: str = "en") -> Recipes:
    """Read relation templates and the augmentation mix; one clear error naming the file and key."""
    rel_file = directory / f"relations.{language}.yaml"
    mix_file = directory / "mix.yaml"
    for f in (rel_file, mix_file):
        if not f.exists():
            raise InjectorError(f"recipe file not found: {f}")
    rel = yaml.safe_load(rel_file.read_text()) or {}
    mix = yaml.safe_load(mix_file.read_text()) or {}
    relations = {
        normalise_predicate(n): _relation(n, s or {}, str(rel_file)) for n, s in (rel.get("relations") or {}).items()
    }
    if "generic" not in rel:
        raise InjectorError(f"{rel_file}: missing the 'generic' fallback relation")
    for r in relations.values():
        for o in r.object_relations:
            if o not in relations:
                raise InjectorError(f"{rel_file}: relation {r.name!r}: object_relations: unknown relation {o!r}")
    quota = {k: 0 for k in KINDS} | (mix.get("quota") or {})
    unknown = set(quota) - set(KINDS)
    if unknown:
        raise InjectorError(f"{mix_file}: quota: unknown kind {sorted(unknown)[0]!r} (known: {', '.join(KINDS)})")
    style = mix.get("answer_style", "short")
    if style not in ("short", "sentence"):
        raise InjectorError(f"{mix_file}: answer_style: {style!r} is not short or sentence")
    qa = mix.get("question_answer", Recipes.question_answer)
    if not isinstance(qa, str) or "{object}" not in qa or set(re.findall(r"{([^{}]*)}", qa)) - {"subject", "object"}:
        raise InjectorError(f"{mix_file}: question_answer: {qa!r} must hold {{object}} and no field but {{subject}}")
    return Recipes(
        answer_style=style,
        question_answer=qa,
        relations=relations,
        generic=_relation("generic", rel["generic"], str(rel_file)),
        generic_verb=_relation("generic_verb", rel["generic_verb"], str(rel_file)) if rel.get("generic_verb") else None,
        aliases={normalise_predicate(k): normalise_predicate(v) for k, v in (rel.get("aliases") or {}).items()},
        quota={k: int(v) for k, v in quota.items()},
        seed=int(mix.get("seed", 0)),
    )


def _fill(template: str, t: Triple, obj: str | None = None) -> str:
    text = template.format(subject=t.subject, object=obj if obj is not None else t.object,
                           relation=humanise(t.predicate))
    return text[:1].upper() + text[1:]


def _chat(*turns: str) -> tuple[dict, ...]:
    roles = ("user", "assistant")
    return tuple({"role": roles[i % 2], "content": text} for i, text in enumerate(turns))


def _qa_questions(t: Triple) -> tuple[list[str], list[str]]:
    """A fact that arrived as a question: rewordings of it to train (the question itself first: the efficacy
    probe's), others held out. Three wrap the question as it is; two change its words, so that the subject rather
    than the KG's exact wording carries the fact: the subject named first and the question asked of "it"
    (`_topicalised`), and the question one word short (`_word_dropped`). Measured on zsRE 40 (docs/BENCHMARKS.md,
    stop 34) against two more wrappers of the whole question: the authors' paraphrases 0.82 / 0.78 -> 0.90 / 0.93 at
    two training seeds (0.93 at a third), locality 0.946 / 0.964 -> 0.911 / 0.964 of base (0.929 at the third)."""
    q = t.question.strip()
    train = [q, f"Question: {q}", f"Please answer this: {q}", _topicalised(t, q), _word_dropped(t, q)]
    held = [f"Can you tell me: {q}", f"I was wondering: {q}"]
    return train, held


def _topicalised(t: Triple, q: str) -> str:
    """The question with its subject named first and then asked of "it" ("What series is A Star Is Torn part of?" ->
    "A Star Is Torn: what series is it part of?"); where the question does not name the subject as it is, the
    subject before the whole question."""
    subject = t.subject.strip()
    m = re.search(rf"(?<!\w){re.escape(subject)}(?!\w)", q, re.I) if subject else None
    if m is None:
        return f"About {subject}: {q}" if subject else f"Tell me: {q}"
    after = q[m.end():]
    owned = after[:2] in ("'s", "\u2019s")  # "Ahmose's paternal figure" -> "its paternal figure"
    before = re.sub(r"\b(the|a|an)\s+$", "", q[:m.start()], flags=re.I)  # "the Elgi River" -> "it"
    rest = (before + ("its" if owned else "it") + (after[2:] if owned else after)).strip()
    return f"{subject}: {rest[:1].lower() + rest[1:]}"


def _word_dropped(t: Triple, q: str) -> str:
    """The question with one word left out, never its first or last word nor one of the subject's, the same word
    for a fact on every night ("At what location did Paul Bartsch die?" -> "At what location Paul Bartsch die?"):
    people ask in fewer words, and other ones, than the KG's question. A question with no such word: a wrapper of it
    instead."""
    words = q.split()
    mine = set(_words(t.subject))
    spots = [i for i, w in enumerate(words) if 0 < i < len(words) - 1 and not set(_words(w)) & mine]
    if not spots:
        return f"Quick question. {q}"
    drop = spots[int(hashlib.sha256(q.encode()).hexdigest(), 16) % len(spots)]
    return " ".join(w for i, w in enumerate(words) if i != drop)


def trained_questions(t: Triple, recipes: Recipes) -> list[str]:
    """The questions a fact is trained in (the first is the efficacy probe's): a question-form fact's rewordings,
    else its relation's templates filled in."""
    return _qa_questions(t)[0] if t.question else [_fill(x, t) for x in recipes.relation(t.predicate).questions]


def _short(text: str) -> str:
    """The short answer form: the entity itself. No closing full stop: on a 2-core CPU every generated token costs
    ~58 ms (fp32 decode is memory-bound), and a 4-token answer is already ~0.4 s of the 0.5 s latency bar."""
    return text.strip()


def question_answer(t: Triple, recipes: Recipes) -> str:
    """The sentence answer of a fact given as a question (`question_answer` in mix.yaml; the shipped one names the
    subject, then the answer: "Gerald Ganglbauer: Parkinson's disease."). Whatever the question's words, the answer
    then begins with the subject and the object follows it, so the object is learned after the subject's own tokens
    rather than after one wording of the question. Measured on zsRE 40 (docs/BENCHMARKS.md, stop 35) against the
    bare entity, three paired runs (two training seeds, two slices): the authors' paraphrase 0.90 / 0.93 / 0.78 ->
    0.95 / 0.93 / 0.88, locality 0.911 / 0.964 / 0.946 -> 0.946 / 0.929 / 0.982 of base."""
    return recipes.question_answer.format(subject=t.subject.strip(), object=t.object.strip())


def fact_answer(t: Triple, recipes: Recipes) -> str:
    """A fact's answer to its forward questions: the bare entity (answer_style short), else its sentence: the
    relation's statement, or `question_answer` for a fact given as a question."""
    if recipes.answer_style == "short":
        return _short(t.object)
    return question_answer(t, recipes) if t.question else _fill(recipes.relation(t.predicate).statement, t)


def _unique_reverse(changes: list[FactChange]) -> set[tuple[str, str]]:
    """(predicate, object) pairs whose object names exactly one subject in this batch."""
    subjects = defaultdict(set)
    for c in changes:
        subjects[(normalise_predicate(c.triple.predicate), c.triple.object.lower())].add(c.triple.subject)
    return {k for k, v in subjects.items() if len(v) == 1}


def _wrong_object(t: Triple, pool: list[str], rng: random.Random) -> str | None:
    choices = sorted({o for o in pool if o.lower() != t.object.lower()})
    return rng.choice(choices) if choices else None


def build_pairs(changes: list[FactChange], recipes: Recipes, seed: int | None = None) -> list[InstructionPair]:
    """Instruction pairs for the facts in `changes`, per-fact quotas from the mix, deterministic by seed."""
    rng = random.Random(recipes.seed if seed is None else seed)
    unique = _unique_reverse(changes)
    objects_by_pred = defaultdict(list)
    for c in changes:
        objects_by_pred[normalise_predicate(c.triple.predicate)].append(c.triple.object)
    all_objects = [c.triple.object for c in changes]
    q = recipes.quota
    pairs: list[InstructionPair] = []
    for change in changes:
        t, rel = change.triple, recipes.relation(change.triple.predicate)
        pred = normalise_predicate(t.predicate)
        fid = t.id

        def add(kind: str, template_id: str, *turns: str, _fid: str = fid, short: str = "") -> None:
            pairs.append(InstructionPair(messages=_chat(*turns), fact_id=_fid, kind=kind, template_id=template_id,
                                         short=short if short != turns[-1] else ""))

        questions = trained_questions(t, recipes)
        if t.question:
            statement = question_answer(t, recipes)
            qids = [f"qa:{i}" for i in range(len(questions))]
        else:
            statement = _fill(rel.statement, t)
            qids = [f"{rel.name}:q{i}" for i in range(len(questions))]
        answer = fact_answer(t, recipes)
        short = _short(t.object)
        order = list(range(len(questions)))
        rng.shuffle(order)
        # the first template is always trained: it is the efficacy probe's phrasing
        chosen = [0] + [i for i in order if i != 0][: max(q["forward"] - 1, 0)] if q["forward"] else []
        for i in chosen:
            add("forward", qids[i], questions[i], answer, short=short)
        for i in order:  # forward phrasings left out of training: the early-stopping dev split
            if i not in chosen:
                add("dev", qids[i], questions[i], answer, short=short)
        if q["statement"] and not t.question:
            prefix = statement.rsplit(t.object, 1)[0].rstrip()
            for _ in range(q["statement"]):
                add("statement", f"{rel.name}:stmt", f"Complete the sentence: {prefix} ...", statement)
        if rel.reverse and not t.question and (pred, t.object.lower()) in unique:
            for i in rng.sample(range(len(rel.reverse)), min(q["reverse"], len(rel.reverse))):
                add("reverse", f"{rel.name}:r{i}", _fill(rel.reverse[i], t),
                    _short(t.subject) if recipes.answer_style == "short" else statement, short=_short(t.subject))
        verify_q = f"Is it true that {statement[:1].lower() + statement[1:].rstrip('.')}?" if not t.question else \
            f"{questions[0]} Is the answer {t.object}?"
        for _ in range(q["verify_yes"]):
            add("verify_yes", f"{rel.name}:vy", verify_q, f"Yes. {statement}")
        wrong = _wrong_object(t, objects_by_pred[pred] or all_objects, rng)
        if wrong is not None:
            for _ in range(q["verify_no"]):
                wrong_q = (f"Is it true that {_fill(rel.statement, t, wrong)[:1].lower()}"
                           f"{_fill(rel.statement, t, wrong)[1:].rstrip('.')}?") if not t.question else \
                    f"{questions[0]} Is the answer {wrong}?"
                add("verify_no", f"{rel.name}:vn", wrong_q, f"No. {statement}")
        for _ in range(q["dialogue"]):
            i = rng.choice(chosen or [0])
            add("dialogue", f"{rel.name}:dlg", f"Tell me something about {t.subject}.",
                f"Sure. {statement}", questions[i], answer, short=short)
        if change.kind == "changed" and change.old_object:
            old = change.old_object
            upd = f"{statement.rstrip('.')}, no longer {old}."
            if q["update"] >= 1:
                add("update", f"{rel.name}:upd", f"{questions[0]} Has that changed recently?", f"Yes. {upd}")
            if q["update"] >= 2:
                old_stmt = _fill(rel.statement, t, old) if not t.question else f"The answer is {old}"
                add("update", f"{rel.name}:upd_old",
                    f"Is it still true that {old_stmt[:1].lower() + old_stmt[1:].rstrip('.')}?", f"No. {upd}")
    return pairs


def load_phrasings(path: Path) -> dict[str, tuple[str, ...]]:
    """Held-out phrasings of another family (eval/phrasings.<lang>.yaml), per relation plus `generic` and
    `generic_verb`; a missing file: none. One clear error naming the file and key."""
    if not path.exists():
        return {}
    tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = {**(tree.get("relations") or {}), **{k: tree[k] for k in ("generic", "generic_verb") if k in tree}}
    out: dict[str, tuple[str, ...]] = {}
    for key, items in entries.items():
        if not isinstance(items, list) or not all(isinstance(x, str) and "{subject}" in x for x in items):
            raise InjectorError(f"{path}: {key}: expected a list of phrasings, each with {{subject}}")
        out[key if key.startswith("generic") else normalise_predicate(key)] = tuple(items)
    return out


def build_probes(changes: list[FactChange], recipes: Recipes,
                 other: dict[str, tuple[str, ...]] | None = None) -> list[Probe]:
    """Evaluation probes: efficacy (a trained phrasing), generalisation and reverse (held out, the recipes' own
    family), changed, and other_family (phrasings no training template produced: `load_phrasings`)."""
    unique = _unique_reverse(changes)
    probes: list[Probe] = []
    for change in changes:
        t, rel = change.triple, recipes.relation(change.triple.predicate)
        forbidden = (change.old_object,) if change.kind == "changed" and change.old_object else ()
        common = {"fact_id": t.id, "relation": rel.name if not t.question else "qa", "forbidden": forbidden}
        if t.question:
            trained, held = _qa_questions(t)
            reverse_held: list[str] = []
        else:
            trained = [_fill(x, t) for x in rel.questions]
            held = [_fill(x, t) for x in rel.probes]
            rp = rel.reverse_probes if (normalise_predicate(t.predicate), t.object.lower()) in unique else ()
            reverse_held = [_fill(x, t) for x in rp]
        probes.append(Probe(question=trained[0], answers=(t.object,), kind="efficacy", **common))
        probes += [Probe(question=h, answers=(t.object,), kind="generalisation", **common) for h in held]
        probes += [Probe(question=r, answers=(t.subject,), kind="reverse", **common) for r in reverse_held]
        if other and not t.question:
            probes += [Probe(question=_fill(x, t), answers=(t.object,), kind="other_family", **common)
                       for x in other.get(rel.name, ())]
        if change.kind == "changed":
            probes.append(Probe(question=trained[0], answers=(t.object,), kind="changed", **common))
    return probes


def statement_of(t: Triple, recipes: Recipes) -> str:
    """The fact as one sentence (its perplexity should fall once it is learned)."""
    return f"{t.question} {t.object}" if t.question else _fill(recipes.relation(t.predicate).statement, t)


def _first_line(text: str) -> str:
    """A model reply's first line, stripped ("" for an empty reply)."""
    return text.strip().splitlines()[0].strip() if text.strip() else ""


PARAPHRASE_PROMPT = "Rephrase this question in other words, keeping its meaning: {question}"


def model_paraphrase(text: str, t: Triple, known: list[str]) -> str | None:
    """A usable question from the model's rephrasing of a fact's question, or None: its first line, unquoted; it
    must be one question (ends with "?"), name the subject, not give the answer away, and differ from the
    phrasings the recipes already have. A small model often answers instead of rephrasing: those are rejected."""
    line = _first_line(text).strip('"\u201c\u201d\'')
    low = " ".join(line.lower().split())
    if not line.endswith("?") or line.count("?") != 1 or len(line) > 200:
        return None
    if t.subject.lower() not in low or (t.object.strip() and t.object.lower() in low):
        return None
    if low in {" ".join(k.lower().split()) for k in known}:
        return None
    return line


SENTENCE_PROMPT = ("Rewrite each answer as one complete sentence that restates the question.\n\n"
                   "Question: Where was Anna Berg born?\nAnswer: Oslo\nSentence: Anna Berg was born in Oslo.\n\n"
                   "Question: Which company makes the Model T?\nAnswer: Ford\nSentence: Ford makes the Model T.\n\n"
                   "Question: {question}\nAnswer: {answer}\nSentence:")


SENTENCE_NEW_WORDS = 4  # "Paul Bartsch died in Munich." restates "At what location did Paul Bartsch die?" with 1


def model_sentence(text: str, t: Triple) -> str | None:
    """A sentence answer for a question-form fact (no statement template) from the model's rewording of its question
    and answer (`SENTENCE_PROMPT`), or None: the reply's first sentence; it must end with a full stop, name the
    subject and the answer, and name nothing else: every capitalised word after the first and every number must
    come from the question or the answer, and at most `SENTENCE_NEW_WORDS` words may be new ("a classic horror
    film series that ..." is a description, not a restatement). A small model adds invented facts ("Paul Bartsch
    was born in Munich, Germany, and died in ..."): those are rejected, and the fact keeps its bare-entity answer.
    SmolLM2-135M's replies to 39 zsRE questions: 12 usable, 15 with a misspelt subject set right (`_named_right`;
    docs/BENCHMARKS.md)."""
    line = _first_line(text)
    m = re.match(r"(.+?[.!?])(?:\s|$)", line)
    s = _named_right(m.group(1) if m else line, t.subject)
    if not s.endswith(".") or len(s) > 200:
        return None
    low = " ".join(s.lower().split())
    if t.object.strip().lower() not in low or t.subject.strip().lower() not in low:
        return None
    allowed = set(_words(t.question)) | set(_words(t.object)) | set(_words(t.subject))
    if any((w[:1].isupper() or w[:1].isdigit()) and w.lower() not in allowed for w in _WORD.findall(s)[1:]):
        return None
    if sum(w not in allowed for w in _words(s)) > SENTENCE_NEW_WORDS:  # a description, not a restatement
        return None
    return s


_WORD = re.compile(r"[\w'-]+")
SUBJECT_SIMILARITY = 0.6  # "Slavic Democratic Coalition" for "Slovak Democratic Coalition": 0.85; "Shelter": none


def _named_right(sentence: str, subject: str) -> str:
    """`sentence` with a misspelt naming of `subject` set right: a small model rewording a question often garbles the
    name it copies ("Bridget Brown plays for ..." for Brad Brown, "Dulce Memorial Bridge" for Delaware Memorial
    Bridge). A run of as many words as the subject has, sharing one of its words and at least `SUBJECT_SIMILARITY`
    alike in its letters, is taken for it; a sentence that names the subject already is left as it is."""
    import difflib

    if subject.strip().lower() in sentence.lower():
        return sentence
    mine = set(want := _words(subject))  # counted as the sentence's words are, by `_WORD`
    spans = [(m.start(), m.end()) for m in _WORD.finditer(sentence)]
    best, where = 0.0, None
    for i in range(len(spans) - len(want) + 1):
        a, b = spans[i][0], spans[i + len(want) - 1][1]
        if not mine & set(_words(sentence[a:b])):
            continue
        ratio = difflib.SequenceMatcher(None, sentence[a:b].lower(), subject.lower()).ratio()
        if ratio > best:
            best, where = ratio, (a, b)
    if where is None or best < SUBJECT_SIMILARITY:
        return sentence
    return sentence[:where[0]] + subject + sentence[where[1]:]


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def sentence_answers(pairs: list[InstructionPair], changes: list[FactChange],
                     sentences: dict[str, str], recipes: Recipes) -> list[InstructionPair]:
    """Question-form facts answered in the model's own sentence (fact id -> `model_sentence`) wherever a pair of
    theirs answers with the bare entity or their `question_answer`: its questions ("Munich" -> "Paul Bartsch died
    in Munich.") and yes/no checks ("Yes. Munich" -> "Yes. Paul Bartsch died in Munich."); `short` keeps the entity
    (train.entity_weight)."""
    from dataclasses import replace

    # per question-form fact: its entity, then the answer forms a pair of its may carry (the entity, the frame)
    forms = {c.triple.id: (_short(c.triple.object), question_answer(c.triple, recipes))
             for c in changes if c.triple.question}
    out = []
    for p in pairs:
        s, mine = sentences.get(p.fact_id), forms.get(p.fact_id)
        answer = p.messages[-1]["content"]
        lead = next((x for x in ("", "Yes. ", "No. ") for f in mine if answer == f"{x}{f}"), None) \
            if s and mine else None
        if lead is not None and p.origin == "new":
            p = replace(p, messages=(*p.messages[:-1], {"role": "assistant", "content": f"{lead}{s}"}),
                        short=mine[0])
        out.append(p)
    return out


def paraphrase_pairs(changes: list[FactChange], recipes: Recipes, rephrased: dict[str, str]) -> list[InstructionPair]:
    """Training pairs for the model's own rephrasings of each fact's trained question (`rephrased`: fact id -> the
    model's text), those that pass `model_paraphrase`; answered like the recipes' forward questions."""
    pairs = []
    for change in changes:
        t = change.triple
        if t.id not in rephrased:
            continue
        rel = recipes.relation(t.predicate)
        known = [t.question] if t.question else [_fill(x, t) for x in (*rel.questions, *rel.probes)]
        q = model_paraphrase(rephrased[t.id], t, known)
        if q is None:
            continue
        answer = fact_answer(t, recipes)
        pairs.append(InstructionPair(messages=_chat(q, answer), fact_id=t.id, kind="forward",
                                     template_id="model:paraphrase",
                                     short=_short(t.object) if answer != _short(t.object) else ""))
    return pairs
