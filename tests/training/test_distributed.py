"""Distributed training: how an epoch is dealt across ranks, and a real 2-process gloo run
through ``foresight train --nproc 2`` (torchrun), checked from the outside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

from foresight.datasets import ingest_logs
from foresight.datasets.catalog import open_dataset
from foresight.datasets.sources.generate import generate_episodes
from foresight.datasets.storage import Store
from foresight.training.loop.train import TRACE_ENV, rank_batches
from foresight.training.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("n", "batch", "world"),
    [(10, 4, 1), (10, 4, 2), (9, 4, 2), (13, 4, 4), (17, 8, 3), (5, 5, 5), (64, 64, 2)],
)
def test_every_row_goes_to_exactly_one_rank_and_ranks_run_the_same_steps(n, batch, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shares = [rank_batches(order, batch, r, world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1, "every rank runs the same number of steps"
    assert all(b.numel() > 0 for s in shares for b in s), "no rank gets an empty batch"
    seen = torch.cat([b for s in shares for b in s])
    assert sorted(seen.tolist()) == list(range(n)), "each row exactly once"
    for step in range(len(shares[0])):  # a global batch is at most batch_size (+ a merged tail)
        size = sum(s[step].numel() for s in shares)
        assert size <= batch + world - 1
    if world == 1:
        assert [b.tolist() for b in shares[0]] == [
            order[i : i + batch].tolist() for i in range(0, n, batch)
        ]


def test_batch_smaller_than_world_is_refused():
    with pytest.raises(ValueError, match="smaller than"):
        rank_batches(torch.arange(10), 1, 0, 2)


@pytest.mark.slow
def test_two_gloo_processes_train_one_model(tmp_path):
    store = Store(str(tmp_path / "store"))
    logs = tmp_path / "logs"
    generate_episodes(env="simple_spread", episodes=24, policy="mixed", out=str(logs), seed=5)
    ingest_logs([str(logs)], "spread", store)
    trace = tmp_path / "trace"
    trace.mkdir()
    env = {
        **os.environ,
        "FORESIGHT_STORE": store.root,
        "FORESIGHT_RUNS": str(tmp_path / "runs"),
        TRACE_ENV: str(trace),
        "CI": "true",
    }
    epochs = 3
    cmd = [sys.executable, "-m", "foresight.pipelines.cli", "train", "world", "--dataset", "spread"]
    cmd += ["--epochs", str(epochs), "--batch-size", "64", "--device", "cpu", "--nproc", "2"]
    proc = subprocess.run([*cmd, "--json"], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)  # one JSON document: only rank 0 reports
    assert out["model"] == "world@1" and out["dataset"] == "spread@0"

    # One registered version, and its history shows the loss going down.
    registry = ModelRegistry(store)
    assert registry.version_numbers("world") == [1]
    history = registry.resolve("world@1").card["training"]["history"]
    assert len(history) == epochs
    assert history[-1]["train/loss"] < history[0]["train/loss"]

    # Every training window once per epoch across the ranks, and the ranks in lockstep.
    split = json.loads((Path(store.root) / "models" / "world" / "1" / "split.json").read_text())
    frame = (
        open_dataset("spread", store)
        .filter(pl.col("episode_id").is_in(split["train"]))
        .select("episode_id", (pl.col("step") - pl.col("step").min().over("episode_id")))
        .unique()
        .collect()
    )
    expected = sorted(map(tuple, frame.rows()))
    traces = {
        r: [json.loads(x) for x in (trace / f"trace-rank{r}.jsonl").read_text().splitlines()]
        for r in (0, 1)
    }
    for epoch in range(epochs):
        a, b = traces[0][epoch], traces[1][epoch]
        assert a["epoch"] == b["epoch"] == epoch + 1
        windows_a = [tuple(w) for w in a["windows"]]
        windows_b = [tuple(w) for w in b["windows"]]
        assert windows_a and windows_b, "both ranks trained"
        assert not set(windows_a) & set(windows_b), "no window on both ranks"
        assert sorted(windows_a + windows_b) == expected, "every window exactly once"
        assert a["weights"] == b["weights"], "gradients are synchronized: identical weights"
