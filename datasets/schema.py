"""The trajectory contract: the one schema that ingestion, training and serving share.

Long format, one row per ``(episode_id, step, agent_id)``. ``step`` counts from 0 and is
contiguous inside an episode; the row holds what that agent saw at ``step`` (``obs``),
what it did (``action``) and what it received for it (``reward``).

A dataset's metadata (:class:`DatasetSpec`) says which agents exist, the size of each
agent's observation, the action spec and the size of the optional global state. It is
stored with the table and every append is checked against it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import pyarrow as pa

SCHEMA_VERSION = 1
"""Bumped whenever a column is added, removed or changes meaning."""

SPEC_FILENAME = "foresight_spec.json"
"""Written beside recorded logs by ``foresight generate`` and the recorder; read by ingest."""

REQUIRED_COLUMNS = (
    "episode_id",
    "step",
    "agent_id",
    "obs",
    "action",
    "reward",
    "terminated",
    "truncated",
)
OPTIONAL_COLUMNS = ("state", "action_mask", "policy_id", "timestamp", "info")
ALL_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

MAX_ID_CHARS = 256
"""Longest ``episode_id``, ``agent_id`` or ``policy_id``, in characters; a longer one is
quarantined. Ids are keys: they are compared, grouped, printed in reasons and sent to the
service, so one huge id must not cost every reader of the dataset."""
MAX_INFO_CHARS = 65_536
"""Longest ``info`` (its JSON text), in characters; a longer one is quarantined. ``info``
is free-form per-row detail, not a place for blobs that would bloat every scan."""
MAX_CHARS = {
    "episode_id": MAX_ID_CHARS,
    "agent_id": MAX_ID_CHARS,
    "policy_id": MAX_ID_CHARS,
    "info": MAX_INFO_CHARS,
}
"""String column -> the most characters a value may have."""


class SpecError(ValueError):
    """A dataset spec is malformed, or data does not match the dataset's spec."""


@dataclass(frozen=True)
class ActionSpec:
    """What an agent may do: ``discrete`` actions ``0..n-1`` or a ``continuous`` vector."""

    kind: Literal["discrete", "continuous"]
    n: int | None = None
    """Number of discrete actions (discrete only)."""
    dim: int | None = None
    """Length of the action vector (continuous only)."""
    low: float | None = None
    """Lower bound of every continuous component; None means unbounded."""
    high: float | None = None
    """Upper bound of every continuous component; None means unbounded."""

    def __post_init__(self) -> None:
        if self.kind == "discrete":
            if not isinstance(self.n, int) or self.n < 1:
                raise SpecError(f"discrete action spec needs n >= 1, got n={self.n!r}")
        elif self.kind == "continuous":
            if not isinstance(self.dim, int) or self.dim < 1:
                raise SpecError(f"continuous action spec needs dim >= 1, got dim={self.dim!r}")
            if self.low is not None and self.high is not None and self.low > self.high:
                raise SpecError(f"continuous action spec has low={self.low} > high={self.high}")
        else:
            raise SpecError(f"action kind must be 'discrete' or 'continuous', got {self.kind!r}")

    @property
    def discrete(self) -> bool:
        return self.kind == "discrete"

    def describe(self) -> str:
        if self.discrete:
            return f"discrete({self.n})"
        return f"continuous({self.dim}, low={self.low}, high={self.high})"


@dataclass(frozen=True)
class DatasetSpec:
    """Metadata of one dataset: environment, agents and their sizes, action spec."""

    env: str
    """Environment name, e.g. ``simple_spread_v3``; informational."""
    agents: dict[str, int]
    """Agent id -> observation size. Rows of agents not listed here are quarantined."""
    action: ActionSpec
    """One action spec shared by every agent of the dataset."""
    state_dim: int | None = None
    """Size of the optional global ``state`` column; None when no state is logged."""
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form metadata (policy mix, seeds, ...), kept but not checked, except the view
    ``obs_radius`` (:func:`view_of`)."""

    def __post_init__(self) -> None:
        if not self.agents:
            raise SpecError("a dataset spec needs at least one agent")
        for agent, size in self.agents.items():
            if not isinstance(size, int) or size < 1:
                raise SpecError(f"agent {agent!r} has observation size {size!r}; need an int >= 1")
        if self.state_dim is not None and (
            not isinstance(self.state_dim, int) or self.state_dim < 1
        ):
            raise SpecError(f"state_dim must be None or an int >= 1, got {self.state_dim!r}")
        if self.schema_version != SCHEMA_VERSION:
            raise SpecError(
                f"spec has schema version {self.schema_version}, this Foresight reads "
                f"version {SCHEMA_VERSION}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetSpec:
        try:
            action = data["action"]
            return cls(
                env=str(data.get("env", "unknown")),
                agents={str(k): v for k, v in dict(data["agents"]).items()},
                action=ActionSpec(**action) if isinstance(action, dict) else action,
                state_dim=data.get("state_dim"),
                schema_version=data.get("schema_version", SCHEMA_VERSION),
                extra=dict(data.get("extra") or {}),
            )
        except (KeyError, TypeError) as exc:
            raise SpecError(f"malformed dataset spec ({exc!r}): {data!r}") from exc

    @classmethod
    def from_json(cls, text: str | bytes) -> DatasetSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"dataset spec is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise SpecError("dataset spec must be a JSON object")
        return cls.from_dict(data)

    def check_compatible(self, other: DatasetSpec) -> None:
        """Raise :class:`SpecError` if ``other`` cannot be appended to a dataset with ``self``.

        Agents may be added (a new agent joins), but a known agent's observation size, the
        action spec and the state size must not change.
        """
        problems = []
        for agent, size in other.agents.items():
            if agent in self.agents and self.agents[agent] != size:
                problems.append(
                    f"agent {agent!r} observation size {size} != dataset's {self.agents[agent]}"
                )
        if other.action != self.action:
            problems.append(
                f"action spec {other.action.describe()} != dataset's {self.action.describe()}"
            )
        if other.state_dim != self.state_dim:
            problems.append(f"state_dim {other.state_dim} != dataset's {self.state_dim}")
        if view_of(other) != view_of(self):
            problems.append(f"{describe_view(other)} != dataset's {describe_view(self)}")
        if problems:
            raise SpecError("spec does not match the dataset: " + "; ".join(problems))

    def merged(self, other: DatasetSpec) -> DatasetSpec:
        """This spec plus the new agents of ``other`` (after :meth:`check_compatible`)."""
        agents = dict(self.agents)
        for agent, size in other.agents.items():
            agents.setdefault(agent, size)
        return DatasetSpec(self.env, agents, self.action, self.state_dim, extra=self.extra)


def view_of(spec: DatasetSpec) -> float | None:
    """How far the agents of ``spec`` see: ``extra["obs_radius"]``, None for the full view.

    Logs seen at one radius and at another (or the full view) are different data even where
    the sizes agree, so appending one to the other is refused, and so is running a model on
    a view it was not trained on.
    """
    radius = spec.extra.get("obs_radius") if spec.extra else None
    return None if radius is None else float(radius)


def describe_view(spec: DatasetSpec) -> str:
    """``full view`` or ``partial view (obs_radius 0.5)``."""
    radius = view_of(spec)
    return "full view" if radius is None else f"partial view (obs_radius {radius!r})"


def action_type(spec: ActionSpec) -> pa.DataType:
    return pa.int32() if spec.discrete else pa.list_(pa.float32())


def arrow_schema(spec: DatasetSpec) -> pa.Schema:
    """The stored table's Arrow schema for a dataset with this spec."""
    return pa.schema(
        [
            pa.field("episode_id", pa.string(), nullable=False),
            pa.field("step", pa.int32(), nullable=False),
            pa.field("agent_id", pa.string(), nullable=False),
            pa.field("obs", pa.list_(pa.float32()), nullable=False),
            pa.field("action", action_type(spec.action), nullable=False),
            pa.field("reward", pa.float32(), nullable=False),
            pa.field("terminated", pa.bool_(), nullable=False),
            pa.field("truncated", pa.bool_(), nullable=False),
            pa.field("state", pa.list_(pa.float32())),
            pa.field("action_mask", pa.list_(pa.bool_())),
            pa.field("policy_id", pa.string()),
            pa.field("timestamp", pa.float64()),
            pa.field("info", pa.string()),
        ]
    )
