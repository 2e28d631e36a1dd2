"""Streaming readers for KG exports: JSONL, CSV, N-Triples (streamed) and Turtle (via rdflib).

Each yields RawRecord(where="file:line", fields | error). Nothing is dropped silently: a record that
cannot be read is yielded with its reason, and the validator puts it in quarantine.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from injector.errors import InjectorError

FIELDS = ("subject", "predicate", "object")
OPTIONAL = ("op", "valid_from", "source", "question", "answer")
LABEL_PREDICATES = {
    "http://www.w3.org/2000/01/rdf-schema#label",
    "http://www.w3.org/2004/02/skos/core#prefLabel",
    "http://www.w3.org/2004/02/skos/core#altLabel",
}
_PREF = "http://www.w3.org/2004/02/skos/core#prefLabel"
SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".nt": "nt", ".ttl": "ttl"}


@dataclass(frozen=True)
class RawRecord:
    where: str
    fields: dict | None = None
    error: str | None = None
    raw: str = ""


def format_of(path: Path) -> str:
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise InjectorError(f"{path}: unknown format (expected one of {', '.join(sorted(SUFFIXES))})")
    return fmt


def expand(paths: list[Path], refused: list[tuple[str, str]] | None = None) -> list[Path]:
    """Files as given; a directory contributes its regular drop files in name order.

    Inside a directory, dotfiles, symlinks and anything that is not a regular file are refused (each named in
    `refused`): a drop directory must not pull in a file from elsewhere through a link.
    """
    out: list[Path] = []
    refused = refused if refused is not None else []
    for p in paths:
        if p.is_dir():
            for f in sorted(p.iterdir()):
                if f.name.startswith("."):
                    refused.append((str(f), "hidden file"))
                elif f.is_symlink():
                    refused.append((str(f), "symbolic link (drop directories take regular files only)"))
                elif not f.is_file():
                    refused.append((str(f), "not a regular file"))
                elif f.suffix.lower() not in SUFFIXES:
                    refused.append((str(f), f"unknown format (expected one of {', '.join(sorted(SUFFIXES))})"))
                else:
                    out.append(f)
        elif p.exists():
            if not p.is_file():
                raise InjectorError(f"input is not a regular file: {p}")
            out.append(p)
        else:
            raise InjectorError(f"input not found: {p}")
    return out


def read_records(path: Path, language: str = "en") -> Iterator[RawRecord]:
    fmt = format_of(path)
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "csv":
        return read_csv(path)
    if fmt == "nt":
        return read_ntriples(path, language)
    return read_turtle(path, language)


def _decode(raw: bytes, where: str) -> tuple[str | None, RawRecord | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        raw_text = raw[:200].decode("utf-8", "replace")
        return None, RawRecord(where, error=f"invalid UTF-8 at byte {e.start}", raw=raw_text)


BOM = b"\xef\xbb\xbf"


def read_jsonl(path: Path) -> Iterator[RawRecord]:
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(BOM):  # a UTF-8 byte-order mark is an encoding detail, not data
                raw = raw[len(BOM):]
            if not raw.strip():
                continue
            where = f"{path}:{n}"
            text, bad = _decode(raw, where)
            if bad:
                yield bad
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                yield RawRecord(where, error=f"malformed JSON ({e.msg})", raw=text[:200])
                continue
            if not isinstance(rec, dict):
                yield RawRecord(where, error="not a JSON object", raw=text[:200])
                continue
            yield RawRecord(where, fields=rec, raw=text[:200].rstrip("\n"))


def read_csv(path: Path) -> Iterator[RawRecord]:
    """RFC 4180 over the whole stream (quoted fields may hold newlines); `where` is the record's first line.

    Bytes are decoded with surrogate escapes so that one bad byte rejects its record, not the file.
    """
    text = path.read_bytes().decode("utf-8", "surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = io.StringIO(text, newline="")
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        raise InjectorError(f"{path}:1: missing or unreadable CSV header row") from None
    header = [h.strip() for h in header]
    if not any(header) or any(_bad_utf8(h) for h in header):
        raise InjectorError(f"{path}:1: missing or unreadable CSV header row")
    missing = [c for c in FIELDS if c not in header] if "question" not in header else []
    if missing:
        raise InjectorError(f"{path}:1: CSV header lacks column {missing[0]!r} (has: {', '.join(header)})")
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield RawRecord(f"{path}:{start}", error=f"malformed CSV ({e})")
            if reader.line_num + 1 <= start:  # the reader made no progress: stop rather than loop
                return
            start = reader.line_num + 1
            continue
        where, start = f"{path}:{start}", reader.line_num + 1
        if not any(c.strip() for c in row):
            continue
        raw = ",".join(row)[:200].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        bad = next((c for c in row if _bad_utf8(c)), None)
        if bad is not None:
            yield RawRecord(where, error="invalid UTF-8", raw=raw)
            continue
        if len(row) != len(header):
            yield RawRecord(where, error=f"malformed CSV row: {len(row)} fields, header has {len(header)}", raw=raw)
            continue
        yield RawRecord(where, fields=dict(zip(header, row)), raw=raw)


def _bad_utf8(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


# --- RDF -------------------------------------------------------------------------------------------

def local_name(iri: str) -> str:
    """Last path/fragment segment of an IRI, de-camel-cased: .../headquartersCity -> "headquarters city"."""
    name = re.split(r"[#/:]", iri.rstrip("/#"))[-1]
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).replace("_", " ").strip()
    return name if name else iri



_NT = re.compile(
    r'^\s*(?P<s><[^>]*>|_:\S+)\s+(?P<p><[^>]*>)\s+'
    r'(?P<o><[^>]*>|_:\S+|"(?P<lit>(?:[^"\\]|\\.)*)"(?:@(?P<lang>[A-Za-z0-9\-]+)|\^\^<(?P<dt>[^>]*)>)?)\s*\.\s*$'
)
_ESC = re.compile(r'\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[tbnrf"\'\\])')
_SIMPLE = {"t": "\t", "b": "\b", "n": "\n", "r": "\r", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


def _unescape(s: str) -> str:
    return _ESC.sub(lambda m: _SIMPLE.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), s)


def _lang_ok(lang: str | None, language: str) -> bool:
    return not lang or lang.lower().split("-")[0] == language.lower()


def _nt_lines(path: Path) -> Iterator[tuple[str, str, dict | None]]:
    """(where, raw, parsed match dict | None) for each non-comment line."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if n == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            if not raw.strip() or raw.lstrip().startswith(b"#"):
                continue
            where = f"{path}:{n}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, raw[:200].decode("utf-8", "replace"), {"_error": f"invalid UTF-8 at byte {e.start}"}
                continue
            m = _NT.match(text)
            yield where, text.strip()[:200], (m.groupdict() if m else None)


def read_ntriples(path: Path, language: str = "en") -> Iterator[RawRecord]:
    """Two streaming passes: labels first (memory ~ labelled IRIs), then the facts."""
    labels: dict[str, tuple[int, str]] = {}
    for _, _, m in _nt_lines(path):
        if m and "_error" not in m and m["p"][1:-1] in LABEL_PREDICATES and m["lit"] is not None \
                and _lang_ok(m["lang"], language):
            rank = 0 if m["p"][1:-1] == _PREF else 1
            iri = m["s"][1:-1]
            if iri not in labels or rank < labels[iri][0]:
                labels[iri] = (rank, _unescape(m["lit"]))
    name = lambda iri: labels[iri][1] if iri in labels else local_name(iri)  # noqa: E731
    for where, raw, m in _nt_lines(path):
        if m is None:
            yield RawRecord(where, error="malformed N-Triples line", raw=raw)
            continue
        if "_error" in m:
            yield RawRecord(where, error=m["_error"], raw=raw)
            continue
        if m["p"][1:-1] in LABEL_PREDICATES:
            yield RawRecord(where, error="label", raw=raw)  # consumed as a label, counted by the validator
            continue
        if m["s"].startswith("_:") or m["o"].startswith("_:"):
            yield RawRecord(where, error="blank node: no stable identity to name the fact by", raw=raw)
            continue
        if m["lit"] is not None:
            if not _lang_ok(m["lang"], language):
                yield RawRecord(where, error=f"literal in language {m['lang']!r} (configured {language!r})", raw=raw)
                continue
            obj = _unescape(m["lit"])
        else:
            obj = name(m["o"][1:-1])
        yield RawRecord(where, fields={"subject": name(m["s"][1:-1]), "predicate": name(m["p"][1:-1]),
                                       "object": obj}, raw=raw)


def read_turtle(path: Path, language: str = "en") -> Iterator[RawRecord]:
    """Turtle through rdflib (parsed in memory: Turtle cannot be split by line). Records are numbered in
    the graph's sorted order, as `file#n`."""
    import rdflib
    from rdflib.term import BNode, Literal, URIRef

    g = rdflib.Graph()
    try:
        g.parse(path, format="turtle")
    except Exception as e:  # rdflib raises many parser exception types
        raise InjectorError(f"{path}: not valid Turtle ({str(e).splitlines()[0][:200]})") from None
    labels: dict[str, tuple[int, str]] = {}
    for s, p, o in g:
        if str(p) in LABEL_PREDICATES and isinstance(o, Literal) and _lang_ok(o.language, language):
            rank = 0 if str(p) == _PREF else 1
            if str(s) not in labels or rank < labels[str(s)][0]:
                labels[str(s)] = (rank, str(o))
    name = lambda t: labels[str(t)][1] if str(t) in labels else local_name(str(t))  # noqa: E731
    for n, (s, p, o) in enumerate(sorted(g), 1):
        where, raw = f"{path}#{n}", f"{s.n3()} {p.n3()} {o.n3()}"[:200]
        if str(p) in LABEL_PREDICATES:
            yield RawRecord(where, error="label", raw=raw)
        elif isinstance(s, BNode) or isinstance(o, BNode):
            yield RawRecord(where, error="blank node: no stable identity to name the fact by", raw=raw)
        elif isinstance(o, Literal) and not _lang_ok(o.language, language):
            yield RawRecord(where, error=f"literal in language {o.language!r} (configured {language!r})", raw=raw)
        else:
            obj = str(o) if isinstance(o, Literal) else name(o) if isinstance(o, URIRef) else str(o)
            yield RawRecord(where, fields={"subject": name(s), "predicate": name(p), "object": obj},
                            raw=raw)
