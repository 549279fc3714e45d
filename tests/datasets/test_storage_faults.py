"""Storage faults seen from the CLI: a stalled S3 endpoint and an S3 server killed mid-ingest.

Each case runs the real `foresight` command in a subprocess and expects what the CLI
documents for a storage failure: exit 2 and one line on stderr naming the endpoint, the
operation and what to do. The stalled endpoint is a loopback socket server that accepts
connections and never answers; the timeouts come from FORESIGHT_S3_CONNECT_TIMEOUT /
FORESIGHT_S3_READ_TIMEOUT, and the subprocess timeout below is a generous safety net, not a
measured duration.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from foresight.datasets.s3server import S3Server

# real concurrent processes, servers or faults, several rounds: the whole suite runs them
pytestmark = pytest.mark.slow

# Far above what the configured bounds allow (a few seconds), far below the minutes an
# unbounded client waits on a silent server.
SAFETY_NET_S = 120


class StalledServer:
    """A TCP server on loopback that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted.append(conn)  # held open, never answered

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def stalled():
    server = StalledServer()
    yield server
    server.close()


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORESIGHT_", "AWS_"))}
    return {**env, **extra}


def foresight(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "foresight.pipelines.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=SAFETY_NET_S,
    )


def write_logs(folder: Path, episodes: int, files: int = 1) -> Path:
    """Real simulator logs, written by the CLI's own generator."""
    per_file = max(1, episodes // files)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "foresight.pipelines.cli",
            "generate",
            "--env",
            "simple_spread",
            "--episodes",
            str(episodes),
            "--out",
            str(folder),
            "--episodes-per-file",
            str(per_file),
        ],
        check=True,
        capture_output=True,
        env=cli_env(),
    )
    return folder


def assert_storage_line(proc: subprocess.CompletedProcess, endpoint: str, command: str) -> str:
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-2000:]
    line = lines[0]
    assert line.startswith(f"foresight {command}: error:"), line
    assert endpoint in line, line  # the endpoint
    assert "FORESIGHT_S3_ENDPOINT" in line, line  # what to check
    return line


@pytest.mark.parametrize(
    ("args", "operation"),
    [
        (["datasets", "list"], "datasets list"),  # its first S3 call: minio
        (["datasets", "versions", "spread"], "datasets versions"),  # first call: deltalake
        (["ingest", "{logs}", "--dataset", "spread"], "ingest"),
    ],
    ids=["datasets-list", "datasets-versions", "ingest"],
)
def test_stalled_endpoint_fails_within_the_bounds(stalled, tmp_path, args, operation):
    logs = write_logs(tmp_path / "logs", episodes=2) if "{logs}" in args else None
    args = [str(logs) if a == "{logs}" else a for a in args]
    env = cli_env(
        FORESIGHT_STORE="s3://stalled/foresight",
        FORESIGHT_S3_ENDPOINT=stalled.endpoint,
        AWS_ACCESS_KEY_ID="k",
        AWS_SECRET_ACCESS_KEY="s",
        FORESIGHT_S3_CONNECT_TIMEOUT="1",
        FORESIGHT_S3_READ_TIMEOUT="2",
        FORESIGHT_S3_RETRIES="1",
    )
    proc = foresight(args, env, tmp_path)
    line = assert_storage_line(proc, stalled.endpoint, args[0])
    assert f"`foresight {operation}`" in line, line  # the operation
    assert stalled.accepted, "the command never reached the stalled server"


def test_timeout_settings_are_checked(tmp_path):
    env = cli_env(
        FORESIGHT_STORE="s3://settings/foresight",
        FORESIGHT_S3_ENDPOINT="http://127.0.0.1:9",
        AWS_ACCESS_KEY_ID="k",
        AWS_SECRET_ACCESS_KEY="s",
        FORESIGHT_S3_READ_TIMEOUT="soon",
    )
    proc = foresight(["datasets", "list"], env, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "FORESIGHT_S3_READ_TIMEOUT" in proc.stderr and "'soon'" in proc.stderr


@pytest.mark.s3
def test_s3_server_killed_mid_ingest(tmp_path):
    """A SeaweedFS of its own, killed (SIGKILL) while a multi-file ingest is writing."""
    logs = write_logs(tmp_path / "logs", episodes=600, files=6)
    server = S3Server(data_dir=str(tmp_path / "weed")).start()
    try:
        env = cli_env(
            **server.env(),
            FORESIGHT_STORE="s3://killed/foresight",
            FORESIGHT_S3_CONNECT_TIMEOUT="1",
            FORESIGHT_S3_READ_TIMEOUT="5",
            FORESIGHT_S3_RETRIES="1",
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "foresight.pipelines.cli",
                "ingest",
                str(logs),
                "--dataset",
                "big",
            ],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Kill once the ingest has started writing to the server: its bucket exists.
        client = server.config().client()
        deadline = time.monotonic() + SAFETY_NET_S
        while not client.bucket_exists("killed") and proc.poll() is None:
            assert time.monotonic() < deadline, "the ingest never created its bucket"
            time.sleep(0.05)
        server.kill()
        out, err = proc.communicate(timeout=SAFETY_NET_S)
    finally:
        server.stop()
    assert proc.returncode == 2, (proc.returncode, out, err[-3000:])
    assert_storage_line(subprocess.CompletedProcess([], 2, out, err), server.endpoint, "ingest")
