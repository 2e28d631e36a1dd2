"""Learned facts leave the training mix (train.drop_learned): fewer tokens per learned fact.

A fact's pairs are trained until the model answers every one of them greedily on two exposures in a row; then all
but one of them (the sentinel, the fact's first phrasing) are skipped for the rest of the run. The sentinel keeps
training and re-checks the fact at every exposure: if it misses, the fact's pairs come back and must be learned
again. The check is free: it reads the answer-position logits the training forward pass computes anyway. The
candidate's generation-based evaluation is the final re-check.

"Answers greedily" on a teacher-forced row is exact for greedy decoding: the greedy answer starts with the trained
answer iff every answer token is the argmax given the answer so far. The end-of-turn and whitespace tokens after the
answer are not required (`ignore`): a model that goes on talking still gave the fact.
"""

from __future__ import annotations

from collections import defaultdict


class LearnedFacts:
    """Row keys (the row's token ids) of tonight's fact pairs, grouped by fact, and which facts are learned."""

    def __init__(self, rows_by_fact: dict[str, list[tuple[int, ...]]], streak: int = 2,
                 ignore: frozenset[int] = frozenset()):
        self.fact_of: dict[tuple[int, ...], str] = {}
        self.keys: dict[str, list[tuple[int, ...]]] = {}
        for fact, keys in rows_by_fact.items():
            keys = list(dict.fromkeys(keys))
            self.keys[fact] = keys
            for k in keys:
                self.fact_of.setdefault(k, fact)
        self.streak, self.ignore = streak, ignore
        self.hits: dict[tuple[int, ...], int] = defaultdict(int)  # consecutive matched exposures per row
        self.learned: set[str] = set()
        self.skipped = 0  # row exposures not trained
        self.trained = 0
        self.tokens_skipped = 0
        self.relapses = 0  # a learned fact's sentinel missed: its pairs came back

    def skip(self, key: tuple[int, ...]) -> bool:
        """True where this row belongs to a learned fact and is not its sentinel."""
        fact = self.fact_of.get(key)
        return fact in self.learned and key != self.keys[fact][0]

    def observe(self, key: tuple[int, ...], matched: bool) -> None:
        """One trained exposure of a row: `matched` when every answer token was the argmax."""
        fact = self.fact_of.get(key)
        if fact is None:
            return
        self.hits[key] = self.hits[key] + 1 if matched else 0
        if fact in self.learned:
            if not matched:  # the sentinel missed: the fact trains again, every pair re-earns its streak
                self.learned.discard(fact)
                self.relapses += 1
                for k in self.keys[fact]:
                    self.hits[k] = 0
        elif all(self.hits[k] >= self.streak for k in self.keys[fact]):
            self.learned.add(fact)

    @property
    def skipped_share(self) -> float:
        total = self.skipped + self.trained
        return self.skipped / total if total else 0.0
