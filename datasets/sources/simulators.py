"""The simulators Foresight records and plays, one module each; add a new one here.

A simulator module (``simple_spread.py``, ...) holds everything specific to its env: the
observation layout, the scripted rules, and its reward and kinematics where something uses
them. It ends with a :class:`~foresight.datasets.sources.mpe.Simulator` entry, listed in
:data:`SIMULATORS`; the policy machinery (:mod:`foresight.datasets.sources.policies`), the
recorder and the arena only go through this table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from foresight.datasets.sources.mpe import Controller, Kinematics, Simulator
from foresight.datasets.sources.simple_reference import SIMULATOR as SIMPLE_REFERENCE
from foresight.datasets.sources.simple_spread import SIMULATOR as SIMPLE_SPREAD
from foresight.datasets.sources.simple_tag import SIMULATOR as SIMPLE_TAG

if TYPE_CHECKING:
    from foresight.datasets.schema import DatasetSpec

SIMULATORS: dict[str, Simulator] = {
    s.name: s for s in (SIMPLE_SPREAD, SIMPLE_REFERENCE, SIMPLE_TAG)
}
"""Short env name -> its simulator entry."""

SUPPORTED_ENVS: dict[str, str] = {s.name: s.mpe2_env for s in SIMULATORS.values()}
"""Short env name -> mpe2 module (and env) name."""

CONTROLLERS: dict[str, type[Controller]] = {s.name: s.controller for s in SIMULATORS.values()}
"""Short env name -> the class of its scripted rules."""


def simulator_of(env: str) -> str | None:
    """The short name (``simple_spread``) of an env given by its short or versioned name
    (a dataset spec's ``env``), None when it is not one of the simulators'."""
    return next((short for short, v in SUPPORTED_ENVS.items() if env in (short, v)), None)


def resolve_env_name(env: str) -> str:
    """The short name (``simple_spread``) of an env given by its short or versioned name."""
    if (short := simulator_of(env)) is not None:
        return short
    raise ValueError(
        f"unknown env {env!r}; choose one of {', '.join(SUPPORTED_ENVS)} "
        f"(or {', '.join(SUPPORTED_ENVS.values())})"
    )


def agent_kwargs(env: str, agents: int | None) -> dict[str, int]:
    """The mpe2 keyword arguments for ``agents`` agents of ``env`` (``{"N": 6}``).

    None keeps the env's own roster. An env whose roster is fixed, or a count outside the
    range its simulator entry allows, is refused naming the env and what it takes.
    """
    if agents is None:
        return {}
    name = resolve_env_name(env)
    allowed = SIMULATORS[name].agents
    if allowed is None:
        takes = [s.name for s in SIMULATORS.values() if s.agents is not None]
        raise ValueError(
            f"{name} has a fixed roster and takes no agent count (got agents={agents!r}); "
            f"envs that do: {', '.join(takes)}"
        )
    low, high = allowed
    if isinstance(agents, bool) or not isinstance(agents, int) or not low <= agents <= high:
        raise ValueError(f"{name} takes {low} to {high} agents, got agents={agents!r}")
    return {"N": agents}


def mpe_kinematics(spec: DatasetSpec) -> Kinematics | None:
    """The kinematics of a dataset's observation layout, or None when unknown.

    ``spec.extra["kinematics"] = {"moves": [[i, v, sign], ...], "dt": 0.1}`` overrides it;
    otherwise the simulator named in ``spec.env`` says, if it knows its kinematics.
    """
    given = spec.extra.get("kinematics") if spec.extra else None
    if given:
        moves = [(int(i), int(v), float(s)) for i, v, s in given["moves"]]
        return Kinematics(moves, float(given.get("dt", 0.1)), given.get("velocity"))
    for simulator in SIMULATORS.values():
        if simulator.name in spec.env and simulator.kinematics is not None:
            return simulator.kinematics(spec)
    return None
