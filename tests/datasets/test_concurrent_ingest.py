"""Concurrent ingests into one dataset end as some serial order would: real `foresight ingest`
processes started together, several rounds, on a local folder and on S3 (issue 11 §1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from foresight.datasets import DatasetTable, ingest_logs, open_dataset
from foresight.datasets.catalog import META_KEY
from tests.datasets.helpers import episode_rows, write_jsonl

# real concurrent processes, servers or faults, several rounds: the whole suite runs them
pytestmark = pytest.mark.slow

PROCESSES = 3
ROUNDS = 3


def _start_ingest(store, source: str, extra_env: dict | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "FORESIGHT_FAULT"}
    env.update({"FORESIGHT_STORE": store.root, **(extra_env or {})})
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "foresight.pipelines.cli",
            "ingest",
            source,
            "--dataset",
            "toy",
            "--json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ingest_together(store, sources: list[str]) -> list[dict]:
    """Start one CLI ingest per source at once; their parsed --json reports."""
    procs = [_start_ingest(store, s) for s in sources]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    return reports


def _check_serial_state(store, reports: list[dict]) -> None:
    """No key twice, each printed version is the commit of that ingest, counts are true."""
    table = DatasetTable(store, "toy")
    frame = open_dataset("toy", store).collect()
    keys = frame.select("episode_id", "step", "agent_id")
    assert keys.is_duplicated().sum() == 0, "duplicate (episode_id, step, agent_id) keys"
    by_ingest = {c[META_KEY]["ingest_id"]: c for c in table.history if META_KEY in c}
    versions = [r["version"] for r in reports if r["version"] is not None]
    assert len(versions) == len(set(versions)), f"a version printed twice: {versions}"
    quarantine = table.quarantine()
    for report in reports:
        assert report["read"] == report["accepted"] + report["quarantined"], report
        q_rows = quarantine.filter(pl.col("ingest_id") == report["ingest_id"]).height
        assert q_rows == report["quarantined"], report
        if report["version"] is None:
            assert report["accepted"] == 0 and report["ingest_id"] not in by_ingest
            continue
        commit = by_ingest[report["ingest_id"]]
        assert commit["version"] == report["version"], (commit["version"], report)
        added = int(commit["operationMetrics"]["num_added_rows"])
        assert added == report["accepted"], report
    # Every checksum is in the ledger once.
    checksums = Counter(f["sha256"] for m in table.completed_ingests() for f in m["files"])
    assert all(n == 1 for n in checksums.values()), checksums


def test_overlapping_episodes_from_concurrent_processes(store, tmp_path):
    """Each file has its own episodes and two shared ids: one ingest keeps the shared ones,
    the others quarantine them as already in the dataset."""
    for round_ in range(ROUNDS):
        sources = []
        for p in range(PROCESSES):
            rows = [
                row
                for e in range(3)
                for row in episode_rows(f"r{round_}-own{p}-{e}", steps=6, seed=p)
            ]
            rows += [
                row for e in range(2) for row in episode_rows(f"r{round_}-shared{e}", 6, seed=p)
            ]
            sources.append(str(write_jsonl(tmp_path / f"r{round_}" / f"p{p}.jsonl", rows)))
        reports = _ingest_together(store, sources)
        _check_serial_state(store, reports)
        shared_rows = 2 * 6 * 3
        # Exactly one process kept the shared episodes, the others quarantined all of them.
        assert sum(r["accepted"] for r in reports) == PROCESSES * 3 * 18 + shared_rows
        assert sorted(r["quarantined"] for r in reports) == [0] + [shared_rows] * (PROCESSES - 1)
        reasons = DatasetTable(store, "toy").quarantine()["reason"]
        assert reasons.str.contains(
            f"episode 'r{round_}-shared0' is already in the dataset"
        ).sum() == 6 * 3 * (PROCESSES - 1)
        frame = open_dataset("toy", store).collect()
        assert frame.filter(pl.col("episode_id").str.starts_with(f"r{round_}-")).height == (
            sum(r["accepted"] for r in reports)
        )


def test_same_file_from_concurrent_processes_is_ingested_once(store, tmp_path):
    for round_ in range(ROUNDS):
        rows = [row for e in range(4) for row in episode_rows(f"same{round_}-{e}", steps=5)]
        source = str(write_jsonl(tmp_path / f"r{round_}" / "a.jsonl", rows))
        reports = _ingest_together(store, [source] * PROCESSES)
        _check_serial_state(store, reports)
        committed = [r for r in reports if r["version"] is not None]
        assert len(committed) == 1, reports
        assert committed[0]["accepted"] == len(rows)
        for other in reports:
            if other is not committed[0]:
                assert other["already_ingested"] == [source] and other["read"] == 0, other
        assert open_dataset("toy", store).collect().height == len(rows) * (round_ + 1)


def _scratch_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("foresight-*") if p.is_dir())


def test_killed_ingest_leaves_a_lease_that_expires_and_staging_that_is_swept(store, tmp_path):
    """A holder killed mid-commit: the next ingest takes the stale lease over and sweeps the
    dead process's staging folder; its own failure-free run leaves no staging behind."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    rows = [row for e in range(40) for row in episode_rows(f"k{e}", steps=5)]
    source = str(write_jsonl(tmp_path / "k" / "a.jsonl", rows))
    env = {"FORESIGHT_FAULT": "kill:mid-write", "FORESIGHT_LEASE_TTL": "2", "TMPDIR": str(scratch)}
    proc = _start_ingest(store, source, env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 137, err
    assert _scratch_dirs(scratch), "the killed ingest should have left its staging"
    assert not DatasetTable(store, "toy").exists()
    # A second process: waits out the dead holder's lease, sweeps, commits.
    proc = _start_ingest(store, source, {"TMPDIR": str(scratch)})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["version"] == 0 and report["accepted"] == len(rows)
    assert _scratch_dirs(scratch) == []
    # In process too: nothing staged stays after an ingest.
    again = ingest_logs([source], "toy", store)
    assert again.already_ingested == [source]


def test_overlapping_file_sets_are_each_ingested_once(store, tmp_path):
    """Ingests of [x, y], [y, z], [z, x] at once: each file goes in once, whoever commits
    first; later ones drop the files committed meanwhile and keep the rest."""
    for round_ in range(2):
        names = "xyz"
        paths = {}
        for n in names:
            rows = [row for e in range(3) for row in episode_rows(f"o{round_}{n}{e}", steps=4)]
            paths[n] = str(write_jsonl(tmp_path / f"o{round_}" / f"{n}.jsonl", rows))
        groups = [("x", "y"), ("y", "z"), ("z", "x")]
        procs = []
        for group in groups:
            folder = tmp_path / f"o{round_}-{''.join(group)}"
            folder.mkdir()
            for n in group:
                (folder / f"{n}.jsonl").write_bytes(Path(paths[n]).read_bytes())
                (folder / "foresight_spec.json").write_bytes(
                    (Path(paths[n]).parent / "foresight_spec.json").read_bytes()
                )
            procs.append(_start_ingest(store, str(folder)))
        reports = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            reports.append(json.loads(out))
        _check_serial_state(store, reports)
        assert sum(r["accepted"] for r in reports) == 3 * 3 * 4 * 3
        assert sum(len(r["files"]) for r in reports) == 3
        assert sum(len(r["already_ingested"]) for r in reports) == 3


def _hold_lease(root: str, env: dict, ttl: float, ready: str) -> None:
    """Take the lease, say so, then hang on to it (heartbeating) until killed."""
    import time

    os.environ.update(env)
    from foresight.datasets.lease import Lease
    from foresight.datasets.storage import Store

    Lease(Store(root), "leases/datasets/toy.json", ttl=ttl).acquire()
    Path(ready).write_text(str(os.getpid()))
    while True:
        time.sleep(1)


def test_lease_of_a_killed_holder_is_taken_over(store, tmp_path):
    """While the holder lives its heartbeat keeps the lease; once it is killed (-9) the lease
    stops changing and the next taker gets it after the holder's ttl. Two rounds."""
    import multiprocessing as mp
    import signal
    import time

    from foresight.datasets.lease import Lease, LeaseBusy

    env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "FORESIGHT_S3"))}
    ctx = mp.get_context("spawn")
    for round_ in range(2):
        ready = tmp_path / f"ready{round_}"
        holder = ctx.Process(target=_hold_lease, args=(store.root, env, 2.0, str(ready)))
        holder.start()
        while not ready.exists():
            assert holder.is_alive()
            time.sleep(0.05)
        try:
            # Longer than the ttl: only the heartbeat keeps the lease from looking abandoned.
            with pytest.raises(LeaseBusy, match=rf"pid {holder.pid}\b"):
                Lease(store, "leases/datasets/toy.json", ttl=2.0, wait=3.0).acquire()
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.join()
        taker = Lease(store, "leases/datasets/toy.json", ttl=2.0, wait=60.0).acquire()
        try:
            assert taker.took_over is not None and taker.took_over["pid"] == holder.pid
        finally:
            taker.release()
        # Released properly: the next one gets it at once, taking nothing over.
        with Lease(store, "leases/datasets/toy.json", ttl=2.0, wait=60.0) as again:
            assert again.took_over is None


def test_ingest_waiting_on_a_live_holder_gives_up_with_a_clear_error(store, tmp_path):
    """A holder that stays alive (heartbeating) past FORESIGHT_LEASE_WAIT: the CLI says which
    dataset is busy, exit 2, nothing written."""
    import multiprocessing as mp
    import signal
    import time

    rows = episode_rows("w0", steps=3)
    source = str(write_jsonl(tmp_path / "w" / "a.jsonl", rows))
    env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "FORESIGHT_S3"))}
    ready = tmp_path / "ready"
    holder = mp.get_context("spawn").Process(
        target=_hold_lease, args=(store.root, env, 1.0, str(ready))
    )
    holder.start()
    try:
        while not ready.exists():
            assert holder.is_alive()
            time.sleep(0.05)
        proc = _start_ingest(store, source, {"FORESIGHT_LEASE_WAIT": "3"})
        _out, err = proc.communicate(timeout=300)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.join()
    assert proc.returncode == 2, err
    assert "dataset 'toy': another ingest holds it" in err and "Traceback" not in err, err
    assert not DatasetTable(store, "toy").exists()
