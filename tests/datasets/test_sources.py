"""Trajectory sources: the recorder's output contract, the scripted policies, generation."""

from __future__ import annotations

import gzip
import itertools
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest
from gymnasium import spaces
from pettingzoo import ParallelEnv

from foresight.datasets.schema import SPEC_FILENAME, DatasetSpec, SpecError
from foresight.datasets.sources import (
    POLICY_NAMES,
    SUPPORTED_ENVS,
    RandomPolicy,
    TrajectoryRecorder,
    generate_episodes,
    make_env,
    make_policy,
)

AGENT_COUNTS = {"simple_spread": 3, "simple_reference": 2, "simple_tag": 4}


def read_rows(files: list[str]) -> list[dict]:
    rows = []
    for path in files:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as fh:
            rows.extend(orjson.loads(line) for line in fh)
    return rows


def read_spec(folder: Path) -> DatasetSpec:
    return DatasetSpec.from_json((folder / SPEC_FILENAME).read_text())


def by_episode(rows: list[dict]) -> dict[str, list[dict]]:
    episodes = defaultdict(list)
    for row in rows:
        episodes[row["episode_id"]].append(row)
    return episodes


def team_returns(rows: list[dict]) -> list[float]:
    """Per episode, the mean over agents of each agent's summed reward."""
    out = []
    for ep_rows in by_episode(rows).values():
        totals = defaultdict(float)
        for row in ep_rows:
            totals[row["agent_id"]] += row["reward"]
        out.append(float(np.mean(list(totals.values()))))
    return out


def test_generated_rows_follow_the_contract(tmp_path):
    result = generate_episodes(
        "simple_spread", 3, "noisy", str(tmp_path), seed=2, episodes_per_file=2, record_state=True
    )
    assert [Path(f).name for f in result.files] == [
        "simple_spread-s2-part0000.jsonl",
        "simple_spread-s2-part0001.jsonl",
    ]
    assert sorted(os.listdir(tmp_path)) == sorted(
        [SPEC_FILENAME, *map(os.path.basename, result.files)]
    )
    spec = read_spec(tmp_path)
    assert result.spec_uri == str(tmp_path / SPEC_FILENAME)
    assert spec.env == "simple_spread_v3"
    assert spec.agents == {"agent_0": 18, "agent_1": 18, "agent_2": 18}
    assert spec.action.discrete and spec.action.n == 5
    assert spec.state_dim == 54
    assert spec.extra["policy"] == "noisy" and spec.extra["seed"] == 2

    rows = read_rows(result.files)
    assert result.rows == len(rows) == 3 * 25 * 3 and result.episodes == 3
    episodes = by_episode(rows)
    assert sorted(episodes) == [f"simple_spread-s2-e{i:06d}" for i in range(3)]
    for ep_rows in episodes.values():
        steps = sorted({row["step"] for row in ep_rows})
        assert steps == list(range(25))
        keys = [(row["step"], row["agent_id"]) for row in ep_rows]
        assert len(keys) == len(set(keys)) == 25 * 3  # one row per agent per step
        for row in ep_rows:
            assert len(row["obs"]) == spec.agents[row["agent_id"]]
            assert len(row["state"]) == spec.state_dim
            assert isinstance(row["action"], int) and 0 <= row["action"] < spec.action.n
            assert isinstance(row["reward"], float)
            assert row["terminated"] is False
            assert row["truncated"] is (row["step"] == 24)
            assert row["policy_id"] == "greedy-nearest/eps=0.20"
            assert isinstance(row["timestamp"], float)
    # an observation is what the agent saw before acting: step 0 starts at rest
    first = [r for r in episodes["simple_spread-s2-e000000"] if r["step"] == 0]
    assert all(r["obs"][:2] == [0.0, 0.0] for r in first)


def test_same_seed_same_episodes_other_seed_other_episodes(tmp_path):
    def strip(rows):
        return [{k: v for k, v in row.items() if k != "timestamp"} for row in rows]

    a = generate_episodes("simple_tag", 3, "mixed", str(tmp_path / "a"), seed=7)
    b = generate_episodes(
        "simple_tag", 3, "mixed", str(tmp_path / "b"), seed=7, episodes_per_file=1
    )
    c = generate_episodes("simple_tag", 3, "mixed", str(tmp_path / "c"), seed=8)
    rows_a, rows_b, rows_c = (read_rows(r.files) for r in (a, b, c))
    assert strip(rows_a) == strip(rows_b)  # file rotation does not change the episodes
    assert {r["episode_id"] for r in rows_a}.isdisjoint({r["episode_id"] for r in rows_c})
    assert [r["obs"] for r in rows_a] != [r["obs"] for r in rows_c]


@pytest.mark.parametrize("env", list(SUPPORTED_ENVS))
@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_every_policy_runs_on_every_env(tmp_path, env, policy):
    result = generate_episodes(env, 2, policy, str(tmp_path), seed=1, max_cycles=10)
    spec = read_spec(tmp_path)
    rows = read_rows(result.files)
    assert len(rows) == 2 * 10 * AGENT_COUNTS[env]
    assert len(spec.agents) == AGENT_COUNTS[env]
    for row in rows:
        assert 0 <= row["action"] < spec.action.n
        assert len(row["obs"]) == spec.agents[row["agent_id"]]
        assert row["policy_id"]


def test_versioned_env_names_are_accepted(tmp_path):
    result = generate_episodes("simple_reference_v3", 1, "greedy", str(tmp_path))
    assert Path(result.files[0]).name == "simple_reference-s0-part0000.jsonl"
    assert read_spec(tmp_path).action.n == 50  # 5 moves x 10 words


def test_greedy_beats_random_on_simple_spread(tmp_path):
    greedy = generate_episodes("simple_spread", 30, "greedy", str(tmp_path / "g"), seed=3)
    rand = generate_episodes("simple_spread", 30, "random", str(tmp_path / "r"), seed=3)
    greedy_returns = team_returns(read_rows(greedy.files))
    random_returns = team_returns(read_rows(rand.files))
    assert np.mean(greedy_returns) == pytest.approx(greedy.mean_team_return, rel=1e-4)
    # measured over 200 episodes: random about -27, greedy about -17.5 (mean over agents)
    assert np.mean(greedy_returns) > np.mean(random_returns) + 5.0, (
        np.mean(greedy_returns),
        np.mean(random_returns),
    )


def test_greedy_agents_settle_on_their_landmark():
    env = make_env("simple_spread")
    policy = make_policy("greedy", "simple_spread", rule="fixed1")
    obs, _ = env.reset(seed=0)
    policy.reset(np.random.default_rng(0), env.agents)
    agent = "agent_0"
    while env.agents:
        last = obs[agent]
        # only agent_0 moves, so nobody gets in its way
        obs, *_ = env.step({a: policy.act(a, obs[a]) if a == agent else 0 for a in env.agents})
    assert np.linalg.norm(last[6:8]) < 0.15  # landmark 1 relative position


def test_mixed_policy_draws_per_agent_and_episode(tmp_path):
    result = generate_episodes("simple_spread", 8, "mixed", str(tmp_path), seed=4)
    ids: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in read_rows(result.files):
        ids[row["episode_id"], row["agent_id"]].add(row["policy_id"])
    assert all(len(v) == 1 for v in ids.values())  # fixed within an (episode, agent)
    drawn = [next(iter(v)) for v in ids.values()]
    assert all(re.fullmatch(r"greedy-[a-z0-9]+/eps=0\.[0-6]\d", p) for p in drawn), drawn
    assert len(set(drawn)) >= 12  # 24 draws of rule and epsilon: nearly all distinct
    per_episode = defaultdict(set)
    for (episode, _), v in ids.items():
        per_episode[episode] |= v
    assert any(len(v) > 1 for v in per_episode.values())


def test_recorder_wraps_an_mpe2_env_directly(tmp_path):
    env = make_env("simple_tag")
    policy = RandomPolicy({a: env.action_space(a) for a in env.possible_agents})
    with TrajectoryRecorder(
        env, str(tmp_path), env_name="simple_tag_v3", file_prefix="tag", timestamps=False
    ) as recorder:
        stats = [recorder.record_episode(policy, seed=i) for i in range(2)]
    assert recorder.files == [str(tmp_path / "tag-part0000.jsonl")]
    spec = read_spec(tmp_path)
    assert spec.agents == {"adversary_0": 16, "adversary_1": 16, "adversary_2": 16, "agent_0": 14}
    rows = read_rows(recorder.files)
    assert len(rows) == sum(s.rows for s in stats) == 2 * 25 * 4
    assert {r["episode_id"] for r in rows} == {"tag-e000000", "tag-e000001"}
    assert all("timestamp" not in r and r["policy_id"] == "random" for r in rows)
    assert stats[0].team_return == pytest.approx(
        np.mean(
            [
                sum(
                    r["reward"]
                    for r in rows
                    if r["agent_id"] == a and r["episode_id"] == "tag-e000000"
                )
                for a in spec.agents
            ]
        )
    )


class DepartingEnv(ParallelEnv):
    """Two agents with Box actions; ``b`` terminates after step 2, ``a`` is cut at step 5."""

    metadata = {"name": "departing_v0"}

    def __init__(self) -> None:
        self.possible_agents = ["a", "b"]
        self.agents: list[str] = []
        self.t = 0

    def observation_space(self, agent):
        return spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)

    def action_space(self, agent):
        return spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def _obs(self):
        return {a: np.full(3, self.t, dtype=np.float32) for a in self.agents}

    def reset(self, seed=None, options=None):
        self.agents, self.t = list(self.possible_agents), 0
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions):
        self.t += 1
        rewards = {a: float(np.sum(actions[a])) for a in actions}
        terminated = {a: a == "b" and self.t == 3 for a in actions}
        truncated = {a: self.t == 6 for a in actions}
        self.agents = [a for a in self.agents if not (terminated[a] or truncated[a])]
        return self._obs(), rewards, terminated, truncated, {a: {} for a in actions}


def test_recorder_on_a_custom_env_with_box_actions_and_departing_agents(tmp_path):
    env = DepartingEnv()
    with TrajectoryRecorder(env, str(tmp_path), file_prefix="dep", gzip=True) as recorder:
        recorder.record_episode(RandomPolicy(env.action_space("a")), seed=0)
    spec = read_spec(tmp_path)
    assert spec.env == "departing_v0"
    assert spec.action.kind == "continuous" and spec.action.dim == 2
    assert (spec.action.low, spec.action.high) == (-1.0, 1.0)
    rows = read_rows(recorder.files)
    steps = defaultdict(list)
    for row in rows:
        steps[row["agent_id"]].append(row["step"])
        assert len(row["action"]) == 2 and all(-1.0 <= x <= 1.0 for x in row["action"])
        assert row["obs"] == [float(row["step"])] * 3
    assert steps == {"a": list(range(6)), "b": [0, 1, 2]}
    last_b = [r for r in rows if r["agent_id"] == "b"][-1]
    assert last_b["terminated"] is True and last_b["truncated"] is False


def test_max_steps_marks_the_last_rows_truncated(tmp_path):
    env = DepartingEnv()
    with TrajectoryRecorder(env, str(tmp_path)) as recorder:
        stats = recorder.record_episode(RandomPolicy(env.action_space("a")), max_steps=2)
    rows = read_rows(recorder.files)
    assert stats.steps == 2
    assert [r["truncated"] for r in rows] == [False, False, True, True]


def test_gzip_output_is_readable(tmp_path):
    result = generate_episodes("simple_reference", 3, "greedy", str(tmp_path), gzip=True)
    assert [Path(f).name for f in result.files] == ["simple_reference-s0-part0000.jsonl.gz"]
    with gzip.open(result.files[0], "rt") as fh:
        lines = fh.read().splitlines()
    assert len(lines) == result.rows == 3 * 25 * 2
    assert orjson.loads(lines[0])["episode_id"] == "simple_reference-s0-e000000"


def test_unknown_env_or_policy_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"unknown env 'simple_nope'.*simple_spread.*simple_tag"):
        generate_episodes("simple_nope", 1, "greedy", str(tmp_path))
    with pytest.raises(ValueError, match=r"unknown policy 'smart'.*random.*mixed"):
        generate_episodes("simple_spread", 1, "smart", str(tmp_path))
    with pytest.raises(ValueError, match="accepts: epsilon_range"):
        make_policy("mixed", "simple_spread", epsilon=0.1)
    assert not os.listdir(tmp_path)


def test_a_folder_holds_one_env(tmp_path):
    generate_episodes("simple_spread", 1, "random", str(tmp_path))
    with pytest.raises(SpecError, match="simple_spread_v3"):
        generate_episodes("simple_tag", 1, "random", str(tmp_path))
    assert not [f for f in os.listdir(tmp_path) if f.startswith("simple_tag")]


@pytest.mark.s3
def test_generate_to_s3(s3_store):
    out = s3_store.uri("landing", "spread")
    result = generate_episodes("simple_spread", 3, "mixed", out, episodes_per_file=2, gzip=True)
    assert result.files == [
        f"{out}/simple_spread-s0-part0000.jsonl.gz",
        f"{out}/simple_spread-s0-part0001.jsonl.gz",
    ]
    assert s3_store.fs.list_files(out) == sorted([*result.files, f"{out}/{SPEC_FILENAME}"])
    spec = DatasetSpec.from_json(s3_store.fs.read_bytes(result.spec_uri))
    assert spec.agents["agent_0"] == 18
    rows = [
        orjson.loads(line)
        for uri in result.files
        for line in gzip.decompress(s3_store.fs.read_bytes(uri)).splitlines()
    ]
    assert len(rows) == result.rows == 3 * 25 * 3


def switch_steps(rows: list[dict]) -> tuple[int, int]:
    """(switches, chances) in generated rows: a row whose ``since`` is its step > 0 is the
    first action after a switch; every step > 0 of an agent is a chance to switch."""
    from foresight.datasets.sources.policies import parse_policy_id

    switches = chances = 0
    for row in rows:
        if row["step"] > 0:
            chances += 1
            switches += parse_policy_id(row["policy_id"])[2] == row["step"]
    return switches, chances


@pytest.mark.slow  # thousands of simulated steps per hazard
@pytest.mark.parametrize("hazard", [0.1, 0.3])
def test_switching_policy_switches_at_the_hazard_rate(tmp_path, hazard):
    result = generate_episodes(
        "simple_spread", 400, "switching", str(tmp_path), seed=5, policy_params={"hazard": hazard}
    )
    switches, chances = switch_steps(read_rows(result.files))
    assert chances == 400 * 3 * 24
    # binomial sd is sqrt(28800 h (1 - h)): 51 at 0.1, 78 at 0.3; 4 sd is a band of 7% of
    # the rate at 0.1 and 3.6% at 0.3, so a rate off by a tenth of itself fails
    sd = np.sqrt(chances * hazard * (1 - hazard))
    assert abs(switches - hazard * chances) < 4 * sd, (switches / chances, hazard)


def test_switching_policy_redraws_within_an_episode_and_records_where(tmp_path):
    result = generate_episodes("simple_spread", 10, "switching", str(tmp_path), seed=6)
    from foresight.datasets.sources.policies import parse_policy_id

    by_agent: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in read_rows(result.files):
        by_agent[row["episode_id"], row["agent_id"]].append(row)
    styles_per_agent = []
    for rows in by_agent.values():
        rows.sort(key=lambda r: r["step"])
        assert parse_policy_id(rows[0]["policy_id"])[2] == 0
        for prev, row in itertools.pairwise(rows):
            since = parse_policy_id(row["policy_id"])[2]
            # the style either goes on (same id) or begins at this very step
            assert row["policy_id"] == prev["policy_id"] or since == row["step"]
        styles_per_agent.append(len({r["policy_id"] for r in rows}))
    assert max(styles_per_agent) >= 3  # 1 + 2.4 redraws expected per agent and episode
    assert spec_policy(tmp_path) == ("switching", {})


def spec_policy(folder: Path) -> tuple[str, dict]:
    extra = read_spec(folder).extra
    return extra["policy"], extra["policy_params"]


def test_switching_episode_is_reproducible_from_its_seed(tmp_path):
    def strip(rows):
        return [{k: v for k, v in row.items() if k != "timestamp"} for row in rows]

    params = {"hazard": 0.2}
    a = generate_episodes(
        "simple_spread", 4, "switching", str(tmp_path / "a"), 3, policy_params=params
    )
    b = generate_episodes(
        "simple_spread", 4, "switching", str(tmp_path / "b"), 3, 1, policy_params=params
    )
    c = generate_episodes(
        "simple_spread", 4, "switching", str(tmp_path / "c"), 4, policy_params=params
    )
    rows_a, rows_b, rows_c = (strip(read_rows(r.files)) for r in (a, b, c))
    assert rows_a == rows_b
    assert [r["policy_id"] for r in rows_a] != [r["policy_id"] for r in rows_c]
    assert spec_policy(tmp_path / "a") == ("switching", params)


def test_hazard_zero_keeps_one_style_and_one_redraws_every_step():
    from foresight.datasets.sources.policies import parse_policy_id

    env = make_env("simple_spread")
    for hazard, expect in ((0.0, 1), (1.0, 25)):
        policy = make_policy("switching", "simple_spread", hazard=hazard)
        obs, _ = env.reset(seed=0)
        policy.reset(np.random.default_rng(0), env.agents)
        sinces = []
        while env.agents:
            actions = {a: policy.act(a, obs[a]) for a in env.agents}
            sinces.append(parse_policy_id(policy.policy_id("agent_0"))[2])
            obs, *_ = env.step(actions)
        assert len(set(sinces)) == expect


@pytest.mark.parametrize("hazard", [-0.1, 1.5, float("nan"), "0.1", True])
def test_a_hazard_outside_0_1_is_refused_by_name(tmp_path, hazard):
    with pytest.raises(ValueError, match="hazard"):
        generate_episodes(
            "simple_spread", 1, "switching", str(tmp_path), policy_params={"hazard": hazard}
        )
    assert not list(tmp_path.iterdir())  # nothing written


def test_hazard_is_for_the_switching_policy_only(tmp_path):
    with pytest.raises(ValueError, match="takes no parameter \\['hazard'\\]"):
        generate_episodes("simple_spread", 1, "mixed", str(tmp_path), policy_params={"hazard": 0.1})
