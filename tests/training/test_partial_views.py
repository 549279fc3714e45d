"""Partial views (``--obs-radius``): what agents see, who acts on it, and what is refused.

The view itself (hidden entities zeroed, visibility flags), the scripted rules on it, the
dataset spec recording it from ``foresight generate`` through ingest and training, the
arena and the planner playing it with models trained on it, and the bad inputs: a radius
<= 0, an env without a partial view, a full-view model under a partial view, logs of two
views in one dataset.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from foresight.datasets.ingest import IngestError, ingest_logs
from foresight.datasets.sources.generate import generate_episodes, make_env
from foresight.datasets.sources.mpe import move_toward
from foresight.datasets.sources.simple_spread import (
    SpreadController,
    layout,
    partial_view,
    read_obs,
    spread_reward,
    spread_targets,
)
from foresight.datasets.sources.views import check_obs_radius
from foresight.pipelines.cli import main
from foresight.training.agents.arena import run_arena
from foresight.training.agents.planning import (
    JointHistory,
    Planner,
    PlannerConfig,
    history_window,
)
from foresight.training.models.behavior_model import BehaviorModel, BehaviorModelConfig
from foresight.training.models.world_model import WorldModel, WorldModelConfig
from foresight.training.registry import load_registered

from .chain import cli, trained_store

R = 0.35
N = 3
FULL, PARTIAL = 6 * N, 8 * N - 1  # 18 and 23 floats


def spread_obs(landmarks, others, vel=(0.1, -0.2), pos=(0.3, 0.4)) -> np.ndarray:
    """A full-view simple_spread observation with these relative positions (comm zero)."""
    others = np.asarray(others, np.float32).reshape(-1)
    return np.concatenate(
        [vel, pos, np.asarray(landmarks, np.float32).reshape(-1), others, np.zeros_like(others)]
    ).astype(np.float32)


# -- the view ------------------------------------------------------------------------------


def test_entities_beyond_the_radius_read_zero_and_are_flagged_hidden():
    full = spread_obs(landmarks=[(0.1, 0.2), (0.5, 0.0), (0.0, -0.3)], others=[(0.3, 0.3), (0, 1)])
    full[-4:] = [0.7, 0.8, 0.9, 1.0]  # comm slots, to see them hidden with their agent
    seen = partial_view(full, R)
    assert seen.shape == (PARTIAL,)
    np.testing.assert_array_equal(seen[:4], full[:4])  # own velocity and position
    np.testing.assert_allclose(seen[4:10], [0.1, 0.2, 0, 0, 0.0, -0.3])  # landmark 1 at 0.5
    np.testing.assert_allclose(seen[10:14], [0, 0, 0, 0])  # both others beyond 0.4
    np.testing.assert_allclose(seen[14:18], [0, 0, 0, 0])  # and their comm with them
    np.testing.assert_array_equal(seen[18:], [1, 0, 1, 0, 0])  # landmark flags, others'
    o = read_obs(seen)
    assert (o.n, list(o.landmark_seen), list(o.other_seen)) == (3, [1, 0, 1], [0, 0])
    assert partial_view(full, 0.45)[21] == 1  # other 0 is 0.42 away


def test_layouts_are_told_apart_and_odd_sizes_refused():
    assert [layout(s) for s in (12, 18, 36, 15, 23, 79)] == [
        (2, False), (3, False), (6, False), (2, True), (3, True), (10, True),
    ]  # fmt: skip
    for bad in (6, 7, 17, 20):
        with pytest.raises(ValueError, match=r"6N floats .* or 8N - 1"):
            layout(bad)
    with pytest.raises(ValueError, match="full-view observation"):
        partial_view(np.zeros(PARTIAL, np.float32), R)


BEFORE_VIEWS = [
    [4, 4, 4, 4, 2], [3, 3, 3, 3, 3], [3, 3, 4, 3, 4], [2, 2, 2, 2, 1], [0, 1],
    [1, 1, 1, 1, 1, 1], [4, 4, 4, 4, 4, 1], [3, 3, 3, 3, 3, 1], [1, 1, 2, 2, 4, 1], [1, 0],
    [1, 1, 2, 4, 2, 1, 2, 1, 1], [1, 1, 3, 1, 4, 2, 3, 3, 1], [2, 2, 3, 2, 3, 3, 3, 1, 2],
    [1, 2, 2, 4, 4, 2, 1, 1, 4], [2, 1, 3, 4],
]  # fmt: skip
"""Every rule's action on 4 random full views, then scripted anticipation's targets, at
N = 2, 3, 6, as the code before partial views (commit d309421) computed them."""


def test_the_full_view_rules_act_as_before_partial_views():
    rng = np.random.default_rng(2026)
    got = []
    for n in (2, 3, 6):
        rules, agents = SpreadController(), [f"agent_{i}" for i in range(n)]
        rules.reset(agents)
        for _ in range(4):
            obs = rng.uniform(-1.2, 1.2, 6 * n).astype(np.float32)
            obs[4 + 4 * n - 2 :] = 0
            got.append([rules.action("agent_0", obs, r) for r in rules.rules("agent_0")])
        obs = {a: rng.uniform(-1, 1, 6 * n).astype(np.float32) for a in agents}
        got.append(list(spread_targets(obs, agents, agents[: n // 2 + 1]).values()))
    assert got == BEFORE_VIEWS


def test_scripted_anticipation_claims_only_landmarks_it_sees():
    """An agent that sees no landmark claims none (and searches): the others still take the
    landmark nearest to them."""
    far = [(2.0, 2.0), (2.0, -2.0)]
    blind = partial_view(spread_obs([(1, 1), (1.5, 0), (0, 1.5)], far), R)
    near0 = partial_view(spread_obs([(0.1, 0), (0.3, 0), (0, 1.5)], far), R)
    near0_too = partial_view(spread_obs([(0.2, 0), (0, 1.5), (1.5, 0)], far), R)
    obs = {"agent_0": blind, "agent_1": near0, "agent_2": near0_too}
    agents = list(obs)
    assert spread_targets(obs, agents, agents) == {"agent_0": -1, "agent_1": 0, "agent_2": 0}
    assert spread_targets(obs, agents, ["agent_0", "agent_2"]) == {"agent_0": -1, "agent_2": 0}


def test_greedy_rules_act_on_what_they_see():
    rules = SpreadController()
    rules.reset(["agent_0", "agent_1", "agent_2"])
    rng = np.random.default_rng(0)
    # the full view and a view wide enough to see everything agree on every rule
    for _ in range(200):
        full = rng.uniform(-1, 1, FULL).astype(np.float32)
        full[14:] = 0
        for rule in rules.rules("agent_0"):
            assert rules.action("agent_0", full, rule) == rules.action(
                "agent_0", partial_view(full, 10.0), rule
            ), rule
    # landmark 2 is the one farthest from the others, but out of sight: "farthest" takes the
    # farthest of those it sees
    full = spread_obs(landmarks=[(0.3, 0), (0, 0.25), (-0.9, 0)], others=[(0.3, 0.1), (0, 0.3)])
    seen = partial_view(full, 0.35)
    vel = full[0:2]
    assert rules.action("agent_0", full, "farthest") == move_toward(full[8:10], vel, 5.0)
    assert rules.action("agent_0", seen, "farthest") == move_toward(full[4:6], vel, 5.0)
    # its fixed landmark out of sight, or none in sight: head for the centre
    centre = move_toward(-full[2:4], vel, 5.0)
    assert rules.action("agent_0", seen, "fixed2") == centre
    assert rules.action("agent_0", partial_view(full, 0.1), "nearest") == centre


def test_the_env_reward_is_refused_on_partial_observations():
    with pytest.raises(ValueError, match="partial view"):
        spread_reward(torch.zeros(4, N, PARTIAL), torch.zeros(4, N))


@pytest.mark.parametrize("radius", [0, -0.5, math.nan, math.inf, True, "1"])
def test_a_radius_that_is_no_distance_is_refused(radius):
    with pytest.raises(ValueError, match="obs_radius must be"):
        check_obs_radius("simple_spread", radius)


def test_envs_without_a_partial_view_refuse_a_radius():
    with pytest.raises(ValueError, match=r"simple_tag has no partial view.*simple_spread"):
        make_env("simple_tag", obs_radius=R)


def test_the_cli_refuses_a_bad_radius_in_one_line(tmp_path, capsys):
    for flags in (["--obs-radius", "0"], ["--obs-radius", "-1"]):
        code = main(
            ["generate", "--env", "simple_spread", "--episodes", "2", "--out", str(tmp_path),
             *flags]
        )  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code != 0 and "obs_radius must be a finite distance > 0" in err
        assert len(err.splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_scripted_greedy_loses_return_under_the_partial_view(tmp_path):
    """Why a partial view is a hard case: at r = 0.35 greedy agents lose at least 20% of
    their full-view return (paired start states; BENCHMARKS.md has 200 episodes)."""
    full = generate_episodes("simple_spread", 40, "greedy", str(tmp_path / "full"), seed=3)
    part = generate_episodes(
        "simple_spread", 40, "greedy", str(tmp_path / "part"), seed=3, obs_radius=R
    )
    assert part.mean_team_return < 1.2 * full.mean_team_return  # returns are negative


# -- through the chain -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    """A store with a dataset seen at radius R, and a world and behavior model trained on it."""
    root = tmp_path_factory.mktemp("partial")
    for store, made, ingested, trained in trained_store(root, "spread-r", "--obs-radius", str(R)):
        yield store, root, made, ingested, trained


def test_the_view_is_recorded_from_generate_to_the_models(seen):
    store, _, made, ingested, _ = seen
    assert all(f"-r{R:g}-part" in f for f in made["files"])
    assert ingested["spec"]["agents"] == {f"agent_{i}": PARTIAL for i in range(N)}
    assert ingested["spec"]["extra"]["obs_radius"] == R
    for kind in ("world", "behavior"):
        _, mv = load_registered(f"{kind}@1", store)
        assert mv.card.spec["extra"]["obs_radius"] == R, kind
    # every logged observation is a partial one: zeros where the flags say hidden, and what
    # is seen lies within R
    with open(made["files"][0]) as f:
        rows = [json.loads(line) for line in f][:300]
    for row in rows:
        o = read_obs(np.asarray(row["obs"], np.float32))
        lm = np.linalg.norm(o.landmarks, axis=1)
        assert (lm[o.landmark_seen] <= R + 1e-6).all()
        assert (o.landmarks[~o.landmark_seen] == 0).all()
        assert (o.others[~o.other_seen] == 0).all()
    assert any(not read_obs(np.asarray(r["obs"])).landmark_seen.all() for r in rows)


def test_logs_of_another_view_are_refused_by_the_dataset(seen, tmp_path):
    """Same sizes, other radius: appending them would mix two views; nothing is written."""
    store, *_ = seen
    generate_episodes("simple_spread", 3, "greedy", str(tmp_path / "wider"), obs_radius=0.8, seed=9)
    table_before = cli("datasets", "versions", "spread-r")
    with pytest.raises(IngestError, match=r"partial view \(obs_radius 0.8\) != dataset's "
                       r"partial view \(obs_radius 0.35\)"):  # fmt: skip
        ingest_logs([str(tmp_path / "wider")], "spread-r", store)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORESIGHT_STORE", store.root)
        assert cli("datasets", "versions", "spread-r") == table_before


def test_the_arena_plays_the_models_view_and_refuses_another_naming_both(seen):
    store = seen[0]
    world, _ = load_registered("world@1", store)
    behavior, _ = load_registered("behavior@1", store)
    # no radius given: the models' own view
    played = run_arena("simple_spread", 1, ["anticipatory"], world=world, behavior=behavior)
    assert played["obs_radius"] == R
    assert len(played["controllers"]["anticipatory"]["returns"]) == 1
    with pytest.raises(ValueError, match=r"partial view \(obs_radius 0.8\) != trained on a "
                       r"partial view \(obs_radius 0.35\)"):  # fmt: skip
        run_arena(
            "simple_spread", 1, ["anticipatory"], world=world, behavior=behavior, obs_radius=0.8
        )
    full = {**world.config.spec, "agents": dict.fromkeys(world.config.spec["agents"], FULL)}
    full["extra"] = {}
    with pytest.raises(ValueError, match=r"partial view \(obs_radius 0.35\) != trained on a "
                       r"full view"):  # fmt: skip
        run_arena(
            "simple_spread", 1, ["anticipatory"], world=WorldModel(WorldModelConfig(spec=full)),
            behavior=BehaviorModel(BehaviorModelConfig(spec=full)), obs_radius=R,
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"anticipatory-known-reward .* partial view"):
        run_arena(
            "simple_spread", 1, ["anticipatory-known-reward"], world=world, behavior=behavior,
            obs_radius=R,
        )  # fmt: skip


def test_the_offline_rl_peer_trains_and_plays_the_partial_view(seen):
    """Its closed-loop evaluation during training plays the model's own view, and so does
    the arena."""
    store = seen[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORESIGHT_STORE", store.root)
        cli("train", "offline-rl", "--dataset", "spread-r", "--steps", "20", "--device", "cpu")
        result = cli(
            "arena", "--episodes", "2", "--controllers", "greedy,offline-rl",
            "--offline-rl", "offline-rl@1",
        )  # fmt: skip
    assert result["obs_radius"] == R and set(result["controllers"]) == {"greedy", "offline-rl"}


def test_the_cli_arena_takes_the_radius(seen):
    store = seen[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORESIGHT_STORE", store.root)
        result = cli(
            "arena", "--episodes", "2", "--controllers", "random,greedy,bc",
            "--obs-radius", str(R), "--world", "world@1", "--behavior", "behavior@1",
        )  # fmt: skip
    assert result["obs_radius"] == R and set(result["controllers"]) == {"random", "greedy", "bc"}


# -- decentralized models and planner --------------------------------------------------------


def random_history(rng: np.random.Generator, steps: int = 4) -> JointHistory:
    agents = [f"agent_{i}" for i in range(N)]
    full = rng.uniform(-1, 1, (steps, N, FULL)).astype(np.float32)
    full[..., 4 + 4 * N - 2 :] = 0  # silent
    obs = np.stack([[partial_view(o, R) for o in step] for step in full])
    prev = rng.integers(0, 5, (steps, N))
    return JointHistory(agents, obs, prev, 0, {a: PARTIAL for a in agents})


def with_others_changed(h: JointHistory, rng: np.random.Generator) -> JointHistory:
    """The same history for agent_0; the other agents saw and did something else."""
    other = random_history(rng, h.length)
    obs, prev = np.array(h.obs), np.array(h.prev_actions)
    obs[:, 1:], prev[:, 1:] = other.obs[:, 1:], other.prev_actions[:, 1:]
    return JointHistory(h.agent_ids, obs, prev, 0, h.obs_sizes)


def test_models_of_a_partial_view_read_each_agent_alone(seen):
    store = seen[0]
    world, _ = load_registered("world@1", store)
    behavior, _ = load_registered("behavior@1", store)
    assert world.decentralized and world.config.decentralized is None  # the default did it
    assert not behavior.config.centralized
    rng = np.random.default_rng(0)
    h = random_history(rng)
    w, w2 = (
        history_window(x, world.context, world.obs_dim, world.config.dataset_spec().action, "cpu")
        for x in (h, with_others_changed(h, rng))
    )
    with torch.no_grad():
        one, two = world(w), world(w2)
    for a, b in zip(one, two, strict=True):  # every head, agent 0's part
        torch.testing.assert_close(a[:, 0], b[:, 0])
    assert not torch.allclose(one[1][:, 1], two[1][:, 1])  # the others' parts did change


def test_the_planner_decides_from_the_egos_own_partial_history(seen):
    """What agent_0 does depends on its own history alone: the same decision, candidate by
    candidate, whatever the other agents saw and did (the full-view planner reads them)."""
    store = seen[0]
    world, _ = load_registered("world@1", store)
    behavior, _ = load_registered("behavior@1", store)
    rng = np.random.default_rng(1)
    for _ in range(3):
        h = random_history(rng)
        decisions = [
            Planner(world, behavior, PlannerConfig(horizon=3, n_samples=2, seed=5)).decide(
                history, ["agent_0"]
            )[0]
            for history in (h, with_others_changed(h, rng))
        ]
        assert decisions[0].action == decisions[1].action
        assert [s for _, s in decisions[0].candidate_scores] == pytest.approx(
            [s for _, s in decisions[1].candidate_scores], abs=1e-5
        )
    # and its own history does count
    h = random_history(rng)
    other = random_history(rng)
    obs = np.array(h.obs)
    obs[:, 0] = other.obs[:, 0]
    own_changed = JointHistory(h.agent_ids, obs, h.prev_actions, 0, h.obs_sizes)
    scores = [
        [s for _, s in Planner(world, behavior, PlannerConfig(horizon=3, n_samples=2, seed=5))
         .decide(history, ["agent_0"])[0].candidate_scores]
        for history in (h, own_changed)
    ]  # fmt: skip
    assert scores[0] != pytest.approx(scores[1], abs=1e-3)


def test_a_centralized_model_of_a_partial_view_is_refused(seen):
    spec = load_registered("world@1", seen[0])[1].card.spec
    with pytest.raises(ValueError, match=r"world model of a partial view \(obs_radius 0.35\) "
                       r"must be decentralized"):  # fmt: skip
        WorldModel(WorldModelConfig(spec=spec, decentralized=False))
    with pytest.raises(ValueError, match=r"behavior model of a partial view .* decentralized"):
        BehaviorModel(BehaviorModelConfig(spec=spec, centralized=True))
    full = {**spec, "agents": dict.fromkeys(spec["agents"], FULL), "extra": {}}
    assert not WorldModel(WorldModelConfig(spec=full)).decentralized  # full view: attention
