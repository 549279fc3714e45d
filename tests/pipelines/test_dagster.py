"""Dagster: definitions load, the landing sensor requests each file once, the asset ingests."""

from __future__ import annotations

import dagster as dg

from datasets import open_dataset
from pipelines.assets import trajectory_dataset
from pipelines.definitions import defs
from pipelines.resources import ForesightStore
from pipelines.sensors import landing_sensor
from tests.datasets.helpers import episodes, write_jsonl


def resource_for(store) -> ForesightStore:
    if store.is_s3:
        s3 = store.fs.s3
        return ForesightStore(
            root=store.root,
            s3_endpoint=s3.endpoint,
            access_key=s3.access_key,
            secret_key=s3.secret_key,
        )
    return ForesightStore(root=store.root)


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
    resources = {"foresight_store": resource_for(store)}
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
    from datasets.storage import Store

    store = Store(str(tmp_path / ".foresight"))  # the default store root is a dot-folder
    landed = land(store, tmp_path, "a.jsonl", episodes(2))
    store.fs.upload(landed, store.landing_uri("toy", ".b.jsonl"))  # a temp name: being written
    result = landing_sensor(
        dg.build_sensor_context(resources={"foresight_store": resource_for(store)})
    )
    assert [
        r.run_config["ops"]["trajectory_dataset"]["config"]["files"] for r in result.run_requests
    ] == [[landed]]


def test_asset_ingests_landing_files_and_reports_metadata(store, tmp_path):
    uri = land(store, tmp_path, "a.jsonl", episodes(3))
    result = dg.materialize(
        [trajectory_dataset],
        resources={"foresight_store": resource_for(store)},
        run_config={"ops": {"trajectory_dataset": {"config": {"dataset": "toy", "files": [uri]}}}},
    )
    assert result.success
    meta = result.asset_materializations_for_node("trajectory_dataset")[0].metadata
    assert meta["version"].value == 0
    assert meta["rows_accepted"].value == 45 and meta["rows_quarantined"].value == 0
    assert open_dataset("toy", store).collect().height == 45


def test_sensor_with_a_fresh_cursor_skips_files_already_ingested(store, tmp_path):
    uri = land(store, tmp_path, "a.jsonl", episodes(2))
    resources = {"foresight_store": resource_for(store)}
    dg.materialize(
        [trajectory_dataset],
        resources=resources,
        run_config={"ops": {"trajectory_dataset": {"config": {"dataset": "toy", "files": [uri]}}}},
    )
    assert isinstance(landing_sensor(dg.build_sensor_context(resources=resources)), dg.SkipReason)
