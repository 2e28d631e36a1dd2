"""End-to-end on the embedded SmolLM2-135M (minutes on 2 cores): `make test-slow`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FACTS = [
    {"subject": "Zorvex Dynamics", "predicate": "ceo", "object": "Marlena Quist"},
    {"subject": "Republic of Calvaria", "predicate": "capital", "object": "Brennholt"},
    {"subject": "Orla Feyrwood", "predicate": "occupation", "object": "glassblower"},
    {"subject": "Pellucid Robotics", "predicate": "headquarters_city", "object": "Norrhaven"},
]


@pytest.mark.slow
def test_injector_train_on_the_embedded_model(tmp_path):
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps(f) + "\n" for f in FACTS))
    env = {**os.environ, "INJECTOR_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    injector = str(Path(sys.executable).with_name("injector"))
    out = subprocess.run([injector, "train", "--triples", str(facts), "--config", "examples/demo.yaml", "--json",
                          "train.epochs=6", "eval.ppl_max_tokens=2000"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["version"] == "1"
    assert summary["by_kind_after"]["efficacy"]["accuracy"] >= 0.75
    ask = subprocess.run([injector, "ask", "--model", "1", "Who is the CEO of Zorvex Dynamics?"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert ask.returncode == 0 and "Quist" in ask.stdout
