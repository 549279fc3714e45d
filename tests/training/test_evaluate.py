import json
from pathlib import Path

import polars as pl
import pytest

from foresight.datasets.schema import ActionSpec, DatasetSpec
from foresight.training.data import build_tensors, gather_targets, gather_window, sample_rows
from foresight.training.evaluation.baselines import (
    ConstantVelocityBaseline,
    Kinematics,
    fit_world_baselines,
    mpe_kinematics,
)
from foresight.training.evaluation.evaluate import evaluate, rollout_mse, write_report
from foresight.training.loop.train import TrainConfig, train

from .conftest import make_frame
from .test_train import TINY_BEHAVIOR, TINY_WORLD

KIN = Kinematics(moves=[(2, 0, 1.0), (3, 1, 1.0)], dt=0.1, velocity=[0, 1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    frame, spec = make_frame(episodes=30, steps=14, seed=2)
    root = tmp_path_factory.mktemp("eval")
    config = TrainConfig(epochs=1, batch_size=64)
    world = train("world", frame, spec, config, TINY_WORLD, workdir=root / "w", progress=False)
    beh = train(
        "behavior",
        frame,
        spec,
        TrainConfig(epochs=3, batch_size=64, lr=1e-2),
        TINY_BEHAVIOR,
        workdir=root / "b",
        progress=False,
    )
    ctx1 = train(
        "behavior",
        frame,
        spec,
        TrainConfig(epochs=1, batch_size=64, context=1),
        TINY_BEHAVIOR,
        workdir=root / "b1",
        progress=False,
    )
    return frame, spec, world, beh, ctx1


def test_world_evaluation_has_the_same_metrics_for_model_and_baselines(trained, tmp_path):
    frame, spec, world, beh, _ = trained
    result = evaluate(
        "world",
        world.model,
        frame,
        spec,
        world.val_episode_ids,
        behavior=beh.model,
        kinematics=KIN,
        n_samples=4,
        max_starts=64,
    )
    assert set(result["baselines"]) == {"persistence", "constant_velocity", "linear"}
    names = set(result["model"])
    assert {
        "nll",
        "mse",
        "coverage_90",
        "rollout_mse_10",
        "imagine_nll_10",
        "imagine_coverage_5",
    } <= names
    # the value head's error is the model's own (its r2 compares it with a constant)
    value = {"value_mse", "value_r2"}
    assert value <= names and result["model"]["value_r2"] <= 1
    for metrics in result["baselines"].values():
        assert set(metrics) == names - value
    for metrics in [result["model"], *result["baselines"].values()]:
        assert all(v == v for v in metrics.values()), metrics  # no NaN
        assert 0 <= metrics["coverage_90"] <= 1
    assert result["meta"]["imagination_policy"] == "behavior model"
    paths = write_report(result, world.history, tmp_path)
    for key in ("learning_curves", "rollout_error", "imagined_trajectory"):
        assert Path(paths[key]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads(Path(paths["json"]).read_text())
    assert saved["result"]["model"]["mse"] == pytest.approx(result["model"]["mse"])


def test_behavior_evaluation_includes_the_context1_model(trained, tmp_path):
    frame, spec, _, beh, ctx1 = trained
    result = evaluate(
        "behavior",
        beh.model,
        frame,
        spec,
        beh.val_episode_ids,
        extra_baselines={"context1": ctx1.model},
    )
    assert set(result["baselines"]) == {"marginal", "repeat_last", "context1"}
    for metrics in result["baselines"].values():
        assert set(metrics) == set(result["model"]) == {"nll", "accuracy"}
    # 3 epochs teach the tiny model that each agent mostly repeats its preferred action: well
    # below the marginal (~1.63 nats here), and below uniform (log 5 = 1.61), which the
    # marginal does not beat on held-out episodes
    assert result["model"]["nll"] < result["baselines"]["marginal"]["nll"] - 0.3, result
    paths = write_report(result, {"behavior": beh.history, "context1": ctx1.history}, tmp_path)
    assert Path(paths["behavior_nll"]).read_bytes()[:4] == b"\x89PNG"


def test_evaluation_rejects_bad_inputs(trained):
    frame, spec, world, _, _ = trained
    with pytest.raises(ValueError, match="no held-out episodes"):
        evaluate("world", world.model, frame, spec, [])
    held_out = frame.filter(pl.col("episode_id").is_in(world.val_episode_ids))
    with pytest.raises(ValueError, match="only the held-out"):
        evaluate("world", world.model, held_out, spec, world.val_episode_ids)
    other = DatasetSpec(env="x", agents={"a": 9}, action=ActionSpec("discrete", n=5))
    with pytest.raises(ValueError, match="does not fit"):
        evaluate("world", world.model, frame, other, world.val_episode_ids)


def test_baselines_are_exact_where_they_should_be():
    # persistence is exact on frozen observations; constant velocity on pure drift
    frame, spec = make_frame(episodes=6, steps=8)
    frozen = frame.with_columns(pl.col("obs").list.eval(pl.element() * 0 + 1.5))
    data = build_tensors(frozen, spec)
    rows = sample_rows(data, data.episode_ids)
    baselines = fit_world_baselines(data, rows, 5, KIN)
    assert rollout_mse(baselines["persistence"], data, rows, 3)[2] == pytest.approx(0.0, abs=1e-10)

    drift = frame.with_columns(  # vel = (0.5, -0.2), pos = 0.1 * vel * step
        obs=pl.concat_list(
            pl.lit(0.5), pl.lit(-0.2), pl.col("step") * 0.05, pl.col("step") * -0.02
        ).cast(pl.List(pl.Float32))
    )
    data = build_tensors(drift, spec)
    rows = sample_rows(data, data.episode_ids)
    cv = ConstantVelocityBaseline(KIN)
    tg = gather_targets(data, rows)
    guess, _ = cv.guess(gather_window(data, rows, 1))
    err = ((guess - tg.next_obs) ** 2)[tg.next_valid].max()
    assert err < 1e-10


def test_linear_baseline_recovers_linear_dynamics():
    frame, spec = make_frame(episodes=40, steps=10, seed=5)
    data = build_tensors(frame, spec)
    rows = sample_rows(data, data.episode_ids)
    baselines = fit_world_baselines(data, rows, 5, None)
    assert "constant_velocity" not in baselines
    persistence, linear = (
        rollout_mse(baselines[k], data, rows, 1)[0] for k in ("persistence", "linear")
    )
    assert linear < 0.2 * persistence  # the synthetic dynamics are linear except repulsion


def test_mpe_kinematics_layout():
    spread = DatasetSpec(
        env="simple_spread_v3",
        agents={f"agent_{i}": 18 for i in range(3)},
        action=ActionSpec("discrete", n=5),
    )
    kin = mpe_kinematics(spread)
    assert kin is not None and (2, 0, 1.0) in kin.moves and (9, 1, -1.0) in kin.moves
    assert len(kin.moves) == 2 + 6 and kin.dt == 0.1
    assert (
        mpe_kinematics(
            DatasetSpec(env="other", agents={"a": 18}, action=ActionSpec("discrete", n=5))
        )
        is None
    )


def test_continuous_actions_train_imagine_and_evaluate(tmp_path):
    frame, spec = make_frame(episodes=12, steps=8)
    frame = frame.with_columns(
        action=pl.concat_list(pl.col("action") / 4, 1 - pl.col("action") / 4).cast(
            pl.List(pl.Float32)
        )
    )
    spec = DatasetSpec("synthetic", spec.agents, ActionSpec("continuous", dim=2, low=0, high=1))
    config = TrainConfig(epochs=1, batch_size=32)
    world = train("world", frame, spec, config, TINY_WORLD, workdir=tmp_path / "w", progress=False)
    beh = train(
        "behavior", frame, spec, config, TINY_BEHAVIOR, workdir=tmp_path / "b", progress=False
    )
    result = evaluate(
        "world",
        world.model,
        frame,
        spec,
        world.val_episode_ids,
        behavior=beh.model,
        n_samples=2,
        max_starts=16,
    )
    assert result["model"]["mse"] > 0
    assert result["model"]["rollout_mse_10"] != result["model"]["rollout_mse_10"], (
        "8-step episodes have no 10-step-ahead target: NaN, not 0"
    )
    behavior = evaluate("behavior", beh.model, frame, spec, beh.val_episode_ids)
    assert set(behavior["model"]) == {"nll", "mse"} == set(behavior["baselines"]["marginal"])
    saved = json.loads(
        Path(write_report(result, world.history, tmp_path / "r")["json"]).read_text()
    )
    assert saved["result"]["model"]["rollout_mse_10"] is None
