"""Closed-loop arena: do agents that query the models coordinate better than reactive ones?

    result = run_arena("simple_spread", 200, ["random", "greedy", "bc", "anticipatory"],
                       seed=0, world=world, behavior=behavior, out_dir="store/reports/arena")
    result["controllers"]["anticipatory"]["mean_return"], ...["ci95"]

Every episode runs one team: each agent is driven by one controller. A team name is a
controller name (``greedy``: every agent greedy) or names joined by ``+``
(``anticipatory+greedy``: the first agent anticipatory, the rest greedy; the last name
covers the remaining agents). Episode ``i`` is seeded from ``(seed, i)`` alone, so every
team plays the same start states (a paired comparison). ``partners="switching"`` plays each
team's controller as the first agent among partners of that kind (team ``greedy`` becomes
``greedy+switching``, see :func:`with_partners`).

Built-in controllers: ``random``; ``greedy`` (the reactive scripted policy of
:mod:`foresight.datasets.sources.policies`); ``bc`` (the behavior model's most likely action:
reactive imitation); ``anticipatory`` (the :class:`~foresight.training.agents.planning.Planner`);
``scripted-anticipation`` (:mod:`foresight.datasets.sources.anticipation`, a hand-written agent that
knows the others' true rule); ``switching`` (the scripted ``switching`` policy: each agent
redraws its rule and epsilon at random steps, partners that change under you);
``anticipatory-known-reward`` (the planner scoring imagined states by the env's own reward,
its built-in objective, instead of the world model's reward head: simple_spread and
simple_tag); ``offline-rl`` (the offline-RL peer a user would train on
the same logs instead: :mod:`foresight.training.agents.offline_rl`). More come in through
``factories`` (name -> factory), e.g. a remote controller calling the HTTP service's ``/act``.

Team return: per episode, the sum over the team's agents of each one's episode return. In
a competitive env (simple_tag) the team is one side, the adversaries; the other side (the
prey) follows a fixed scripted rule named in the result (``opponents``), and its rewards
are not counted. In a cooperative env every agent is on the team.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from foresight.datasets.schema import ActionSpec, DatasetSpec, view_of
from foresight.datasets.sources.anticipation import ScriptedAnticipation
from foresight.datasets.sources.generate import make_env
from foresight.datasets.sources.policies import (
    SUPPORTED_ENVS,
    GreedyPolicy,
    make_policy,
    resolve_env_name,
)
from foresight.datasets.sources.simulators import SIMULATORS, agent_kwargs, simulator_of
from foresight.training.agents.objectives import BUILT_IN, resolve_objective
from foresight.training.agents.offline_rl import OfflineRLController
from foresight.training.agents.planning import JointHistory, Planner, PlannerConfig, history_window
from foresight.training.data import check_model_spec
from foresight.training.registry.card import ModelCard

Action = int | np.ndarray


@dataclass
class EpisodeInfo:
    """What a controller learns at the start of an episode."""

    env: str
    """Short env name (``simple_spread``)."""
    episode: int
    """Episode index in this arena run."""
    env_seed: int
    """Seed given to ``env.reset``."""
    agents: list[str]
    """Every agent of the episode, in env order (the columns of the history)."""
    controlled: list[str]
    """The agents this controller drives."""
    team: dict[str, str]
    """Agent -> name of the controller driving it (the whole roster)."""
    obs_sizes: dict[str, int]
    """Agent -> observation size."""
    rng: np.random.Generator
    """This controller's random stream for the episode."""


class Controller(Protocol):
    """Drives some agents of an episode: the arena's only view of an agent's mind."""

    def reset(self, info: EpisodeInfo) -> None:
        """Start an episode."""

    def act(self, history: JointHistory, agents: Sequence[str]) -> Mapping[str, Action]:
        """The next action of each of ``agents`` given the joint history so far."""


@dataclass
class ArenaModels:
    """What factories may build controllers from."""

    world: Any = None
    behavior: Any = None
    planner_config: PlannerConfig | None = None
    world_card: ModelCard | None = None
    behavior_card: ModelCard | None = None
    offline_rl: Any = None
    """The offline-RL peer's shared Q-network (:mod:`foresight.training.models.offline_rl`)."""


ControllerFactory = Callable[[str, ArenaModels], Controller]
"""(short env name, models) -> a fresh controller. A factory whose controllers play with
models the arena is not given (a service's) names their training specs in a
``model_specs`` attribute (label -> spec dict): the arena checks them like its own."""


class EpisodeObserver(Protocol):
    """Sees every agent's steps of an episode: a controller offers one as its ``observer``
    attribute (``foresight.serving.remote``'s HTTP controllers record the episodes they
    play through it). A controller's ``policy_id`` attribute, when it has one, names it in
    ``policies`` (else its controller name)."""

    def begin(self, info: EpisodeInfo) -> None: ...

    def step(
        self,
        obs: Mapping[str, Any],
        actions: Mapping[str, Action],
        rewards: Mapping[str, float],
        terminated: Mapping[str, bool],
        truncated: Mapping[str, bool],
        policies: Mapping[str, str],
    ) -> None:
        """One env step: what each acting agent saw, did and got for it."""

    def end(self) -> None: ...


# -- built-in controllers ----------------------------------------------------------------


class RandomController:
    """Uniform random actions."""

    def __init__(self, env: str) -> None:
        self.n = _action_spec(env).n

    def reset(self, info: EpisodeInfo) -> None:
        self.rng = info.rng

    def act(self, history: JointHistory, agents: Sequence[str]) -> dict[str, int]:
        return {a: int(self.rng.integers(self.n)) for a in agents}


class GreedyController:
    """The reactive scripted policy: each agent reads its own observation only."""

    policy_name = "greedy"

    def __init__(self, env: str) -> None:
        self.policy = make_policy(self.policy_name, env)
        if not isinstance(self.policy, GreedyPolicy):
            raise TypeError(f"greedy policy expected for {env}, got {type(self.policy).__name__}")

    def reset(self, info: EpisodeInfo) -> None:
        self.policy.reset(info.rng, info.agents)

    def act(self, history: JointHistory, agents: Sequence[str]) -> dict[str, int]:
        last, ids, sizes = history.obs[-1], history.agent_ids, history.obs_sizes or {}
        out = {}
        for a in agents:
            n = ids.index(a)
            out[a] = int(self.policy.act(a, np.asarray(last[n][: sizes.get(a, len(last[n]))])))
        return out


class OpponentController(GreedyController):
    """A competitive env's other side: the greedy policy, each opponent's first rule, no
    noise (simple_tag's prey flees the nearest adversary)."""

    policy_id: str | None = None
    """What recorded episodes name the opponents' policy (``greedy-flee-nearest/eps=0.00``)."""

    def reset(self, info: EpisodeInfo) -> None:
        super().reset(info)
        self.policy_id = self.policy.policy_id(info.controlled[0])


class SwitchingController(GreedyController):
    """Scripted partners that change: the ``switching`` policy (default hazard), each agent
    redrawing its rule and epsilon at random steps from this controller's episode stream."""

    policy_name = "switching"


class BehaviorCloningController:
    """The behavior model's most likely action: imitation, reacting to the history."""

    def __init__(self, behavior) -> None:
        self.model = behavior.eval()
        self.spec = DatasetSpec.from_dict(behavior.config.spec)
        self.device = next(behavior.parameters()).device

    def reset(self, info: EpisodeInfo) -> None:
        pass

    @torch.no_grad()
    def act(self, history: JointHistory, agents: Sequence[str]) -> dict[str, int]:
        w = history_window(
            history, self.model.context, self.model.obs_dim, self.spec.action, self.device
        )
        mode = self.model.action_distribution(w).mode()[0]  # (N,)
        return {a: int(mode[history.agent_ids.index(a)]) for a in agents}


class AnticipatoryController:
    """The planner: every controlled agent decides by imagining the others' next moves. In
    a competitive env it scores plans by its own side's predicted rewards."""

    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        self.team: list[str] | None = None

    def reset(self, info: EpisodeInfo) -> None:
        self.team = team_agents(info.team)

    def act(self, history: JointHistory, agents: Sequence[str]) -> dict[str, Action]:
        decisions = self.planner.decide(history, list(agents), team=self.team)
        return {d.agent: d.action for d in decisions}


def _need(models: ArenaModels, *what: str) -> None:
    missing = [w for w in what if getattr(models, w) is None]
    if missing:
        raise ValueError(f"this controller needs a {' and a '.join(missing)} model: pass {missing}")


def _bc(env: str, models: ArenaModels) -> Controller:
    _need(models, "behavior")
    return BehaviorCloningController(models.behavior)


def _anticipatory(env: str, models: ArenaModels) -> Controller:
    _need(models, "world", "behavior")
    planner = Planner(
        models.world,
        models.behavior,
        models.planner_config or PlannerConfig(),
        world_card=models.world_card,
        behavior_card=models.behavior_card,
    )
    return AnticipatoryController(planner)


def _anticipatory_known_reward(env: str, models: ArenaModels) -> Controller:
    """The planner scoring plans by the env's own reward computed on the imagined states
    (its built-in objective, not the world model's reward head): the known-objective case,
    and how much of the gap is the learned reward's."""
    if env not in BUILT_IN:
        raise ValueError(
            f"anticipatory-known-reward needs {env}'s reward as an objective; built-in "
            f"objectives: {', '.join(BUILT_IN)}"
        )
    config = replace(models.planner_config or PlannerConfig(), objective=env)
    return _anticipatory(env, replace(models, planner_config=config))


def _offline_rl(env: str, models: ArenaModels) -> Controller:
    """The offline-RL peer: argmax of the shared Q-network over each agent's own history."""
    _need(models, "offline_rl")
    return OfflineRLController(models.offline_rl)


DEFAULT_FACTORIES: dict[str, ControllerFactory] = {
    "random": lambda env, models: RandomController(env),
    "greedy": lambda env, models: GreedyController(env),
    "bc": _bc,
    "anticipatory": _anticipatory,
    "scripted-anticipation": lambda env, models: ScriptedAnticipation(env),
    "switching": lambda env, models: SwitchingController(env),
    "anticipatory-known-reward": _anticipatory_known_reward,
    "offline-rl": _offline_rl,
}


# -- the arena ----------------------------------------------------------------------------


def _action_spec(env: str) -> ActionSpec:
    e = make_env(env)
    try:
        space = e.action_space(e.possible_agents[0])
        return ActionSpec("discrete", n=int(space.n))
    finally:
        e.close()


def env_spec(
    env: str, max_cycles: int = 25, agents: int | None = None, obs_radius: float | None = None
) -> DatasetSpec:
    """The dataset spec of an mpe2 env (``agents`` of them, where it takes a count; seen
    ``obs_radius`` far, None: the full view) as recorded by ``generate_episodes``."""
    name = resolve_env_name(env)
    e = make_env(name, max_cycles=max_cycles, obs_radius=obs_radius, **agent_kwargs(name, agents))
    try:
        sizes = {a: int(np.prod(e.observation_space(a).shape)) for a in e.possible_agents}
        n = int(e.action_space(e.possible_agents[0]).n)
    finally:
        e.close()
    return DatasetSpec(
        env=SUPPORTED_ENVS[name],
        agents=sizes,
        action=ActionSpec("discrete", n=n),
        extra={"obs_radius": obs_radius},
    )


def _trained_here(trained: dict, name: str) -> DatasetSpec | None:
    """The spec a model was trained on, when it is one of env ``name``'s (else None)."""
    was = DatasetSpec.from_dict(trained)
    return was if simulator_of(was.env) == name else None


def _first_trained_here(name: str, specs: Sequence[dict]) -> DatasetSpec | None:
    """The first of ``specs`` that is one of env ``name``'s (None: none is)."""
    return next((was for t in specs if (was := _trained_here(t, name)) is not None), None)


def trained_team_size(name: str, specs: Sequence[dict]) -> int | None:
    """The team size to play ``name`` at with models trained on ``specs``: the first model's
    own count where the env takes one (simple_spread), None (the env's roster) otherwise."""
    was = _first_trained_here(name, specs)
    return None if SIMULATORS[name].agents is None or was is None else len(was.agents)


def trained_view(name: str, specs: Sequence[dict]) -> float | None:
    """The view to play ``name`` with models trained on ``specs``: the first model's radius
    (None: the full view, also without models)."""
    was = _first_trained_here(name, specs)
    return None if was is None else view_of(was)


def _check_team_size(label: str, trained: dict | None, spec: DatasetSpec, name: str) -> None:
    """Refuse a model trained on this env with another team size than the arena's, naming
    both counts and observation sizes (an observation that grows with the team fits no other
    size). Models of another env are left to ``check_model_spec``."""
    was = None if trained is None else _trained_here(trained, name)
    if was is None or len(was.agents) == len(spec.agents):
        return
    sizes, trained_sizes = sorted(set(spec.agents.values())), sorted(set(was.agents.values()))
    if sizes != trained_sizes:
        raise ValueError(
            f"{label} was trained with {len(was.agents)} agents (observation sizes "
            f"{trained_sizes}); this arena has {len(spec.agents)} agents (observation sizes "
            f"{sizes}): play it with agents={len(was.agents)} (--agents {len(was.agents)}) "
            "or use a model trained at this team size"
        )


OPPONENT = "opponent"
"""The roster's name for a competitive env's other side (:class:`OpponentController`)."""


def team_roster(team: str, agents: Sequence[str], env: str | None = None) -> dict[str, str]:
    """Agent -> controller name for a team name (``greedy``, ``anticipatory+greedy``). In a
    competitive ``env`` the team drives its own side; the others are :data:`OPPONENT`."""
    opponent = SIMULATORS[resolve_env_name(env)].opponent if env else None
    side = [a for a in agents if not (opponent and opponent(a))]
    names = team.split("+")
    roster = {a: names[min(i, len(names) - 1)] for i, a in enumerate(side)}
    return {a: roster.get(a, OPPONENT) for a in agents}


def team_agents(roster: Mapping[str, str]) -> list[str] | None:
    """The agents a team's return counts: its own side in a competitive env, None (every
    agent) in a cooperative one."""
    if OPPONENT not in roster.values():
        return None
    return [a for a, name in roster.items() if name != OPPONENT]


def with_partners(team: str, partners: str | None) -> str:
    """The team that puts ``team``'s controller on the first agent among ``partners``.

    ``with_partners("anticipatory", "switching") == "anticipatory+switching"``; no partners
    leaves the team as it is. A team that already names its partners (``a+b``) is refused.
    """
    if not partners:
        return team
    if "+" in team:
        raise ValueError(
            f"team {team!r} already names its partners; with partners {partners!r} give one "
            "controller per team (it drives the first agent)"
        )
    return f"{team}+{partners}"


def ci95(values: Sequence[float]) -> tuple[float, float]:
    """Normal-approximation 95% interval of the mean (t quantile for small samples)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        m = float(x.mean()) if x.size else math.nan
        return (m, m)
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 8: 2.36, 10: 2.26, 15: 2.14, 20: 2.09}
    q = 1.96 if x.size > 30 else t[max(k for k in t if k <= x.size)]
    half = q * x.std(ddof=1) / math.sqrt(x.size)
    return (float(x.mean() - half), float(x.mean() + half))


@dataclass
class _TeamStats:
    returns: list[float] = field(default_factory=list)
    decisions: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _play_episode(
    env_name: str,
    env,
    team: str,
    factories: Mapping[str, ControllerFactory],
    models: ArenaModels,
    controllers: dict[str, Controller],
    episode: int,
    seed: int,
    stats: _TeamStats,
    history_steps: int,
) -> float:
    rng = np.random.default_rng([seed, episode])
    env_seed = int(rng.integers(2**31 - 1))
    obs, _ = env.reset(seed=env_seed)
    agents = list(env.possible_agents)
    sizes = {a: int(np.prod(env.observation_space(a).shape)) for a in agents}
    D = max(sizes.values())
    roster = team_roster(team, agents, env_name)
    counted = set(team_agents(roster) or agents)
    groups: dict[str, list[str]] = {}
    for a, name in roster.items():
        groups.setdefault(name, []).append(a)
    for k, (name, members) in enumerate(groups.items()):
        if name not in controllers:
            build = factories[name] if name != OPPONENT else lambda e, m: OpponentController(e)
            controllers[name] = build(env_name, models)
        info = EpisodeInfo(
            env=env_name,
            episode=episode,
            env_seed=env_seed,
            agents=agents,
            controlled=list(members),
            team=dict(roster),
            obs_sizes=sizes,
            rng=np.random.default_rng([seed, episode, 1 + k]),
        )
        controllers[name].reset(info)
    observers = {id(o): o for name in groups if (o := getattr(controllers[name], "observer", None))}
    for observer in observers.values():
        observer.begin(
            EpisodeInfo(
                env=env_name,
                episode=episode,
                env_seed=env_seed,
                agents=agents,
                controlled=list(agents),  # an observer sees every agent
                team=dict(roster),
                obs_sizes=sizes,
                rng=np.random.default_rng([seed, episode, 0]),
            )
        )

    def joint(o: dict) -> np.ndarray:
        out = np.zeros((len(agents), D), dtype=np.float32)
        for n, a in enumerate(agents):
            if a in o:
                out[n, : sizes[a]] = np.asarray(o[a], dtype=np.float32).reshape(-1)
        return out

    seen, taken = [joint(obs)], []
    total = 0.0
    while env.agents:
        start = max(0, len(seen) - history_steps)
        prev = [
            taken[t - 1] if t > 0 else np.zeros(len(agents), np.int64)
            for t in range(start, len(seen))
        ]
        history = JointHistory(agents, np.stack(seen[start:]), np.stack(prev), start, sizes)
        actions: dict[str, Any] = {}
        for name, members in groups.items():
            live = [a for a in members if a in env.agents]
            t0 = time.perf_counter()
            chosen = controllers[name].act(history, live)
            if name != OPPONENT:  # a team's speed is its own controllers'
                stats.seconds[name] = stats.seconds.get(name, 0.0) + time.perf_counter() - t0
                stats.decisions[name] = stats.decisions.get(name, 0) + len(live)
            for a in live:
                actions[a] = int(chosen[a])
        seen_obs = obs
        obs, rewards, terminated, truncated, _ = env.step(actions)
        for observer in observers.values():
            policies = {
                a: getattr(controllers[roster[a]], "policy_id", None) or roster[a] for a in actions
            }
            observer.step(seen_obs, actions, rewards, terminated, truncated, policies)
        total += float(sum(r for a, r in rewards.items() if a in counted))
        taken.append(np.array([actions.get(a, 0) for a in agents], dtype=np.int64))
        seen.append(joint(obs))
    for observer in observers.values():
        observer.end()
    return total


def run_arena(
    env: str,
    episodes: int,
    controllers: Sequence[str],
    seed: int = 0,
    *,
    world=None,
    behavior=None,
    planner_config: PlannerConfig | None = None,
    world_card: ModelCard | None = None,
    behavior_card: ModelCard | None = None,
    offline_rl=None,
    factories: Mapping[str, ControllerFactory] | None = None,
    max_cycles: int = 25,
    out_dir: str | Path | None = None,
    history_steps: int = 32,
    progress: bool = False,
    partners: str | None = None,
    agents: int | None = None,
    obs_radius: float | None = None,
) -> dict[str, Any]:
    """Play ``episodes`` episodes of ``env`` with each team in ``controllers``.

    ``agents`` sets the team size where the env takes one (simple_spread's ``N``); None
    plays at the models' own team size (the env's default without models). Models trained
    at another count are refused, naming both.

    ``obs_radius``: every agent sees that far (:mod:`foresight.datasets.sources.views`), and
    every controller, scripted or not, acts on those partial observations; models must have
    been trained on that view (a full-view model is refused under a partial one, naming
    both). None plays the models' own view (the full view without models).

    ``partners`` (e.g. ``"switching"``): each team is one controller driving the first
    agent, the others driven by ``partners`` (teams are named ``team+partners``).

    Returns ``{"env", "episodes", "seed", "controllers": {team: {"mean_return", "ci95":
    (low, high), "std", "episodes", "returns", "decisions_per_s", "seconds"}}, "gap":
    {...}, "opponents", "files": {...}}``. ``opponents`` (competitive envs): the other
    side's agents and policy, None in a cooperative env. ``gap`` (when ``random`` and
    ``greedy`` both ran) holds G =
    greedy - random and each team's return over greedy in units of G. With ``out_dir``, a
    JSON and a PNG (means with 95% intervals) are written there.
    """
    name = resolve_env_name(env)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not controllers:
        raise ValueError("no controllers to compare")
    controllers = [with_partners(team, partners) for team in controllers]
    all_factories = {**DEFAULT_FACTORIES, **(factories or {})}
    for team in controllers:
        for part in team.split("+"):
            if part not in all_factories:
                raise ValueError(
                    f"unknown controller {part!r} in team {team!r}; known: {sorted(all_factories)}"
                )
    models = ArenaModels(world, behavior, planner_config, world_card, behavior_card, offline_rl)
    trained = [  # (label, training spec) of every model a team plays with
        (label, model.config.spec)
        for label, model in (
            ("world model", world),
            ("behavior model", behavior),
            ("offline-rl model", offline_rl),
        )
        if model is not None
    ]
    used = sorted({part for team in controllers for part in team.split("+")})
    for part in used:  # models behind a factory (a service's): checked the same way
        for label, model_spec in getattr(all_factories[part], "model_specs", {}).items():
            trained.append((f"{label} (playing {part})", model_spec))
    if agents is None:  # the models' own team size, where the env takes one
        agents = trained_team_size(name, [model_spec for _, model_spec in trained])
    if obs_radius is None:  # and their own view
        obs_radius = trained_view(name, [model_spec for _, model_spec in trained])
    spec = env_spec(name, max_cycles, agents, obs_radius)
    for label, model_spec in trained:
        _check_team_size(label, model_spec, spec, name)
        check_model_spec(label, model_spec, spec)
    planners = any(p.startswith("anticipatory") for p in used)
    if planners and world is not None and planner_config is not None:  # refused up front
        resolve_objective(planner_config.objective, DatasetSpec.from_dict(world.config.spec))
    if obs_radius is not None and any(
        "anticipatory-known-reward" in team.split("+") for team in controllers
    ):
        raise ValueError(
            "anticipatory-known-reward scores imagined states by the env's reward, which a "
            f"partial view (obs_radius {obs_radius:g}) does not show; leave it out or play the "
            "full view"
        )

    game = make_env(
        name,
        max_cycles=max_cycles,
        checked=False,
        obs_radius=obs_radius,
        **agent_kwargs(name, agents),
    )
    results: dict[str, Any] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes * len(controllers), desc=f"arena {name}", unit="ep")
    try:
        for team in controllers:
            stats = _TeamStats()
            built: dict[str, Controller] = {}
            started = time.perf_counter()
            for i in range(episodes):
                ret = _play_episode(
                    name, game, team, all_factories, models, built, i, seed, stats, history_steps
                )
                stats.returns.append(ret)
                if bar is not None:
                    bar.update(1)
            decisions = sum(stats.decisions.values())
            thinking = sum(stats.seconds.values())
            results[team] = {
                "mean_return": float(np.mean(stats.returns)),
                "ci95": ci95(stats.returns),
                "std": float(np.std(stats.returns, ddof=1)) if episodes > 1 else 0.0,
                "episodes": episodes,
                "returns": [float(r) for r in stats.returns],
                "decisions_per_s": decisions / thinking if thinking > 0 else math.inf,
                "per_controller_decisions_per_s": {
                    k: stats.decisions[k] / stats.seconds[k] if stats.seconds[k] > 0 else math.inf
                    for k in stats.decisions
                },
                "seconds": time.perf_counter() - started,
            }
    finally:
        game.close()
        if bar is not None:
            bar.close()

    out: dict[str, Any] = {
        "env": name,
        "episodes": episodes,
        "seed": seed,
        "partners": partners,
        "opponents": _opponents(name, list(spec.agents)),
        "agents": len(spec.agents),
        "obs_radius": obs_radius,
        "max_cycles": max_cycles,
        "controllers": results,
        "gap": _gap(results),
        "planner_config": None if planner_config is None else vars(planner_config),
        "files": {},
    }
    if out_dir is not None:
        out["files"] = write_arena_report(out, out_dir)
    return out


def _opponents(env: str, agents: list[str]) -> dict[str, Any] | None:
    """The other side of a competitive env and the policy it plays (None: cooperative)."""
    simulator = SIMULATORS[env]
    if simulator.opponent is None:
        return None
    side = [a for a in agents if simulator.opponent(a)]
    return {"agents": side, "policy": make_policy("greedy", env).policy_id(side[0])}


def _gap(results: dict[str, Any]) -> dict[str, Any]:
    if "random" not in results or "greedy" not in results:
        return {}
    g = results["greedy"]["mean_return"] - results["random"]["mean_return"]
    over = {
        t: (r["mean_return"] - results["greedy"]["mean_return"]) / g if g else math.nan
        for t, r in results.items()
    }
    return {"G": g, "over_greedy_in_G": over}


def write_arena_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """``arena-<env>.json`` and ``arena-<env>.png`` (team means with 95% intervals)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"arena-{result['env']}"
    paths = {"json": str(out / f"{stem}.json"), "plot": str(out / f"{stem}.png")}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teams = list(result["controllers"])
    means = [result["controllers"][t]["mean_return"] for t in teams]
    lo = [m - result["controllers"][t]["ci95"][0] for t, m in zip(teams, means, strict=True)]
    hi = [result["controllers"][t]["ci95"][1] - m for t, m in zip(teams, means, strict=True)]
    fig, ax = plt.subplots(figsize=(1.6 * len(teams) + 2, 4))
    ax.bar(range(len(teams)), means, yerr=[lo, hi], capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(teams)), teams, rotation=20, ha="right")
    ax.set_ylabel("team return (sum over agents)")
    ax.set_title(f"{result['env']}: {result['episodes']} episodes, seed {result['seed']}, 95% CI")
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=100)
    plt.close(fig)
    Path(paths["json"]).write_text(json.dumps({**result, "files": paths}, indent=1, default=str))
    return paths
