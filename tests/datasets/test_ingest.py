"""Ingestion: exact accounting, quarantine reasons, idempotence, atomicity; local and S3."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys

import polars as pl
import pytest
from deltalake.exceptions import DeltaError

from foresight.datasets import DatasetTable, IngestError, ingest_logs, open_dataset
from foresight.datasets import ingest as ingest_module
from foresight.datasets.ingest import InjectedFault
from foresight.datasets.schema import SPEC_FILENAME
from tests.datasets.helpers import OBS, episode_rows, episodes, spec, write_jsonl


def test_valid_log_becomes_version_zero(store, tmp_path):
    rows = episodes(4)
    write_jsonl(tmp_path / "logs" / "a.jsonl", rows)
    result = ingest_logs([str(tmp_path / "logs")], "toy", store)
    assert (result.read, result.accepted, result.quarantined) == (60, 60, 0)
    assert result.version == 0
    assert result.spec_origin.startswith("spec file")
    frame = open_dataset("toy@0", store).collect().sort("episode_id", "step", "agent_id")
    assert frame.height == 60
    assert frame.schema["step"] == pl.Int32 and frame.schema["action"] == pl.Int32
    first = rows[0]
    got = frame.row(0, named=True)
    assert got["episode_id"] == first["episode_id"] and got["action"] == first["action"]
    assert got["obs"] == pytest.approx(first["obs"], abs=1e-6)
    arrow = open_dataset("toy", store, arrow=True)
    assert arrow.num_rows == 60


BAD_LINES = [
    ("{not json", "unparseable JSON"),
    ('["a", "list"]', "not a JSON object"),
    (
        '{"episode_id": "bad1", "step": 0, "agent_id": "a0", "obs": [0,0,0,0], "reward": 0, '
        '"terminated": false, "truncated": false}',
        "missing field(s): action",
    ),
    (
        '{"episode_id": "bad2", "step": 0, "agent_id": "a0", "obs": [0,0,0,0], "action": 1, '
        '"reward": 0, "terminated": false, "truncated": false, "colour": "red"}',
        "unknown field(s): colour",
    ),
    (
        '{"episode_id": "bad3", "step": "zero", "agent_id": "a0", "obs": [0,0,0,0], "action": 1, '
        '"reward": 0, "terminated": false, "truncated": false}',
        "wrong type for 'step'",
    ),
    (
        '{"episode_id": "bad4", "step": 0, "agent_id": "a0", "obs": [0,NaN,0,0], "action": 1, '
        '"reward": 0, "terminated": false, "truncated": false}',
        "obs contains NaN or inf",
    ),
    (
        '{"episode_id": "bad5", "step": 0, "agent_id": "a0", "obs": [0,0,0], "action": 1, '
        '"reward": 0, "terminated": false, "truncated": false}',
        "obs has 3 values but agent 'a0' has observation size 4",
    ),
    (
        '{"episode_id": "bad6", "step": 0, "agent_id": "a0", "obs": [0,0,0,0], "action": 9, '
        '"reward": 0, "terminated": false, "truncated": false}',
        "action 9 outside the action spec discrete(5)",
    ),
    (
        '{"episode_id": "bad7", "step": 0, "agent_id": "zz", "obs": [0,0,0,0], "action": 1, '
        '"reward": 0, "terminated": false, "truncated": false}',
        "unknown agent_id 'zz'",
    ),
    (
        '{"episode_id": "bad8", "step": 0, "agent_id": "a0", "obs": [0,0,0,0], "action": 1, '
        '"reward": Infinity, "terminated": false, "truncated": false}',
        "reward is NaN or inf",
    ),
]


def test_every_bad_record_is_quarantined_with_its_reason(store, tmp_path):
    good = episodes(3)
    duplicate = dict(good[4])  # ep000 step 1 agent a1, again
    gap = [r for r in episode_rows("gappy", steps=4) if r["step"] != 2]
    lines = [json.dumps(r) for r in good] + [json.dumps(duplicate)] + [json.dumps(r) for r in gap]
    bad_start = len(lines) + 1
    lines += [line for line, _ in BAD_LINES]
    write_jsonl(tmp_path / "logs" / "mixed.jsonl", [])
    (tmp_path / "logs" / "mixed.jsonl").write_text("\n".join(lines) + "\n")

    result = ingest_logs([str(tmp_path / "logs" / "mixed.jsonl")], "toy", store)
    assert result.read == len(lines)
    assert result.read == result.accepted + result.quarantined
    assert result.accepted == len(good)
    assert result.quarantined == 1 + len(gap) + len(BAD_LINES)

    quarantine = DatasetTable(store, "toy").quarantine().sort("line")
    assert quarantine.height == result.quarantined
    by_line = {row["line"]: row for row in quarantine.to_dicts()}
    for offset, (line, expected) in enumerate(BAD_LINES):
        row = by_line[bad_start + offset]
        assert expected in row["reason"], (line, row["reason"])
        assert row["source"].endswith("mixed.jsonl")
    assert any(
        "duplicate row for episode 'ep000' step 1 agent 'a1'" in r for r in quarantine["reason"]
    )
    assert any("'gappy' steps are not contiguous" in r for r in quarantine["reason"])
    kept = open_dataset("toy", store).collect()
    assert set(kept["episode_id"]) == {"ep000", "ep001", "ep002"}


def test_clean_rows_of_an_episode_with_a_bad_row_are_held_back(store, tmp_path):
    rows = episode_rows("tainted", steps=3)
    rows[4]["obs"] = [0.0] * (OBS + 1)
    write_jsonl(tmp_path / "l.jsonl", rows + episodes(1))
    result = ingest_logs([str(tmp_path / "l.jsonl")], "toy", store)
    assert result.accepted == 15 and result.quarantined == 9
    reasons = DatasetTable(store, "toy").quarantine()["reason"].to_list()
    assert sum("kept whole or not at all" in r for r in reasons) == 8


def test_episode_spread_over_rotated_files_in_any_order(store, tmp_path):
    rows = episodes(6, steps=6)
    random.Random(3).shuffle(rows)
    write_jsonl(tmp_path / "logs" / "part-1.jsonl", rows[: len(rows) // 2])
    write_jsonl(tmp_path / "logs" / "part-2.jsonl", rows[len(rows) // 2 :])
    result = ingest_logs([str(tmp_path / "logs" / "part-*.jsonl")], "toy", store)
    assert result.accepted == len(rows) and result.quarantined == 0
    frame = open_dataset("toy", store).collect()
    per_episode = frame.group_by("episode_id").agg(pl.col("step").n_unique())
    assert per_episode["step"].to_list() == [6] * 6


def test_small_buckets_still_see_whole_episodes(store, tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_module, "BUCKET_BYTES", 2_000)  # many buckets
    rows = episodes(12)
    rows.append(dict(rows[7]))  # a duplicate in another file
    write_jsonl(tmp_path / "logs" / "x.jsonl", rows[:100])
    write_jsonl(tmp_path / "logs" / "y.jsonl", rows[100:])
    result = ingest_logs([str(tmp_path / "logs")], "toy", store)
    assert result.accepted == 180 and result.quarantined == 1


def test_reingesting_a_file_adds_nothing(store, tmp_path):
    write_jsonl(tmp_path / "logs" / "a.jsonl", episodes(2))
    first = ingest_logs([str(tmp_path / "logs")], "toy", store)
    assert first.version == 0
    again = ingest_logs([str(tmp_path / "logs")], "toy", store)
    assert again.version is None and again.read == 0
    assert again.already_ingested == [str(tmp_path / "logs" / "a.jsonl")]
    # Same bytes under another name: still the same file.
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "renamed.jsonl").write_bytes((tmp_path / "logs" / "a.jsonl").read_bytes())
    renamed = ingest_logs([str(tmp_path / "copy" / "renamed.jsonl")], "toy", store)
    assert renamed.already_ingested and renamed.version is None
    # A new file with a new episode makes version 1; an old episode in a new file is refused.
    write_jsonl(tmp_path / "logs" / "b.jsonl", episodes(1, prefix="new") + episode_rows("ep000"))
    third = ingest_logs([str(tmp_path / "logs")], "toy", store)
    assert third.version == 1 and third.accepted == 15 and third.quarantined == 15
    assert third.already_ingested == [str(tmp_path / "logs" / "a.jsonl")]
    assert "already in the dataset" in DatasetTable(store, "toy").quarantine()["reason"][0]


@pytest.mark.parametrize("point", ["before-quarantine-commit", "before-commit", "mid-write"])
def test_injected_failure_leaves_no_partial_version(store, tmp_path, monkeypatch, point):
    write_jsonl(tmp_path / "a.jsonl", episodes(2))
    ingest_logs([str(tmp_path / "a.jsonl")], "toy", store)
    rows = [*episodes(3, prefix="b"), {"episode_id": "junk"}]
    write_jsonl(tmp_path / "b.jsonl", rows)
    monkeypatch.setenv("FORESIGHT_FAULT", point)
    monkeypatch.setenv("FORESIGHT_SCRATCH", str(tmp_path / "scratch"))
    # inside Delta's writer the fault arrives wrapped in deltalake's own error
    expected = DeltaError if point == "mid-write" else InjectedFault
    with pytest.raises(expected, match="injected fault"):
        ingest_logs([str(tmp_path / "b.jsonl")], "toy", store)
    assert list((tmp_path / "scratch").iterdir()) == []  # its staged files are gone
    table = DatasetTable(store, "toy")
    assert table.latest_version() == 0
    assert open_dataset("toy", store).collect().height == 30
    assert table.quarantine().height == 0  # the failed ingest's rejects stay invisible
    monkeypatch.delenv("FORESIGHT_FAULT")
    retry = ingest_logs([str(tmp_path / "b.jsonl")], "toy", store)
    assert (retry.version, retry.accepted, retry.quarantined) == (1, 45, 1)
    assert DatasetTable(store, "toy").quarantine().height == 1


@pytest.mark.slow  # an ingest process killed mid-write, per store
def test_killed_ingest_process_leaves_no_partial_version(store, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", episodes(2))
    ingest_logs([str(tmp_path / "a.jsonl")], "toy", store)
    write_jsonl(tmp_path / "b.jsonl", episodes(40, prefix="b"))
    env = {
        **os.environ,
        "FORESIGHT_FAULT": "kill:mid-write",
        "FORESIGHT_STORE": store.root,
        "FORESIGHT_LEASE_TTL": "2",  # the killed holder's lease lapses soon
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "foresight.pipelines.cli",
            "ingest",
            str(tmp_path / "b.jsonl"),
            "--dataset",
            "toy",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 137, proc.stderr
    assert DatasetTable(store, "toy").latest_version() == 0
    assert open_dataset("toy", store).collect().height == 30
    retry = ingest_logs([str(tmp_path / "b.jsonl")], "toy", store)
    assert retry.version == 1 and retry.accepted == 600


def test_spec_is_inferred_then_enforced(store, tmp_path):
    write_jsonl(tmp_path / "a" / "a.jsonl", episodes(2), with_spec=False)
    first = ingest_logs([str(tmp_path / "a")], "toy", store)
    assert first.spec_origin.startswith("inferred")
    assert first.spec["agents"] == {"a0": OBS, "a1": OBS, "a2": OBS}
    wide = episode_rows("wide")
    for row in wide:
        row["obs"] = row["obs"] + [0.0]
    write_jsonl(tmp_path / "b" / "b.jsonl", wide, with_spec=False)
    second = ingest_logs([str(tmp_path / "b")], "toy", store)
    assert second.accepted == 0 and second.quarantined == 15 and second.version is None
    assert DatasetTable(store, "toy").quarantine().height == 15  # quarantine-only ingest
    # A spec that contradicts the dataset's is refused before anything is read.
    bad_spec = spec().to_dict()
    bad_spec["agents"]["a0"] = 7
    (tmp_path / "bad_spec.json").write_text(json.dumps(bad_spec))
    with pytest.raises(IngestError, match="agent 'a0' observation size 7 != dataset's 4"):
        ingest_logs([str(tmp_path / "b")], "toy", store, spec=str(tmp_path / "bad_spec.json"))


def _json_list(col: str) -> pl.Expr:
    items = pl.col(col).list.eval(pl.element().cast(pl.String)).list.join(", ")
    return pl.format("[{}]", items).alias(col)


def test_parquet_csv_and_gzip_sources(store, tmp_path):
    rows = episodes(2, prefix="pq")
    (tmp_path / "logs").mkdir()
    pl.DataFrame(rows).write_parquet(tmp_path / "logs" / "p.parquet")
    csv_rows = episodes(2, prefix="csv")
    csv = pl.DataFrame(csv_rows).with_columns(_json_list("obs"))
    csv.write_csv(tmp_path / "logs" / "c.csv")
    gz_rows = episodes(2, prefix="gz")
    with gzip.open(tmp_path / "logs" / "g.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in gz_rows)
    (tmp_path / "logs" / SPEC_FILENAME).write_text(spec().to_json())
    broken = csv_rows[:3]
    broken_csv = pl.DataFrame(broken).with_columns(
        _json_list("obs"),
        pl.col("step").cast(pl.String).replace("0", "zero"),
    )
    broken_csv.write_csv(tmp_path / "logs" / "d.csv")
    result = ingest_logs([str(tmp_path / "logs")], "toy", store)
    assert result.accepted == 90
    assert result.quarantined == 3
    reasons = DatasetTable(store, "toy").quarantine()["reason"].to_list()
    assert sum(r.startswith("wrong type for 'step'") for r in reasons) == 3
    frame = open_dataset("toy", store).collect()
    assert {e[:2] for e in frame["episode_id"]} == {"pq", "cs", "gz"}


def test_s3_prefix_as_source(s3_store, tmp_path):
    rows = episodes(3)
    local = write_jsonl(tmp_path / "l" / "a.jsonl", rows)
    fs = s3_store.fs
    fs.upload(str(local), s3_store.landing_uri("toy", "a.jsonl"))
    fs.upload(str(tmp_path / "l" / SPEC_FILENAME), s3_store.landing_uri("toy", SPEC_FILENAME))
    result = ingest_logs([s3_store.landing_uri("toy")], "toy", s3_store)
    assert result.accepted == 45 and result.version == 0
    assert result.files[0]["uri"] == s3_store.landing_uri("toy", "a.jsonl")


def test_clear_errors_for_bad_sources(store, tmp_path):
    with pytest.raises(IngestError, match="source not found"):
        ingest_logs([str(tmp_path / "missing")], "toy", store)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(IngestError, match="unsupported file type"):
        ingest_logs([str(tmp_path / "notes.txt")], "toy", store)
    with pytest.raises(ValueError, match="invalid dataset name"):
        ingest_logs([str(tmp_path / "notes.txt")], "bad@name", store)


def test_commit_whose_read_back_fails_is_reported_as_committed(store, tmp_path, monkeypatch):
    """The dataset commit lands, then every read of the table fails (the store went away):
    the ingest reports the version it committed, with a note, instead of failing."""
    import deltalake

    write_jsonl(tmp_path / "a.jsonl", episodes(2))
    table_uri = DatasetTable(store, "toy").uri
    real_write, real_table = deltalake.write_deltalake, deltalake.DeltaTable
    broken = {"on": False}

    def write(uri, *args, **kwargs):
        real_write(uri, *args, **kwargs)
        if str(uri) == table_uri:
            broken["on"] = True

    class Unreachable(real_table):
        def __init__(self, uri, *args, **kwargs):
            if broken["on"] and str(uri) == table_uri:
                raise OSError(f"connection reset reading {uri}")
            super().__init__(uri, *args, **kwargs)

    monkeypatch.setattr(deltalake, "write_deltalake", write)
    monkeypatch.setattr(deltalake, "DeltaTable", Unreachable)
    result = ingest_logs([str(tmp_path / "a.jsonl")], "toy", store)
    assert result.version == 0 and result.accepted == 30
    assert any("reading the new version back failed" in n for n in result.notes), result.notes
    monkeypatch.undo()
    table = DatasetTable(store, "toy")
    assert table.latest_version() == 0
    assert table.commit_meta(0)["ingest_id"] == result.ingest_id
