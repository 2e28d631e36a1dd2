"""One-process schedule: serve the nightly flow with a cron (02:00 UTC) from this process.

    INJECTOR_DROP=/data/kg/drops .venv/bin/python flows/serve.py
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # flows/ holds entry points, not a package

from nightly_update import nightly_update  # noqa: E402
from prefect.schedules import Cron  # noqa: E402

if __name__ == "__main__":
    nightly_update.serve(
        name="nightly",
        schedules=[Cron(os.environ.get("INJECTOR_CRON", "0 2 * * *"), timezone="UTC")],
        parameters={"source": os.environ.get("INJECTOR_DROP", "drops"), "config": os.environ.get("INJECTOR_CONFIG")},
        limit=1,
    )
