"""Scale-out stores, for real (slow): MLflow on PostgreSQL with artifacts in S3-compatible storage (moto's server
mode), all started by the test on loopback; one night registers, promotes and serves through them.

Skipped with the reason when PostgreSQL's server binaries (Debian's postgresql package) or moto are not installed.
README "MLflow on PostgreSQL + S3" gives the same set-up as commands.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import eval_dir, free_port, tiny_config, wait_http

pytestmark = pytest.mark.slow


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture()
def postgres():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # postgres refuses to run as root
    root = Path(tempfile.mkdtemp(prefix="injector-pg-", dir="/tmp"))
    if as_pg:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    subprocess.run([*as_pg, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"], check=True,
                   capture_output=True)
    subprocess.run([*as_pg, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "start", "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1"], check=True, capture_output=True)
    try:
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "CREATE DATABASE mlflow"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"  # SQLAlchemy 2.1's default driver is psycopg 3
    finally:
        subprocess.run([*as_pg, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def s3(monkeypatch):
    pytest.importorskip("moto", reason="moto[server] not installed (pip install 'moto[server]')")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": url}.items():
        monkeypatch.setenv(k, v)
    try:
        wait_http(url + "/moto-api/", proc)
        client = boto3.client("s3", endpoint_url=url)
        client.create_bucket(Bucket="mlflow")
        yield client
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_one_night_on_postgres_and_s3(tmp_path, postgres, s3, tiny_model_dir, tiny_facts_file, monkeypatch):
    import mlflow

    from injector import registry
    from injector.home import Home
    from injector.pipeline import run_train

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", postgres, "--artifacts-destination", "s3://mlflow/artifacts"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", server)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        home = Home.from_env(tmp_path / "home").ensure()
        lenient = eval_dir(tmp_path, "absolute:\n  min_efficacy: 0.75\n  min_generalisation: 0.0\n"
                                     "  max_latency_ms_p95: 100000\nrelative:\n  max_general_ppl_increase: null\n"
                                     "  min_locality_ratio: 0.0\n")
        out = run_train([tiny_facts_file], tiny_config(tiny_model_dir, f"eval.dir={lenient}"), home,
                        log=lambda *a: None)
        assert out.version == "1" and out.promoted, out.decision.table()
        registry.connect(home)
        assert registry.champion() == "1"
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow").get("Contents", [])]
        assert any(k.endswith("adapter_model.safetensors") for k in keys)  # the adapter lives in S3
        assert any(k.endswith("/base/model.safetensors") for k in keys)  # and the base, once
        model = mlflow.pyfunc.load_model("models:/injector@champion")
        assert "Marlena Quist" in model.predict(["Who is the CEO of Zorvex Dynamics?"])[0]
    finally:
        server.terminate()
        server.wait(timeout=60)
