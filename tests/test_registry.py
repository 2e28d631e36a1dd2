"""MLflow registry: adapter round trip (identical logits), aliases, promotion race, rollback, serving."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch

from injector import registry
from injector.errors import InjectorError
from injector.home import Home
from injector.models import BaseModelRef, load_tokenizer, load_with_adapter


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir):
    """A LoRA adapter with non-zero B (so it changes the logits), saved like a trained one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    return out


def _logits(model, tok, text="Who is the CEO of Zorvex Dynamics ?"):
    enc = tok([text], return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits


def test_logged_adapter_round_trips_exactly(home, tiny_model_dir, adapter_dir):
    import mlflow

    registry.connect(home)
    run_id = registry.start_run({"test": 1})
    version = registry.log_adapter(run_id, str(adapter_dir), str(tiny_model_dir), {"gate": "pass"})
    registry.end_run(run_id)
    assert version == "1" and registry.resolve_version("challenger") == "1"

    ref = BaseModelRef("tiny", str(tiny_model_dir), "")
    tok = load_tokenizer(str(tiny_model_dir))
    direct = _logits(load_with_adapter(ref, str(adapter_dir)), tok)
    base = _logits(load_with_adapter(ref, None), tok)
    assert not torch.allclose(direct, base)  # the adapter matters

    fetched, base_path = registry.fetch_adapter(version, home.adapters)
    assert base_path == str(tiny_model_dir)
    assert torch.equal(_logits(load_with_adapter(ref, fetched), tok), direct)

    pyfunc = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}/{version}")  # no injector internals
    served = pyfunc.unwrap_python_model()
    assert torch.equal(_logits(served.model, served.tokenizer), direct)
    answers = pyfunc.predict(["Who is the CEO of Zorvex Dynamics ?"])
    assert isinstance(answers, list) and isinstance(answers[0], str)


def _register(home, adapter_dir, tiny_model_dir, n):
    registry.connect(home)
    out = []
    for _ in range(n):
        run_id = registry.start_run({})
        out.append(registry.log_adapter(run_id, str(adapter_dir), str(tiny_model_dir), {"gate": "pass"}))
        registry.end_run(run_id)
    return out


def test_champion_moves_only_if_unchanged_and_rolls_back(home, tiny_model_dir, adapter_dir):
    v1, v2, v3 = _register(home, adapter_dir, tiny_model_dir, 3)
    assert registry.champion() is None
    assert registry.move_champion(v1, None, "first")
    assert not registry.move_champion(v2, None, "stale: gated against no champion")  # lost the race
    assert registry.champion() == v1
    assert registry.move_champion(v2, v1, "gate passed")
    assert registry.move_champion(v3, v2, "gate passed")
    assert registry.rollback() == (v3, v2)
    assert registry.champion() == v2
    assert registry.rollback() == (v2, v1)
    with pytest.raises(InjectorError, match="nothing to roll back"):
        registry.rollback()
    assert registry.version_tags(v3)["rolled_back"].startswith("champion moved back")


def _mlflow_bin() -> str:
    return str(Path(sys.executable).with_name("mlflow"))


def test_real_mlflow_server_register_promote_rollback_and_serve(tmp_path, tiny_model_dir, tiny_facts_file,
                                                               adapter_dir, monkeypatch):
    from conftest import eval_dir, free_port, tiny_config, wait_http

    from injector.pipeline import run_train

    port = free_port()
    server = subprocess.Popen(
        [_mlflow_bin(), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    serve = None
    try:
        wait_http(f"http://127.0.0.1:{port}/health", server)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        home = Home.from_env(tmp_path / "home").ensure()
        assert home.tracking_uri.startswith("http://")
        # a real training run registers v1 through HTTP and the gate promotes it
        lenient = eval_dir(tmp_path, "absolute:\n  min_efficacy: 0.75\n  min_generalisation: 0.0\n"
                                     "  max_latency_ms_p95: 100000\nrelative:\n  max_general_ppl_increase: null\n"
                                     "  min_locality_ratio: 0.0\n")
        out = run_train([tiny_facts_file], tiny_config(tiny_model_dir, f"eval.dir={lenient}"), home,
                        log=lambda *a: None)
        assert out.version == "1" and out.promoted, out.decision.table()
        (v2,) = _register(home, adapter_dir, tiny_model_dir, 1)
        assert registry.move_champion(v2, "1", "second")
        assert registry.rollback() == (v2, "1")
        assert registry.champion() == "1"
        assert (tmp_path / "server-artifacts").exists()  # artifacts went through the server

        # the champion, served by `mlflow models serve` in a fresh process, answers a trained fact over HTTP
        sport = free_port()
        serve = subprocess.Popen(
            [_mlflow_bin(), "models", "serve", "-m", "models:/injector@champion", "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(sport)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
                 "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})  # it execs uvicorn
        wait_http(f"http://127.0.0.1:{sport}/ping", serve, timeout=120)
        req = urllib.request.Request(f"http://127.0.0.1:{sport}/invocations",
                                     data=json.dumps({"inputs": ["Who is the CEO of Zorvex Dynamics?"]}).encode(),
                                     headers={"Content-Type": "application/json"})
        body = json.loads(urllib.request.urlopen(req, timeout=60).read())
        assert "marlena quist" in body["predictions"][0].lower(), body
    finally:
        for p in (serve, server):
            if p is not None:
                p.terminate()
                p.wait(timeout=30)
