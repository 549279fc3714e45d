"""The live service under hostile clients and broken artifacts (issue 11, sections 5 and 6).

Real ``bentoml serve`` / ``foresight serve`` processes on free loopback ports, real
sockets. Attackers connect from 127.0.0.2 (all of 127/8 is loopback on Linux), legitimate
clients from 127.0.0.1, as two hosts would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from foresight.datasets.storage import Store
from foresight.serving.launch import REPO_ROOT, ServerProcess
from tests.serving.helpers import free_port, register_pair, served_store

from .test_service import AGENTS, history, past

# real concurrent processes, servers or faults, several rounds: the whole suite runs them
pytestmark = pytest.mark.slow

KEY = "hostile-key"
ATTACKER = "127.0.0.2"
BODY_TIMEOUT_S = 3
CLIENT_LIMIT = 32
HEAVY_QUEUE = 2
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with served_store(tmp_path_factory, "hostile") as store:
        yield store


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    limits = {
        "FORESIGHT_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "FORESIGHT_MAX_CLIENT_REQUESTS": str(CLIENT_LIMIT),
        "FORESIGHT_HEAVY_QUEUE": str(HEAVY_QUEUE),
    }
    log = tmp_path_factory.mktemp("hostile-log") / "serve.log"
    with ServerProcess(free_port(), log, api_key=KEY, reload_seconds=0, extra=limits) as srv:
        yield srv


def status_of(sock: socket.socket) -> int | None:
    """The status code of the first answer on ``sock``, None if the server closed it
    without one."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return None
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_slow_bodies_do_not_starve_the_service(server):
    """600 connections send headers and half a body, then stall (the issue's attack)."""
    body = json.dumps({"queries": [{"obs": history(2)}]}).encode()
    head = (
        f"POST /predict_actions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    slow = []
    try:
        for _ in range(600):
            s = socket.create_connection((server.host, server.port), source_address=(ATTACKER, 0))
            s.sendall(head + body[: len(body) // 2])
            slow.append(s)
        # the attack is on: a legitimate client is served
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as legit:
            for _ in range(5):
                r = legit.post("/predict_actions", json={"queries": [{"obs": history(3)}]})
                assert r.status_code == 200, r.text
                assert legit.post("/models").status_code == 200
            assert legit.get("/readyz").status_code == 200
        # every stalled connection is answered: 429 beyond the per-client limit, 408 when
        # its body did not come in time. (A socket timeout only bounds the test.)
        statuses = []
        for s in slow:
            s.settimeout(BODY_TIMEOUT_S + 30)
            statuses.append(status_of(s))
    finally:
        for s in slow:
            s.close()
    assert set(statuses) <= {408, 429}, sorted(set(map(str, statuses)))
    assert statuses.count(408) == CLIENT_LIMIT and statuses.count(429) == 600 - CLIENT_LIMIT
    r = httpx.post(
        f"{server.url}/predict_actions", json={"queries": [{"obs": history(2)}]}, headers=AUTH
    )
    assert r.status_code == 200  # and afterwards, from the attacker's address too


def test_heavy_requests_are_shed_at_once_and_cheap_ones_still_served(server):
    """Bursts of max-size /act: past the queue they get 503 overloaded with Retry-After;
    /predict_actions, /models and /readyz sent meanwhile are answered before the burst is
    over."""
    act = {
        "obs": history(64),
        "past_actions": past(64),
        "egos": AGENTS,
        "horizon": 16,
        "samples": 16,
    }

    async def burst():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as http:
            heavy = [asyncio.ensure_future(http.post("/act", json=act)) for _ in range(12)]
            await asyncio.sleep(0)  # the burst is sent first
            cheap = await asyncio.gather(
                http.post("/predict_actions", json={"queries": [{"obs": history(3)}]}),
                http.post("/models"),
                http.get("/readyz"),
            )
            pending_after_cheap = sum(not h.done() for h in heavy)
            return cheap, await asyncio.gather(*heavy), pending_after_cheap

    cheap, heavy, pending = asyncio.run(burst())
    assert [r.status_code for r in cheap] == [200, 200, 200]
    assert pending > 0  # the cheap answers came while /act requests were still running
    codes = [r.status_code for r in heavy]
    assert set(codes) <= {200, 503} and codes.count(200) >= 1, codes
    shed = [r for r in heavy if r.status_code == 503]
    assert len(shed) >= len(heavy) - 2 * HEAVY_QUEUE, codes
    for r in shed:
        assert "overloaded" in r.json()["error"] and int(r.headers["retry-after"]) >= 1


def test_metrics_need_the_api_key(server):
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    r = httpx.get(f"{server.url}/metrics", headers=AUTH)
    assert r.status_code == 200 and "bentoml_service_request" in r.text
    assert httpx.get(f"{server.url}/readyz").status_code == 200  # health stays open
    assert httpx.post(f"{server.url}/echo", json={}, headers=AUTH).status_code == 404


# -- foresight serve --------------------------------------------------------------------------


def foresight_serve(store: Store, port: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "foresight.pipelines.cli", "--store", store.root, "serve"]
    cmd += ["--port", str(port), "--reload-seconds", "0"]
    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def kill_tree(proc: psutil.Process) -> None:
    """Clean up what a failing test leaves behind (processes this test started)."""
    for p in [*proc.children(recursive=True), proc]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_foresight_serve_stops_its_server_on_a_signal(store, tmp_path, sig):
    port = free_port()
    with open(tmp_path / "serve.log", "wb") as log:
        cli = foresight_serve(store, port, log)
    parent = psutil.Process(cli.pid)
    try:
        deadline = time.monotonic() + 120  # bounds the test, asserts nothing
        while time.monotonic() < deadline and cli.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail((tmp_path / "serve.log").read_text()[-3000:])
        tree = parent.children(recursive=True)
        assert tree, "foresight serve started no server"
        os.kill(cli.pid, sig)
        assert cli.wait(timeout=60) == 0
        gone, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive, [p.pid for p in alive]
        assert not port_open(port)
    finally:
        if cli.poll() is None:
            kill_tree(parent)
        for p in tree if "tree" in locals() else []:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def test_foresight_serve_refuses_truncated_weights(tmp_path):
    store = Store(str(tmp_path / "store"))
    _world, _behavior = register_pair(store)
    weights = tmp_path / "store" / "models" / "behavior" / "1" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    port = free_port()
    cmd = [sys.executable, "-m", "foresight.pipelines.cli", "--store", store.root, "serve"]
    cli = subprocess.Popen(
        [*cmd, "--port", str(port), "--reload-seconds", "0"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _out, err = cli.communicate(timeout=60)  # bounds the test: a restart loop never ends
    except subprocess.TimeoutExpired:
        os.killpg(cli.pid, signal.SIGKILL)
        _out, err = cli.communicate()
        pytest.fail(f"foresight serve did not stop on a truncated weights file:\n{err[-2000:]}")
    assert cli.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "behavior@1" in lines[0] and "cannot be loaded" in lines[0], err
    assert not port_open(port)
