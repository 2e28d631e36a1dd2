"""The Prefect deployment as shipped (prefect.yaml, process work pool) against a real `prefect server` on loopback
(slow): deploy, trigger a run of the nightly flow, let a worker execute it, and find the champion it promoted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, TINY_FACTS, eval_dir, free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _prefect(*args, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "prefect"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_deployment_runs_the_nightly_flow_on_a_real_server(tmp_path, tiny_model_dir, monkeypatch):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING_URI"))}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "INJECTOR_HOME": str(tmp_path / "home"),
                "MLFLOW_DISABLE_TELEMETRY": "true"})
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("prefect server did not start") from None
                time.sleep(1)
        assert _prefect("work-pool", "create", "injector-pool", "--type", "process", env=env).returncode == 0
        deploy = _prefect("deploy", "--all", env=env)
        assert deploy.returncode == 0, deploy.stdout[-2000:] + deploy.stderr[-2000:]

        drop = tmp_path / "drops"
        drop.mkdir()
        (drop / "001.jsonl").write_text("".join(json.dumps(f) + "\n" for f in TINY_FACTS))
        lenient = eval_dir(tmp_path, "absolute:\n  min_efficacy: 0.5\n  min_generalisation: 0.0\n"
                                     "  max_latency_ms_p95: 100000\nrelative:\n  max_general_ppl_increase: null\n")
        overrides = [f"model.base={tiny_model_dir}", "train.learning_rate=0.003", "train.epochs=20",
                     "train.grad_accum=1", "train.min_steps=0", "train.ewc_lambda=0", "train.max_length=96",
                     "eval.max_new_tokens=8", "eval.latency_samples=1", "eval.locality=false", "eval.ppl_max_tokens=0",
                     f"eval.dir={lenient}"]
        run = _prefect("deployment", "run", "nightly-update/nightly", "--params",
                       json.dumps({"source": str(drop), "overrides": overrides}), env=env)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        worker = _prefect("worker", "start", "--pool", "injector-pool", "--run-once", env=env, timeout=900)
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]

        from injector import registry
        from injector.home import Home

        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        registry.connect(Home.from_env(tmp_path / "home"))
        assert registry.champion() == "1"
    finally:
        server.terminate()
        server.wait(timeout=60)
