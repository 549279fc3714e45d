"""Planner: valid decisions, picks a clearly best plan, documented errors, batched egos."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from foresight.datasets.schema import ActionSpec, DatasetSpec
from foresight.training.agents.planning import (
    JointHistory,
    Planner,
    PlannerConfig,
    history_from_episode,
)
from foresight.training.models.behavior_model import BehaviorModel, BehaviorModelConfig
from foresight.training.models.rollout import BehaviorStepper, _concat_step
from foresight.training.models.world_model import (
    ObsDistribution,
    WorldModel,
    WorldModelConfig,
    WorldPrediction,
)

IDS = ["agent_0", "agent_1", "agent_2"]
TINY_WORLD = dict(d_model=32, n_layers=1, n_heads=2, mlp_ratio=2)
TINY_BEHAVIOR = dict(d_model=32, context=4, expert_width=32)
FAST = dict(horizon=3, n_samples=2)


def spec(size: int = 4, env: str = "synthetic", action: ActionSpec | None = None) -> dict:
    return DatasetSpec(
        env=env,
        agents=dict.fromkeys(IDS, size),
        action=action or ActionSpec("discrete", n=5),
    ).to_dict()


def models(world_spec: dict | None = None, behavior_spec: dict | None = None):
    torch.manual_seed(0)
    world = WorldModel(WorldModelConfig(spec=world_spec or spec(), **TINY_WORLD)).eval()
    behavior = BehaviorModel(BehaviorModelConfig(spec=behavior_spec or spec(), **TINY_BEHAVIOR))
    return world, behavior.eval()


def history(T: int = 3, start_step: int = 0, D: int = 4, seed: int = 0, A: int | None = None):
    rng = np.random.default_rng(seed)
    prev = rng.integers(0, 5, (T, 3)) if A is None else rng.uniform(-1, 1, (T, 3, A))
    return JointHistory(IDS, rng.normal(size=(T, 3, D)), prev, start_step=start_step)


class RewardForAction(nn.Module):
    """A world predictor we build by hand: agent n earns 1 for every step it takes action
    ``best[n]`` (discrete) or minus its squared distance to ``target`` (continuous);
    observations stay where they are."""

    def __init__(self, spec_dict: dict, best: list[int] | None = None, target: float = 0.0):
        super().__init__()
        self.config = WorldModelConfig(spec=spec_dict)
        self.context, self.obs_dim = 2, max(spec_dict["agents"].values())
        self.best, self.target = best, target
        self.dummy = nn.Parameter(torch.zeros(1))

    def predict(self, w) -> WorldPrediction:
        last = w.obs[:, -1]  # (B, N, D)
        act = w.action[:, -1]
        if self.best is not None:
            reward = (act == torch.tensor(self.best)).float()  # (B, N)
        else:
            reward = -((act - self.target) ** 2).sum(-1)  # (B, N)
        ones = torch.ones_like(last)[..., None]
        return WorldPrediction(
            obs=ObsDistribution(ones * 0, last[..., None], ones * 1e-3),
            reward=reward,
            term_prob=torch.zeros_like(reward),
            dim_mask=w.feat_mask,
        )


def test_decision_has_a_valid_action_scores_per_candidate_and_the_others():
    world, behavior = models()
    planner = Planner(world, behavior, PlannerConfig(**FAST))
    [d] = planner.decide(history(), ["agent_1"])
    assert d.agent == "agent_1" and d.action in range(5)
    assert [a for a, _ in d.candidate_scores] == [0, 1, 2, 3, 4]
    assert all(np.isfinite(s) for _, s in d.candidate_scores)
    assert d.predicted_return == pytest.approx(max(s for _, s in d.candidate_scores))
    assert dict(d.candidate_scores)[d.action] == pytest.approx(d.predicted_return)
    assert set(d.predicted_others) == {"agent_0", "agent_2"}
    assert all(a in range(5) for a in d.predicted_others.values())
    assert len(d.plan) == 3 and d.plan[0] == d.action


@pytest.mark.parametrize("search", ["exhaustive", "pulse", "beam"])
@pytest.mark.parametrize("team_reward", [True, False])
def test_the_clearly_best_action_is_chosen_by_each_agent(search, team_reward):
    _, behavior = models()
    world = RewardForAction(spec(), best=[3, 1, 4])
    cfg = PlannerConfig(horizon=3, n_samples=3, search=search, team_reward=team_reward)
    decisions = Planner(world, behavior, cfg).decide(history(), IDS)
    assert [d.action for d in decisions] == [3, 1, 4]
    for d in decisions:
        scores = dict(d.candidate_scores)
        others = [s for a, s in scores.items() if a != d.action]
        # the best plan holds the rewarded action every step: a full step ahead of any other
        assert scores[d.action] > max(others) + 0.9, scores


def test_a_known_reward_function_replaces_the_reward_head():
    _, behavior = models()
    world = RewardForAction(spec(), best=[3, 3, 3])  # its reward head says 3
    planner = Planner(
        world, behavior, PlannerConfig(**FAST), reward_fn=lambda obs, act: (act == 2).float()
    )
    assert [d.action for d in planner.decide(history(), IDS)] == [2, 2, 2]


class ValueForLastAction(RewardForAction):
    """No reward within the horizon; the value head says agent n earns 1 after a step
    whose action is ``best[n]``."""

    def predict(self, w) -> WorldPrediction:
        pred = super().predict(w)
        pred.value, pred.reward = pred.reward, torch.zeros_like(pred.reward)
        return pred


@pytest.mark.parametrize("team_reward", [True, False])
def test_the_terminal_value_ranks_plans_by_where_they_end(team_reward):
    _, behavior = models()
    world = ValueForLastAction(spec(), best=[3, 1, 4])
    cfg = PlannerConfig(horizon=3, n_samples=2, search="pulse", team_reward=team_reward)
    decisions = Planner(world, behavior, cfg).decide(history(), IDS)
    assert [d.action for d in decisions] == [3, 1, 4]
    for d in decisions:  # the plan holding the action to the end earns discount**H of value
        scores = dict(d.candidate_scores)
        gap = scores[d.action] - max(s for a, s in scores.items() if a != d.action)
        assert gap == pytest.approx(cfg.discount**cfg.horizon, abs=1e-5), scores
    # without it, or scoring by a known objective, every plan scores the same
    flat = [
        Planner(world, behavior, replace(cfg, terminal_value=False)),
        Planner(world, behavior, cfg, reward_fn=lambda obs, act: torch.zeros(act.shape[:2])),
    ]
    for planner in flat:
        for d in planner.decide(history(), IDS):
            assert len({round(s, 6) for _, s in d.candidate_scores}) == 1, d.candidate_scores


def test_cem_finds_the_best_continuous_action():
    cont = spec(action=ActionSpec("continuous", dim=2, low=-1.0, high=1.0))
    _, behavior = models(cont, cont)
    world = RewardForAction(cont, target=0.5)
    cfg = PlannerConfig(horizon=2, n_samples=2, cem_iterations=4, cem_population=48)
    [d] = Planner(world, behavior, cfg).decide(history(A=2), ["agent_0"])
    assert np.allclose(d.action, [0.5, 0.5], atol=0.2), d.action
    assert d.candidate_scores[0][1] >= d.candidate_scores[-1][1]


def test_ego_not_in_the_episode_is_named():
    planner = Planner(*models(), PlannerConfig(**FAST))
    with pytest.raises(ValueError, match="'agent_7' is not in this episode"):
        planner.decide(history(), ["agent_0", "agent_7"])


def test_short_history_is_padded_at_the_episode_start_and_refused_later():
    planner = Planner(*models(), PlannerConfig(**FAST))  # the behavior model reads 4 steps
    assert planner.decide(history(T=1, start_step=0), ["agent_0"])[0].action in range(5)
    with pytest.raises(ValueError, match="does not begin at the episode start"):
        planner.decide(history(T=2, start_step=5), ["agent_0"])
    lenient = Planner(*models(), PlannerConfig(pad_short_history=True, **FAST))
    assert lenient.decide(history(T=2, start_step=5), ["agent_0"])[0].action in range(5)
    assert planner.decide(history(T=6, start_step=5), ["agent_0"])[0].action in range(5)


def test_bad_history_shapes_name_the_field():
    planner = Planner(*models(), PlannerConfig(**FAST))
    h = history()
    h.prev_actions = h.prev_actions[:, :2]
    with pytest.raises(ValueError, match="prev_actions"):
        planner.decide(h, ["agent_0"])


def test_models_from_different_datasets_are_refused_naming_both():
    with pytest.raises(ValueError, match=r"world model.*behavior model"):
        Planner(*models(spec(4), spec(6)))
    with pytest.raises(ValueError, match="different datasets"):
        Planner(*models(spec(4, env="simple_spread_v3"), spec(4, env="simple_tag_v3")))
    world, behavior = models()
    cards = [{"dataset": {"name": n, "resolved": f"{n}@1"}} for n in ("spread", "tag")]
    with pytest.raises(ValueError, match=r"spread@1.*tag@1"):
        Planner(world, behavior, world_card=cards[0], behavior_card=cards[1])


@pytest.mark.parametrize("sequential", [True, False])
def test_batched_decisions_for_several_agents_in_the_order_asked(sequential):
    planner = Planner(*models(), PlannerConfig(sequential=sequential, **FAST))
    decisions = planner.decide(history(T=5), ["agent_2", "agent_0", "agent_1"])
    assert [d.agent for d in decisions] == ["agent_2", "agent_0", "agent_1"]
    for d in decisions:
        assert d.action in range(5) and len(d.candidate_scores) == 5
        assert d.agent not in d.predicted_others and len(d.predicted_others) == 2


def test_sequential_planning_holds_earlier_egos_to_their_plans():
    """agent_1 is rewarded for matching agent_0's action: with agent_0's plan fixed it
    knows what agent_0 does; planning in parallel it can only guess."""

    class Follow(RewardForAction):
        def predict(self, w):
            pred = super().predict(w)
            act = w.action[:, -1]
            pred.reward = torch.zeros_like(pred.reward)
            pred.reward[:, 0] = (act[:, 0] == 2).float()
            pred.reward[:, 1] = (act[:, 1] == act[:, 0]).float()
            return pred

    _, behavior = models()
    world = Follow(spec(), best=[0, 0, 0])
    cfg = PlannerConfig(horizon=2, n_samples=4, team_reward=False, sequential=True)
    d0, d1 = Planner(world, behavior, cfg).decide(history(), ["agent_0", "agent_1"])
    assert d0.action == 2 and d1.action == 2
    # agent_0 holds 2 over both steps; agent_1 holding 2 matches it at both: 1 + 0.95 * 1
    assert dict(d1.candidate_scores)[2] == pytest.approx(1.0 + 0.95 * 1.0)
    assert d1.predicted_return == pytest.approx(1.0 + 0.95 * 1.0)


@pytest.mark.parametrize("T", [2, 6])
def test_behavior_stepper_exact_and_incremental(T):
    world, behavior = models()
    planner = Planner(world, behavior, PlannerConfig(**FAST))
    w = planner.window(history(T=T))
    one = w._map(lambda x: x[:, -1:])  # one more step (a copy of the last)
    expect = behavior.action_distribution(_concat_step(w, one))  # reads the last 4 steps
    exact = BehaviorStepper(behavior, w, incremental=False)
    fast = BehaviorStepper(behavior, w)
    assert fast.incremental and not exact.incremental
    now = behavior.action_distribution(w).logits
    assert torch.allclose(fast.distribution().logits, now, atol=1e-5)
    assert torch.allclose(exact.distribution().logits, now, atol=1e-5)
    exact.advance(one)
    fast.advance(one)
    assert torch.allclose(exact.distribution().logits, expect.logits, atol=1e-5)
    # the GRU also remembers the step the window dropped: close, not equal
    assert (fast.distribution().logits - expect.logits).abs().max() < 0.1
    decision = Planner(world, behavior, PlannerConfig(incremental_behavior=False, **FAST)).decide(
        history(T=T), ["agent_0"]
    )
    assert decision[0].action in range(5)


def test_history_from_episode_matches_the_window_convention():
    obs = [np.full((3, 4), t, np.float32) for t in range(6)]
    acts = [np.full(3, t % 5) for t in range(5)]
    h = history_from_episode(IDS, obs, acts, context=4)
    assert h.start_step == 2 and h.obs.shape == (4, 3, 4)
    assert h.obs[0, 0, 0] == 2 and h.prev_actions[0, 0] == 1  # the action that led to obs[2]
    first = history_from_episode(IDS, obs[:1], [], context=4)
    assert first.start_step == 0 and first.prev_actions.shape == (1, 3)
