"""Test helper: the CLI chain generate -> ingest -> train world and behavior, in one store.

The hard-case tests (many agents, partial views) build their module fixtures with it, with
tiny training budgets and the CLI's model defaults.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from foresight.datasets.storage import Store
from foresight.pipelines.cli import main

QUICK = ["--epochs", "1", "--max-steps-per-epoch", "3", "--batch-size", "64", "--device", "cpu"]
"""Training flags small enough for a test: one epoch of three steps, on the CPU."""


def cli(*args: str) -> dict:
    """``foresight ARGS --json``, its parsed output (stdout redirected: module fixtures
    have no capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*args, "--json"])
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue())


def trained_store(root: Path, dataset: str, *generate: str, episodes: int = 12):
    """Yields (store, made, ingested, trained): ``episodes`` mixed episodes generated with
    the ``generate`` flags into ``root/logs``, ingested as ``dataset``, and a world and a
    behavior model trained on it (``trained``: kind -> the train command's output). The
    CLI runs against this store, and its checkpoints go under ``root/runs``, until the
    generator is closed."""
    store = Store(str(root / "store"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORESIGHT_STORE", store.root)
        mp.setenv("FORESIGHT_RUNS", str(root / "runs"))
        made = cli(
            "generate", "--env", "simple_spread", *generate, "--episodes", str(episodes),
            "--policy", "mixed", "--out", str(root / "logs"),
        )  # fmt: skip
        ingested = cli("ingest", str(root / "logs"), "--dataset", dataset)
        trained = {
            kind: cli("train", kind, "--dataset", dataset, *QUICK) for kind in ("world", "behavior")
        }
        yield store, made, ingested, trained
