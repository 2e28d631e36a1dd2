"""MLflow: tracking (params, metrics, reports) and the model registry (versions, aliases, rollback).

The only module that imports mlflow. Takes and returns plain values (version strings, dicts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from injector.errors import InfraError, InjectorError
from injector.home import Home

MODEL_NAME = "injector"
EXPERIMENT = "injector"
CHAMPION, CHALLENGER = "champion", "challenger"
_HISTORY_TAG = "champion_history"  # comma-separated versions that held the champion alias, oldest first
PIP_REQUIREMENTS = ["torch", "transformers", "peft", "accelerate", "mlflow", "pandas", "safetensors"]


def check_reachable(home: Home, timeout_s: float = 5.0) -> None:
    """A tracking server must answer its health endpoint within `timeout_s` (MLflow's own client would retry for
    minutes before failing); a local SQLite store is checked by `connect`."""
    import urllib.error
    import urllib.request

    uri = home.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
            r.read(64)
    except (urllib.error.URLError, OSError) as e:
        raise InfraError(f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)}); start it or "
                         "fix MLFLOW_TRACKING_URI; nothing was recorded") from None


def connect(home: Home) -> str:
    """Point MLflow at the home's store and make sure the experiment exists; returns its id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")  # default 7 with backoff: minutes of hanging
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    mlflow.set_tracking_uri(home.tracking_uri)
    mlflow.set_registry_uri(home.tracking_uri)
    try:
        exp = mlflow.get_experiment_by_name(EXPERIMENT)
        if exp is not None:
            return exp.experiment_id
        local = home.tracking_uri.startswith("sqlite:")
        # explicit artifact location: otherwise artifacts land under the current directory (STACK.md)
        return mlflow.create_experiment(EXPERIMENT, artifact_location=home.artifacts.as_uri() if local else None)
    except MlflowException as e:
        raise InfraError(f"MLflow store {home.tracking_uri} failed: {str(e).splitlines()[0][:200]}") from None


def fail_orphans(home: Home) -> list[str]:
    """Runs of this home left RUNNING by a killed process are marked FAILED. Call with the home's lock held: then
    no live run of this home exists, so every RUNNING one is an orphan."""
    exp = _experiment()
    client = _client()
    runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.status = 'RUNNING' and "
                              f"tags.`injector.home` = '{home.root}'", max_results=1000)
    for run in runs:
        client.set_terminated(run.info.run_id, "FAILED")
        client.set_tag(run.info.run_id, "injector.failure", "orphaned: its process died; marked by the next run")
    return [r.info.run_id for r in runs]


def _experiment():
    import mlflow

    exp = mlflow.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        raise InjectorError("MLflow experiment missing: call registry.connect first")
    return exp


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def champion() -> str | None:
    """The version the `champion` alias points at, or None."""
    return _alias(CHAMPION)


def _alias(alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException:
        return None


def start_run(params: dict, run_name: str | None = None, home: Home | None = None) -> str:
    """A new run in the experiment (by id, so that stages in other threads or tasks can log to it)."""
    import socket

    from mlflow.entities import Param

    exp = _experiment()
    client = _client()
    tags = {"injector.pid": str(os.getpid()), "injector.host": socket.gethostname()}
    if home is not None:
        tags["injector.home"] = str(home.root)
    run = client.create_run(exp.experiment_id, run_name=run_name, tags=tags)
    items = [Param(k, str(v)[:500]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i: i + 100])
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    _client().set_terminated(run_id, status)


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    import math
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    clean = [Metric(k.replace("/", "_"), float(v), now, step or 0) for k, v in metrics.items()
             if isinstance(v, int | float) and math.isfinite(float(v))]
    if clean:
        _client().log_batch(run_id, metrics=clean)


def log_artifacts(run_id: str, paths: list[Path], artifact_path: str | None = None) -> None:
    client = _client()
    for p in paths:
        if p.is_dir():
            client.log_artifacts(run_id, str(p), artifact_path=artifact_path)
        elif p.exists():
            client.log_artifact(run_id, str(p), artifact_path=artifact_path)


def log_adapter(run_id: str, adapter_dir: str, base_model_path: str, tags: dict[str, str],
                base_sha256: str = "", base_hub_id: str = "") -> str:
    """Log the adapter as a pyfunc model (code + adapter) and register a new version.

    The version carries what a serving host needs to find the base without this machine: the base weights' sha256
    (checked at load), a hub id where the base came from the hub, and otherwise an MLflow artifact URI of the base
    weights, uploaded once per sha256 (`log_base`); plus pinned requirements."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    # unnamed string input: a JSON list of questions (or a one-column DataFrame) -> one answer each
    signature = ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]))
    client = _client()
    done = client.search_model_versions(f"name='{MODEL_NAME}' and run_id='{run_id}'")
    if done:  # a retried registration finds the version its first attempt made: one run, one version
        version = str(max(int(mv.version) for mv in done))
    else:
        base_cfg = {"base_model_path": base_model_path, "base_sha256": base_sha256,
                    "base_model_id": base_hub_id,
                    "base_uri": log_base(base_model_path, base_sha256) if base_sha256 else ""}
        with mlflow.start_run(run_id=run_id):
            info = _log_pyfunc(mlflow, adapter_dir, base_cfg, signature)
        version = str(info.registered_model_version)
    for k, v in {"base_model_path": base_model_path, **tags}.items():
        client.set_model_version_tag(MODEL_NAME, version, k, str(v))
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
    return version


def log_base(base_model_path: str, sha256: str) -> str:
    """The base model's files as artifacts of one run per sha256 (uploaded the first time only); returns their URI."""
    client = _client()
    exp = _experiment()
    found = client.search_runs([exp.experiment_id], filter_string=f"tags.`injector.base_sha256` = '{sha256}' and "
                               "attributes.status = 'FINISHED'", max_results=1)
    if found:
        return f"runs:/{found[0].info.run_id}/base"
    run = client.create_run(exp.experiment_id, run_name=f"base-{sha256[:12]}",
                            tags={"injector.base_sha256": sha256, "injector.kind": "base-weights"})
    files = [f for f in Path(base_model_path).iterdir() if f.is_file() and not f.name.startswith(".")]
    for f in files:
        client.log_artifact(run.info.run_id, str(f), artifact_path="base")
    client.set_terminated(run.info.run_id, "FINISHED")
    return f"runs:/{run.info.run_id}/base"


def _pinned() -> list[str]:
    """The serving environment: the versions this training ran with."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in PIP_REQUIREMENTS:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def _log_pyfunc(mlflow, adapter_dir: str, base_cfg: dict, signature):
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(__file__).with_name("serving_model.py")),
        artifacts={"adapter": adapter_dir},
        model_config={**base_cfg, "max_new_tokens": 48},
        signature=signature,
        pip_requirements=_pinned(),  # else mlflow demands torchvision (no CPU build here)
        registered_model_name=MODEL_NAME,
    )


def set_version_tags(version: str, tags: dict[str, str]) -> None:
    client = _client()
    for k, v in tags.items():
        client.set_model_version_tag(MODEL_NAME, version, k, str(v))


def version_tags(version: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return dict(_client().get_model_version(MODEL_NAME, version).tags)
    except MlflowException:
        raise InjectorError(f"model version {version} of {MODEL_NAME!r} not found in the registry") from None


def _history() -> list[str]:
    from mlflow.exceptions import MlflowException

    try:
        raw = _client().get_registered_model(MODEL_NAME).tags.get(_HISTORY_TAG, "")
    except MlflowException:
        return []
    return [v for v in raw.split(",") if v]


def move_champion(version: str, expected_current: str | None, reason: str) -> bool:
    """Point `champion` at `version` if the champion is still `expected_current` (re-read right before).

    MLflow has no compare-and-swap for aliases (STACK.md); returns False when another promotion won.
    """
    current = champion()
    if current == version:  # a retry of a promotion that went through
        return True
    if current != expected_current:
        return False
    client = _client()
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    client.set_registered_model_tag(MODEL_NAME, _HISTORY_TAG, ",".join([*_history(), version]))
    client.set_model_version_tag(MODEL_NAME, version, "promoted", reason)
    return True


def rollback() -> tuple[str, str]:
    """Move `champion` back to the version that held it before; returns (from, to)."""
    current = champion()
    history = _history()
    if current is None or len(history) < 2:
        raise InjectorError("nothing to roll back to: there is no earlier champion")
    while history and history[-1] != current:  # history may hold versions set by hand
        history.pop()
    previous = history[-2] if len(history) >= 2 else None
    if previous is None:
        raise InjectorError("nothing to roll back to: there is no earlier champion")
    client = _client()
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, previous)
    client.set_registered_model_tag(MODEL_NAME, _HISTORY_TAG, ",".join(history[:-1]))
    client.set_model_version_tag(MODEL_NAME, current, "rolled_back", f"champion moved back to v{previous}")
    return current, previous


def versions() -> list[dict]:
    """All versions, newest first, with their tags and aliases."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        rm = client.get_registered_model(MODEL_NAME)
    except MlflowException:
        return []
    aliases: dict[str, list[str]] = {}
    for alias, v in (rm.aliases or {}).items():
        aliases.setdefault(str(v), []).append(alias)
    rows = client.search_model_versions(f"name='{MODEL_NAME}'")
    out = [{"version": str(mv.version), "run_id": mv.run_id, "created": mv.creation_timestamp,
            "tags": dict(mv.tags), "aliases": sorted(aliases.get(str(mv.version), []))} for mv in rows]
    return sorted(out, key=lambda r: int(r["version"]), reverse=True)


def resolve_version(ref: str) -> str:
    """`champion` / `challenger` / a version number -> a version number."""
    if ref in (CHAMPION, CHALLENGER):
        v = _alias(ref)
        if v is None:
            raise InjectorError(f"no model has the alias {ref!r} yet: run `injector train` first")
        return v
    if not ref.isdigit():
        raise InjectorError(f"model {ref!r}: expected champion, challenger, base or a version number")
    version_tags(ref)  # raises when missing
    return ref


def fetch_adapter(version: str, cache_dir: Path) -> tuple[str, str]:
    """Local dir of a version's adapter (downloaded once) and the base model path it was trained on."""
    import mlflow

    target = cache_dir / f"v{version}"
    found = sorted(target.glob("artifacts/*/adapter_config.json"))  # artifacts keep the source dir's name
    if not found:
        target.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/{version}", dst_path=str(target))
        found = sorted(target.glob("artifacts/*/adapter_config.json"))
    if not found:
        raise InjectorError(f"model version {version} holds no LoRA adapter (artifacts/*/adapter_config.json)")
    tags = version_tags(version)
    return str(found[0].parent), tags.get("base_model_path", "")


def run_info(run_id: str) -> dict:
    run = _client().get_run(run_id)
    return {"run_id": run_id, "status": run.info.status, "start": run.info.start_time,
            "metrics": dict(run.data.metrics), "params": dict(run.data.params)}


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, indent=2, default=str))
    return path
