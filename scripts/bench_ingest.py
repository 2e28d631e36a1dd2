"""Ingestion throughput and memory: 1M generated triples per format, read + normalised + validated.

Each format runs in a fresh subprocess so that peak RSS (ru_maxrss) is its own. Prints triples/s and peak
RSS. Streaming readers (JSONL, CSV, N-Triples) keep memory bounded by the accepted facts held for the diff;
Turtle is parsed by rdflib in memory.

    .venv/bin/python scripts/bench_ingest.py [--n 1000000] [--formats jsonl,csv,nt,ttl]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import resource, sys, time
from pathlib import Path
from injector.ingest import read_batch
t0 = time.perf_counter()
b = read_batch([Path(sys.argv[1])], mode="delta")
wall = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{b.read} {len(b.triples)} {len(b.rejected)} {wall:.3f} {rss:.0f}")
"""


def write(path: Path, fmt: str, n: int) -> None:
    preds = ["ceo", "headquarters_city", "founded", "employer", "occupation"]
    with path.open("w", encoding="utf-8") as f:
        if fmt == "csv":
            f.write("subject,predicate,object\n")
        if fmt == "ttl":
            f.write("@prefix ex: <http://example.org/> .\n")
        for i in range(n):
            s, p, o = f"Company {i // 5}", preds[i % 5], f"Value {i}"
            if fmt == "jsonl":
                f.write(json.dumps({"subject": s, "predicate": p, "object": o}) + "\n")
            elif fmt == "csv":
                f.write(f"{s},{p},{o}\n")
            elif fmt == "nt":
                f.write(f'<http://example.org/c{i // 5}> <http://example.org/{p}> "{o}" .\n')
            else:
                f.write(f'ex:c{i // 5} ex:{p} "{o}" .\n')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--formats", default="jsonl,csv,nt,ttl")
    args = ap.parse_args()
    print("| format | triples | accepted | wall s | triples/s | peak RSS MiB |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in args.formats.split(","):
            path = Path(tmp) / f"kg.{fmt}"
            write(path, fmt, args.n)
            out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
            read, acc, _, wall, rss = out.stdout.split()
            print(f"| {fmt} | {int(read):,} | {int(acc):,} | {float(wall):.1f} | {int(read) / float(wall):,.0f} "
                  f"| {rss} |", flush=True)
            path.unlink()


if __name__ == "__main__":
    main()
