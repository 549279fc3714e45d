"""POST /episodes on a real `bentoml serve`: SIGTERM loses nothing accepted, a restart doubles
nothing, what lands is ingested, and the arena's --via-http agents record their episodes."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from foresight.datasets.catalog import DatasetTable
from foresight.datasets.ingest import ingest_logs
from foresight.pipelines.sensors import new_landing_files
from foresight.serving.client import ForesightClient, ForesightError
from foresight.serving.launch import ServerProcess, stop_group
from foresight.serving.recorder import EpisodeRecorder
from foresight.serving.schemas import EpisodesResponse
from tests.serving.helpers import free_port, served_store

from .test_episodes import episode

# real concurrent processes, servers or faults, several rounds: the whole suite runs them
pytestmark = pytest.mark.slow

KEY = "episodes-key"


def landed_rows(store, dataset: str = "spread") -> list[dict]:
    rows = []
    for uri in store.fs.list_files(store.landing_uri(dataset)):
        if uri.endswith(".jsonl") and not uri.rsplit("/", 1)[-1].startswith("."):
            rows += [json.loads(line) for line in store.fs.read_bytes(uri).splitlines()]
    return rows


def landed_episodes(store, dataset: str = "spread") -> Counter:
    """Episode id -> in how many landing files it is (1 = exactly once)."""
    files: Counter = Counter()
    for uri in store.fs.list_files(store.landing_uri(dataset)):
        if uri.endswith(".jsonl") and not uri.rsplit("/", 1)[-1].startswith("."):
            lines = store.fs.read_bytes(uri).splitlines()
            files.update({json.loads(line)["episode_id"] for line in lines})
    return files


def start(tmp_path, name: str, **extra) -> ServerProcess:
    env = {"FORESIGHT_EPISODES_FLUSH_SECONDS": "3600", **extra}  # only SIGTERM writes
    return ServerProcess(
        free_port(), tmp_path / f"{name}.log", api_key=KEY, reload_seconds=0, extra=env
    ).start()


def sigterm(server: ServerProcess) -> None:
    """What an orchestrator does to stop a pod: SIGTERM to the server's processes."""
    stop_group(server.process, signal.SIGTERM, grace=60)
    server.stop()  # closes the log; the processes are gone


def test_sigterm_writes_every_accepted_episode_once_across_a_restart(tmp_path_factory, tmp_path):
    with served_store(tmp_path_factory, "episodes-sigterm") as store:
        server = start(tmp_path, "first", FORESIGHT_EPISODES_MAX_ROWS="100")
        try:
            accepted = []
            with ForesightClient(server.url, api_key=KEY) as client:
                for r in range(4):
                    eps = [episode(f"a{r}-{k}") for k in range(2)]
                    accepted += client.post_episodes({"episodes": eps}).episode_ids
                # the limits of the service hold for /episodes too
                body = {"episodes": [episode("x")]}
                assert httpx.post(f"{server.url}/episodes", json=body).status_code == 401
                with pytest.raises(ForesightError) as err:  # 12 x 9 rows > 100
                    client.post_episodes({"episodes": [episode(f"x{k}") for k in range(12)]})
                assert err.value.status == 413 and "limit of 100 rows" in err.value.message
                bad = episode("bad")
                bad[7]["action"] = 11
                with pytest.raises(ForesightError) as err:
                    client.post_episodes({"episodes": [episode("fine"), bad]})
                assert err.value.status == 400
                assert err.value.message == (
                    "episodes.1.7: action 11 outside the action spec discrete(5)"
                )
            assert landed_episodes(store) == Counter()  # all of it still buffered
        finally:
            sigterm(server)
        assert landed_episodes(store) == Counter(dict.fromkeys(accepted, 1))

        server = start(tmp_path, "second")
        try:
            with ForesightClient(server.url, api_key=KEY) as client:
                recorder = EpisodeRecorder(client)
                for _ in range(2):  # what an agent lives through, as arrays
                    recorder.begin()
                    for t in range(4):
                        obs = {a: np.full(18, 0.1 * t, np.float32) for a in ("agent_0", "agent_1")}
                        recorder.record_step(
                            obs,
                            {"agent_0": np.int64(1), "agent_1": 2},
                            {"agent_0": -0.5, "agent_1": np.float32(-0.25)},
                            {},
                            dict.fromkeys(obs, t == 3),
                            policies=dict.fromkeys(obs, "greedy"),
                        )
                    assert recorder.finish() is not None
                accepted += recorder.posted
                # a landing folder that cannot be written: 503 with the reason, and what was
                # accepted stays buffered until it can be
                blocker = Path(store.landing_uri("fresh"))
                blocker.write_text("a file where a folder should be")
                fresh = client.post_episodes({"dataset": "fresh", "episodes": [episode("f1")]})
                assert fresh.episode_ids == ["f1"]
                r = httpx.post(
                    f"{server.url}/episodes",
                    json={"dataset": "fresh", "episodes": [episode("f2")], "flush": True},
                    headers={"Authorization": f"Bearer {KEY}"},
                )
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert r.json()["error"].startswith("landing: cannot write to the landing zone")
                assert "fresh" in r.json()["error"]
                blocker.unlink()
        finally:
            sigterm(server)
        assert len(accepted) == 10
        assert landed_episodes(store) == Counter(dict.fromkeys(accepted, 1))
        assert landed_episodes(store, "fresh") == Counter({"f1": 1})  # f2 got 503: not kept

        result = ingest_logs([store.landing_uri("spread")], "spread", store=store)
        assert (result.accepted, result.quarantined) == (8 * 9 + 2 * 4 * 2, 0)
        assert sorted(DatasetTable(store, "spread").episode_ids(result.version)) == sorted(accepted)
        fresh = ingest_logs([store.landing_uri("fresh")], "fresh", store=store)  # a new dataset,
        assert (fresh.accepted, fresh.quarantined) == (9, 0)  # with the spec written beside
        assert new_landing_files(store, {}) == {}


def test_arena_via_http_records_its_episodes_with_the_deciding_versions(tmp_path_factory, tmp_path):
    from foresight.serving.remote import http_factories
    from foresight.training.loop.workflow import run_arena_registered

    with served_store(tmp_path_factory, "episodes-arena") as store:
        server = start(tmp_path, "arena")
        try:
            factories = http_factories(server.url, api_key=KEY)
            result = run_arena_registered(
                "simple_spread", 1, ["anticipatory", "bc+greedy"], store=store, factories=factories
            )
            assert {t: r["episodes"] for t, r in result["controllers"].items()} == {
                "anticipatory": 1,
                "bc+greedy": 1,
            }
            with ForesightClient(server.url, api_key=KEY) as client:
                flushed = client.post_episodes({"episodes": [], "flush": True})
            assert len(flushed.written) == 1 and flushed.buffered_rows == 0
        finally:
            server.stop()
        rows = landed_rows(store)
        by_episode = Counter(r["episode_id"] for r in rows)
        assert len(by_episode) == 2 and set(by_episode.values()) == {25 * 3}
        policies = Counter(r["policy_id"] for r in rows)
        assert policies == {
            "anticipatory(world@1,behavior@1)": 75,
            "bc(behavior@1)": 25,  # agent_0 of the bc+greedy team
            "greedy": 50,
        }
        decided = [json.loads(r["info"])["act"] for r in rows if r.get("info")]
        assert len(decided) == 75 and all(d["world_model"] == "world@1" for d in decided)
        assert all(np.isfinite(d["predicted_return"]) for d in decided)
        result = ingest_logs([store.landing_uri("spread")], "spread", store=store)
        assert (result.accepted, result.quarantined) == (150, 0)


def test_the_recorder_keeps_what_the_service_refuses_and_posts_it_later(tmp_path_factory, tmp_path):
    with served_store(tmp_path_factory, "episodes-retry") as store:
        server = start(tmp_path, "retry", FORESIGHT_EPISODES_BUFFER_ROWS="10")
        blocker = Path(store.landing_uri("blocked"))
        try:
            with ForesightClient(server.url, api_key=KEY) as client:
                recorder = EpisodeRecorder(client, dataset="blocked")

                def play() -> EpisodesResponse | None:
                    recorder.begin()
                    for t in range(4):  # 4 steps x 2 agents = 8 rows
                        obs = {a: [0.2] * 18 for a in ("agent_0", "agent_1")}
                        ended = dict.fromkeys(obs, t == 3)
                        recorder.record_step(obs, dict.fromkeys(obs, 3), {}, ended, {})
                    return recorder.finish()

                assert play() is not None  # buffered
                blocker.parent.mkdir(parents=True, exist_ok=True)
                blocker.write_text("a file where the landing folder should be")
                # 8 buffered + 8 > 10: the buffer must be written first, and cannot be
                assert play() is None and len(recorder.pending) == 1
                blocker.unlink()
                answer = play()  # the refused episode goes along with the next one
                assert answer is not None and len(answer.episode_ids) == 2
                assert recorder.pending == [] and len(recorder.posted) == 3
                recorder.close()  # flush=true: everything written now
        finally:
            server.stop()
        assert landed_episodes(store, "blocked") == Counter(dict.fromkeys(recorder.posted, 1))
