"""Small typed records that cross stage boundaries (ingest -> recipes -> train -> eval -> gate)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

Origin = Literal["new", "replay"]


def fact_key(subject: str, predicate: str, obj: str, question: str = "") -> str:
    """Stable id of one fact: the same triple always gets the same id. A question-answer fact is identified by its
    question too (two questions about one subject with the same answer are two facts)."""
    key = f"{subject}\x1f{predicate}\x1f{obj}" + (f"\x1f{question}" if question else "")
    return hashlib.sha1(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Triple:
    subject: str
    predicate: str
    object: str
    op: Literal["assert", "retract"] = "assert"
    source: str = ""  # provenance the KG gave (the record's `source` field), kept in the ledger
    question: str = ""  # set when the fact arrived as a question (subject, question, answer)
    origin: str = ""  # file:line it was read from
    valid_from: str = ""  # validity the KG gave (ISO dates), kept in the ledger
    valid_to: str = ""

    @property
    def id(self) -> str:
        return fact_key(self.subject, self.predicate, self.object, self.question)


@dataclass(frozen=True)
class FactChange:
    """A fact to train: new, or changed (then `old_object` must disappear from answers)."""

    triple: Triple
    kind: Literal["added", "changed"] = "added"
    old_object: str | None = None


@dataclass(frozen=True)
class InstructionPair:
    messages: tuple[dict, ...]  # chat messages; the last one is the assistant answer trained on
    fact_id: str
    kind: str  # forward, reverse, statement, verify_yes, verify_no, dialogue, update, general, ...
    template_id: str
    origin: Origin = "new"
    # the answer's short form (the bare entity) where the trained answer is a sentence stating it (answer_style:
    # sentence); "" where the answer is already in its short form (train.entity_weight)
    short: str = ""


@dataclass(frozen=True)
class Probe:
    """One evaluation question, judged on a generated answer."""

    question: str
    answers: tuple[str, ...]
    kind: str  # efficacy, generalisation, reverse, changed, retention, locality
    fact_id: str = ""
    relation: str = ""
    forbidden: tuple[str, ...] = ()
    messages: tuple[dict, ...] = ()  # prior turns (in-context baseline); empty for a plain question


@dataclass(frozen=True)
class ProbeResult:
    probe: Probe
    answer: str
    correct: bool


@dataclass(frozen=True)
class TrainResult:
    adapter_dir: str
    steps: int
    epochs: float
    train_loss: float
    best_eval_loss: float | None
    tokens_per_s: float
    wall_s: float
    n_examples: int
    loss_history: tuple[tuple[int, float], ...] = ()
    eval_history: tuple[tuple[int, float], ...] = ()
    stopped_early: bool = False
    replicas_in_sync: bool | None = None  # several training processes: their adapters were bit-identical
    skipped_share: float = 0.0  # of the pair exposures, those skipped as their fact was learned (train.drop_learned)


@dataclass(frozen=True)
class EvalReport:
    results: tuple[ProbeResult, ...]
    latency_ms_p50: float
    latency_ms_p95: float
    hardware: str
    wall_s: float
    extra: dict = field(default_factory=dict)  # ppl, kl, ... (added by later stages)

    def accuracy(self, kind: str | None = None) -> float:
        rows = [r for r in self.results if kind is None or r.probe.kind == kind]
        return sum(r.correct for r in rows) / len(rows) if rows else float("nan")

    def by_kind(self) -> dict[str, dict]:
        kinds = sorted({r.probe.kind for r in self.results})
        return {k: {"n": sum(r.probe.kind == k for r in self.results), "accuracy": self.accuracy(k)} for k in kinds}


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    bound: float
    op: Literal[">=", "<="]
    passed: bool
    gated: bool = True  # False: reported for information, never blocks (`passed` is then True)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: tuple[Check, ...]
    compared_with: str  # "base" or the champion version the relative checks used

    @property
    def failed(self) -> list[str]:
        """The names of the checks that refused the candidate (none when it passed)."""
        return [c.name for c in self.checks if not c.passed]

    def table(self) -> list[dict]:
        return [
            {"check": c.name, "value": c.value, "bound": f"{c.op} {c.bound:g}",
             "verdict": "info" if not c.gated else "pass" if c.passed else "FAIL"}
            for c in self.checks
        ]
