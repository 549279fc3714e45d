"""Closed-loop arena: every controller on every env, the result dict, injected controllers,
and the ordering the reference numbers rest on (greedy > random, scripted anticipation >
greedy on simple_spread)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from foresight.datasets.sources.anticipation import spread_targets
from foresight.datasets.sources.generate import make_env
from foresight.datasets.sources.policies import make_policy
from foresight.training.agents.arena import (
    OPPONENT,
    AnticipatoryController,
    ci95,
    env_spec,
    run_arena,
    team_agents,
    team_roster,
)
from foresight.training.agents.planning import Decision, PlannerConfig
from foresight.training.models.behavior_model import BehaviorModel, BehaviorModelConfig
from foresight.training.models.world_model import WorldModel, WorldModelConfig

ALL = ["random", "greedy", "bc", "anticipatory", "scripted-anticipation", "anticipatory+greedy"]
EXTRA = {env: ["anticipatory-known-reward"] for env in ("simple_spread", "simple_tag")}
FAST_PLANNER = PlannerConfig(horizon=2, n_samples=2, search="pulse", pulses=(1,))


def tiny_models(env: str):
    spec = env_spec(env).to_dict()
    torch.manual_seed(0)
    world = WorldModel(WorldModelConfig(spec=spec, d_model=16, n_layers=1, n_heads=2, mlp_ratio=2))
    behavior = BehaviorModel(BehaviorModelConfig(spec=spec, d_model=16, context=2, expert_width=32))
    return world.eval(), behavior.eval()


@pytest.mark.parametrize("env", ["simple_spread", "simple_reference", "simple_tag"])
def test_every_controller_runs_on_every_env(env, tmp_path):
    world, behavior = tiny_models(env)
    teams = ALL + EXTRA.get(env, [])
    result = run_arena(
        env,
        2,
        teams,
        seed=3,
        world=world,
        behavior=behavior,
        planner_config=FAST_PLANNER,
        max_cycles=4,
        out_dir=tmp_path,
    )
    assert result["env"] == env and result["episodes"] == 2
    assert set(result["controllers"]) == set(teams)
    for team, r in result["controllers"].items():
        low, high = r["ci95"]
        assert low <= r["mean_return"] <= high, team
        assert r["episodes"] == 2 and len(r["returns"]) == 2
        assert np.isfinite(r["mean_return"]) and r["decisions_per_s"] > 0
    assert "G" in result["gap"]
    saved = json.loads(Path(result["files"]["json"]).read_text())
    assert (
        saved["controllers"]["greedy"]["mean_return"]
        == result["controllers"]["greedy"]["mean_return"]
    )
    assert Path(result["files"]["plot"]).stat().st_size > 0


def test_the_same_seed_gives_the_same_episodes():
    a = run_arena("simple_spread", 3, ["random", "greedy"], seed=5, max_cycles=5)
    b = run_arena("simple_spread", 3, ["greedy", "random"], seed=5, max_cycles=5)
    for team in ("random", "greedy"):
        assert a["controllers"][team]["returns"] == b["controllers"][team]["returns"]


def test_injected_controller_factory_and_team_roster():
    seen = []

    class Idle:
        def reset(self, info):
            seen.append((info.controlled, info.team))

        def act(self, history, agents):
            assert history.obs.shape[1:] == (3, 18), history.obs.shape
            return dict.fromkeys(agents, 0)

    result = run_arena(
        "simple_spread",
        2,
        ["idle+greedy"],
        factories={"idle": lambda env, models: Idle()},
        max_cycles=3,
    )
    assert result["controllers"]["idle+greedy"]["episodes"] == 2
    assert seen[0][0] == ["agent_0"]
    assert seen[0][1] == {"agent_0": "idle", "agent_1": "greedy", "agent_2": "greedy"}
    assert team_roster("a+b+c", ["x", "y"]) == {"x": "a", "y": "b"}


def test_simple_tag_is_competitive_the_team_is_the_adversaries():
    """In simple_tag a team drives the adversaries, the prey plays the greedy flee rule, and
    the return counts the adversaries' rewards only: replayed by hand, episode by episode."""
    agents = ["adversary_0", "adversary_1", "adversary_2", "agent_0"]
    roster = team_roster("anticipatory+greedy", agents, "simple_tag")
    assert roster == {
        "adversary_0": "anticipatory",
        "adversary_1": "greedy",
        "adversary_2": "greedy",
        "agent_0": OPPONENT,
    }
    assert team_agents(roster) == agents[:3]
    assert team_agents(team_roster("greedy", ["agent_0", "agent_1"], "simple_spread")) is None
    seen = {}

    class Recorder:
        def reset(self, info):
            seen["controlled"], seen["team"] = info.controlled, info.team

        def act(self, history, live):
            return dict.fromkeys(live, 0)

    class Planner:  # what the anticipatory controller asks of its planner
        def decide(self, history, egos, team=None):
            seen["planner_team"] = team
            return [Decision(a, 0, 0.0, [], {}, [0]) for a in egos]

    result = run_arena(
        "simple_tag",
        3,
        ["greedy", "idle", "spy"],
        seed=4,
        max_cycles=12,
        factories={
            "idle": lambda env, models: Recorder(),
            "spy": lambda env, models: AnticipatoryController(Planner()),
        },
    )
    assert seen["planner_team"] == agents[:3], "plans are scored by the team's own rewards"
    assert result["opponents"] == {"agents": ["agent_0"], "policy": "greedy-flee-nearest/eps=0.00"}
    assert seen["controlled"] == agents[:3] and seen["team"]["agent_0"] == OPPONENT
    env = make_env("simple_tag", max_cycles=12, checked=False)
    policy = make_policy("greedy", "simple_tag")  # every agent's first rule: chase, flee
    prey_returns = []
    for i, got in enumerate(result["controllers"]["greedy"]["returns"]):
        rng = np.random.default_rng([4, i])
        obs, _ = env.reset(seed=int(rng.integers(2**31 - 1)))
        policy.reset(rng, env.possible_agents)
        team = prey = 0.0
        while env.agents:
            obs, rewards, *_ = env.step({a: policy.act(a, obs[a]) for a in env.agents})
            team += sum(rewards[a] for a in agents[:3])
            prey += rewards["agent_0"]
        assert got == pytest.approx(team), i
        prey_returns.append(prey)
    env.close()
    assert any(prey_returns), "the prey's rewards, which are not counted, are not all zero"
    assert run_arena("simple_spread", 1, ["greedy"], max_cycles=2)["opponents"] is None


def test_bad_requests():
    with pytest.raises(ValueError, match="unknown controller 'psychic'"):
        run_arena("simple_spread", 1, ["greedy+psychic"])
    with pytest.raises(ValueError, match="needs a world and a behavior model"):
        run_arena("simple_spread", 1, ["anticipatory"], max_cycles=2)
    _world, behavior = tiny_models("simple_tag")
    with pytest.raises(ValueError, match="does not fit"):
        run_arena("simple_spread", 1, ["bc"], behavior=behavior, max_cycles=2)


def test_spread_reward_matches_the_env():
    from foresight.datasets.sources.simple_spread import spread_reward

    env = make_env("simple_spread")
    obs, _ = env.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(10):
        obs, rewards, _, _, _ = env.step({a: int(rng.integers(5)) for a in env.agents})
        joint = torch.tensor(np.stack([obs[a] for a in env.possible_agents]))[None]
        got = spread_reward(joint, torch.zeros(1, 3, dtype=torch.long))[0]
        want = torch.tensor([rewards[a] for a in env.possible_agents], dtype=torch.float32)
        assert torch.allclose(got, want, atol=1e-4), (got, want)


def test_ci95():
    low, high = ci95([1.0, 2.0, 3.0, 4.0])
    assert low < 2.5 < high
    assert ci95([2.0]) == (2.0, 2.0)


def test_spread_targets_leave_the_others_landmarks_alone():
    # agent_1 and agent_2 sit on landmark 0; agent_0 (controlled) is nearest landmark 0 too
    # but must go elsewhere: landmark 1 (nearer than 2).
    def obs(pos):
        landmarks = np.array([[0.0, 0.0], [0.5, 0.0], [-1.0, 0.0]]) - pos
        return np.concatenate([[0, 0], pos, landmarks.ravel(), np.zeros(8)])

    o = {
        "agent_0": obs(np.array([0.1, 0.0])),
        "agent_1": obs(np.zeros(2)),
        "agent_2": obs(np.zeros(2)),
    }
    assert spread_targets(o, list(o), ["agent_0"]) == {"agent_0": 1}
    # a whole team: the first takes its nearest, the next ones the nearest still free
    team = spread_targets(o, list(o), list(o))
    assert sorted(team.values()) == [0, 1, 2]


def test_greedy_beats_random_and_scripted_anticipation_beats_greedy():
    result = run_arena("simple_spread", 40, ["random", "greedy", "scripted-anticipation"], seed=0)[
        "controllers"
    ]
    rand, greedy, scripted = (result[t] for t in ("random", "greedy", "scripted-anticipation"))
    assert greedy["mean_return"] > rand["mean_return"] + 10, (greedy, rand)
    assert greedy["ci95"][0] > rand["ci95"][1]
    assert scripted["mean_return"] > greedy["mean_return"] + 10
    assert scripted["ci95"][0] > greedy["ci95"][1]
