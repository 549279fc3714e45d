"""simple_spread with 6 agents through the whole chain, and the bad team sizes refused.

Generate -> ingest -> train world and behavior (tiny budgets, the CLI's model defaults) ->
one planner decision for all 6 agents -> arena episodes -> the service's /act, all at N = 6,
with the team size given once to ``foresight generate`` and read from the data after that.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from foresight.datasets.sources.generate import generate_episodes
from foresight.datasets.sources.simulators import agent_kwargs
from foresight.pipelines.cli import main
from foresight.training.agents.arena import run_arena
from foresight.training.agents.planning import JointHistory, Planner, PlannerConfig
from foresight.training.registry import load_registered

from .chain import cli, trained_store

N = 6
OBS = 4 + 2 * N + 4 * (N - 1)  # 36: self vel/pos, landmarks, others' positions and comms


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    """A store with a 6-agent dataset and a world and behavior model trained on it."""
    yield from trained_store(tmp_path_factory.mktemp("six"), "spread", "--agents", str(N))


def test_the_team_size_is_in_the_data_from_generate_on(six):
    store, made, ingested, _ = six
    assert made["rows"] == 12 * 25 * N
    assert ingested["spec"]["agents"] == {f"agent_{i}": OBS for i in range(N)}
    assert ingested["spec"]["extra"]["agents"] == N
    for kind in ("world", "behavior"):
        _, mv = load_registered(f"{kind}@1", store)
        assert len(mv.card.spec["agents"]) == N, kind


def test_the_planner_decides_for_all_six_agents(six):
    store = six[0]
    world, wmv = load_registered("world@1", store)
    behavior, bmv = load_registered("behavior@1", store)
    planner = Planner(
        world, behavior, PlannerConfig(horizon=3, n_samples=2), world_card=wmv.card,
        behavior_card=bmv.card,
    )  # fmt: skip
    agents = [f"agent_{i}" for i in range(N)]
    rng = np.random.default_rng(0)
    history = JointHistory(
        agents, rng.normal(size=(4, N, OBS)).astype(np.float32), np.zeros((4, N), np.int64)
    )
    decisions = planner.decide(history, agents)
    assert [d.agent for d in decisions] == agents
    assert all(0 <= int(d.action) < 5 for d in decisions)


@pytest.mark.slow  # planner episodes at six agents
def test_arena_at_six_agents_with_the_trained_models(six, monkeypatch):
    store = six[0]
    monkeypatch.setenv("FORESIGHT_STORE", store.root)
    result = cli(
        "arena", "--env", "simple_spread", "--agents", str(N), "--episodes", "2",
        "--controllers", "random,greedy,bc,anticipatory", "--world", "world@1",
        "--behavior", "behavior@1",
    )  # fmt: skip
    assert result["agents"] == N
    for team in ("random", "greedy", "bc", "anticipatory"):
        r = result["controllers"][team]
        assert r["episodes"] == 2 and np.isfinite(r["mean_return"])
    assert result["controllers"]["anticipatory"]["decisions_per_s"] > 0


def test_served_act_at_six_agents_and_a_three_agent_request_refused(six, monkeypatch):
    from foresight.serving.schemas import ActionQuery, ActRequest
    from foresight.serving.service import Foresight

    store = six[0]
    monkeypatch.setenv("FORESIGHT_STORE", store.root)
    monkeypatch.setenv("FORESIGHT_WORLD_MODEL", "world@1")
    monkeypatch.setenv("FORESIGHT_BEHAVIOR_MODEL", "behavior@1")
    monkeypatch.setenv("FORESIGHT_RELOAD_SECONDS", "0")
    monkeypatch.delenv("FORESIGHT_API_KEY", raising=False)
    agents = [f"agent_{i}" for i in range(N)]
    rng = np.random.default_rng(1)
    obs = {a: rng.normal(size=(3, OBS)).tolist() for a in agents}
    past = {a: rng.integers(0, 5, size=2).tolist() for a in agents}
    svc = Foresight()
    try:
        out = asyncio.run(
            svc.act(**dict(ActRequest(obs=obs, past_actions=past, egos=agents, horizon=3)))
        )
        assert list(out.agents) == agents
        assert all(set(d.predicted_others) == set(agents) - {a} for a, d in out.agents.items())
        small = {a: rng.normal(size=(1, 18)).tolist() for a in agents[:3]}
        with pytest.raises(Exception, match="36") as refused:
            asyncio.run(svc.act(**dict(ActRequest(obs=small, egos=agents[:1]))))
        assert "18" in str(refused.value)
    finally:
        svc.shutdown()
    # once it is shut down, requests in this process are no longer checked against its models
    assert len(ActionQuery(obs=small).obs) == 3


def test_arena_refuses_models_trained_at_another_team_size(six):
    store = six[0]
    world, _ = load_registered("world@1", store)
    behavior, _ = load_registered("behavior@1", store)
    # without a count the arena plays the models' own team size
    assert run_arena("simple_spread", 1, ["bc"], behavior=behavior, max_cycles=2)["agents"] == N
    with pytest.raises(ValueError) as refused:
        run_arena("simple_spread", 1, ["anticipatory"], world=world, behavior=behavior, agents=3)
    message = str(refused.value)
    for words in ("trained with 6 agents", "[36]", "3 agents", "[18]", "--agents 6"):
        assert words in message, (words, message)
    with pytest.raises(ValueError, match=r"trained with 6 agents.*10 agents"):
        run_arena("simple_spread", 1, ["bc"], behavior=behavior, agents=10)


@pytest.mark.parametrize(
    "env,agents,words",
    [
        ("simple_spread", 1, "simple_spread takes 2 to 10 agents, got agents=1"),
        ("simple_spread", 11, "simple_spread takes 2 to 10 agents, got agents=11"),
        ("simple_spread", 0, "takes 2 to 10"),
        ("simple_reference", 4, "simple_reference has a fixed roster"),
        ("simple_tag", 6, "simple_tag has a fixed roster"),
    ],
)
def test_bad_team_sizes_are_refused_naming_env_and_range(tmp_path, env, agents, words):
    with pytest.raises(ValueError, match=words):
        agent_kwargs(env, agents)
    with pytest.raises(ValueError, match=words):
        generate_episodes(env, 1, "greedy", str(tmp_path / "logs"), agents=agents)
    assert not (tmp_path / "logs").exists()  # nothing half-written
    with pytest.raises(ValueError, match=words):
        run_arena(env, 1, ["greedy"], agents=agents)


def test_cli_refuses_a_bad_team_size_in_one_line(tmp_path, capsys):
    code = main(
        ["generate", "--env", "simple_tag", "--agents", "6", "--episodes", "1",
         "--out", str(tmp_path / "logs")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "simple_tag has a fixed roster" in err and err.count("\n") == 1
    code = main(["arena", "--agents", "12", "--episodes", "1", "--controllers", "greedy"])
    err = capsys.readouterr().err
    assert code == 2 and "simple_spread takes 2 to 10 agents, got agents=12" in err


@pytest.mark.parametrize("policy", ["random", "greedy", "noisy", "mixed", "switching"])
@pytest.mark.parametrize("agents", [2, 10])
def test_scripted_policies_play_any_team_size(tmp_path, policy, agents):
    result = generate_episodes(
        "simple_spread", 2, policy, str(tmp_path / "logs"), agents=agents, max_cycles=5
    )
    assert result.rows == 2 * 5 * agents
    spec = json.loads((tmp_path / "logs" / "foresight_spec.json").read_text())
    assert len(spec["agents"]) == agents and spec["extra"]["agents"] == agents
