"""Probe files (JSONL): {"question", "answers": [...], "kind", "forbidden": [...] (optional)}."""

from __future__ import annotations

import json
from pathlib import Path

from injector.errors import InjectorError
from injector.records import Probe


def read_questions(path: Path, default_kind: str = "probe") -> list[Probe]:
    """Read a probe file; one clear error naming file:line on a bad row."""
    if not path.exists():
        raise InjectorError(f"questions file not found: {path}")
    probes = []
    for n, raw in enumerate(path.read_bytes().splitlines(), 1):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InjectorError(f"{path}:{n}: invalid UTF-8 at byte {e.start}") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InjectorError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not row["question"].strip():
            raise InjectorError(f"{path}:{n}: missing field 'question'")
        answers = row.get("answers")
        if isinstance(answers, str):
            answers = [answers]
        if not answers or not all(isinstance(a, str) for a in answers):
            raise InjectorError(f"{path}:{n}: 'answers' must be a non-empty list of strings")
        forbidden = row.get("forbidden") or []
        if isinstance(forbidden, str):  # one forbidden answer, not its characters
            forbidden = [forbidden]
        if not isinstance(forbidden, list) or not all(isinstance(f, str) for f in forbidden):
            raise InjectorError(f"{path}:{n}: 'forbidden' must be a string or a list of strings")
        probes.append(Probe(question=row["question"], answers=tuple(answers), kind=str(row.get("kind", default_kind)),
                            forbidden=tuple(forbidden), relation=str(row.get("relation", ""))))
    if not probes:
        raise InjectorError(f"{path}: no questions")
    return probes
