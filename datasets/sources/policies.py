"""Scripted policies for the simulators we record: random, greedy, noisy, mixed, switching.

They exist to produce trajectories worth learning from: ``greedy`` agents do something
purposeful, ``noisy`` adds epsilon-random actions, and ``mixed`` draws a different target
rule and epsilon per agent and per episode, so a behavior model has to read an agent's own
history to tell which kind of agent it is facing. ``switching`` is ``mixed`` whose agents
redraw their rule and epsilon at random steps (partners that change under you), so that
history has to be read with a change in mind.

Every policy is driven by a numpy ``Generator`` handed to :meth:`Policy.reset` at the start of
each episode, so the same seed gives the same episode. What a greedy agent does in each env
(its :class:`~foresight.datasets.sources.mpe.Controller`) lives in that env's module, listed
in :mod:`foresight.datasets.sources.simulators`; this module is the machinery around them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from gymnasium import spaces

from foresight.datasets.sources.mpe import Controller
from foresight.datasets.sources.simple_spread import SpreadController
from foresight.datasets.sources.simulators import CONTROLLERS, SUPPORTED_ENVS, resolve_env_name

__all__ = [
    "DEFAULT_HAZARD",
    "POLICY_NAMES",
    "SUPPORTED_ENVS",
    "Action",
    "Controller",
    "GreedyPolicy",
    "MixedPolicy",
    "Policy",
    "RandomPolicy",
    "SpreadController",
    "SwitchingPolicy",
    "make_policy",
    "parse_policy_id",
    "resolve_env_name",
]

Action = int | np.ndarray
"""An int for a Discrete action space, a float vector for a Box."""

POLICY_NAMES = ("random", "greedy", "noisy", "mixed", "switching")

DEFAULT_HAZARD = 0.1
"""The switching policy's default probability, per agent and per step, of a redraw."""


class Policy(Protocol):
    """Chooses every agent's action from that agent's own observation."""

    def reset(self, rng: np.random.Generator, agents: Sequence[str]) -> None:
        """Start an episode with these agents; all randomness comes from ``rng``."""

    def act(self, agent: str, obs: np.ndarray) -> Action:
        """The action of ``agent`` given what it sees now."""

    def policy_id(self, agent: str) -> str:
        """Which policy and parameters drive ``agent`` in the current episode."""


# -- policies ---------------------------------------------------------------------------------


class RandomPolicy:
    """Uniformly random actions from each agent's action space (Discrete or bounded Box).

    Works for any env: give one space for all agents, or a mapping agent -> space.
    """

    def __init__(self, space: int | spaces.Space | Mapping[str, spaces.Space]) -> None:
        if isinstance(space, int):
            space = spaces.Discrete(space)
        self._space = space
        self._rng = np.random.default_rng(0)

    def _space_of(self, agent: str) -> spaces.Space:
        return self._space[agent] if isinstance(self._space, Mapping) else self._space

    def reset(self, rng: np.random.Generator, agents: Sequence[str]) -> None:
        self._rng = rng

    def act(self, agent: str, obs: np.ndarray) -> Action:
        space = self._space_of(agent)
        if isinstance(space, spaces.Discrete):
            return int(space.start) + int(self._rng.integers(int(space.n)))
        if isinstance(space, spaces.Box) and space.is_bounded():
            return self._rng.uniform(space.low, space.high).astype(space.dtype)
        raise ValueError(
            f"RandomPolicy samples Discrete and bounded Box spaces; agent {agent!r} has {space}"
        )

    def policy_id(self, agent: str) -> str:
        return "random"


class GreedyPolicy:
    """Every agent follows its env's greedy rule; with probability ``epsilon`` it acts at random.

    ``epsilon=0`` is the ``greedy`` policy, ``epsilon=0.2`` the ``noisy`` one. ``rule`` picks
    one of the controller's rules for every agent (default: each agent's first rule).
    """

    def __init__(self, controller: Controller, epsilon: float = 0.0, rule: str | None = None):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.controller = controller
        self.epsilon = float(epsilon)
        self.rule = rule
        self._rng = np.random.default_rng(0)
        self._plans: dict[str, tuple[str, float, str]] = {}  # agent -> (rule, epsilon, id)

    def _plan(self, agent: str, rng: np.random.Generator) -> tuple[str, float]:
        """This episode's (rule, epsilon) for ``agent``."""
        rule = self.rule or self.controller.rules(agent)[0]
        if rule not in self.controller.rules(agent):
            raise ValueError(
                f"agent {agent!r} has no rule {rule!r}; rules: {self.controller.rules(agent)}"
            )
        return rule, self.epsilon

    def reset(self, rng: np.random.Generator, agents: Sequence[str]) -> None:
        self._rng = rng
        self.controller.reset(agents)
        self._plans = {}
        for agent in agents:
            self._add(agent)

    def _add(self, agent: str) -> tuple[str, float, str]:
        rule, eps = self._plan(agent, self._rng)
        plan = (rule, eps, f"greedy-{rule}/eps={eps:.2f}")
        self._plans[agent] = plan
        return plan

    def act(self, agent: str, obs: np.ndarray) -> int:
        rule, eps, _ = self._plans.get(agent) or self._add(agent)  # late joiners get a plan too
        if eps > 0 and self._rng.random() < eps:
            return int(self._rng.integers(self.controller.n_actions))
        return self.controller.action(agent, np.asarray(obs), rule)

    def policy_id(self, agent: str) -> str:
        return (self._plans.get(agent) or self._add(agent))[2]


class MixedPolicy(GreedyPolicy):
    """Per agent and per episode, a random rule and a random epsilon in ``epsilon_range``.

    The drawn parameters are in :meth:`policy_id` (e.g. ``greedy-fixed2/eps=0.30``). One step
    rarely tells them apart; a few steps of the agent's own history do.
    """

    def __init__(self, controller: Controller, epsilon_range: tuple[float, float] = (0.0, 0.6)):
        low, high = epsilon_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"epsilon_range must satisfy 0 <= low <= high <= 1, got {epsilon_range}"
            )
        super().__init__(controller)
        self.epsilon_range = (float(low), float(high))

    def _plan(self, agent: str, rng: np.random.Generator) -> tuple[str, float]:
        rule = self.controller.draw_rule(agent, rng)
        eps = round(float(rng.uniform(*self.epsilon_range)), 2)  # acted on exactly as recorded
        return rule, eps


class SwitchingPolicy(MixedPolicy):
    """The mixed policy whose agents change style at random steps.

    Each agent starts an episode with a (rule, epsilon) drawn as :class:`MixedPolicy` draws
    it. Before each later action, with probability ``hazard`` (independently per agent and
    per step), it draws a new (rule, epsilon) from the same prior, which may by chance be
    the old one, and acts with it from that step on. So a style lasts a geometric number of
    steps with mean ``1 / hazard``; ``hazard=0`` is the mixed policy.

    The step at which the current style began is in :meth:`policy_id`
    (``greedy-fixed2/eps=0.30/since=7``; ``since=0`` for the first style), so a log tells
    where each switch happened: a row whose ``since`` equals its ``step > 0`` is the first
    action after one (:func:`parse_policy_id`).
    """

    def __init__(
        self,
        controller: Controller,
        hazard: float = DEFAULT_HAZARD,
        epsilon_range: tuple[float, float] = (0.0, 0.6),
    ):
        if isinstance(hazard, bool) or not isinstance(hazard, (int, float)):
            raise ValueError(f"hazard must be a number in [0, 1], got {hazard!r}")
        if not 0.0 <= hazard <= 1.0:  # False for NaN too
            raise ValueError(
                f"hazard must be in [0, 1] (the probability per agent and step of a new "
                f"rule and epsilon), got {hazard}"
            )
        super().__init__(controller, epsilon_range)
        self.hazard = float(hazard)
        self._steps: dict[str, int] = {}  # agent -> actions taken this episode

    def reset(self, rng: np.random.Generator, agents: Sequence[str]) -> None:
        self._steps = {}
        super().reset(rng, agents)

    def _add(self, agent: str) -> tuple[str, float, str]:
        rule, eps = self._plan(agent, self._rng)
        since = self._steps.get(agent, 0)
        plan = (rule, eps, f"greedy-{rule}/eps={eps:.2f}/since={since}")
        self._plans[agent] = plan
        return plan

    def act(self, agent: str, obs: np.ndarray) -> int:
        step = self._steps.get(agent, 0)
        if agent not in self._plans or (
            step > 0 and self.hazard > 0 and self._rng.random() < self.hazard
        ):
            self._add(agent)
        action = super().act(agent, obs)
        self._steps[agent] = step + 1
        return action


def parse_policy_id(policy_id: str) -> tuple[str, float, int]:
    """(rule, epsilon, since) of a scripted ``greedy-{rule}/eps={e}[/since={t}]`` id.

    ``since`` is the step at which that style began (0 when the id has none: the greedy,
    noisy and mixed policies keep one style for the whole episode).
    """
    parts = policy_id.split("/")
    if not parts[0].startswith("greedy-") or len(parts) < 2 or not parts[1].startswith("eps="):
        raise ValueError(f"not a scripted greedy policy id: {policy_id!r}")
    since = 0
    if len(parts) > 2 and parts[2].startswith("since="):
        since = int(parts[2][len("since=") :])
    return parts[0][len("greedy-") :], float(parts[1][len("eps=") :]), since


_POLICY_PARAMS = {
    "random": (),
    "greedy": ("epsilon", "rule"),
    "noisy": ("epsilon", "rule"),
    "mixed": ("epsilon_range",),
    "switching": ("hazard", "epsilon_range"),
}


def make_policy(name: str, env_name: str, **params: Any) -> Policy:
    """A scripted policy by name (``random``, ``greedy``, ``noisy``, ``mixed``, ``switching``)
    for an mpe2 env.

    Params: ``epsilon`` and ``rule`` for greedy/noisy (noisy defaults to ``epsilon=0.2``),
    ``epsilon_range`` for mixed and switching (default ``(0.0, 0.6)``), ``hazard`` for
    switching (default :data:`DEFAULT_HAZARD`).
    """
    env = resolve_env_name(env_name)
    if name not in _POLICY_PARAMS:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
    unknown = sorted(set(params) - set(_POLICY_PARAMS[name]))
    if unknown:
        accepted = ", ".join(_POLICY_PARAMS[name]) or "none"
        raise ValueError(f"policy {name!r} takes no parameter {unknown}; it accepts: {accepted}")
    controller = CONTROLLERS[env]()
    if name == "random":
        return RandomPolicy(controller.n_actions)
    if name == "greedy":
        return GreedyPolicy(controller, params.get("epsilon", 0.0), params.get("rule"))
    if name == "noisy":
        return GreedyPolicy(controller, params.get("epsilon", 0.2), params.get("rule"))
    if name == "switching":
        return SwitchingPolicy(
            controller,
            params.get("hazard", DEFAULT_HAZARD),
            tuple(params.get("epsilon_range", (0.0, 0.6))),
        )
    return MixedPolicy(controller, tuple(params.get("epsilon_range", (0.0, 0.6))))
