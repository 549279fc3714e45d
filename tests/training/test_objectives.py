"""Objectives by name: the learned reward head, the envs' own rewards on imagined
observations, a user's entry point; refused by name when unknown or unfit."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from foresight.datasets.sources.generate import make_env
from foresight.datasets.sources.policies import make_policy
from foresight.datasets.sources.simple_spread import spread_reward
from foresight.datasets.sources.simple_tag import tag_reward
from foresight.training.agents.arena import env_spec
from foresight.training.agents.objectives import objective_names, resolve_objective
from foresight.training.agents.planning import JointHistory, Planner, PlannerConfig
from foresight.training.models.behavior_model import BehaviorModel, BehaviorModelConfig
from foresight.training.models.world_model import WorldModel, WorldModelConfig


def test_tag_reward_matches_the_env_contacts_included():
    env = make_env("simple_tag", max_cycles=25, checked=False)
    agents = env.possible_agents
    sizes = [int(np.prod(env.observation_space(a).shape)) for a in agents]
    reward, D = tag_reward(agents, sizes), max(sizes)
    policy = make_policy("mixed", "simple_tag")
    contacts = 0
    for episode in range(12):
        obs, _ = env.reset(seed=episode)
        policy.reset(np.random.default_rng(episode), agents)
        while env.agents:
            obs, rewards, *_ = env.step({a: policy.act(a, obs[a]) for a in env.agents})
            joint = torch.zeros(1, len(agents), D)
            for n, a in enumerate(agents):
                joint[0, n, : sizes[n]] = torch.as_tensor(obs[a])
            want = torch.tensor([rewards[a] for a in agents], dtype=torch.float32)
            assert torch.allclose(reward(joint, None)[0], want, atol=1e-4)
            contacts += bool(want[0] > 0)
    env.close()
    assert contacts > 5, "the episodes hold contacts, so the +10 / -10 terms were checked"


def test_objectives_by_name_and_the_refusals():
    spread, tag = env_spec("simple_spread"), env_spec("simple_tag")
    assert resolve_objective("learned", spread) is None
    assert resolve_objective("simple_spread", spread) is spread_reward
    assert resolve_objective("simple_tag", tag) is not None
    assert {"learned", "simple_spread", "simple_tag"} <= set(objective_names())
    with pytest.raises(ValueError, match=r"unknown objective 'tidy'; objectives: learned, "):
        resolve_objective("tidy", spread)
    with pytest.raises(ValueError, match="objective 'simple_tag' reads simple_tag observations; "):
        resolve_objective("simple_tag", spread)
    partial = env_spec("simple_spread", obs_radius=0.5)
    with pytest.raises(ValueError, match=r"'simple_spread' reads the full view; .*obs_radius 0.5"):
        resolve_objective("simple_spread", partial)


def _models(spec):
    torch.manual_seed(0)
    world = WorldModel(WorldModelConfig(spec=spec.to_dict(), d_model=16, n_layers=1, n_heads=2))
    beh = BehaviorModel(BehaviorModelConfig(spec=spec.to_dict(), d_model=16, context=2))
    return world.eval(), beh.eval()


def test_the_planner_takes_an_objective_by_name():
    spec = env_spec("simple_spread")
    world, beh = _models(spec)
    ids = list(spec.agents)
    history = JointHistory(ids, np.random.default_rng(0).normal(size=(2, 3, 18)), np.zeros((2, 3)))
    cfg = PlannerConfig(horizon=3, n_samples=2)
    by_name = Planner(world, beh, PlannerConfig(horizon=3, n_samples=2, objective="simple_spread"))
    by_fn = Planner(world, beh, cfg, reward_fn=spread_reward)
    learned = Planner(world, beh, cfg)
    a, b = by_name.decide(history, ids), by_fn.decide(history, ids)
    assert [d.candidate_scores for d in a] == [d.candidate_scores for d in b]
    c = learned.decide(history, ids)
    assert [d.candidate_scores for d in a] != [d.candidate_scores for d in c]
    with pytest.raises(ValueError, match="not both"):
        Planner(world, beh, PlannerConfig(objective="simple_spread"), reward_fn=spread_reward)
    with pytest.raises(ValueError, match="unknown objective 'tidy'"):
        Planner(world, beh, PlannerConfig(objective="tidy"))


def test_a_users_objective_comes_in_as_an_entry_point(tmp_path, monkeypatch):
    """A package that declares an entry point in ``foresight.objectives`` (here a
    dist-info on sys.path, as pip installs one) adds an objective by name; one that gives
    the wrong shape is refused by name before it scores anything."""
    (tmp_path / "my_objectives.py").write_text(
        textwrap.dedent(
            """
            import torch

            def closer(spec):
                def reward(next_obs, action):  # closer to the origin is better
                    return -next_obs[..., 2:4].norm(dim=-1)
                return reward

            def broken(spec):
                return lambda next_obs, action: next_obs.sum()
            """
        )
    )
    (tmp_path / "my_missing_dep.py").write_text("import a_package_nobody_installed\n")
    info = tmp_path / "my_objectives-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-objectives\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[foresight.objectives]\ncloser = my_objectives:closer\nbroken = my_objectives:broken\n"
        "unloadable = my_missing_dep:objective\nsimple_spread = my_objectives:closer\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = env_spec("simple_spread")
    assert {"closer", "broken"} <= set(objective_names())
    reward = resolve_objective("closer", spec)
    obs = torch.zeros(2, 3, 18)
    obs[1, :, 2] = 1.0
    assert torch.equal(reward(obs, None), torch.tensor([[0.0] * 3, [-1.0] * 3]))
    with pytest.raises(ValueError, match=r"objective 'broken' must give \(R, N\) = \(1, 3\)"):
        resolve_objective("broken", spec)
    with pytest.raises(ValueError, match=r"entry point 'unloadable' \(my_missing_dep:objective\) "):
        resolve_objective("unloadable", spec)
    assert resolve_objective("simple_spread", spec) is spread_reward, "a built-in name wins"
    world, beh = _models(spec)
    Planner(world, beh, PlannerConfig(objective="closer"))  # plans with it
    sys.modules.pop("my_objectives", None)


def test_a_roster_objective_reads_rows_in_the_models_order_whatever_the_history_order():
    """simple_tag's reward tells adversaries from the prey by row: for a history whose
    agents come in another order (a client's JSON key order) the planner scores each row as
    the agent it is; one that lacks an agent is refused, naming it."""
    spec = env_spec("simple_tag")
    world, beh = _models(spec)
    roster = list(spec.agents)  # adversary_0..2, agent_0
    planner = Planner(world, beh, PlannerConfig(objective="simple_tag"))
    order = [3, 1, 0, 2]  # the prey first
    ids = [roster[i] for i in order]
    obs = torch.full((1, 4, 16), 5.0)  # everyone far from everyone, the prey off the arena
    obs[0, 0, 12:14] = 0.05  # adversary_0 sees the prey touching it, and the prey sees it
    obs[0, 3, 8:10] = -0.05
    obs[0, 3, 2:4] = 0.0
    want = planner.reward_fn(obs, torch.zeros(1, 4, dtype=torch.long))[0]
    assert want.tolist() == [10.0, 10.0, 10.0, -10.0]
    reward = planner._scoring(ids, None).reward_fn
    got = reward(obs[:, order], torch.zeros(1, 4, dtype=torch.long))[0]
    assert torch.equal(got, want[order]), "each row gets its own agent's reward"
    assert planner._scoring(roster, None).reward_fn is planner.reward_fn
    g = np.random.default_rng(1)
    sizes = dict(spec.agents)
    obs, prev = g.normal(size=(2, 3, 16)).astype(np.float32), g.integers(0, 5, size=(2, 3))
    with pytest.raises(ValueError, match=r"lacks \['agent_0'\]"):
        planner.decide(JointHistory(roster[:3], obs, prev, 0, sizes), roster[:3])
    full = JointHistory(roster, np.zeros((2, 4, 16), np.float32), np.zeros((2, 4)), 0, sizes)
    with pytest.raises(ValueError, match="team is empty"):
        planner.decide(full, roster[:3], team=[])


def test_shaped_tag_reward_adds_mpe2s_distance_terms():
    """simple_tag_shaped is the env's reward plus mpe2's shaping, computed here from the
    true positions of the env's own agents at every step."""
    env = make_env("simple_tag", max_cycles=10, checked=False)
    agents = env.possible_agents
    sizes = [int(np.prod(env.observation_space(a).shape)) for a in agents]
    shaped, D = resolve_objective("simple_tag_shaped", env_spec("simple_tag")), max(sizes)
    policy = make_policy("mixed", "simple_tag")
    obs, _ = env.reset(seed=3)
    policy.reset(np.random.default_rng(3), agents)
    world = env.unwrapped.world
    while env.agents:
        obs, rewards, *_ = env.step({a: policy.act(a, obs[a]) for a in env.agents})
        pos = {a.name: a.state.p_pos for a in world.agents}
        advs = [a for a in agents if a.startswith("adversary")]
        chase = sum(min(np.linalg.norm(pos[p] - pos[a]) for p in ["agent_0"]) for a in advs)
        flee = sum(np.linalg.norm(pos["agent_0"] - pos[a]) for a in advs)
        want = [rewards[a] - 0.1 * chase for a in advs] + [rewards["agent_0"] + 0.1 * flee]
        joint = torch.zeros(1, len(agents), D)
        for n, a in enumerate(agents):
            joint[0, n, : sizes[n]] = torch.as_tensor(obs[a])
        assert torch.allclose(shaped(joint, None)[0], torch.tensor(want).float(), atol=1e-4)
    env.close()
