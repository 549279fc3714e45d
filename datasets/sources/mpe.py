"""What the mpe2 scenarios share: their physics, and the interface of a simulator module.

Every simulator has one module here (``simple_spread.py``, ...) holding what is specific to
it: the observation layout its scripted rules read, the rules (a :class:`Controller`),
and, where something needs them, its reward and kinematics. Each ends with a
:class:`Simulator` entry; :mod:`foresight.datasets.sources.simulators` lists them all.

What the scripts rely on (checked against the mpe2 1.1 source, default arguments):

* discrete movement actions: ``0`` no-op, ``1`` -x, ``2`` +x, ``3`` -y, ``4`` +y; an agent
  that also speaks (simple_reference) takes ``move + 5 * word``, 50 actions in all;
* physics: ``dt = 0.1``, damping ``0.25``, mass 1, force = ``accel * unit`` with ``accel`` 5
  unless the scenario sets it (simple_tag: adversaries 3, good agents 4). A step moves the
  position by the velocity it starts with, then damps the velocity and adds the force.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from foresight.datasets.schema import DatasetSpec

DT = 0.1
DAMPING = 0.25
MOVES = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.float64)
"""Unit force of each discrete movement action, indexed by action."""


def resting_offsets(vel: np.ndarray, accel: float) -> np.ndarray:
    """Where the agent comes to rest, relative to now, if it takes each move once then idles.

    One step moves by ``vel * dt`` and sets ``vel' = (1 - damping) vel + accel * u * dt``;
    idling afterwards coasts a further ``vel' * dt / damping``. Aiming this resting point at
    a target (rather than steering by the target direction alone) brakes in time, so agents
    settle on their target instead of orbiting it. Returns shape (5, 2).
    """
    return (DT / DAMPING) * vel + (DT * DT / DAMPING) * accel * MOVES


def move_toward(target_rel: np.ndarray, vel: np.ndarray, accel: float) -> int:
    """The movement action whose resting point lands closest to ``target_rel``."""
    gap = target_rel - resting_offsets(vel, accel)  # (5, 2)
    return int(np.argmin(np.einsum("ij,ij->i", gap, gap)))


class Controller:
    """The greedy behaviour of one env: target rules per agent and the action for a rule."""

    n_actions: int = 5

    def reset(self, agents: Sequence[str]) -> None:
        """Learn the episode's roster (some layouts depend on how many agents of a kind exist)."""

    def rules(self, agent: str) -> tuple[str, ...]:
        """The rules this agent can follow; the first is the plain greedy default."""
        raise NotImplementedError

    def draw_rule(self, agent: str, rng: np.random.Generator) -> str:
        """A rule for the mixed policy (uniform over :meth:`rules` unless overridden)."""
        options = self.rules(agent)
        return options[int(rng.integers(len(options)))]

    def action(self, agent: str, obs: np.ndarray, rule: str) -> int:
        raise NotImplementedError


@dataclass
class Kinematics:
    """Which observation features are positions moved by which velocities."""

    moves: list[tuple[int, int, float]]
    """(feature, velocity feature, sign): feature += sign * velocity * dt each step."""
    dt: float = 0.1
    """Integration step of the environment (MPE: 0.1)."""
    velocity: list[int] | None = None
    """Features holding the agent's own velocity (reported as ``mse_vel``)."""


@dataclass(frozen=True)
class Simulator:
    """One simulator's entry in :data:`foresight.datasets.sources.simulators.SIMULATORS`."""

    name: str
    """Short name (``simple_spread``), as datasets and the CLI call it."""
    mpe2_env: str
    """The mpe2 module (and env) name (``simple_spread_v3``)."""
    controller: type[Controller]
    """Its scripted rules."""
    kinematics: Callable[[DatasetSpec], Kinematics | None] | None = None
    """The observation layout's kinematics for a dataset of it, where they are known."""
    agents: tuple[int, int] | None = None
    """The agent counts (low, high) its mpe2 env takes as ``N``; None: a fixed roster."""
    partial_view: Callable[[np.ndarray, float], np.ndarray] | None = None
    """(full observation, radius) -> what an agent seeing that far observes (``--obs-radius``,
    :class:`foresight.datasets.sources.views.PartialView`); None: full view only."""
    opponent: Callable[[str], bool] | None = None
    """Competitive envs: which agents are the other side (simple_tag: the good agents, the
    prey). In the arena a team drives the rest, the opponents play the greedy policy (their
    first rule, no noise), and a team's return counts its own agents. None: cooperative,
    every agent is on the team."""
