"""`dagster dev -m foresight.pipelines.definitions` for real: the UI's GraphQL lists our asset and sensor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from foresight.datasets.s3server import free_ports

QUERY = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
  name sensors { name } assetNodes { assetKey { path } } jobs { name } } } } }"""


@pytest.mark.slow
def test_dagster_dev_shows_assets_and_sensor(tmp_path):
    port = free_ports(1)[0]
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "FORESIGHT_STORE": str(tmp_path / "store")}
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.Popen(
        [
            str(dagster),
            "dev",
            "-m",
            "foresight.pipelines.definitions",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        data = None
        while time.monotonic() < deadline:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql",
                    data=json.dumps({"query": QUERY}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    data = json.loads(response.read())
                nodes = data["data"]["repositoriesOrError"].get("nodes")
                if nodes:
                    break
            except (OSError, KeyError):
                pass
            time.sleep(1)
        assert data is not None, "dagster dev did not answer"
        repo = data["data"]["repositoriesOrError"]["nodes"][0]
        assert {"trajectory_dataset"} <= {
            "/".join(a["assetKey"]["path"]) for a in repo["assetNodes"]
        }
        assert "landing_sensor" in {s["name"] for s in repo["sensors"]}
        assert "ingest_job" in {j["name"] for j in repo["jobs"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
