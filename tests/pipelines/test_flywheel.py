"""The loop by itself: what the service lands is ingested by the landing sensor's runs, and the
retrain sensor asks for training once the production models' dataset has grown enough."""

from __future__ import annotations

import dagster as dg
import pytest

from foresight.datasets.catalog import DatasetTable
from foresight.pipelines.assets import trajectory_dataset
from foresight.pipelines.definitions import defs
from foresight.pipelines.resources import ForesightStore
from foresight.pipelines.sensors import landing_sensor, retrain_sensor
from foresight.serving.episodes import EpisodeLimits, EpisodeSink
from foresight.serving.schemas import EpisodesRequest
from tests.serving.helpers import register_untrained, spread_spec
from tests.serving.test_episodes import episode


class Loop:
    """The service's episode sink, the landing sensor and the ingest asset, run by hand."""

    def __init__(self, store) -> None:
        card = {"dataset": {"name": "spread"}, "spec": spread_spec().to_dict()}
        self.sink = EpisodeSink(store, lambda: card, EpisodeLimits(flush_seconds=3600))
        self.resources = {"foresight_store": ForesightStore.of(store)}
        self.cursor: str | None = None
        self.count = 0

    def serve(self, n: int) -> None:
        """``n`` episodes posted and written to landing, then one landing sensor tick whose
        run request is executed."""
        episodes = [episode(f"ep{self.count + k}") for k in range(n)]
        self.count += n
        assert len(self.sink.post(EpisodesRequest(episodes=episodes, flush=True)).written) == 1
        tick = landing_sensor(dg.build_sensor_context(cursor=self.cursor, resources=self.resources))
        [request] = tick.run_requests
        self.cursor = tick.cursor
        run = dg.materialize(
            [trajectory_dataset], resources=self.resources, run_config=request.run_config
        )
        assert run.success

    def retrain(self, cursor: str | None = None):
        return retrain_sensor(dg.build_sensor_context(cursor=cursor, resources=self.resources))


def test_served_episodes_are_ingested_and_growth_triggers_a_retrain(store, monkeypatch):
    monkeypatch.delenv("FORESIGHT_RETRAIN_GROWTH", raising=False)
    assert defs.resolve_sensor_def("retrain_sensor") is not None
    loop = Loop(store)
    loop.serve(8)
    table = DatasetTable(store, "spread")
    assert table.latest_version() == 0 and len(table.episode_ids(0)) == 8

    skip = loop.retrain()
    assert isinstance(skip, dg.SkipReason) and "no world@production" in skip.skip_message
    for kind in ("world", "behavior"):
        register_untrained(store, kind, spread_spec(), dataset="spread@0")
    skip = loop.retrain()
    assert isinstance(skip, dg.SkipReason) and "no version after spread@0" in skip.skip_message

    loop.serve(1)  # 8 -> 9 episodes: +12%, under the default 25%
    skip = loop.retrain()
    assert isinstance(skip, dg.SkipReason) and "8 -> 9 episodes" in skip.skip_message

    monkeypatch.setenv("FORESIGHT_RETRAIN_GROWTH", "0.1")  # configurable: now +12% is enough
    first = loop.retrain()
    [request] = first.run_requests
    assert request.run_key == "retrain:spread@1"
    assert request.run_config["ops"]["world_model"]["config"] == {"dataset": "spread@1"}
    assert request.run_config["ops"]["behavior_model"]["config"] == {"dataset": "spread@1"}
    assert request.run_config["ops"]["offline_rl_model"]["config"] == {"dataset": "spread@1"}
    assert dg.validate_run_config(defs.resolve_job_def("train_job"), request.run_config)
    assert isinstance(loop.retrain(first.cursor), dg.SkipReason)  # requested once

    # production still trained on spread@0 (say the gates refused the candidate): growth now
    # counts from spread@1, the version the last retrain was asked for
    loop.serve(1)  # 9 -> 10: +11%
    second = loop.retrain(first.cursor)
    assert [r.run_key for r in second.run_requests] == ["retrain:spread@2"]
    assert float(second.run_requests[0].tags["foresight/growth"]) == pytest.approx(1 / 9, abs=1e-4)
    loop.serve(1)  # 10 -> 11 from spread@2: +10%
    monkeypatch.setenv("FORESIGHT_RETRAIN_GROWTH", "0.5")
    assert isinstance(loop.retrain(second.cursor), dg.SkipReason)
    assert len(DatasetTable(store, "spread").episode_ids()) == 11  # all landed, all ingested


def test_retrain_growth_must_be_a_positive_share(monkeypatch):
    from foresight.pipelines.sensors import retrain_growth

    monkeypatch.setenv("FORESIGHT_RETRAIN_GROWTH", "a lot")
    with pytest.raises(ValueError, match="FORESIGHT_RETRAIN_GROWTH must be a share"):
        retrain_growth()
    monkeypatch.setenv("FORESIGHT_RETRAIN_GROWTH", "0")
    with pytest.raises(ValueError, match="must be > 0"):
        retrain_growth()
