"""Versions, tags, stats, diffs and exports, through the library and the CLI; local and S3."""

from __future__ import annotations

import json

import polars as pl
import pytest

from foresight.datasets import DatasetError, DatasetRef, dataset_stats, ingest_logs, open_dataset
from foresight.datasets.storage import S3Config, StorageError, Store
from foresight.pipelines.cli import main
from tests.datasets.helpers import episode_rows, episodes, write_jsonl


def cli(capsys, *args: str) -> dict | list:
    code = main([*args, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


@pytest.fixture
def two_versions(store, tmp_path):
    write_jsonl(tmp_path / "v0" / "a.jsonl", episodes(3))
    write_jsonl(tmp_path / "v1" / "b.jsonl", episodes(2, prefix="new"))
    ingest_logs([str(tmp_path / "v0")], "toy", store)
    ingest_logs([str(tmp_path / "v1")], "toy", store)
    return store


def test_refs_parse_and_reject_nonsense():
    assert DatasetRef.parse("spread@3") == DatasetRef("spread", version=3)
    assert DatasetRef.parse("spread@golden") == DatasetRef("spread", tag="golden")
    assert DatasetRef.parse("spread") == DatasetRef("spread")
    for bad in ("", "@3", "a b", "x@@1", "x@-1", "x__quarantine"):
        with pytest.raises(DatasetError):
            DatasetRef.parse(bad)


def test_versions_show_diff_tag_export(two_versions, tmp_path, capsys):
    store = two_versions
    listed = cli(capsys, "datasets", "list")
    assert [d["dataset"] for d in listed] == ["toy"] and listed[0]["latest"] == 1

    versions = cli(capsys, "datasets", "versions", "toy")
    assert [v["version"] for v in versions] == [0, 1]
    assert [v["rows_added"] for v in versions] == [45, 30]
    assert versions[1]["rows"] == 75

    shown = cli(capsys, "datasets", "show", "toy@0")
    assert (shown["episodes"], shown["rows"], shown["steps"]) == (3, 45, 15)
    truth = pl.DataFrame(episodes(3)).group_by("episode_id", "agent_id").agg(pl.col("reward").sum())
    a0 = truth.filter(pl.col("agent_id") == "a0")["reward"]
    assert shown["agents"]["a0"]["mean"] == pytest.approx(a0.mean(), abs=1e-4)
    assert shown["agents"]["a0"]["min"] == pytest.approx(a0.min(), abs=1e-4)
    assert shown["lineage"][0]["uri"].endswith("a.jsonl") and len(shown["lineage"]) == 1
    assert len(cli(capsys, "datasets", "show", "toy")["lineage"]) == 2

    diff = cli(capsys, "datasets", "diff", "toy@0", "toy@1")
    assert (diff["episodes_added"], diff["episodes_removed"], diff["rows_added"]) == (2, 0, 30)
    back = cli(capsys, "datasets", "diff", "toy@1", "toy@0")
    assert back["episodes_removed"] == 2

    cli(capsys, "datasets", "tag", "toy@0", "golden")
    assert open_dataset("toy@golden", store).collect().height == 45
    assert cli(capsys, "datasets", "show", "toy@golden")["version"] == 0

    dest = str(tmp_path / "export") if not store.is_s3 else store.uri("exports", "toy0")
    exported = cli(capsys, "datasets", "export", "toy@0", dest)
    assert exported["rows"] == 45
    if store.is_s3:
        local = tmp_path / "dl.parquet"
        local.write_bytes(store.fs.read_bytes(exported["files"][0]))
        frame = pl.read_parquet(local)
    else:
        frame = pl.read_parquet(exported["files"])
    assert frame.height == 45 and set(frame["episode_id"]) == {"ep000", "ep001", "ep002"}


def test_show_counts_quarantine_of_that_version(store, tmp_path):
    rows = [*episodes(2), dict(episode_rows("x")[0], action=99)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    ingest_logs([str(tmp_path / "a.jsonl")], "toy", store)
    write_jsonl(tmp_path / "b.jsonl", [*episodes(1, prefix="b"), {"episode_id": "oops"}])
    ingest_logs([str(tmp_path / "b.jsonl")], "toy", store)
    assert dataset_stats("toy@0", store)["quarantined"] == 1
    assert dataset_stats("toy@1", store)["quarantined"] == 2


def test_unknown_references_give_clear_errors(two_versions, capsys):
    for args, message in [
        (["datasets", "show", "nope"], "dataset 'nope' does not exist"),
        (["datasets", "show", "toy@7"], "has no version 7 (latest is 1)"),
        (["datasets", "show", "toy@gold"], "has no tag 'gold'"),
        (["datasets", "tag", "toy@0", "12"], "invalid tag"),
    ]:
        assert main(args) == 2
        assert message in capsys.readouterr().err


def test_s3_errors_name_the_endpoint(s3_server, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", episodes(1))
    wrong_key = Store("s3://nobucket/x", S3Config(s3_server.endpoint, "nobody", "wrong"))
    with pytest.raises(StorageError, match=f"{s3_server.endpoint} refused the credentials"):
        ingest_logs([str(tmp_path / "a.jsonl")], "toy", wrong_key)
    dead = Store("s3://nobucket/x", S3Config("http://127.0.0.1:9", "a", "b"))
    # The message names the endpoint and what to do (its exact wording is storage.py's).
    with pytest.raises(StorageError, match=r"S3 endpoint http://127\.0\.0\.1:9\b.*running"):
        ingest_logs([str(tmp_path / "a.jsonl")], "toy", dead)


def _tag_many(root: str, env: dict, worker: int, count: int) -> None:
    import os

    from foresight.datasets.catalog import DatasetTable

    os.environ.update(env)
    table = DatasetTable(Store(root), "toy")
    for i in range(count):
        table.set_tag(f"w{worker}_{i}", i % 2)


@pytest.mark.parametrize("round_", range(2))
def test_concurrent_tags_lose_nothing(store, tmp_path, round_):
    """4 spawned processes tag at once: every tag and every log entry survives."""
    import multiprocessing as mp
    import os

    write_jsonl(tmp_path / "a.jsonl", episodes(1))
    ingest_logs([str(tmp_path / "a.jsonl")], "toy", store)
    env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "FORESIGHT_S3"))}
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_tag_many, args=(store.root, env, w, 8)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    from foresight.datasets.catalog import DatasetTable

    table = DatasetTable(store, "toy")
    expected = {f"w{w}_{i}": i % 2 for w in range(4) for i in range(8)}
    assert table.tags() == expected
    log = store.read_json(table.tags_rel)["log"]
    assert sorted(e["tag"] for e in log) == sorted(expected)
