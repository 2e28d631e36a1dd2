"""Three nightly runs of the Prefect flow on the embedded model, in a fresh INJECTOR_HOME.

Night 1: 12 new facts; night 2: a changed fact and 2 new ones; night 3: a retraction. Prints wall time per
night, the gate verdict and the champion after each.

    .venv/bin/python scripts/three_nights.py [--config examples/demo.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "examples" / "demo.yaml"))
    args = ap.parse_args()
    facts = [json.loads(x) for x in (ROOT / "examples" / "triples.jsonl").read_text().splitlines()]
    nights = [facts[:12],
              [{**facts[0], "object": "Caspian Dulmore"}, *facts[12:14]],
              [{**facts[13], "op": "retract"}]]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        (home / "models").mkdir(parents=True)
        (home / "models").rmdir()
        (home / "models").symlink_to(ROOT / ".injector" / "models")  # reuse the dequantized base
        env = {**os.environ, "INJECTOR_HOME": str(home), "PREFECT_HOME": str(Path(tmp) / "prefect")}
        env.pop("MLFLOW_TRACKING_URI", None)
        print("| night | drop | wall s | result |\n|---|---|---|---|")
        total = 0.0
        for i, rows in enumerate(nights, 1):
            drop = Path(tmp) / f"{i:03d}.jsonl"
            drop.write_text("".join(json.dumps(r) + "\n" for r in rows))
            t0 = time.perf_counter()
            out = subprocess.run([str(Path(sys.executable).with_name("injector")), "nightly", "--source", str(drop),
                                  "--config", args.config], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            total += wall
            if out.returncode != 0:
                print(f"| {i} | {len(rows)} records | {wall:.0f} | FAILED: {out.stderr.strip().splitlines()[-1]} |")
                continue
            text = out.stdout
            res = json.loads(text[text.rindex("\n{") + 1:] if "\n{" in text else text[text.index("{"):])
            verdict = "no-op" if res.get("noop") else \
                f"v{res['version']} {'promoted' if res['promoted'] else 'not promoted'}; " + ", ".join(
                    f"{g['check']} {g['value']:.2f} {g['verdict']}" for g in res["gate"])
            d = res["ingest"]
            print(f"| {i} | +{d['added']} ~{d['changed']} -{d['retracted']} | {wall:.0f} | {verdict} |", flush=True)
        print(f"\nthree nights: {total:.0f} s")


if __name__ == "__main__":
    main()
