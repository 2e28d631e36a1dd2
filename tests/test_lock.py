"""Single flight: one holder at a time; a holder killed with SIGKILL does not block the next run."""

import os
import signal
import subprocess
import sys
import time

import pytest

from injector.errors import AlreadyRunning
from injector.lock import single_flight

HOLD = """
import sys, time
from pathlib import Path
from injector.lock import single_flight
with single_flight(Path(sys.argv[1]), "test holder"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_second_holder_is_refused_in_process(tmp_path):
    with single_flight(tmp_path, "first"):
        with pytest.raises(AlreadyRunning, match="already running: first"):
            with single_flight(tmp_path, "second"):
                pass
    with single_flight(tmp_path, "third"):  # released
        pass


def test_lock_of_a_killed_process_is_cleared(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(AlreadyRunning, match=f"pid {proc.pid}"):
        with single_flight(tmp_path, "me"):
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    t0 = time.time()
    with single_flight(tmp_path, "next night"):
        assert time.time() - t0 < 5
