"""POST /episodes, tier 1: the sink called directly, on a local folder and on S3.

The HTTP path (API key, 413, 400 bodies, SIGTERM) is tier 3, in test_episodes_live.py: a second
BentoML ASGI app in one test process would register its metrics twice."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from foresight.datasets.catalog import DatasetTable
from foresight.datasets.ingest import ingest_logs
from foresight.datasets.schema import SPEC_FILENAME
from foresight.datasets.storage import Store
from foresight.pipelines.sensors import new_landing_files
from foresight.serving.episodes import EpisodeLimits, EpisodeSink, EpisodesRejected
from foresight.serving.schemas import EpisodesRequest
from tests.serving.helpers import spread_spec

AGENTS = ["agent_0", "agent_1", "agent_2"]


def episode(eid: str, steps: int = 3, agents=AGENTS, obs_size: int = 18) -> list[dict]:
    """A finished simple_spread-shaped episode: ``steps`` steps of every agent."""
    return [
        {
            "episode_id": eid,
            "step": t,
            "agent_id": a,
            "obs": [0.01 * (t + n + k) for k in range(obs_size)],
            "action": (t + n) % 5,
            "reward": -0.5 * t,
            "terminated": False,
            "truncated": t == steps - 1,
            "policy_id": "greedy",
        }
        for t in range(steps)
        for n, a in enumerate(agents)
    ]


def landed_episodes(store: Store, dataset: str = "spread") -> list[str]:
    """Every episode id in the dataset's landing files, once per file it is in."""
    ids = []
    for uri in store.fs.list_files(store.landing_uri(dataset)):
        if uri.endswith(".jsonl") and not uri.rsplit("/", 1)[-1].startswith("."):
            rows = [json.loads(line) for line in store.fs.read_bytes(uri).splitlines()]
            ids.extend(dict.fromkeys(r["episode_id"] for r in rows))
    return ids


def sink_for(store: Store, **limits) -> EpisodeSink:
    card = {"dataset": {"name": "spread"}, "spec": spread_spec().to_dict()}
    return EpisodeSink(store, lambda: card, EpisodeLimits(**{"flush_seconds": 0.0, **limits}))


# -- the sink, on a local folder and on S3 -----------------------------------------------------


def test_accepted_episodes_land_as_files_that_ingest_and_the_sensor_take(store):
    sink = sink_for(store, flush_seconds=3600)
    a = sink.post(EpisodesRequest(episodes=[episode("e1"), episode("e2", steps=5)]))
    assert a.dataset == "spread" and a.episode_ids == ["e1", "e2"] and a.rows == 24
    assert a.buffered_rows == 24 and a.written == []
    assert landed_episodes(store) == []  # buffered, not written yet
    b = sink.post(EpisodesRequest(episodes=[episode("e3")], flush=True))
    assert len(b.written) == 2 and b.buffered_rows == 0  # the buffer, then this request
    assert sorted(landed_episodes(store)) == ["e1", "e2", "e3"]
    # the dataset did not exist: the served models' spec is written beside the first file
    assert store.fs.exists(store.landing_uri("spread", SPEC_FILENAME))
    assert set(new_landing_files(store, {})) == {"spread"}

    result = ingest_logs([store.landing_uri("spread")], "spread", store=store)
    assert (result.accepted, result.quarantined) == (33, 0)
    assert sorted(DatasetTable(store, "spread").episode_ids(result.version)) == ["e1", "e2", "e3"]
    assert new_landing_files(store, {}) == {}  # ingested once, not requested again

    # the next episodes join the dataset now it exists (its spec from the lake)
    sink.post(EpisodesRequest(episodes=[episode("e4")], flush=True))
    again = ingest_logs([store.landing_uri("spread")], "spread", store=store)
    assert again.accepted == 9 and again.version == result.version + 1
    # an episode already in the dataset is quarantined at ingest, as any duplicate is
    sink.post(EpisodesRequest(episodes=[episode("e1"), episode("e5")], flush=True))
    third = ingest_logs([store.landing_uri("spread")], "spread", store=store)
    assert (third.accepted, third.quarantined) == (9, 9)
    assert list(third.reasons) == ["episode 'e1' is already in the dataset"]


def test_an_unwritable_landing_zone_is_503_and_loses_nothing_accepted(tmp_path):
    store = Store(str(tmp_path / "store"))
    sink = sink_for(store, flush_seconds=3600)
    sink.post(EpisodesRequest(episodes=[episode("e1")]))
    blocker = Path(store.landing_uri("spread"))
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the landing folder should be")
    with pytest.raises(EpisodesRejected) as err:
        sink.post(EpisodesRequest(episodes=[episode("e2")], flush=True))
    assert err.value.status == 503 and err.value.retry
    assert "cannot write to the landing zone" in err.value.message and "spread" in err.value.message
    assert "this request was not accepted" in err.value.message
    assert sink.buffered_rows == 9  # e1, accepted before; e2 was refused (a retry doubles nothing)
    blocker.unlink()
    assert len(sink.flush()) == 1 and sink.buffered_rows == 0
    assert landed_episodes(store) == ["e1"]


def test_a_full_buffer_is_written_before_the_request_joins_it(tmp_path):
    store = Store(str(tmp_path / "store"))
    sink = sink_for(store, flush_seconds=3600, buffer_rows=20)
    assert sink.post(EpisodesRequest(episodes=[episode("e1")])).written == []
    assert sink.post(EpisodesRequest(episodes=[episode("e2")])).written == []
    third = sink.post(EpisodesRequest(episodes=[episode("e3")]))  # 27 rows > 20: write first
    assert len(third.written) == 1 and third.buffered_rows == 9
    assert sorted(landed_episodes(store)) == ["e1", "e2"]
    assert sink.close() and sorted(landed_episodes(store)) == ["e1", "e2", "e3"]


def test_a_failed_full_buffer_refuses_the_new_request_only(tmp_path):
    store = Store(str(tmp_path / "store"))
    sink = sink_for(store, flush_seconds=3600, buffer_rows=10)
    sink.post(EpisodesRequest(episodes=[episode("e1")]))
    blocker = Path(store.landing_uri("spread"))
    blocker.parent.mkdir(parents=True)
    blocker.write_text("")
    with pytest.raises(EpisodesRejected) as err:
        sink.post(EpisodesRequest(episodes=[episode("e2")]))
    assert err.value.status == 503 and "buffer is full" in err.value.message
    blocker.unlink()
    sink.close()
    assert landed_episodes(store) == ["e1"]  # e2 was refused, so it is not there


def test_the_timer_writes_episodes_older_than_flush_seconds(tmp_path):
    import time

    store = Store(str(tmp_path / "store"))
    sink = sink_for(store, flush_seconds=0.2).start()
    try:
        sink.post(EpisodesRequest(episodes=[episode("e1")]))
        deadline = time.monotonic() + 30
        while not landed_episodes(store) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert landed_episodes(store) == ["e1"]
    finally:
        sink.close()


def _gap(rows):
    return [r for r in rows if r["step"] != 1]


def _nan_obs(rows):
    rows[4]["obs"][0] = math.nan
    return rows


def _set(i, **fields):
    def change(rows):
        rows[i].update(fields)
        return rows

    return change


def _drop(i, field):
    def change(rows):
        del rows[i][field]
        return rows

    return change


BAD_EPISODES = [
    ("nan obs", _nan_obs, "episodes.0.4", "obs contains NaN or inf"),
    ("unknown agent", _set(2, agent_id="agent_9"), "episodes.0.2", "unknown agent_id 'agent_9'"),
    ("other spec", _set(0, obs=[0.0] * 10), "episodes.0.0", "obs has 10 values"),
    ("action", _set(5, action=7), "episodes.0.5", "outside the action spec discrete(5)"),
    ("type", _set(1, step="one"), "episodes.0.1", "wrong type for 'step'"),
    ("missing", _drop(3, "reward"), "episodes.0.3", "missing field(s): reward"),
    ("unknown field", _set(3, colour="red"), "episodes.0.3", "unknown field(s): colour"),
    ("gap", _gap, "episodes.0.0", "steps are not contiguous from 0"),
    ("duplicate", lambda rows: [*rows, dict(rows[0])], "episodes.0.9", "duplicate row"),
    ("two ids", _set(6, episode_id="other"), "episodes.0.6", "each list holds one episode"),
    ("not ended", lambda rows: rows[:6], "episodes.0.5", "has not ended"),
]


@pytest.mark.parametrize(
    "change,where,words", [b[1:] for b in BAD_EPISODES], ids=[b[0] for b in BAD_EPISODES]
)
def test_a_bad_row_is_400_naming_the_row_and_the_rule_and_nothing_is_kept(
    tmp_path, change, where, words
):
    store = Store(str(tmp_path / "store"))
    sink = sink_for(store, flush_seconds=3600)
    with pytest.raises(EpisodesRejected) as err:
        sink.post(EpisodesRequest(episodes=[change(episode("bad")), episode("good")]))
    assert err.value.status == 400
    problems = {".".join(map(str, d["loc"])): d["msg"] for d in err.value.detail}
    assert where in problems and words in problems[where], problems
    assert sink.buffered_rows == 0  # the good episode of the request is not kept either
    sink.flush()
    assert landed_episodes(store) == []


def test_an_episode_twice_in_a_request_and_size_limits(tmp_path):
    sink = sink_for(Store(str(tmp_path / "store")), max_rows=20)
    with pytest.raises(EpisodesRejected) as err:
        sink.post(EpisodesRequest(episodes=[episode("e1", steps=2), episode("e1", steps=2)]))
    messages = {".".join(map(str, d["loc"])): d["msg"] for d in err.value.detail}
    assert err.value.status == 400 and "also episodes.0" in messages["episodes.1.0"]
    with pytest.raises(EpisodesRejected) as err:
        sink.post(EpisodesRequest(episodes=[episode(f"e{i}") for i in range(3)]))
    assert err.value.status == 413
    assert "27 rows in 3 episodes, more than the limit of 20 rows" in err.value.message
    with pytest.raises(EpisodesRejected) as err:
        sink.post(EpisodesRequest(dataset="bad name", episodes=[episode("e1")]))
    assert err.value.status == 400 and "invalid dataset name" in err.value.message
