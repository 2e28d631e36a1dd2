"""The knowledge ledger (SQLite under INJECTOR_HOME): every fact, its status and history, snapshots.

All writes of one ingest happen in one transaction: a process killed mid-ingest leaves the last
snapshot and the ledger as they were.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from injector.ingest import Batch
from injector.records import FactChange, Triple

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    content_hash TEXT NOT NULL,
    mode TEXT NOT NULL,
    sources TEXT NOT NULL,
    created_at TEXT NOT NULL,
    read INTEGER, accepted INTEGER, rejected INTEGER, duplicates INTEGER, conflicts INTEGER,
    added INTEGER, changed INTEGER, retracted INTEGER, unchanged INTEGER,
    quarantine TEXT
);
CREATE TABLE IF NOT EXISTS facts (
    fact_id TEXT PRIMARY KEY,
    subject TEXT NOT NULL,
    predicate TEXT NOT NULL,
    object TEXT NOT NULL,
    question TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('active', 'changed', 'retracted')),
    old_object TEXT,
    source TEXT,
    origin TEXT,
    valid_from TEXT,
    valid_to TEXT,
    introduced_snapshot INTEGER,
    changed_snapshot INTEGER,
    retracted_snapshot INTEGER,
    learned_version TEXT,
    changed_version TEXT,
    retracted_version TEXT,
    last_accuracy REAL,
    last_eval_version TEXT,
    updated_at TEXT
);
CREATE TABLE IF NOT EXISTS version_facts (
    version TEXT NOT NULL,
    fact_id TEXT NOT NULL,
    learned_in TEXT NOT NULL,
    PRIMARY KEY (version, fact_id)
);
CREATE INDEX IF NOT EXISTS facts_subject ON facts (subject);
CREATE INDEX IF NOT EXISTS facts_status ON facts (status);
"""


@dataclass(frozen=True)
class Diff:
    added: tuple[FactChange, ...] = ()
    changed: tuple[FactChange, ...] = ()
    retracted: tuple[Triple, ...] = ()
    unchanged: int = 0
    unknown_retractions: int = 0  # retract records for facts the ledger does not hold
    deferred_retractions: int = 0  # snapshot: absent facts kept because unreadable records may have named them
    active_before: int = 0
    replaced: tuple[str, ...] = field(default=(), repr=False)  # fact ids of the old side of changes

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.retracted)

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "changed": len(self.changed), "retracted": len(self.retracted),
                "unchanged": self.unchanged}


BASE = "base"  # the version name of what the base model knows by itself (known-fact triage)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Ledger:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(SCHEMA)
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(facts)")}
        for col in ("origin", "valid_from", "valid_to"):  # ledgers written before provenance was kept
            if col not in have:
                self.conn.execute(f"ALTER TABLE facts ADD COLUMN {col} TEXT")

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite already rolled back (e.g. disk full): the original error is the one to report
            raise

    # --- reading -----------------------------------------------------------------------------------
    def last_snapshot(self) -> dict | None:
        row = self.conn.execute("SELECT * FROM snapshots ORDER BY id DESC LIMIT 1").fetchone()
        return dict(row) if row else None

    def _active(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM facts WHERE status = 'active'").fetchall()

    def facts(self, subject: str | None = None, status: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM facts WHERE 1=1", []
        if subject:
            sql, args = sql + " AND subject = ? COLLATE NOCASE", [*args, subject]
        if status:
            sql, args = sql + " AND status = ?", [*args, status]
        return [dict(r) for r in self.conn.execute(sql + " ORDER BY subject, predicate, object", args)]

    def pending(self) -> list[FactChange]:
        """Active facts no promoted model has learned yet: what the next training run injects."""
        rows = self.conn.execute("SELECT * FROM facts WHERE status = 'active' AND learned_version IS NULL "
                                 "ORDER BY introduced_snapshot, subject, predicate").fetchall()
        return [FactChange(_triple(r), "changed" if r["old_object"] else "added", r["old_object"]) for r in rows]

    def learned(self, exclude: set[str] = frozenset()) -> list[Triple]:
        """Active facts a promoted model learned: replay and retention material (never retracted ones)."""
        rows = self.conn.execute("SELECT * FROM facts WHERE status = 'active' AND learned_version IS NOT NULL "
                                 "ORDER BY fact_id").fetchall()
        return [_triple(r) for r in rows if r["fact_id"] not in exclude]

    # --- the diff ----------------------------------------------------------------------------------
    def diff(self, batch: Batch, mode: str, single_valued: Callable[[str], bool]) -> Diff:
        active = {r["fact_id"]: r for r in self._active()}
        by_key: dict[tuple[str, str], sqlite3.Row] = {}
        for r in active.values():
            if single_valued(r["predicate"]):
                by_key[(r["subject"].lower(), r["predicate"].lower())] = r
        added, changed, replaced, seen = [], [], [], set()
        unchanged = 0
        for t in (t for t in batch.triples if t.op == "assert"):
            seen.add(t.id)
            if t.id in active:
                unchanged += 1
                continue
            old = by_key.get((t.subject.lower(), t.predicate.lower())) if single_valued(t.predicate) else None
            if old is not None:
                changed.append(FactChange(t, "changed", old["object"]))
                replaced.append(old["fact_id"])
            else:
                added.append(FactChange(t))
        retracts = [t for t in batch.triples if t.op == "retract"]
        deferred = 0
        if mode == "snapshot":
            # a fact named by a rejected record is not absent; with unreadable records any fact may be among them
            gone = [r for fid, r in active.items()
                    if fid not in seen and fid not in replaced
                    and (r["subject"].lower(), r["predicate"].lower()) not in batch.rejected_slots]
            if batch.unidentified:
                gone, deferred = [], len(gone)
            unknown = 0
        else:
            ids = {t.id for t in retracts}
            gone = [active[i] for i in sorted(ids) if i in active]
            unknown = len(ids) - len(gone)
        return Diff(tuple(added), tuple(changed), tuple(_triple(r) for r in gone), unchanged, unknown, deferred,
                    len(active), tuple(replaced))

    # --- writing -----------------------------------------------------------------------------------
    def commit(self, batch: Batch, diff: Diff, mode: str, sources: str, quarantine: str | None) -> int:
        """Record the snapshot and apply the diff, all or nothing. Returns the snapshot id."""
        fault_after = int(os.environ.get("INJECTOR_FAULT_KILL_AFTER_WRITES", "-1"))  # crash-safety tests only
        writes = 0

        def step() -> None:
            nonlocal writes
            writes += 1
            if writes == fault_after:
                os.kill(os.getpid(), signal.SIGKILL)

        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO snapshots (content_hash, mode, sources, created_at, read, accepted, rejected, duplicates,"
                " conflicts, added, changed, retracted, unchanged, quarantine) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (batch.content_hash, mode, sources, _now(), batch.read, len(batch.triples), len(batch.rejected),
                 batch.duplicates, batch.conflicts, len(diff.added), len(diff.changed), len(diff.retracted),
                 diff.unchanged, quarantine))
            snap = cur.lastrowid
            for fid in diff.replaced:
                c.execute("UPDATE facts SET status='changed', changed_snapshot=?, updated_at=? WHERE fact_id=?",
                          (snap, _now(), fid))
                step()
            for t in diff.retracted:
                c.execute("UPDATE facts SET status='retracted', retracted_snapshot=?, updated_at=? WHERE fact_id=?",
                          (snap, _now(), t.id))
                step()
            for ch in (*diff.added, *diff.changed):
                t = ch.triple
                c.execute(
                    "INSERT INTO facts (fact_id, subject, predicate, object, question, status, old_object, source,"
                    " origin, valid_from, valid_to, introduced_snapshot, updated_at)"
                    " VALUES (?,?,?,?,?,'active',?,?,?,?,?,?,?)"
                    " ON CONFLICT(fact_id) DO UPDATE SET status='active', old_object=excluded.old_object,"
                    " source=excluded.source, origin=excluded.origin, valid_from=excluded.valid_from,"
                    " valid_to=excluded.valid_to, introduced_snapshot=excluded.introduced_snapshot,"
                    " learned_version=NULL, retracted_snapshot=NULL, changed_snapshot=NULL,"
                    " updated_at=excluded.updated_at",
                    (t.id, t.subject, t.predicate, t.object, t.question, ch.old_object, t.source or None,
                     t.origin, t.valid_from or None, t.valid_to or None, snap, _now()))
                step()
        return snap

    def mark_learned(self, fact_ids: list[str], version: str) -> None:
        """A promoted version learned these facts; the facts they replaced record the change's version."""
        with self._tx() as c:
            for fid in fact_ids:
                c.execute("UPDATE facts SET learned_version=?, updated_at=? WHERE fact_id=?", (version, _now(), fid))
            c.execute("UPDATE facts SET changed_version=? WHERE status='changed' AND changed_version IS NULL",
                      (version,))
            c.execute("UPDATE facts SET retracted_version=? WHERE status='retracted' AND retracted_version IS NULL",
                      (version,))

    def record_knowledge(self, version: str, parent: str | None, fact_ids: list[str]) -> None:
        """What a registered version knows: its parent's knowledge (the adapter it was trained from; the base model's
        known facts when trained from the base) plus the facts of its own batch. Written for every version, so that
        promote/rollback can put the ledger in step."""
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO version_facts (version, fact_id, learned_in) "
                      "SELECT ?, fact_id, learned_in FROM version_facts WHERE version = ?", (version, parent or BASE))
            c.executemany("INSERT OR REPLACE INTO version_facts (version, fact_id, learned_in) VALUES (?,?,?)",
                          [(version, fid, version) for fid in fact_ids])

    def mark_known(self, fact_ids: list[str], version: str | None) -> None:
        """Facts the serving model (`version`; None: the base model) already answers: learned by it, not trained."""
        who = version or BASE
        with self._tx() as c:
            for fid in fact_ids:
                c.execute("UPDATE facts SET learned_version=?, updated_at=? WHERE fact_id=?", (who, _now(), fid))
                c.execute("INSERT OR REPLACE INTO version_facts (version, fact_id, learned_in) VALUES (?,?,?)",
                          (who, fid, who))

    def knows(self, version: str) -> bool:
        return self.conn.execute("SELECT 1 FROM version_facts WHERE version = ? LIMIT 1", (version,)).fetchone() \
            is not None

    def follow_champion(self, version: str | None) -> tuple[int, int]:
        """Make `learned_version` say what the serving champion knows (after promote or rollback): facts it learned
        keep the version that taught them, every other fact becomes pending. Returns (known, pending)."""
        with self._tx() as c:
            c.execute("UPDATE facts SET learned_version = (SELECT learned_in FROM version_facts v "
                      "WHERE v.version = ? AND v.fact_id = facts.fact_id), updated_at = ?", (version or "", _now()))
        known = self.conn.execute("SELECT COUNT(*) FROM facts WHERE status='active' AND learned_version IS NOT NULL"
                                  ).fetchone()[0]
        pending = self.conn.execute("SELECT COUNT(*) FROM facts WHERE status='active' AND learned_version IS NULL"
                                    ).fetchone()[0]
        return known, pending

    def version_diff(self, a: str, b: str) -> dict[str, list[dict]]:
        """Facts version `b` knows that `a` does not (gained), and the reverse (lost)."""
        def side(x: str, y: str) -> list[dict]:
            rows = self.conn.execute(
                "SELECT f.subject, f.predicate, f.object, f.question, f.status, f.source, v.learned_in FROM "
                "version_facts v JOIN facts f ON f.fact_id = v.fact_id WHERE v.version = ? AND v.fact_id NOT IN "
                "(SELECT fact_id FROM version_facts WHERE version = ?) ORDER BY f.subject, f.predicate", (x, y))
            return [dict(r) for r in rows]
        return {"gained": side(b, a), "lost": side(a, b)}

    def record_accuracy(self, accuracy: dict[str, float], version: str) -> None:
        with self._tx() as c:
            for fid, acc in accuracy.items():
                c.execute("UPDATE facts SET last_accuracy=?, last_eval_version=?, updated_at=? WHERE fact_id=?",
                          (acc, version, _now(), fid))


def _triple(r: sqlite3.Row) -> Triple:
    return Triple(r["subject"], r["predicate"], r["object"], source=r["source"] or "", question=r["question"] or "",
                  origin=r["origin"] or "")
