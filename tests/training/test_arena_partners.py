"""Arena teams among partners that change: ``partners="switching"`` and ``--partners``."""

from __future__ import annotations

import json

import pytest
import torch

from foresight.datasets.sources.policies import parse_policy_id
from foresight.pipelines.cli import main
from foresight.training.agents.arena import (
    SwitchingController,
    env_spec,
    run_arena,
    with_partners,
)
from foresight.training.agents.planning import PlannerConfig
from foresight.training.models.behavior_model import BehaviorModel, BehaviorModelConfig
from foresight.training.models.world_model import WorldModel, WorldModelConfig

FAST_PLANNER = PlannerConfig(horizon=2, n_samples=2, search="pulse", pulses=(1,))


class Recording(SwitchingController):
    """The switching partners, noting each step's policy id of every agent they drive."""

    def __init__(self, env: str, log: list) -> None:
        super().__init__(env)
        self.log = log

    def reset(self, info) -> None:
        super().reset(info)
        self.controlled = info.controlled
        self.log.append([])

    def act(self, history, agents):
        actions = super().act(history, agents)
        self.log[-1].append({a: self.policy.policy_id(a) for a in agents})
        return actions


def test_partners_switch_around_the_controller_under_test():
    logs: dict[str, list] = {}
    seen = []

    class Probe:
        def reset(self, info):
            seen.append((info.controlled, info.team))

        def act(self, history, agents):
            return dict.fromkeys(agents, 0)

    teams = ["probe", "greedy"]
    result = run_arena(
        "simple_spread",
        8,
        teams,
        seed=2,
        partners="switching",
        factories={
            "probe": lambda env, models: Probe(),
            "switching": lambda env, models: Recording(env, logs.setdefault(str(len(logs)), [])),
        },
    )
    assert set(result["controllers"]) == {"probe+switching", "greedy+switching"}
    assert result["partners"] == "switching"
    assert len(seen) == 8
    for controlled, team in seen:  # the controller under test drives the first agent only
        assert controlled == ["agent_0"]
        assert team == {"agent_0": "probe", "agent_1": "switching", "agent_2": "switching"}
    probe_log, greedy_log = logs["0"], logs["1"]
    assert len(probe_log) == len(greedy_log) == 8
    switches = 0
    for episode in probe_log:
        assert all(set(step) == {"agent_1", "agent_2"} for step in episode)
        assert len(episode) == 25
        for t, step in enumerate(episode):
            switches += sum(parse_policy_id(p)[2] == t > 0 for p in step.values())
    assert switches >= 15  # 8 episodes x 2 agents x 24 steps x 0.1: about 38 expected
    # the partners' switches and styles come from the episode's seed, not from the team
    assert probe_log == greedy_log


def test_anticipatory_among_switching_partners_runs():
    spec = env_spec("simple_spread").to_dict()
    torch.manual_seed(0)
    world = WorldModel(WorldModelConfig(spec=spec, d_model=16, n_layers=1, n_heads=2, mlp_ratio=2))
    behavior = BehaviorModel(BehaviorModelConfig(spec=spec, d_model=16, context=2, expert_width=32))
    result = run_arena(
        "simple_spread",
        2,
        ["anticipatory", "greedy"],
        seed=1,
        partners="switching",
        world=world.eval(),
        behavior=behavior.eval(),
        planner_config=FAST_PLANNER,
        max_cycles=4,
    )
    assert set(result["controllers"]) == {"anticipatory+switching", "greedy+switching"}


def test_a_team_that_names_its_partners_is_refused_with_partners():
    assert with_partners("greedy", None) == "greedy"
    assert with_partners("greedy", "switching") == "greedy+switching"
    with pytest.raises(ValueError, match="already names its partners"):
        run_arena("simple_spread", 1, ["greedy+random"], partners="switching")


def test_cli_arena_partners_and_generate_hazard(tmp_path, capsys):
    store = str(tmp_path / "store")
    code = main(
        [
            "--store",
            store,
            "arena",
            "--controllers",
            "random,greedy",
            "--partners",
            "switching",
            "--episodes",
            "3",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["controllers"]) == {"random+switching", "greedy+switching"}
    assert out["partners"] == "switching"

    assert main(["arena", "--controllers", "greedy+random", "--partners", "switching"]) == 2
    assert "already names its partners" in capsys.readouterr().err

    logs = tmp_path / "logs"
    args = ["generate", "--env", "simple_spread", "--episodes", "2", "--out", str(logs)]
    assert main([*args, "--policy", "switching", "--hazard", "1.5"]) == 2
    assert "hazard must be in [0, 1]" in capsys.readouterr().err
    assert main([*args, "--policy", "mixed", "--hazard", "0.2"]) == 2
    assert "hazard" in capsys.readouterr().err
    assert main([*args, "--policy", "switching", "--hazard", "0.5", "--json"]) == 0
    spec = json.loads((logs / "foresight_spec.json").read_text())
    assert spec["extra"]["policy"] == "switching"
    assert spec["extra"]["policy_params"] == {"hazard": 0.5}
