"""A registered version serves on another host: a fresh virtualenv without `injector`, another directory, the
training machine's base-model path gone; only the registry is shared. The base comes from the registry (uploaded once
per sha256, checked at load)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import eval_dir, tiny_config

from injector import registry
from injector.pipeline import run_train

PREDICT = """
import json, sys
import mlflow
try:
    import injector  # noqa: F401
    sys.exit("injector is importable here: this is not a clean serving environment")
except ImportError:
    pass
model = mlflow.pyfunc.load_model("models:/injector@champion")
questions = ["Who is the CEO of Zorvex Dynamics?", "What is the capital of the Republic of Calvaria?"]
print(json.dumps(list(model.predict(questions))))
"""


def test_a_registered_version_serves_from_another_virtualenv(tmp_path, tiny_model_dir, tiny_facts_file, home,
                                                             monkeypatch):
    base = shutil.copytree(tiny_model_dir, tmp_path / "training-host-model")
    lenient = eval_dir(tmp_path, "absolute:\n  min_efficacy: 0.75\n  min_generalisation: 0.0\n"
                                 "  max_latency_ms_p95: 100000\nrelative:\n  max_general_ppl_increase: null\n"
                                 "  min_locality_ratio: 0.0\n")
    out = run_train([tiny_facts_file], tiny_config(base, f"eval.dir={lenient}", "eval.locality=false"), home,
                    log=lambda *a: None)
    assert out.promoted, out.decision.table()
    registry.connect(home)
    assert len(registry.version_tags("1")["base_sha256"]) == 64
    shutil.rmtree(base)  # the serving host does not have the training host's files

    venv = tmp_path / "serving-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch & co., not injector
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": home.tracking_uri, "INJECTOR_SERVING_CACHE": str(tmp_path / "cache")}
    env.pop("INJECTOR_HOME", None)
    served = subprocess.run([py, "-c", PREDICT], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert served.returncode == 0, served.stderr[-3000:]
    answers = json.loads(served.stdout.strip().splitlines()[-1])
    assert "Marlena Quist" in answers[0] and "Brennholt" in answers[1], answers
    assert list((tmp_path / "cache").glob("*/base/*.safetensors"))  # the base came from the registry
