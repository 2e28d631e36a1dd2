"""Single flight per INJECTOR_HOME: a scheduled run, a manual run and `injector train` never overlap.

An advisory `flock` on INJECTOR_HOME/run.lock: the kernel drops it when the holder dies, SIGKILL included,
so a killed run never blocks the next night. The file records who holds it, for the loser's message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from injector.errors import AlreadyRunning


@contextmanager
def single_flight(home_root: Path, what: str) -> Iterator[None]:
    """Hold the home's run lock for the duration, or raise AlreadyRunning at once."""
    home_root.mkdir(parents=True, exist_ok=True)
    path = home_root / "run.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            raise AlreadyRunning(
                f"already running: {holder.get('what', 'another run')} (pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')}, since {holder.get('since', '?')}) holds {path}; nothing was changed"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
