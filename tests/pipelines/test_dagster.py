"""Dagster: definitions load, the landing sensor requests each file once, the asset ingests."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from foresight.datasets import open_dataset
from foresight.pipelines.assets import trajectory_dataset
from foresight.pipelines.definitions import defs
from foresight.pipelines.resources import ForesightStore
from foresight.pipelines.sensors import landing_sensor
from tests.datasets.helpers import episodes, write_jsonl


def land(store, tmp_path, name: str, rows: list[dict]) -> str:
    local = write_jsonl(tmp_path / "src" / name, rows)
    uri = store.landing_uri("toy", name)
    store.fs.upload(str(local), uri)
    store.fs.upload(
        str(local.parent / "foresight_spec.json"), store.landing_uri("toy", "foresight_spec.json")
    )
    return uri


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_job_def("ingest_job") is not None
    assert defs.resolve_sensor_def("landing_sensor") is not None


def test_sensor_requests_each_new_file_exactly_once(store, tmp_path):
    resources = {"foresight_store": ForesightStore.of(store)}
    first = land(store, tmp_path, "a.jsonl", episodes(2))
    context = dg.build_sensor_context(resources=resources)
    result = landing_sensor(context)
    assert len(result.run_requests) == 1
    request = result.run_requests[0]
    assert request.run_config["ops"]["trajectory_dataset"]["config"] == {
        "dataset": "toy",
        "files": [first],
    }

    # Restarted from the stored cursor: nothing new, nothing requested.
    again = landing_sensor(dg.build_sensor_context(cursor=result.cursor, resources=resources))
    assert isinstance(again, dg.SkipReason)

    second = land(store, tmp_path, "b.jsonl", episodes(1, prefix="b"))
    third = landing_sensor(dg.build_sensor_context(cursor=result.cursor, resources=resources))
    assert [
        r.run_config["ops"]["trajectory_dataset"]["config"]["files"] for r in third.run_requests
    ] == [[second]]
    assert third.run_requests[0].run_key != request.run_key


def test_sensor_finds_files_in_a_store_under_a_dot_folder_and_skips_temp_names(tmp_path):
    from foresight.datasets.storage import Store

    store = Store(str(tmp_path / ".foresight"))  # the default store root is a dot-folder
    landed = land(store, tmp_path, "a.jsonl", episodes(2))
    store.fs.upload(landed, store.landing_uri("toy", ".b.jsonl"))  # a temp name: being written
    result = landing_sensor(
        dg.build_sensor_context(resources={"foresight_store": ForesightStore.of(store)})
    )
    assert [
        r.run_config["ops"]["trajectory_dataset"]["config"]["files"] for r in result.run_requests
    ] == [[landed]]


def test_asset_ingests_landing_files_and_reports_metadata(store, tmp_path):
    uri = land(store, tmp_path, "a.jsonl", episodes(3))
    result = dg.materialize(
        [trajectory_dataset],
        resources={"foresight_store": ForesightStore.of(store)},
        run_config={"ops": {"trajectory_dataset": {"config": {"dataset": "toy", "files": [uri]}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("trajectory_dataset")[0].metadata
    assert meta["version"].value == 0
    assert meta["rows_accepted"].value == 45 and meta["rows_quarantined"].value == 0
    assert open_dataset("toy", store).collect().height == 45


def test_sensor_with_a_fresh_cursor_skips_files_already_ingested(store, tmp_path):
    uri = land(store, tmp_path, "a.jsonl", episodes(2))
    resources = {"foresight_store": ForesightStore.of(store)}
    dg.materialize(
        [trajectory_dataset],
        resources=resources,
        run_config={"ops": {"trajectory_dataset": {"config": {"dataset": "toy", "files": [uri]}}}},
    )
    assert isinstance(landing_sensor(dg.build_sensor_context(resources=resources)), dg.SkipReason)


def _instance_settings() -> dict:
    """The run queue settings of infra/dagster.yaml (its storage needs PostgreSQL: left out)."""
    import yaml

    path = Path(__file__).parents[2] / "infra" / "dagster.yaml"
    config = yaml.safe_load(path.read_text())
    return {k: config[k] for k in ("run_coordinator", "concurrency") if k in config}


def test_run_queue_starts_one_ingest_per_dataset_and_never_blocks_other_datasets(tmp_path):
    """The daemon's own dequeue logic, with infra/dagster.yaml's limits, on runs that the
    landing sensor requested: one per dataset runs, the second of a dataset waits."""
    from dagster._core.remote_origin import (
        InProcessCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.storage.dagster_run import DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test, instance_for_test
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
        QueuedRunCoordinatorDaemon,
    )

    from foresight.datasets.storage import Store

    store = Store(str(tmp_path / "store"))
    resources = {"foresight_store": ForesightStore.of(store)}
    requests = []
    cursor = None
    for batch in range(2):  # two sensor ticks, each with new files for both datasets
        for dataset in ("toy", "other"):
            local = write_jsonl(tmp_path / dataset / f"{batch}.jsonl", episodes(1, f"{batch}-"))
            store.fs.upload(str(local), store.landing_uri(dataset, f"{batch}.jsonl"))
        result = landing_sensor(dg.build_sensor_context(cursor=cursor, resources=resources))
        cursor = result.cursor
        requests += result.run_requests
    assert sorted(r.tags["foresight/ingest"] for r in requests) == ["other"] * 2 + ["toy"] * 2

    origin = RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=InProcessCodeLocationOrigin(
                LoadableTargetOrigin(module_name="foresight.pipelines.definitions")
            ),
            repository_name="__repository__",
        ),
        job_name="ingest_job",
    )
    with instance_for_test(overrides=_instance_settings()) as instance:
        runs = [
            create_run_for_test(
                instance,
                job_name="ingest_job",
                status=DagsterRunStatus.QUEUED,
                tags=r.tags,
                remote_job_origin=origin,
            )
            for r in requests
        ]
        daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
        chosen = daemon._get_runs_to_dequeue(
            instance, instance.get_concurrency_config(), fixed_iteration_time=None
        )
        assert sorted(r.tags["foresight/ingest"] for r in chosen) == ["other", "toy"]
        # Once the first toy run is in progress, only the other dataset's runs may start.
        first_toy = next(r for r in runs if r.tags["foresight/ingest"] == "toy")
        instance.handle_run_event(
            first_toy.run_id,
            dg.DagsterEvent(
                event_type_value=dg.DagsterEventType.RUN_START.value, job_name="ingest_job"
            ),
        )
        chosen = daemon._get_runs_to_dequeue(
            instance, instance.get_concurrency_config(), fixed_iteration_time=None
        )
        assert sorted(r.tags["foresight/ingest"] for r in chosen) == ["other"]


def _materialize_ingest(root: str, env: dict, uri: str, out: str, start) -> None:
    """One Dagster run of the ingest asset, in its own process; its metadata goes to ``out``."""
    import json
    import os

    os.environ.update(env)
    from foresight.datasets.storage import Store

    start.wait()  # every run starts together, once all processes have imported Dagster
    result = dg.materialize(
        [trajectory_dataset],
        resources={"foresight_store": ForesightStore.of(Store(root))},
        run_config={"ops": {"trajectory_dataset": {"config": {"dataset": "toy", "files": [uri]}}}},
    )
    meta = result.asset_materializations_for_node("trajectory_dataset")[0].metadata
    Path(out).write_text(json.dumps({k: v.value for k, v in meta.items()}, default=str))


@pytest.mark.slow
def test_concurrent_dagster_runs_into_one_dataset_keep_keys_unique(store, tmp_path):
    """Three Dagster runs at once (spawned processes, no run queue in between), files with
    overlapping episode ids: the lease makes them end as a serial order would."""
    import json
    import multiprocessing as mp
    import os

    import polars as pl

    from tests.datasets.helpers import episode_rows

    uris = []
    for p in range(3):
        rows = [r for e in range(2) for r in episode_rows(f"own{p}-{e}", 4, seed=p)]
        rows += episode_rows("shared", 4, seed=p)
        uris.append(land(store, tmp_path, f"p{p}.jsonl", rows))
    env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "FORESIGHT_S3"))}
    ctx = mp.get_context("spawn")
    outs = [str(tmp_path / f"meta{p}.json") for p in range(3)]
    start = ctx.Barrier(3)
    procs = [
        ctx.Process(target=_materialize_ingest, args=(store.root, env, uri, out, start))
        for uri, out in zip(uris, outs, strict=True)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(300)
        assert proc.exitcode == 0
    metas = [json.loads(Path(out).read_text()) for out in outs]
    frame = open_dataset("toy", store).collect()
    assert frame.select("episode_id", "step", "agent_id").is_duplicated().sum() == 0
    assert sorted(m["version"] for m in metas) == [0, 1, 2]
    assert sum(m["rows_accepted"] for m in metas) == frame.height == (3 * 2 + 1) * 12
    assert sorted(m["rows_quarantined"] for m in metas) == [0, 12, 12]
    assert frame.filter(pl.col("episode_id") == "shared").height == 12
