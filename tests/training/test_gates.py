"""The promotion gates: ``quality_gate`` (model against baselines) and ``beats_reactive``
(closed loop against the reactive teams), on hand-made results and on real ones."""

from __future__ import annotations

import math

import pytest

from foresight.datasets import ingest_logs
from foresight.datasets.storage import Store
from foresight.training.agents.arena import DEFAULT_FACTORIES, run_arena
from foresight.training.loop.train import TrainConfig
from foresight.training.loop.workflow import beats_reactive, quality_gate, train_and_register
from foresight.training.models.behavior_model import BehaviorModelConfig
from foresight.training.registry import ModelRegistry

from .conftest import make_frame

NAN = math.nan


def world_result(**model) -> dict:
    """A world evaluation where the model beats every baseline unless ``model`` says otherwise."""
    return {
        "model": {"mse": 0.01, "rollout_mse_10": 0.1, "nll": -2.0, **model},
        "baselines": {
            "persistence": {"mse": 0.05, "rollout_mse_10": 0.5, "nll": -1.0},
            "constant_velocity": {"mse": 0.04, "rollout_mse_10": 0.4, "nll": -1.2},
            "linear": {"mse": 0.02, "rollout_mse_10": 0.2, "nll": -3.0},
        },
    }


def behavior_result(nll: float = 1.0) -> dict:
    return {
        "model": {"nll": nll, "accuracy": 0.2},
        "baselines": {
            "marginal": {"nll": 1.6, "accuracy": 0.3},
            "repeat_last": {"nll": 1.3, "accuracy": 0.6},
            "context1": {"nll": 1.1, "accuracy": 0.5},
        },
    }


def test_a_world_model_that_beats_every_baseline_passes():
    # nll and accuracy are reported but are not headline metrics: linear's better nll is fine
    assert quality_gate("world", world_result()) == (True, [])
    assert quality_gate("behavior", behavior_result()) == (True, [])


@pytest.mark.parametrize(
    "model, refused",
    [
        ({"mse": 0.03}, ["mse: model 0.03 does not beat linear 0.02"]),
        ({"mse": 0.02}, ["mse: model 0.02 does not beat linear 0.02"]),  # a tie is no win
        ({"rollout_mse_10": 0.3}, ["rollout_mse_10: model 0.3 does not beat linear 0.2"]),
        (
            {"mse": 0.045},
            [
                "mse: model 0.045 does not beat constant_velocity 0.04",
                "mse: model 0.045 does not beat linear 0.02",
            ],
        ),
    ],
)
def test_a_world_model_worse_than_a_baseline_is_refused_naming_it(model, refused):
    assert quality_gate("world", world_result(**model)) == (False, refused)


@pytest.mark.parametrize("metric", ["mse", "rollout_mse_10"])
@pytest.mark.parametrize("value", [NAN, None])  # None: a NaN that went through a JSON card
def test_a_nan_or_missing_model_metric_is_refused(metric, value):
    passed, failures = quality_gate("world", world_result(**{metric: value}))
    assert not passed
    assert failures == [f"{metric}: model has no value (NaN or missing): cannot compare"]
    result = world_result()
    del result["model"][metric]
    assert quality_gate("world", result) == (False, failures)


def test_a_nan_baseline_is_refused_not_skipped():
    result = world_result()
    result["baselines"]["linear"]["rollout_mse_10"] = NAN
    assert quality_gate("world", result) == (
        False,
        ["rollout_mse_10: linear is NaN: cannot compare"],
    )
    result = behavior_result()
    result["baselines"]["context1"]["nll"] = None
    assert quality_gate("behavior", result) == (False, ["nll: context1 is NaN: cannot compare"])


def test_a_headline_metric_with_no_baseline_is_refused():
    result = world_result()
    for values in result["baselines"].values():
        del values["rollout_mse_10"]
    assert quality_gate("world", result) == (
        False,
        ["rollout_mse_10: no baseline reports it: nothing to beat"],
    )
    assert not quality_gate("behavior", {"model": {"nll": 0.1}, "baselines": {}})[0]


def test_the_behavior_gate_reads_nll_against_every_baseline():
    assert quality_gate("behavior", behavior_result(nll=1.2)) == (
        False,
        ["nll: model 1.2 does not beat context1 1.1"],
    )
    assert quality_gate("behavior", behavior_result(nll=NAN))[0] is False
    with pytest.raises(ValueError, match="model kind must be one of 'world', 'behavior'"):
        quality_gate("planner", behavior_result())  # type: ignore[arg-type]


PEER = (-70, -60, -50)
"""The offline-RL peer's (low, mean, high) where a test is about another team."""


def arena(**teams: tuple[float, float, float]) -> dict:
    """An arena result: team -> (low, mean, high)."""
    return {
        "controllers": {
            t: {"mean_return": mean, "ci95": (low, high)} for t, (low, mean, high) in teams.items()
        }
    }


def test_disjoint_intervals_above_every_reactive_team_pass():
    result = arena(
        anticipatory=(-40, -35, -30),
        greedy=(-60, -55, -50),
        bc=(-70, -60, -50),
        **{"offline-rl": (-45, -43, -41)},
    )
    assert beats_reactive(result) == (True, [])
    result["controllers"]["offline-rl"]["ci95"] = (-45, -30)  # the peer is not beaten
    assert beats_reactive(result) == (
        False,
        [
            "anticipatory -35.00 (95% CI low -40.00) does not beat offline-rl -43.00 (95% CI high -30.00)"
        ],
    )


@pytest.mark.parametrize(
    "greedy, beaten",
    [
        ((-60, -45, -29), False),  # overlaps: its high end above the anticipatory low end
        ((-50, -40, -30), False),  # the intervals touch: not disjoint
        ((-20, -10, 0), False),  # wholly above: the anticipatory team lost
        ((-60, -50, -30.01), True),  # just below: disjoint
    ],
)
def test_overlapping_intervals_are_no_win_even_with_a_better_mean(greedy, beaten):
    result = arena(
        anticipatory=(-30, -20, -10), greedy=greedy, bc=(-90, -80, -70), **{"offline-rl": PEER}
    )
    passed, failures = beats_reactive(result)
    assert passed is beaten
    assert len(failures) == (0 if beaten else 1), failures
    if not beaten:
        assert failures[0].startswith(
            "anticipatory -20.00 (95% CI low -30.00) does not beat greedy"
        )


@pytest.mark.parametrize("missing", ["anticipatory", "greedy", "bc", "offline-rl"])
def test_a_team_that_did_not_play_is_refused(missing):
    teams = {
        "anticipatory": (-30, -20, -10),
        "greedy": (-60, -50, -40),
        "bc": (-60, -50, -40),
        "offline-rl": PEER,
    }
    del teams[missing]
    passed, failures = beats_reactive(arena(**teams))
    assert not passed and failures == [f"{missing} did not play"]


def test_nan_returns_or_intervals_are_refused():
    good = {"greedy": (-60, -50, -40), "bc": (-60, -50, -40), "offline-rl": PEER}
    passed, failures = beats_reactive(arena(anticipatory=(NAN, NAN, NAN), **good))
    assert not passed and failures == ["anticipatory has a NaN return or interval: cannot compare"]
    passed, failures = beats_reactive(
        arena(
            anticipatory=(-30, -20, -10),
            greedy=(-60, -50, NAN),
            bc=(-60, -50, -40),
            **{"offline-rl": PEER},
        )
    )
    assert not passed and failures == ["greedy has a NaN return or interval: cannot compare"]


@pytest.mark.parametrize("anticipation, wins", [("scripted-anticipation", True), ("random", False)])
def test_the_gate_on_a_real_arena(anticipation, wins):
    # A small real arena: the "anticipatory" team is played by a scripted controller that
    # does anticipate the others (it beats greedy), or by a random one that does not.
    factories = {
        "anticipatory": DEFAULT_FACTORIES[anticipation],
        "bc": DEFAULT_FACTORIES["random"],
        "offline-rl": DEFAULT_FACTORIES["random"],
    }
    teams = ["greedy", "bc", "offline-rl", "anticipatory"]
    result = run_arena("simple_spread", 30, teams, factories=factories)
    passed, failures = beats_reactive(result)
    assert passed is wins, failures
    if not wins:
        assert any("does not beat greedy" in f for f in failures), failures


def test_a_trained_behavior_model_passes_its_own_gate(tmp_path):
    """Trained for real through the workflow, the tiny behavior model beats the marginal,
    repeat-last and context-1 baselines, and the card records the gate it passed."""
    frame, spec = make_frame(episodes=60, steps=15, seed=3)
    frame.write_parquet(tmp_path / "synthetic.parquet")
    store = Store(str(tmp_path / "store"))
    ingest_logs([str(tmp_path / "synthetic.parquet")], "synthetic", store, spec=spec)
    out = train_and_register(
        "behavior",
        "synthetic",
        store,
        TrainConfig(epochs=4, batch_size=64, lr=3e-3, device="cpu"),
        BehaviorModelConfig(d_model=16, context=4, expert_width=32),
        progress=False,
    )
    assert set(out["baselines"]) == {"marginal", "repeat_last", "context1"}
    assert out["quality_gate"] == {"passed": True, "failures": []}, out["baselines"]
    card = ModelRegistry(store).resolve(out["model"]).card
    assert card.quality_gate.passed is True
    assert quality_gate("behavior", {"model": card.metrics, "baselines": card.baselines})[0]
