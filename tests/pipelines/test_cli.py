"""The `foresight` command line, end to end: generate, ingest --json, storage up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

from foresight.datasets.storage import S3Config, Store
from foresight.pipelines.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_then_ingest_json(store, tmp_path, capsys):
    out = str(tmp_path / "logs") if not store.is_s3 else store.uri("incoming")
    code, stdout, err = run_cli(
        capsys,
        "generate",
        "--env",
        "simple_spread",
        "--episodes",
        "6",
        "--policy",
        "mixed",
        "--out",
        out,
        "--seed",
        "3",
        "--episodes-per-file",
        "4",
        "--json",
    )
    assert code == 0, err
    generated = json.loads(stdout)
    assert generated["episodes"] == 6 and generated["rows"] == 6 * 25 * 3
    assert len(generated["files"]) == 2

    code, stdout, err = run_cli(capsys, "ingest", out, "--dataset", "spread", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    for key in ("read", "accepted", "quarantined", "already_ingested", "version"):
        assert key in result
    assert (result["read"], result["accepted"], result["quarantined"]) == (450, 450, 0)
    assert result["version"] == 0 and result["already_ingested"] == []
    assert result["spec"]["agents"] == {f"agent_{i}": 18 for i in range(3)}

    code, stdout, err = run_cli(capsys, "ingest", out, "--dataset", "spread", "--json")
    again = json.loads(stdout)
    assert again["version"] is None and len(again["already_ingested"]) == 2

    code, stdout, _ = run_cli(capsys, "ingest", out, "--dataset", "spread")
    assert "no new version" in stdout and "already ingested" in stdout


def test_errors_are_one_line_with_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FORESIGHT_STORE", str(tmp_path / "store"))
    code, _, err = run_cli(capsys, "ingest", str(tmp_path / "nothing"), "--dataset", "x")
    assert code == 2 and "source not found" in err and err.count("\n") == 1
    code, _, err = run_cli(
        capsys, "generate", "--env", "nope", "--episodes", "1", "--out", str(tmp_path)
    )
    assert code == 2 and "simple_spread" in err


@pytest.mark.slow  # starts and stops a real S3 server
def test_storage_up_serves_s3_until_stopped(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "foresight.pipelines.cli",
            "storage",
            "up",
            "--dir",
            str(tmp_path / "s3"),
            "--bucket",
            "dev",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        exports = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.strip().startswith("export "):
                key, _, value = line.strip()[len("export ") :].partition("=")
                exports[key] = value
            if "Ctrl-C" in line or not line:
                break
        assert exports["FORESIGHT_STORE"] == "s3://dev/foresight"
        store = Store(
            exports["FORESIGHT_STORE"],
            S3Config(
                exports["FORESIGHT_S3_ENDPOINT"],
                exports["AWS_ACCESS_KEY_ID"],
                exports["AWS_SECRET_ACCESS_KEY"],
            ),
        )
        store.ensure()
        store.fs.write_bytes(store.uri("hello.json"), b'{"ok": true}')
        assert json.loads(store.fs.read_bytes(store.uri("hello.json"))) == {"ok": True}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_open_dataset_gives_lazyframe(store, tmp_path, capsys):
    out = str(tmp_path / "logs")
    run_cli(
        capsys,
        "generate",
        "--env",
        "simple_tag",
        "--episodes",
        "2",
        "--policy",
        "greedy",
        "--out",
        out,
    )
    run_cli(capsys, "ingest", out, "--dataset", "tag")
    from foresight import datasets

    frame = datasets.open_dataset("tag@0", store)
    assert isinstance(frame, pl.LazyFrame)
    sizes = frame.group_by("agent_id").agg(pl.col("obs").list.len().first()).collect()
    assert dict(sizes.iter_rows()) == {
        "adversary_0": 16,
        "adversary_1": 16,
        "adversary_2": 16,
        "agent_0": 14,
    }


def test_models_list_names_a_truncated_card_and_lists_the_rest(tmp_path, capsys, monkeypatch):
    import torch

    from foresight.training.registry import ModelRegistry

    store = Store(str(tmp_path / "store"))
    monkeypatch.setenv("FORESIGHT_STORE", store.root)
    registry = ModelRegistry(store)
    for _ in range(2):
        registry.register("world", {"w": torch.zeros(2)}, {"kind": "world"})
    store.fs.write_bytes(store.uri("models", "world", "2", "card.json"), b'{"name": "wor')
    code, stdout, err = run_cli(capsys, "models", "list", "--json")
    assert code == 0
    assert [(r["model"], r["version"]) for r in json.loads(stdout)] == [("world", 1)]
    assert "warning: skipped" in err and "world@2" in err
