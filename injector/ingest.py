"""Ingest stage: read KG triples and account for every record (accepted / rejected with file:line)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from injector.errors import InjectorError
from injector.records import Triple


@dataclass(frozen=True)
class Rejection:
    where: str  # file:line
    reason: str
    raw: str


@dataclass(frozen=True)
class Batch:
    triples: tuple[Triple, ...]
    rejected: tuple[Rejection, ...]
    duplicates: int
    read: int


def read_jsonl(path: Path) -> Batch:
    """JSONL triples, one object a line: subject, predicate, object (or subject, question, answer)."""
    if not path.exists():
        raise InjectorError(f"triples file not found: {path}")
    triples: list[Triple] = []
    rejected: list[Rejection] = []
    seen: set[tuple[str, str, str]] = set()
    read = dups = 0
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            read += 1
            where = f"{path}:{n}"
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                rejected.append(Rejection(where, f"malformed line ({type(e).__name__})", raw[:200].decode("utf-8",
                                                                                                          "replace")))
                continue
            if not isinstance(rec, dict):
                rejected.append(Rejection(where, "not a JSON object", raw[:200].decode("utf-8", "replace")))
                continue
            question = str(rec.get("question") or "").strip()
            obj = rec.get("object", rec.get("answer"))
            pred = rec.get("predicate") or ("question" if question else None)
            fields = {"subject": rec.get("subject"), "predicate": pred, "object": obj}
            missing = [k for k, v in fields.items() if not isinstance(v, str) or not v.strip()]
            if missing:
                rejected.append(Rejection(where, f"missing or empty field: {missing[0]}", raw[:200].decode()))
                continue
            key = (fields["subject"].strip(), fields["predicate"].strip(), fields["object"].strip())
            if key in seen:
                dups += 1
                continue
            seen.add(key)
            triples.append(Triple(*key, source=where, question=question))
    return Batch(tuple(triples), tuple(rejected), dups, read)
