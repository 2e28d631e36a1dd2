"""The Prefect nightly flow under prefect_test_harness: three nights, single flight, stale lock."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY_FACTS, eval_dir, short_recipes

from injector import registry
from injector.errors import AlreadyRunning
from injector.ledger import Ledger


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="module")
def flow_module():
    spec = importlib.util.spec_from_file_location("nightly_update", ROOT / "flows" / "nightly_update.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def overrides(tiny_model_dir, tmp_path):
    d = eval_dir(tmp_path, "absolute:\n  min_efficacy: 0.5\n  min_generalisation: 0.0\n  min_changed: 0.0\n"
                           "  max_latency_ms_p95: 100000\nrelative:\n  max_general_ppl_increase: null\n")
    return [f"model.base={tiny_model_dir}", "train.learning_rate=0.003", "train.epochs=20", "train.batch_size=8",
            "train.grad_accum=1", "train.max_length=96", "train.warmup_ratio=0.0", "train.patience=0",
            "train.min_steps=0", "train.ewc_lambda=0",
            # 4 answer tokens: the random tiny model's babble after the answer (e.g. the update pair's "..., no
            # longer <old CEO>") is not what night 2 checks
            "eval.max_new_tokens=4", "eval.latency_samples=1", "eval.locality=false", "eval.ppl_max_tokens=0",
            f"eval.dir={d}", f"recipes.dir={short_recipes(tmp_path)}", "recipes.new=1", "recipes.replay=1"]


def _drop(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort="CREATED_DESC", limit=1)
    return found[0] if found else None


def test_three_nights(harness, flow_module, home, tmp_path, overrides):
    drops = tmp_path / "drops"
    drops.mkdir()
    # night 1: new facts
    out = flow_module.nightly_update(str(_drop(drops / "001.jsonl", TINY_FACTS)), overrides=overrides)
    assert out["version"] == "1" and out["promoted"], out["gate"]
    registry.connect(home)
    assert registry.champion() == "1"
    led = Ledger(home.ledger)
    assert len(led.facts(status="active")) == 4 and not led.pending()
    assert "promoted to champion" in _artifact("nightly-summary").data
    assert {row["kind"] for row in json.loads(_artifact("accuracy-by-kind").data)} >= {"efficacy"}

    # night 2: a changed fact (continues from the champion)
    changed = {"subject": "Zorvex Dynamics", "predicate": "ceo", "object": "Tobias Venhaar"}
    out = flow_module.nightly_update(str(_drop(drops / "002.jsonl", [changed])), overrides=overrides)
    assert out["ingest"]["changed"] == 1 and out["version"] == "2" and out["promoted"], out["gate"]
    assert registry.champion() == "2"
    assert registry.version_tags("2")["compared_with"] == "v1"
    rows = {r["object"]: r for r in led.facts(subject="Zorvex Dynamics")}
    assert rows["Marlena Quist"]["status"] == "changed" and rows["Tobias Venhaar"]["status"] == "active"
    assert rows["Tobias Venhaar"]["last_accuracy"] is not None

    # night 3: a retraction: nothing to train, a no-op for the model
    retract = {"subject": "Orla Feyrwood", "predicate": "occupation", "object": "glassblower", "op": "retract"}
    champion_before = registry.champion()
    assert "Orla Feyrwood" in {t.subject for t in led.learned()}
    out = flow_module.nightly_update(str(_drop(drops / "003.jsonl", [retract])), overrides=overrides)
    assert out["noop"] and out["ingest"]["retracted"] == 1
    assert registry.champion() == champion_before
    assert [r["status"] for r in led.facts(subject="Orla Feyrwood")] == ["retracted"]
    assert "Orla Feyrwood" not in {t.subject for t in led.learned()}  # out of replay and retention
    assert "No-op" in _artifact("nightly-summary").data


def test_two_runs_at_once_only_one_proceeds(harness, flow_module, home, tmp_path, overrides):
    drop = _drop(tmp_path / "d.jsonl", TINY_FACTS[:2])
    results, errors = [], []

    def run():
        try:
            results.append(flow_module.nightly_update(str(drop), overrides=overrides))
        except AlreadyRunning as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert len(results) == 1 and len(errors) == 1
    assert "already running" in str(errors[0])
    registry.connect(home)
    assert [v["version"] for v in registry.versions()] == ["1"]


def test_a_killed_run_does_not_block_the_next(harness, flow_module, home, tmp_path, overrides):
    drop = _drop(tmp_path / "d.jsonl", TINY_FACTS)
    env = {**os.environ, "INJECTOR_HOME": str(home.root)}
    env.pop("MLFLOW_TRACKING_URI", None)
    killed = subprocess.Popen([str(Path(sys.executable).with_name("injector")), "train", "--triples", str(drop),
                               *overrides, "train.epochs=200"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    lock = home.root / "run.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.2)
    assert lock.read_text().strip(), "the run never took the lock"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    # the next night proceeds, and trains the killed run's facts (still pending) with its own
    nxt = _drop(tmp_path / "next.jsonl", [{"subject": "Kingdom of Estmark", "predicate": "capital",
                                           "object": "Sorvelle"}])
    out = flow_module.nightly_update(str(nxt), overrides=overrides)
    assert out["version"] == "1"
    assert len(Ledger(home.ledger).pending()) == (0 if out["promoted"] else 5)
