"""Where injector keeps its state: INJECTOR_HOME (SQLite tracking DB, artifacts, model cache, ledger).

Resolved at the edge (CLI, flow) from the environment and passed down; nothing here runs at import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Home:
    root: Path
    tracking_uri: str  # MLFLOW_TRACKING_URI when set, else SQLite under root

    @classmethod
    def from_env(cls, root: str | Path | None = None) -> Home:
        base = Path(root or os.environ.get("INJECTOR_HOME") or ".injector").expanduser().resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{base / 'mlflow.db'}"
        return cls(root=base, tracking_uri=uri)

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def adapters(self) -> Path:
        return self.root / "adapters"  # local cache of registered adapters, by version

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def ensure(self) -> Home:
        for p in (self.root, self.models, self.artifacts, self.runs, self.adapters, self.cache, self.quarantine):
            p.mkdir(parents=True, exist_ok=True)
        return self
