"""The flywheel as one flow: a real service plays and records, the Dagster jobs ingest and
retrain on a local instance, the gates decide, the service swaps promoted versions in.

The model and reactive gates are tested on their own (tests/training/test_gates.py,
tests/pipelines/test_model_assets.py) and are held open here: 3-step models cannot pass them.
The gate under test is the last one, the candidate against production in closed loop. Its
arena is real; the in-process "anticipatory" team plays as a scripted anticipating
controller for the model versions listed in GOOD and at random for any other, so a round's
candidate is better, equal or worse than production by construction.
"""

from __future__ import annotations

import dagster as dg
import pytest

from foresight.datasets import ingest_logs
from foresight.datasets.sources.generate import generate_episodes
from foresight.pipelines import model_assets
from foresight.pipelines.cli import main
from foresight.pipelines.flywheel import flywheel_job
from foresight.pipelines.promotion import CHECK, compare_with_production
from foresight.pipelines.resources import ForesightStore
from foresight.training.agents import arena
from foresight.training.loop import workflow
from foresight.training.registry import ModelRegistry
from tests.pipelines.test_model_assets import TINY, TINY_PEER
from tests.serving.helpers import TINY_BEHAVIOR, TINY_WORLD, register_untrained, spread_spec


def production_store(store, tmp_path):
    """``spread@0`` (scripted logs) and untrained world@1 / behavior@1 at production."""
    generate_episodes(
        env="simple_spread", episodes=12, policy="mixed", out=str(tmp_path / "logs"), seed=5
    )
    ingest_logs([str(tmp_path / "logs")], "spread", store)
    for kind, config in (("world", TINY_WORLD), ("behavior", TINY_BEHAVIOR)):
        register_untrained(store, kind, spread_spec(), config, dataset="spread@0")
    return store


def rigged_gates(monkeypatch, good: set[int]) -> None:
    monkeypatch.setattr(workflow, "quality_gate", lambda kind, result: (True, []))
    monkeypatch.setattr(model_assets, "beats_reactive", lambda result, against: (True, []))
    scripted = arena.DEFAULT_FACTORIES["scripted-anticipation"]
    random = arena.DEFAULT_FACTORIES["random"]

    def anticipatory(env, models):
        version = models.world_card.version if models.world_card else None
        return (scripted if version in good else random)(env, models)

    monkeypatch.setitem(arena.DEFAULT_FACTORIES, "anticipatory", anticipatory)


def check_evaluations(instance: dg.DagsterInstance, name: str) -> list:
    """What the Dagster UI shows of check ``name``: its evaluations stored in the instance."""
    out = []
    for run in instance.get_runs():
        for record in instance.all_logs(
            run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ):
            evaluation = record.dagster_event.event_specific_data
            if evaluation.check_name == name:
                out.append(evaluation)
    return out


@pytest.mark.slow
def test_rounds_promote_a_better_candidate_refuse_a_worse_one_and_reload(
    store, tmp_path, monkeypatch
):
    production_store(store, tmp_path)
    rigged_gates(monkeypatch, good={1, 2})  # round 0's world@2 ties production; world@3 loses
    instance = dg.DagsterInstance.ephemeral()
    config = {
        "rounds": 2,
        "episodes": 2,
        "gate_episodes": 6,
        "dataset": "spread",
        "train": TINY,
        "offline_rl": TINY_PEER,
        "reload_seconds": 0.5,
    }
    run = flywheel_job.execute_in_process(
        run_config={"ops": {"flywheel_rounds": {"config": config}}},
        instance=instance,
        resources={"foresight_store": ForesightStore.of(store)},
    )
    assert run.success
    result = run.output_for_node("flywheel_rounds")
    first, second = result["rounds"]

    # round 0: served world@1, recorded 2 episodes; ingested as spread@1; world@2 promoted
    assert first["models"] == {"world": "world@1", "behavior": "behavior@1"}
    assert first["arena"]["recorded"] == 2
    assert first["dataset_version"] == "spread@1"
    assert first["episodes"] == 14 and first["served_share"] == pytest.approx(2 / 14)
    assert first["gate"]["verdict"] == "promoted"
    assert first["gate"]["production"] == {"world": "world@2", "behavior": "behavior@2"}
    # the same server process now serves them: swapped in by its alias polling
    assert second["models"] == {"world": "world@2", "behavior": "behavior@2"}
    assert first["reload_seconds"] is not None

    # round 1: trained on spread@2 (what round 0's models played), refused in closed loop
    assert second["dataset_version"] == "spread@2" and second["episodes"] == 16
    gate = second["gate"]
    assert gate["verdict"] == "refused"
    assert gate["failed"] == [f"closed_loop_evaluation.{CHECK}"]
    numbers = gate["checks"][f"closed_loop_evaluation.{CHECK}"]
    assert numbers["candidate_models"] == "world@3, behavior@3"
    assert numbers["production_models"] == "world@2, behavior@2"
    assert numbers["candidate_mean_return"] < numbers["production_mean_return"]
    assert numbers["difference_mean"] < 0
    registry = ModelRegistry(store)
    assert registry.aliases("world")["production"] == 2  # production stayed where it was
    assert registry.aliases("world")["staging"] == 3
    assert result["final"]["models"] == {"world": "world@2", "behavior": "behavior@2"}

    # the numbers are in the instance (the Dagster UI): one evaluation a round
    [passed, refused] = sorted(check_evaluations(instance, CHECK), key=lambda e: not e.passed)
    assert passed.passed and not refused.passed
    assert refused.metadata["difference_mean"].value == pytest.approx(numbers["difference_mean"])
    jobs = sorted(r.job_name for r in instance.get_runs())
    assert jobs == ["flywheel_job", "ingest_job", "ingest_job", "train_job", "train_job"]
    assert store.fs.exists(result["files"]["png"])


def test_the_check_passes_without_production_and_when_the_candidate_is_production(tmp_path):
    from foresight.datasets.storage import Store

    store = Store(str(tmp_path / "store"))
    for kind, config in (("world", TINY_WORLD), ("behavior", TINY_BEHAVIOR)):
        register_untrained(store, kind, spread_spec(), config, dataset="spread@0", promote=None)
    assert compare_with_production(store, "simple_spread", 2)["failures"] == [
        "no world and behavior models at @staging"
    ]
    for kind in ("world", "behavior"):
        ModelRegistry(store).promote(f"{kind}@1", "staging")
    assert compare_with_production(store, "simple_spread", 2)["reason"] == (
        "no production models yet"
    )
    for kind in ("world", "behavior"):
        ModelRegistry(store).promote(f"{kind}@1", "production")
    report = compare_with_production(store, "simple_spread", 2)
    assert report["passed"] and report["reason"] == "the candidate is production"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "nope", "--rounds", "1"], "unknown dataset 'nope'"),
        (["--dataset", "spread", "--rounds", "0"], "--rounds must be >= 1, got 0"),
        (["--dataset", "../x", "--rounds", "1"], "--dataset:"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.setenv("FORESIGHT_STORE", str(tmp_path / "store"))
    assert main(["flywheel", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("foresight flywheel: error: ") and message in err
    assert "\n" not in err


def test_no_production_models_is_one_clear_line(tmp_path, monkeypatch, capsys):
    from foresight.datasets.storage import Store

    store = Store(str(tmp_path / "store"))
    generate_episodes(env="simple_spread", episodes=2, policy="mixed", out=str(tmp_path / "l"))
    ingest_logs([str(tmp_path / "l")], "spread", store)
    monkeypatch.setenv("FORESIGHT_STORE", store.root)
    assert main(["flywheel", "--dataset", "spread", "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert "no production models to serve" in err and err.count("\n") == 1
    register_untrained(store, "world", spread_spec(), TINY_WORLD, dataset="other@0")
    register_untrained(store, "behavior", spread_spec(), TINY_BEHAVIOR, dataset="other@0")
    assert main(["flywheel", "--dataset", "spread", "--rounds", "1"]) == 2
    assert "was trained on 'other', not 'spread'" in capsys.readouterr().err


def test_the_flywheel_jobs_config_is_the_dataclass():
    """One declaration: the Dagster job's fields, defaults and help are FlywheelConfig's."""
    from dataclasses import fields

    from foresight.pipelines.flywheel import FlywheelConfig, FlywheelJobConfig
    from foresight.training.loop.options import field_docs

    declared = FlywheelJobConfig.model_fields
    assert list(declared) == [f.name for f in fields(FlywheelConfig)]
    for name, value in vars(FlywheelConfig()).items():
        assert declared[name].get_default(call_default_factory=True) == value, name
        assert declared[name].description == field_docs(FlywheelConfig)[name], name
