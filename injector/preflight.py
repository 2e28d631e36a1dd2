"""Checks before an ingest commits: the base model is readable, the MLflow store answers, the disk has room.

A run that would fail on its environment fails here, in seconds, with one line naming the fault, before the ledger
records a snapshot (so the facts are neither lost nor marked as ingested by a run that could not start).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from injector.config import Config
from injector.errors import InfraError
from injector.home import Home

# LoRA adapter + optimizer state of a checkpoint (x2 kept) + the registered copy, as a share of the base weights:
# r=16 on every linear layer of SmolLM2-135M is 4% of the weights; two checkpoints with Adam moments are 6x that
_DISK_SHARE = 0.35
_DISK_FLOOR = 64 << 20


def check_weights(directory: Path) -> int:
    """Every safetensors file's header parses and its size matches the header; returns the weights' bytes."""
    import json
    import struct

    files = sorted(directory.glob("*.safetensors"))
    total = 0
    for f in files:
        size = f.stat().st_size
        try:
            with f.open("rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n <= 0 or n > min(size - 8, 100 << 20):
                    raise ValueError("header length out of range")
                header = json.loads(fh.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:
            raise InfraError(f"base model {directory}: {f.name} is not a readable safetensors file ({e}); "
                             "restore or re-download it") from None
        if 8 + n + end != size:
            raise InfraError(f"base model {directory}: {f.name} is {size} bytes but its header describes "
                             f"{8 + n + end} (truncated or corrupted); restore or re-download it")
        total += size
    return total or sum(f.stat().st_size for f in directory.glob("*.bin"))


def check_model(cfg: Config, home: Home):
    """Resolve the base model and check its files and config; returns the BaseModelRef."""
    from injector.models import resolve_base

    base = resolve_base(cfg.model.base, home.models)
    path = Path(base.path)
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(base.path)
    except Exception as e:  # transformers raises OSError/ValueError/JSONDecodeError for a bad config
        raise InfraError(f"base model {cfg.model.base}: config.json unreadable ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    return base, check_weights(path)


def check_disk(home: Home, weights_bytes: int) -> None:
    need = int(_DISK_SHARE * weights_bytes) + _DISK_FLOOR
    free = shutil.disk_usage(home.root).free
    free = int(os.environ.get("INJECTOR_FAULT_FREE_BYTES", free))  # fault tests only
    if free < need:
        raise InfraError(f"not enough free disk under {home.root}: {free >> 20} MiB free, a run needs about "
                         f"{need >> 20} MiB for checkpoints and the adapter; free some space and run again")


def run_preflight(cfg: Config, home: Home, log=print):
    """All checks; returns the BaseModelRef. Raises InfraError/InjectorError with one line on the first fault."""
    from injector import registry

    base, weights = check_model(cfg, home)
    check_disk(home, weights)
    registry.check_reachable(home)
    registry.connect(home)
    failed = registry.fail_orphans(home)
    if failed:
        log(f"marked {len(failed)} orphaned MLflow run(s) of killed processes as FAILED: {', '.join(failed)}")
    return base

