"""Each simulator module against the mpe2 env it describes: what its rules, reward and
kinematics assume about the env is checked on the env's own steps (random actions)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foresight.datasets.schema import ActionSpec, DatasetSpec
from foresight.datasets.sources import SIMULATORS, make_env
from foresight.datasets.sources.mpe import DAMPING, DT, MOVES
from foresight.datasets.sources.simple_reference import ReferenceController
from foresight.datasets.sources.simple_spread import SpreadController, kinematics, spread_reward
from foresight.datasets.sources.simple_tag import TagController, boundary_cost
from foresight.datasets.sources.simulators import mpe_kinematics


def random_steps(env_name: str, steps: int, seed: int):
    """Per random joint action: ``(obs, actions, next_obs, rewards, env, free)``, yielded
    right after the step (the env's world is then the one ``next_obs`` shows); ``free``: the
    agents no colliding entity was near enough to push during the step."""
    env = make_env(env_name)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        actions = {a: int(rng.integers(env.action_space(a).n)) for a in env.agents}
        free = {a for a in env.agents if free_of_contact(env, a)}
        nxt, rewards, _, _, _ = env.step(actions)
        yield obs, actions, nxt, rewards, env, free
        obs = nxt


def free_of_contact(env, agent: str, margin: float = 0.05) -> bool:
    """No other colliding entity near enough to push ``agent`` in the coming step."""
    world = env.unwrapped.world
    me = next(a for a in world.agents if a.name == agent)
    for other in world.entities:
        if other is me or not (other.collide and me.collide):
            continue
        gap = np.linalg.norm(other.state.p_pos - me.state.p_pos) - other.size - me.size
        if gap < margin:
            return False
    return True


def test_every_simulator_is_listed_and_recordable():
    assert set(SIMULATORS) == {"simple_spread", "simple_reference", "simple_tag"}
    for name, sim in SIMULATORS.items():
        env = make_env(sim.mpe2_env)
        env.reset(seed=0)
        assert env.action_space(env.agents[0]).n == sim.controller.n_actions, name


@pytest.mark.parametrize(
    ("env_name", "accels"),
    [
        ("simple_spread", {"agent": SpreadController.accel}),
        ("simple_reference", {"agent": ReferenceController.accel}),
        (
            "simple_tag",
            {"adversary": TagController.adversary_accel, "agent": TagController.good_accel},
        ),
    ],
)
def test_a_move_changes_the_velocity_as_the_rules_assume(env_name, accels):
    """vel' = (1 - damping) vel + accel * MOVES[move] * dt: what ``resting_offsets`` plans with."""
    checked = 0
    for seed in range(3):
        for obs, actions, nxt, _, _, free in random_steps(env_name, 6, seed):
            for agent, action in actions.items():
                if agent not in free:
                    continue
                accel = accels["adversary" if agent.startswith("adversary") else "agent"]
                want = (1 - DAMPING) * obs[agent][0:2] + accel * MOVES[action % 5] * DT
                speed = np.linalg.norm(want)
                if env_name == "simple_tag" and speed > (1.0 if "adversary" in agent else 1.3):
                    continue  # clipped to max_speed
                np.testing.assert_allclose(nxt[agent][0:2], want, atol=1e-5, err_msg=agent)
                checked += 1
    assert checked > 20


def spread_spec(n: int) -> DatasetSpec:
    return DatasetSpec(
        env="simple_spread_v3",
        agents={f"agent_{i}": 6 * n for i in range(n)},
        action=ActionSpec("discrete", n=5),
    )


def test_spread_kinematics_are_exact_on_the_env():
    kin = kinematics(spread_spec(3))
    assert kin is not None and kin.velocity == [0, 1]
    assert mpe_kinematics(spread_spec(3)) == kin
    for obs, _, nxt, _, _, _ in random_steps("simple_spread", 8, seed=1):
        for agent in obs:
            guess = obs[agent].astype(np.float64).copy()
            for i, v, sign in kin.moves:
                guess[i] += sign * obs[agent][v] * kin.dt
            moved = [i for i, _, _ in kin.moves]
            np.testing.assert_allclose(nxt[agent][moved], guess[moved], atol=1e-5)


def test_spread_reward_matches_the_env():
    for _, _, nxt, rewards, env, _ in random_steps("simple_spread", 10, seed=2):
        joint = torch.tensor(np.stack([nxt[a] for a in env.possible_agents]))[None]
        got = spread_reward(joint, torch.zeros(1, 3, dtype=torch.long))[0]
        want = torch.tensor([rewards[a] for a in env.possible_agents], dtype=torch.float32)
        assert torch.allclose(got, want, atol=1e-4), (got, want)


def test_only_spread_knows_its_kinematics():
    for env in ("simple_tag_v3", "simple_reference_v3", "other"):
        spec = DatasetSpec(env=env, agents={"a": 18}, action=ActionSpec("discrete", n=5))
        assert mpe_kinematics(spec) is None
    given = DatasetSpec(
        env="other",
        agents={"a": 4},
        action=ActionSpec("discrete", n=5),
        extra={"kinematics": {"moves": [[2, 0, 1]], "dt": 0.05}},
    )
    assert mpe_kinematics(given).moves == [(2, 0, 1.0)]


def test_tag_boundary_cost_is_the_good_agents_reward():
    """Away from the adversaries, a good agent's reward is minus :func:`boundary_cost`."""
    env = make_env("simple_tag")
    env.reset(seed=0)
    world, scenario = env.unwrapped.world, env.unwrapped.scenario
    good = next(a for a in world.agents if not a.adversary)
    for i, adversary in enumerate(a for a in world.agents if a.adversary):
        adversary.state.p_pos = np.array([-5.0 - i, -5.0])
    rng = np.random.default_rng(0)
    for pos in [*rng.uniform(-1.6, 1.6, size=(20, 2)), [0.95, 0.0], [0.0, -1.2], [3.0, 3.0]]:
        good.state.p_pos = np.asarray(pos, dtype=np.float64)
        want = scenario.reward(good, world)
        assert boundary_cost(good.state.p_pos) == pytest.approx(-want), pos


def test_tag_layout_puts_the_prey_where_the_rules_read_it():
    """Adversaries find the good agent's position and velocity where TagController reads them."""
    rules = TagController()
    for _, _, obs, _, env, _ in random_steps("simple_tag", 5, seed=3):
        world = env.unwrapped.world
        rules.reset(list(obs))
        good = next(a for a in world.agents if not a.adversary)
        for me in (a for a in world.agents if a.adversary):
            o = obs[me.name]
            n_others = rules.n_adversaries + rules.n_good - 1
            n_obstacles = (o.size - 4 - 2 * n_others - 2 * rules.n_good) // 2
            assert n_obstacles == len(world.landmarks)
            start = 4 + 2 * n_obstacles
            others = o[start : start + 2 * n_others].reshape(n_others, 2)
            prey_rel = others[rules.n_adversaries - 1]
            np.testing.assert_allclose(prey_rel, good.state.p_pos - me.state.p_pos, atol=1e-5)
            np.testing.assert_allclose(o[start + 2 * n_others :], good.state.p_vel, atol=1e-5)


def test_reference_words_reach_the_other_agent_as_its_goal():
    """An honest speaker's word, heard next step, names the listener's goal landmark."""
    rules = ReferenceController()
    env = make_env("simple_reference")
    for seed in range(4):
        obs, _ = env.reset(seed=seed)
        world = env.unwrapped.world
        a, b = env.possible_agents
        actions = {x: rules.action(x, obs[x], "nearest+honest") for x in (a, b)}
        nxt, _, _, _, _ = env.step(actions)
        for speaker, listener in ((a, b), (b, a)):
            # mpe2: the speaker's goal_a is the listener, its goal_b the listener's landmark
            goal = next(x for x in world.agents if x.name == speaker).goal_b
            heard = nxt[listener][11:21]
            assert heard.argmax() == world.landmarks.index(goal) and heard.max() == 1.0
            np.testing.assert_allclose(
                nxt[speaker][2:8].reshape(3, 2)[world.landmarks.index(goal)],
                goal.state.p_pos - next(x for x in world.agents if x.name == speaker).state.p_pos,
                atol=1e-5,
            )
