"""`foresight train offline-rl` and `foresight arena --offline-rl`, end to end on a small
simple_spread dataset: the card's closed-loop numbers next to random and greedy, the arena
loading the registered peer, and the flags that do not apply refused by name."""

from __future__ import annotations

import json

import pytest

from foresight.datasets.sources.generate import generate_episodes
from foresight.pipelines.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow  # two trainings, each with closed-loop episodes next to random and greedy
def test_train_offline_rl_then_play_it_in_the_arena(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FORESIGHT_STORE", str(tmp_path / "store"))
    logs = tmp_path / "logs"
    generate_episodes(env="simple_spread", episodes=8, policy="mixed", out=str(logs), seed=2)
    code, _, err = run_cli(capsys, "ingest", str(logs), "--dataset", "spread", "--json")
    assert code == 0, err

    code, stdout, err = run_cli(
        capsys, "train", "offline-rl", "--dataset", "spread", "--steps", "30", "--json"
    )
    assert code == 0, err
    trained = json.loads(stdout)
    assert trained["model"] == "offline-rl@1" and trained["dataset"] == "spread@0"
    assert trained["training"]["steps"] == 30
    assert set(trained["baselines"]) == {"random", "greedy"}
    assert "closed_loop/return" in trained["metrics"]
    assert "val/td_loss" in trained["metrics"]

    code, stdout, err = run_cli(
        capsys,
        "arena",
        "--env",
        "simple_spread",
        "--episodes",
        "2",
        "--controllers",
        "offline-rl,greedy",
        "--json",
    )
    assert code == 0, err
    arena = json.loads(stdout)
    assert arena["models"] == {"offline-rl": "offline-rl@1"}
    assert set(arena["controllers"]) == {"offline-rl", "greedy"}

    code, stdout, err = run_cli(
        capsys, "train", "offline-rl", "--dataset", "spread", "--steps", "10", "--cql-alpha", "0.5"
    )
    assert code == 0, err
    assert "registered offline-rl@2 (trained on spread@0, 10 steps" in stdout
    assert "quality gate" in stdout and "closed_loop/return" in stdout


def test_flags_of_another_kind_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FORESIGHT_STORE", str(tmp_path / "store"))
    code, _, err = run_cli(
        capsys, "train", "offline-rl", "--dataset", "x", "--epochs", "3", "--patience", "2"
    )
    assert code == 2 and "--epochs, --patience are not options of offline-rl training" in err
    code, _, err = run_cli(capsys, "train", "offline-rl", "--dataset", "x", "--nproc", "2")
    assert code == 2 and "--nproc is for the shared loop's families (world, behavior)" in err
    code, _, err = run_cli(capsys, "train", "world", "--dataset", "x", "--cql-alpha", "1")
    assert code == 2 and "--cql-alpha is not an option of world, behavior training" in err
    code, _, err = run_cli(capsys, "arena", "--offline-rl", "../x", "--controllers", "offline-rl")
    assert code == 2 and "--offline-rl" in err
