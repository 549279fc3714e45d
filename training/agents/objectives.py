"""Objectives a planner scores imagined futures by, chosen by name.

    reward_fn = resolve_objective("simple_spread", spec)  # None for "learned"
    Planner(world, behavior, PlannerConfig(objective="simple_spread"))

In a deployment the objective is often known while the dynamics and the others are not.
An objective turns the imagined observations into each agent's reward, in place of the
world model's reward head; the models still forecast the world and the others.

- ``learned`` (the default): the world model's reward head, and its value head after
  the planner's horizon (``PlannerConfig.terminal_value``).
- Built in: the mpe2 rewards computed on imagined observations, one per env
  (``simple_spread``, ``simple_tag``), and ``simple_tag_shaped``: simple_tag's with mpe2's
  own optional shaping (a dense term for the distance to the prey, which planning can rank
  plans by where a reward paid only on contact gives nothing to rank).
- A user's own: a Python entry point in the group ``foresight.objectives`` (in their
  package's ``pyproject.toml``: ``[project.entry-points."foresight.objectives"]``, ``mine =
  "pkg.module:objective"``), loading an :class:`Objective` or a factory ``spec ->
  reward_fn``; loaded when first named. A built-in name wins over an entry point's.
  Objectives are named over HTTP, never sent as code.

A reward function maps ``(next_obs (R, N, D), joint action (R, N[, A]))`` to ``(R, N)``
rewards, torch in and out. Before an objective is used it is tried once on zero
observations of the models' spec, so one that does not fit (another env, a partial view)
is refused by name before any plan is scored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

import torch

from foresight.datasets.schema import DatasetSpec, describe_view, view_of
from foresight.datasets.sources.simple_spread import spread_reward
from foresight.datasets.sources.simple_tag import tag_reward
from foresight.datasets.sources.simulators import simulator_of

LEARNED = "learned"
"""The world model's own reward head."""

ENTRY_POINT_GROUP = "foresight.objectives"

RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """A named objective: ``make(spec)`` gives the reward function for models of ``spec``."""

    name: str
    make: Callable[[DatasetSpec], RewardFn]
    env: str | None = None
    """The env whose observations it reads (short name); None: any."""
    full_view: bool = True
    """It reads what only the full view shows (a partial view is refused)."""
    description: str = ""


BUILT_IN: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective(
            "simple_spread",
            lambda spec: spread_reward,
            env="simple_spread",
            description="mpe2's simple_spread reward: landmarks covered, collisions",
        ),
        Objective(
            "simple_tag",
            lambda spec: tag_reward(list(spec.agents), list(spec.agents.values())),
            env="simple_tag",
            description="mpe2's simple_tag reward: adversaries +10 a contact, prey -10 and "
            "its boundary cost",
        ),
        Objective(
            "simple_tag_shaped",
            lambda spec: tag_reward(list(spec.agents), list(spec.agents.values()), shaped=True),
            env="simple_tag",
            description="simple_tag's reward with mpe2's optional shaping: adversaries pay "
            "0.1 x the distance to the nearest prey, the prey earns 0.1 x its distance",
        ),
    )
}


def _load(ep) -> Objective:
    """The objective behind entry point ``ep``; ValueError naming it when it cannot load."""
    try:
        loaded = ep.load()
    except Exception as exc:
        raise ValueError(
            f"objective entry point {ep.name!r} ({ep.value}) does not load: {exc}"
        ) from exc
    if isinstance(loaded, Objective):
        return loaded
    if callable(loaded):
        return Objective(ep.name, loaded, description=f"entry point {ep.value}")
    raise ValueError(
        f"objective entry point {ep.name!r} ({ep.value}) is neither an Objective nor a "
        "factory spec -> reward function"
    )


def objective_names() -> list[str]:
    """Every objective's name: ``learned``, the built-in ones, then the entry points'
    (without loading them)."""
    names = [LEARNED, *BUILT_IN]
    return names + [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in names]


def find_objective(name: str) -> Objective:
    """The objective called ``name``: a built-in one, else the entry point of that name
    (loaded only then). ValueError naming the known ones when there is none."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        raise ValueError(f"unknown objective {name!r}; objectives: {', '.join(objective_names())}")
    return _load(found[0])


def resolve_objective(name: str, spec: DatasetSpec) -> RewardFn | None:
    """The reward function of objective ``name`` for models of ``spec`` (None: ``learned``,
    the reward head). ValueError naming it for an unknown objective or one that does not
    fit the spec's env or view."""
    if name == LEARNED:
        return None
    objective = find_objective(name)
    env = simulator_of(spec.env)
    if objective.env is not None and env != objective.env:
        raise ValueError(
            f"objective {name!r} reads {objective.env} observations; the models are of {spec.env}"
        )
    if objective.full_view and view_of(spec) is not None:
        raise ValueError(
            f"objective {name!r} reads the full view; the models see a {describe_view(spec)}"
        )
    reward = objective.make(spec)
    _try(name, reward, spec)
    return reward


def _try(name: str, reward: RewardFn, spec: DatasetSpec) -> None:
    """Call ``reward`` once on zero observations of ``spec``; refuse it, naming it, when it
    fails or does not give one reward per agent."""
    N, D = len(spec.agents), max(spec.agents.values())
    if spec.action.discrete:
        joint = torch.zeros(1, N, dtype=torch.long)
    else:
        joint = torch.zeros(1, N, spec.action.dim)
    try:
        out = reward(torch.zeros(1, N, D), joint)
    except Exception as exc:
        raise ValueError(
            f"objective {name!r} does not fit these models ({spec.env}): {exc}"
        ) from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, N):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"objective {name!r} must give (R, N) = (1, {N}) rewards, got {got}")
