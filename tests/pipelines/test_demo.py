"""`make demo` (pipelines/demo.py), run end to end at a tiny size in a subprocess.

Every stage runs for real: generation into landing/, the landing sensor and the Dagster
ingest job, train_job (both models and their gates), the arena, the served models queried
through the client. Only the sizes are small (a few episodes, one short epoch), so the
gates refuse and there is no flywheel round; the round is tested on production models
below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end_tiny(tmp_path):
    store = tmp_path / "store"
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"DAGSTER_HOME", "FORESIGHT_STORE"}},
        "FORESIGHT_STORE": str(store),
    }
    cmd = [sys.executable, "-m", "foresight.pipelines.demo", "--episodes", "12", "--fast"]
    cmd += ["--epochs", "1", "--arena-episodes", "2"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for stage in range(1, 8):  # every numbered stage of the demo printed its banner
        assert f"== {stage}." in out, out[-3000:]
    assert "service stopped" in out and "scripted-anticipation" in out
    # One-epoch models fail their gates: train_job stops, the demo says so and goes on with
    # the registered models; without production models there is no flywheel round.
    assert "stopped; failed checks: " in out and "beats_baselines" in out
    assert "the flywheel needs them; skipped" in out
    # The local Dagster instance holds what ran, for `dagster dev` to show.
    import dagster as dg

    instance = dg.DagsterInstance.from_config(str(store / "dagster"))
    assert sorted(r.job_name for r in instance.get_runs()) == ["ingest_job", "train_job"]
    # What it claims is in the store: the dataset version and both registered models.
    assert (store / "lake" / "spread" / "_delta_log").is_dir()
    for kind in ("world", "behavior"):
        card = json.loads((store / "models" / kind / "1" / "card.json").read_text())
        assert card["dataset"]["resolved"] == "spread@0"
        assert card["training"]["epochs_run"] == 1

    # Run again: the seeded landing files are already ingested, nothing new is added.
    again = subprocess.run(
        [sys.executable, "-m", "foresight.pipelines.demo", "--episodes", "12", "--no-train"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "not regenerating" in again.stdout


@pytest.mark.slow
def test_the_demo_flywheel_round_runs_flywheel_job_and_says_what_changed(
    store, tmp_path, monkeypatch, capsys
):
    import dagster as dg

    from foresight.pipelines import demo
    from foresight.training.registry import ModelRegistry
    from tests.pipelines.test_flywheel_rounds import production_store, rigged_gates

    production_store(store, tmp_path)
    rigged_gates(monkeypatch, good={1, 2})  # the candidate world@2 ties production: promoted
    instance = dg.DagsterInstance.ephemeral()
    result = demo.flywheel_round(store, "spread", instance, fast=True, epochs=1, episodes=2)
    out = capsys.readouterr().out
    assert "== 7. one flywheel round" in out
    assert (
        "what changed: spread@0 -> spread@1, +2 episodes played through the service (served "
        "episodes are now 14% of its 14); candidates world@2, behavior@2 promoted; production "
        "world@1, behavior@1 -> world@2, behavior@2"
    ) in out
    [r] = result["rounds"]
    assert r["gate"]["production"] == {"world": "world@2", "behavior": "behavior@2"}
    registry = ModelRegistry(store)
    for kind in ("world", "behavior"):  # fine-tuned from what was in production
        assert registry.resolve(f"{kind}@2").card.train_config["init_from"] == f"{kind}@1"
    assert result["final"]["models"] == {"world": "world@2", "behavior": "behavior@2"}
    assert sorted(r.job_name for r in instance.get_runs()) == [
        "flywheel_job",
        "ingest_job",
        "train_job",
    ]
