"""`make demo` (pipelines/demo.py), run end to end at a tiny size in a subprocess.

Every stage runs for real: generation into landing/, the landing sensor and the Dagster
ingest job, training and registering both models, the served models queried through the
client, and the arena. Only the sizes are small (a few episodes, one short epoch).
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
