"""Ingest stage: read KG exports, normalise and validate every record, quarantine the bad ones.

Every record read is accounted for: read = accepted + rejected + duplicates (label statements of RDF
files are counted apart). Conflicts on single-valued predicates quarantine the whole group.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from injector.errors import InjectorError
from injector.readers import FIELDS, RawRecord, expand, read_records
from injector.records import Triple

CONTROL_TOKENS = re.compile(
    r"<\|[^|<>\s]{1,40}\|>|</?s>|\[/?INST\]|<<\/?SYS>>|<\|?(?:endoftext|eot_id|im_start|im_end)\|?>", re.I)
INSTRUCTION_LIKE = re.compile(
    r"\b(?:ignore|disregard|forget|override)\b.{0,40}\b(?:instructions?|prompts?|rules|context|everything)\b"
    r"|\byou are now\b|\bsystem prompt\b|\bjailbreak\b|\bdo anything now\b|\bact as (?:an?|the)\b"
    r"|\bnew instructions?\s*:|\brespond only with\b|\bpretend (?:to be|you are)\b",
    re.I | re.S,
)
_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class Rejection:
    where: str  # file:line
    reason: str
    raw: str


@dataclass(frozen=True)
class Batch:
    """One ingest's accepted facts and the account of everything else."""

    triples: tuple[Triple, ...]
    rejected: tuple[Rejection, ...]
    duplicates: int
    read: int
    conflicts: int = 0  # conflicting groups (their records are among `rejected`)
    labels: int = 0  # RDF label statements consumed to name IRIs (not facts)
    content_hash: str = ""
    refused_files: tuple[tuple[str, str], ...] = ()  # (path, reason): files in a drop dir that were not read
    # (subject, predicate) slots named by rejected records, lower-cased: a fact in such a slot is never "absent"
    # (the rejected record may be that very fact, mangled)
    rejected_slots: frozenset[tuple[str, str]] = frozenset()
    unidentified: int = 0  # rejected records that name no fact (corrupt lines): any fact may be among them

    @property
    def rejected_fraction(self) -> float:
        return len(self.rejected) / self.read if self.read else 0.0


def normalise(text: str) -> str:
    """Unicode NFC, control characters removed, whitespace collapsed."""
    return _WS.sub(" ", _CTRL.sub(" ", unicodedata.normalize("NFC", text))).strip()


def validate(rec: RawRecord, max_len: int, canonical: Callable[[str], str] = lambda p: p) \
        -> tuple[Triple | None, str | None]:
    """A Triple, or the reason it is rejected. `canonical` maps predicate aliases and spellings to one name."""
    if rec.error:
        return None, rec.error
    f = rec.fields or {}
    question = f.get("question")
    if question not in (None, "") and not f.get("predicate"):
        f = {**f, "predicate": "question", "object": f.get("object", f.get("answer"))}
    values: dict[str, str] = {}
    for key in (*FIELDS, "question"):
        v = f.get(key)
        if v is None or (key == "question" and v == ""):
            if key == "question":
                continue
            return None, f"missing field: {key}"
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            return None, f"field {key}: expected a string"
        v = normalise(str(v))
        if not v:
            return None, f"empty field: {key}"
        if len(v) > max_len:
            return None, f"field {key} longer than {max_len} characters ({len(v)})"
        if CONTROL_TOKENS.search(v):
            return None, f"field {key} holds a chat-template control token ({CONTROL_TOKENS.search(v).group(0)})"
        if INSTRUCTION_LIKE.search(v):
            return None, f"field {key} holds instruction-like text (prompt injection): " \
                         f"{INSTRUCTION_LIKE.search(v).group(0)!r}"
        values[key] = v
    op = str(f.get("op") or "assert").strip().lower()
    if op not in ("assert", "retract"):
        return None, f"field op: {op!r} is not assert or retract"
    extra: dict[str, str] = {}
    for key in ("source", "valid_from", "valid_to"):
        v = f.get(key)
        if v in (None, ""):
            continue
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            return None, f"field {key}: expected a string"
        extra[key] = normalise(str(v))[:max_len]
    for key in ("valid_from", "valid_to"):
        if key in extra and _date(extra[key]) is None:
            return None, f"field {key}: {extra[key]!r} is not an ISO date (YYYY-MM-DD)"
    if "valid_to" in extra and _date(extra["valid_to"]) < today():
        op = "retract"  # no longer valid: the fact leaves the ledger's active set
    return Triple(values["subject"], canonical(values["predicate"]), values["object"], op=op,
                  question=values.get("question", ""), origin=rec.where, **extra), None


def today():
    import datetime

    return datetime.date.today()


def _date(text: str):
    import datetime

    try:
        return datetime.date.fromisoformat(text[:10])
    except ValueError:
        return None


def _named_slot(rec: RawRecord, canonical: Callable[[str], str]) -> tuple[str, str] | None:
    """The (subject, predicate) a rejected record is about, when those fields can still be read (else None)."""
    f = rec.fields or {}
    if f.get("question") and not f.get("predicate"):
        f = {**f, "predicate": "question"}
    vals = [f.get(k) for k in FIELDS[:2]]
    if not all(isinstance(v, str | int | float) and not isinstance(v, bool) and normalise(str(v)) for v in vals):
        return None
    return normalise(str(vals[0])).lower(), canonical(normalise(str(vals[1]))).lower()


def _conflicts(triples: list[Triple], single_valued: Callable[[str], bool]) -> tuple[list[Triple], list[list[Triple]]]:
    groups: dict[tuple[str, str], list[Triple]] = defaultdict(list)
    for t in triples:
        if t.op == "assert" and single_valued(t.predicate):
            groups[(t.subject.lower(), t.predicate.lower())].append(t)
    bad = [g for g in groups.values() if len({t.object.lower() for t in g}) > 1]
    bad_ids = {id(t) for g in bad for t in g}
    return [t for t in triples if id(t) not in bad_ids], bad


def content_hash(triples: Iterable[Triple], mode: str) -> str:
    """Order-independent hash of the accepted facts: the same input gives the same hash."""
    lines = sorted(f"{t.op}\x1f{t.subject}\x1f{t.predicate}\x1f{t.object}\x1f{t.question}" for t in triples)
    h = hashlib.sha256(mode.encode())
    for line in lines:
        h.update(line.encode() + b"\n")
    return h.hexdigest()


def read_batch(paths: list[Path], single_valued: Callable[[str], bool] = lambda p: False, mode: str = "snapshot",
               language: str = "en", max_field_length: int = 300,
               canonical: Callable[[str], str] = lambda p: p) -> Batch:
    """Read, normalise and validate every record of the given files/dirs (dirs in name order)."""
    refused: list[tuple[str, str]] = []
    files = expand(paths, refused)
    if not files:
        why = "; ".join(f"{p}: {r}" for p, r in refused[:3])
        raise InjectorError(f"no input files in {', '.join(map(str, paths))}" + (f" (refused {why})" if why else ""))
    accepted: list[Triple] = []
    rejected: list[Rejection] = []
    slots: set[tuple[str, str]] = set()
    seen: set[tuple] = set()
    read = dups = labels = unidentified = 0
    for path in files:
        for rec in read_records(path, language):
            if rec.error == "label":
                labels += 1
                continue
            read += 1
            triple, reason = validate(rec, max_field_length, canonical)
            if triple is None:
                rejected.append(Rejection(rec.where, reason or "invalid", rec.raw))
                slot = _named_slot(rec, canonical)
                if slot is None:
                    unidentified += 1
                else:
                    slots.add(slot)
                continue
            key = (triple.op, triple.subject, triple.predicate, triple.object, triple.question)
            if key in seen:
                dups += 1
                continue
            seen.add(key)
            accepted.append(triple)
    accepted, groups = _conflicts(accepted, single_valued)
    for g in groups:
        objs = " vs ".join(sorted({t.object for t in g}))
        for t in g:
            slots.add((t.subject.lower(), t.predicate.lower()))
            rejected.append(Rejection(t.origin, f"conflict: {t.subject} / {t.predicate} has several objects in this "
                                                f"batch ({objs}); none is trained", json.dumps(
                                                    {"subject": t.subject, "predicate": t.predicate,
                                                     "object": t.object})))
    return Batch(tuple(accepted), tuple(rejected), dups, read, len(groups), labels, content_hash(accepted, mode),
                 tuple(refused), frozenset(slots), unidentified)


def write_quarantine(batch: Batch, directory: Path, inputs: list[Path] | None = None) -> Path | None:
    """Rejected records, one JSON object a line (where, reason, raw); None when nothing was rejected.

    One file per ingest, named by time, the input's name and the accepted facts' hash; never overwritten.
    """
    if not batch.rejected:
        return None
    import time

    directory.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", inputs[0].name if inputs else "input")[:60] or "input"
    stem = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{name}-{batch.content_hash[:12]}"
    path, n = directory / f"{stem}.jsonl", 1
    while path.exists():
        n += 1
        path = directory / f"{stem}-{n}.jsonl"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in batch.rejected:
            f.write(json.dumps({"where": r.where, "reason": r.reason, "raw": r.raw}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path
