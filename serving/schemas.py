"""Request and response types of the serving API, shared by the service and the client.

They are the OpenAPI spec: every field says what it holds and its bounds. Histories are
per agent, oldest step first, the last step is "now":

    obs          {agent_id: [[float, ...] per step]}   T steps, each the agent's observation
    past_actions {agent_id: [action per step]}         T-1 actions: the one taken after each
                                                        observation but the last (optional)

An agent's ``obs`` may instead be an :class:`EncodedArray`, ``{"dtype": "float32",
"shape": [T, D], "data": "<base64>"}``: the same numbers, parsed without one JSON number
per feature (the client sends this by default). Parsed, it is a (T, D) float32 array, which
the service reads like the list form.

An action is an int index (discrete action spaces) or a list of floats (continuous).

Checks that need no model (shapes agree inside a request, finite numbers, bounds) run on
any side. Checks against the served models (known agent ids, observation sizes, action
space) run where :func:`set_served_signature` was called, i.e. inside the service, while
the request is parsed, so a bad request becomes a 400 naming the field before it can join
a batch with good ones.
"""

from __future__ import annotations

import base64
import binascii
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_serializer,
    model_validator,
)

MAX_QUERIES = 256
"""Queries per /predict_actions or /predict_next request."""
MAX_AGENTS = 64
"""Agents per query."""
MAX_HISTORY = 256
"""Steps of history per query (the models read their last `context` steps)."""
MAX_OBS_SIZE = 4096
"""Features per observation vector."""
MAX_HORIZON = 64
"""Largest /imagine horizon H."""
MAX_IMAGINE_SAMPLES = 64
"""Largest number of /imagine futures K."""
MAX_IMAGINE_STEPS = 1024
"""Largest H * K of one /imagine request (bounds compute and response size)."""
MAX_DIST_SAMPLES = 64
"""Largest number of samples returned by /predict_actions and /predict_next."""
MAX_ACT_HORIZON = 16
"""Largest /act planning horizon H (the planner's default is 6)."""
MAX_ACT_SAMPLES = 16
"""Largest /act number of sampled futures K per candidate plan (default 3)."""

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Vector = Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_OBS_SIZE)]
Action = Annotated[
    int | list[FiniteFloat],
    Field(description="discrete: action index; continuous: vector of floats"),
]
STRICT = ConfigDict(extra="forbid", strict=True)


class EncodedArray(BaseModel):
    """One agent's observations (T steps of D features) as base64 of float32 bytes.

    The compact alternative to a list of lists of JSON numbers: parsing it costs a base64
    decode instead of one JSON number per feature. ``data`` holds the array's bytes in
    C order (row after row), little-endian: ``base64(np.asarray(obs, "<f4").tobytes())``.
    """

    model_config = STRICT

    dtype: Literal["float32"] = Field(description="element type; only float32")
    shape: Annotated[list[int], Field(min_length=2, max_length=2)] = Field(
        description="[T, D]: steps, features per step"
    )
    data: str = Field(description="base64 (RFC 4648, with padding) of the T*D*4 bytes")
    _array: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _decode(self) -> EncodedArray:
        T, D = self.shape
        if not 1 <= T <= MAX_HISTORY or not 1 <= D <= MAX_OBS_SIZE:
            raise ValueError(
                f"shape: {self.shape} is out of bounds; T must be in 1..{MAX_HISTORY}, D in "
                f"1..{MAX_OBS_SIZE}"
            )
        try:
            raw = binascii.a2b_base64(self.data, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"data: not valid base64 ({exc})") from None
        if len(raw) != T * D * 4:
            raise ValueError(
                f"data: holds {len(raw)} bytes; shape {self.shape} of float32 needs {T * D * 4}"
            )
        array = np.frombuffer(raw, "<f4").reshape(T, D)
        if not np.isfinite(array).all():
            raise ValueError("data: holds NaN or infinite values; send finite numbers")
        self._array = array
        return self

    @classmethod
    def of(cls, steps: Any) -> EncodedArray:
        """The encoding of ``steps`` (T lists of D numbers, or a (T, D) array)."""
        array = np.ascontiguousarray(steps, dtype="<f4")
        assert array.ndim == 2, array.shape
        return cls(
            dtype="float32",
            shape=list(array.shape),
            data=base64.b64encode(array.tobytes()).decode("ascii"),
        )


AgentSteps = (
    Annotated[list[Vector], Field(min_length=1, max_length=MAX_HISTORY)] | EncodedArray
)  # strict: a JSON list can only be the first, an object only the second
"""One agent's observations: a list of T vectors, or the same as an :class:`EncodedArray`."""

History = Annotated[
    dict[str, AgentSteps],
    Field(
        min_length=1,
        max_length=MAX_AGENTS,
        description="agent id -> observations, oldest first, as a list of T vectors or an "
        "EncodedArray of shape [T, D]; every agent has the same T steps",
    ),
]
PastActions = Annotated[
    dict[str, Annotated[list[Action], Field(max_length=MAX_HISTORY)]] | None,
    Field(
        description="agent id -> the T-1 actions taken after each observation but the last; "
        "agents left out have no known past actions"
    ),
]


# -- what the served models accept -----------------------------------------------------------


@dataclass(frozen=True)
class ModelSignature:
    """What a served model accepts: agent ids with observation sizes, the action space."""

    agents: dict[str, int]
    discrete: bool
    n_actions: int
    """Discrete: number of actions. Continuous: length of the action vector."""
    state_dim: int | None = None

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ModelSignature:
        action = spec["action"]
        discrete = action["kind"] == "discrete"
        return cls(
            agents={str(k): int(v) for k, v in spec["agents"].items()},
            discrete=discrete,
            n_actions=int(action["n"] if discrete else action["dim"]),
            state_dim=spec.get("state_dim"),
        )

    def describe_action(self) -> str:
        if self.discrete:
            return f"an int in 0..{self.n_actions - 1}"
        return f"a list of {self.n_actions} floats"


_SERVED: dict[str, list[tuple[object, ModelSignature]]] = {}
"""kind -> (owner, signature) of every live service host in this process, oldest first."""


def set_served_signature(
    kind: Literal["world", "behavior"], sig: ModelSignature | None, owner: object = None
) -> None:
    """Make requests parsed in this process check against the served ``kind`` model.

    ``owner`` (a service host) replaces its own earlier signature; ``sig=None`` withdraws
    it, and the newest signature still published is checked again (tests and benchmarks
    run several hosts in one process)."""
    entries = [(o, old) for o, old in _SERVED.get(kind, []) if o is not owner]
    if sig is not None:
        entries.append((owner, sig))
    _SERVED[kind] = entries


def served_signature(kind: Literal["world", "behavior"]) -> ModelSignature | None:
    """The signature requests parsed in this process are checked against (None: unchecked)."""
    entries = _SERVED.get(kind)
    return entries[-1][1] if entries else None


# -- shared checks ---------------------------------------------------------------------------


def _decoded(obs: dict[str, Any]) -> None:
    """Replace every :class:`EncodedArray` of ``obs`` by its (T, D) float32 array, in place:
    the runtime reads arrays and lists alike."""
    for agent, steps in obs.items():
        if isinstance(steps, EncodedArray):
            obs[agent] = steps._array


def _steps(obs: dict[str, Any]) -> int:
    """Common history length T; ValueError naming the agent whose length differs."""
    lengths = {agent: len(steps) for agent, steps in obs.items()}
    T = next(iter(lengths.values()))
    for agent, n in lengths.items():
        if n != T:
            raise ValueError(
                f"obs.{agent}: has {n} steps but obs.{next(iter(lengths))} has {T}; "
                "every agent needs the same number of history steps"
            )
    for agent, steps in obs.items():
        width = len(steps[0])
        if (
            isinstance(steps, np.ndarray) or len(set(map(len, steps))) == 1
        ):  # every step as wide as step 0 (C-speed check)
            continue
        for t, vec in enumerate(steps):
            if len(vec) != width:
                raise ValueError(
                    f"obs.{agent}.{t}: observation has {len(vec)} features, step 0 has {width}"
                )
    return T


def _check_action(where: str, action: Any, sig: ModelSignature | None) -> None:
    if sig is None:
        return
    if sig.discrete:
        if not isinstance(action, int) or not 0 <= action < sig.n_actions:
            raise ValueError(f"{where}: {action!r} is not {sig.describe_action()}")
    elif not isinstance(action, list) or len(action) != sig.n_actions:
        raise ValueError(f"{where}: {action!r} is not {sig.describe_action()}")


def _all_discrete(actions: list[Any], n_actions: int) -> bool:
    """Every action an int in 0..n_actions-1 (the parsed types are int or list only)."""
    return not actions or (
        all(type(a) is int for a in actions) and min(actions) >= 0 and max(actions) < n_actions
    )


def _check_agents(
    where: str, obs: dict[str, list[list[float]]], sigs: list[ModelSignature]
) -> None:
    for sig in sigs:
        for agent, steps in obs.items():
            if agent not in sig.agents:
                known = ", ".join(sorted(sig.agents))
                raise ValueError(f"{where}.{agent}: unknown agent id {agent!r}; known: {known}")
            if len(steps[0]) != sig.agents[agent]:
                raise ValueError(
                    f"{where}.{agent}: observations have {len(steps[0])} features; "
                    f"agent {agent!r} has {sig.agents[agent]}"
                )


def _check_past_actions(
    past: dict[str, list[Any]] | None,
    obs: dict[str, list[list[float]]],
    T: int,
    sigs: list[ModelSignature],
) -> None:
    for agent, actions in (past or {}).items():
        if agent not in obs:
            raise ValueError(f"past_actions.{agent}: agent {agent!r} is not in obs")
        if len(actions) != T - 1:
            raise ValueError(
                f"past_actions.{agent}: has {len(actions)} actions; expected {T - 1} "
                f"(one per observation step but the last, obs has {T} steps)"
            )
        for sig in sigs:
            if sig.discrete and _all_discrete(actions, sig.n_actions):
                continue  # the common case, checked without a call per action
            for t, action in enumerate(actions):
                _check_action(f"past_actions.{agent}.{t}", action, sig)


def _check_state(state: list[list[float]] | None, T: int, sigs: list[ModelSignature]) -> None:
    if state is None:
        return
    if len(state) != T:
        raise ValueError(f"state: has {len(state)} steps; obs has {T}")
    for sig in sigs:
        if sig.state_dim is None:
            raise ValueError("state: the served model reads no global state; leave it out")
        for t, vec in enumerate(state):
            if len(vec) != sig.state_dim:
                raise ValueError(f"state.{t}: has {len(vec)} features; expected {sig.state_dim}")


SERVER_CHECKS: ContextVar[bool] = ContextVar("foresight_server_checks", default=True)
"""False while the client validates a request it is about to send: the checks against the
served models are the server's, even when the client's process has models of its own."""


def _signatures(*kinds: str) -> list[ModelSignature]:
    if not SERVER_CHECKS.get():
        return []
    return [s for k in kinds if (s := served_signature(k)) is not None]


class _HistoryFields(BaseModel):
    model_config = STRICT

    obs: History
    past_actions: PastActions = None
    state: (
        Annotated[list[Vector], Field(max_length=MAX_HISTORY, description="global state per step")]
        | None
    ) = None

    @field_serializer("obs")
    def _dump_obs(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Decoded arrays go back out as :class:`EncodedArray` (lists stay lists)."""
        return {
            a: EncodedArray.of(s).model_dump() if isinstance(s, np.ndarray) else s
            for a, s in obs.items()
        }

    def _check_history(self, *kinds: str) -> int:
        _decoded(self.obs)
        T = _steps(self.obs)
        sigs = _signatures(*kinds)
        _check_agents("obs", self.obs, sigs)
        _check_past_actions(self.past_actions, self.obs, T, sigs)
        _check_state(self.state, T, sigs)
        return T


# -- /predict_actions ------------------------------------------------------------------------


class ActionQuery(_HistoryFields):
    """Observation histories of one or more agents: predict each one's next action."""

    agents: Annotated[list[str], Field(max_length=MAX_AGENTS)] | None = Field(
        default=None, description="agents to answer for (default: every agent in obs)"
    )
    samples: int = Field(
        default=0, ge=0, le=MAX_DIST_SAMPLES, description="sampled actions per agent to return"
    )

    @model_validator(mode="after")
    def _check(self) -> ActionQuery:
        self._check_history("behavior")
        for i, agent in enumerate(self.agents or []):
            if agent not in self.obs:
                raise ValueError(f"agents.{i}: {agent!r} is not in obs")
        return self


class ActionDistribution(BaseModel):
    """One agent's next-action distribution."""

    probs: list[float] | None = Field(None, description="discrete: probability of each action")
    mean: list[float] | None = Field(None, description="continuous: mean of each component")
    std: list[float] | None = Field(None, description="continuous: std of each component")
    mode: int | list[float] = Field(description="most likely action")
    samples: list[int] | list[list[float]] | None = Field(
        None, description="sampled actions, when asked for"
    )


class ActionPrediction(BaseModel):
    model: str = Field(description="the behavior model version that answered, e.g. behavior@3")
    agents: dict[str, ActionDistribution]


# -- /predict_next ---------------------------------------------------------------------------


class NextQuery(_HistoryFields):
    """Joint history and the joint action taken now: predict the next joint observation."""

    action: dict[str, Action] = Field(
        description="agent id -> the action it takes at the last step; one per agent in obs"
    )
    samples: int = Field(
        default=0, ge=0, le=MAX_DIST_SAMPLES, description="sampled next observations per agent"
    )

    @model_validator(mode="after")
    def _check(self) -> NextQuery:
        self._check_history("world")
        missing = [a for a in self.obs if a not in self.action]
        extra = [a for a in self.action if a not in self.obs]
        if missing or extra:
            raise ValueError(
                f"action: has {len(self.action)} agents, obs has {len(self.obs)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; not in obs {extra}" if extra else "")
            )
        for agent, action in self.action.items():
            for sig in _signatures("world"):
                _check_action(f"action.{agent}", action, sig)
        return self


class NextObservation(BaseModel):
    """One agent's next-step distribution."""

    mean: list[float] = Field(description="mean of the next observation")
    std: list[float] = Field(description="std of each feature (0 for copied-forward features)")
    reward: float = Field(description="expected reward for the action taken")
    termination_prob: float = Field(description="probability the episode ends after this step")
    samples: list[list[float]] | None = Field(None, description="sampled next observations")


class NextPrediction(BaseModel):
    model: str = Field(description="the world model version that answered, e.g. world@3")
    agents: dict[str, NextObservation]


# -- /imagine --------------------------------------------------------------------------------


class ImagineRequest(_HistoryFields):
    """Sample K futures of H steps from a joint history."""

    horizon: int = Field(ge=1, le=MAX_HORIZON, description="steps H to imagine")
    samples: int = Field(default=8, ge=1, le=MAX_IMAGINE_SAMPLES, description="futures K")
    plans: dict[str, Annotated[list[Action], Field(max_length=MAX_HORIZON)]] | None = Field(
        default=None,
        description="agent id -> H actions it will take; every other agent follows the "
        "behavior model",
    )
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1, description="for repeatable samples")

    @model_validator(mode="after")
    def _check(self) -> ImagineRequest:
        self._check_history("world", "behavior")
        if self.horizon * self.samples > MAX_IMAGINE_STEPS:
            raise ValueError(
                f"horizon * samples: {self.horizon} * {self.samples} = "
                f"{self.horizon * self.samples} > {MAX_IMAGINE_STEPS}; ask for fewer"
            )
        for agent, plan in (self.plans or {}).items():
            if agent not in self.obs:
                raise ValueError(f"plans.{agent}: agent {agent!r} is not in obs")
            if len(plan) != self.horizon:
                raise ValueError(
                    f"plans.{agent}: has {len(plan)} actions; horizon is {self.horizon}"
                )
            for t, action in enumerate(plan):
                for sig in _signatures("world"):
                    _check_action(f"plans.{agent}.{t}", action, sig)
        return self


class ImaginedAgent(BaseModel):
    obs: list[list[float]] = Field(description="H sampled observations, steps t+1..t+H")
    actions: list[int] | list[list[float]] = Field(description="H actions, steps t..t+H-1")
    rewards: list[float] = Field(description="H expected rewards for those actions")
    terminated: list[bool] = Field(description="H sampled termination flags")


class ImaginedFuture(BaseModel):
    agents: dict[str, ImaginedAgent]
    first_termination: int | None = Field(
        description="first step index (0-based) at which any agent terminated; later steps "
        "are still sampled, so cut the future there"
    )


class ImagineResponse(BaseModel):
    world_model: str
    behavior_model: str
    horizon: int
    futures: list[ImaginedFuture] = Field(description="K sampled futures")


# -- /act -----------------------------------------------------------------------------------


class ActRequest(_HistoryFields):
    """Joint history of one episode: choose the next action of each ego agent.

    The planner reads every agent's past actions, so ``past_actions`` must hold all of
    them (T-1 each) when the history has more than one step. ``start_step`` says where the
    history begins in the episode: 0 (the default) means at its start, and a history
    shorter than the models' context is then padded like the start of an episode; a later
    start needs more steps than the context (see /act)."""

    egos: Annotated[list[str], Field(min_length=1, max_length=MAX_AGENTS)] = Field(
        description="agents to decide for; each must be in obs"
    )
    horizon: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ACT_HORIZON,
        description="planning horizon H (default: the service's planner, 6)",
    )
    samples: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ACT_SAMPLES,
        description="sampled futures K per candidate plan (default: the service's, 3)",
    )
    start_step: int = Field(
        default=0,
        ge=0,
        le=2**31 - 1,
        description="episode step of the first observation; 0 = the history starts the episode",
    )
    team: Annotated[list[str], Field(min_length=1, max_length=MAX_AGENTS)] | None = Field(
        default=None,
        description="agents whose predicted rewards a plan's score sums: a competitive "
        "env's own side (simple_tag's adversaries); default every agent; each must be in obs",
    )
    objective: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="what plans are scored by, by name (never code): 'learned' (the world "
        "model's reward head, the default), an env's own reward computed on the imagined "
        "observations ('simple_spread', 'simple_tag', 'simple_tag_shaped'), or an objective the service's "
        "installation adds as an entry point of the group foresight.objectives",
    )

    @model_validator(mode="after")
    def _check(self) -> ActRequest:
        T = self._check_history("world", "behavior")
        if self.state is not None:
            raise ValueError("state: /act plans from observations; leave state out")
        for i, agent in enumerate(self.egos):
            if agent not in self.obs:
                raise ValueError(f"egos.{i}: {agent!r} is not in obs")
        if len(set(self.egos)) != len(self.egos):
            raise ValueError(f"egos: agents repeat: {self.egos}")
        for i, agent in enumerate(self.team or []):
            if agent not in self.obs:
                raise ValueError(f"team.{i}: {agent!r} is not in obs")
        if self.team is not None and len(set(self.team)) != len(self.team):
            raise ValueError(f"team: agents repeat: {self.team}")
        if T > 1:
            missing = [a for a in self.obs if a not in (self.past_actions or {})]
            if missing:
                raise ValueError(
                    f"past_actions: missing {missing}; the planner reads every agent's past "
                    f"actions ({T - 1} each)"
                )
        return self


class CandidateScore(BaseModel):
    action: Action
    score: float = Field(description="predicted return of the best plan starting with it")


class EgoDecision(BaseModel):
    """What the planner chose for one ego agent."""

    action: Action = Field(description="the chosen next action")
    predicted_return: float = Field(
        description="score of the best plan: its mean discounted predicted team return, "
        "plus the world model's value after the horizon with the learned objective"
    )
    candidates: list[CandidateScore] = Field(
        description="every first action considered (the chosen one included) with its score; "
        "discrete: in action order; continuous: best first"
    )
    predicted_others: dict[str, Action] = Field(
        description="the behavior model's most likely next action of every other agent"
    )
    plan: list[Action] = Field(description="the whole best plan, H actions")


class ActResponse(BaseModel):
    world_model: str = Field(description="the world model version used, e.g. world@3")
    behavior_model: str = Field(description="the behavior model version used")
    horizon: int
    samples: int
    objective: str = Field(default="learned", description="what the plans were scored by")
    agents: dict[str, EgoDecision] = Field(description="ego agent -> decision, in request order")


# -- /models, /reload, /echo -----------------------------------------------------------------


class ServedModel(BaseModel):
    role: Literal["world", "behavior"]
    ref: str = Field(description="the reference the service follows, e.g. world@production")
    version: str = Field(description="the version loaded, e.g. world@3")
    bento_tag: str | None = Field(description="the same weights in BentoML's model store")
    loaded_at: float
    card: dict[str, Any] = Field(description="model card: dataset version, configs, metrics")


class ModelsResponse(BaseModel):
    models: list[ServedModel]
    reload_interval_s: float = Field(description="alias polling period; 0 means off")


class ReloadChange(BaseModel):
    role: Literal["world", "behavior"]
    ref: str
    previous: str
    current: str
    changed: bool
    error: str | None = None


class ReloadResponse(BaseModel):
    changes: list[ReloadChange]


class EchoResponse(BaseModel):
    message: str


# -- /episodes -------------------------------------------------------------------------------

TrajectoryRow = Annotated[
    dict[str, Any],
    Field(
        description="one row of the trajectory contract (datasets/README.md): episode_id, "
        "step, agent_id, obs, action, reward, terminated, truncated; optional state, "
        "action_mask, policy_id, timestamp, info. Checked as `foresight ingest` checks it"
    ),
]


class EpisodesRequest(BaseModel):
    """Whole episodes that agents lived through, for the next training data.

    Each inner list is one finished episode: its rows share one ``episode_id``, steps run
    from 0 without a gap, and its last step ends it (a row terminated or truncated). The
    rows are checked like ingested rows and buffered; the buffer is written as one JSONL
    file per dataset into ``<store>/landing/<dataset>/``, where the landing sensor
    ingests it. Bounds: FORESIGHT_EPISODES_MAX_ROWS rows per request (413 beyond) and the
    middleware's body limit (foresight.serving.episodes)."""

    model_config = STRICT

    dataset: str = Field(
        default="",
        description="the dataset whose landing folder receives them (empty: the dataset the "
        "served world model was trained on)",
    )
    episodes: list[list[TrajectoryRow]] = Field(
        default_factory=list, description="episodes, each the list of its rows"
    )
    flush: bool = Field(
        default=False,
        description="write every buffered episode to the landing zone before answering",
    )


class EpisodesResponse(BaseModel):
    dataset: str = Field(description="the dataset the episodes were accepted for")
    episode_ids: list[str] = Field(description="the episodes accepted, in request order")
    rows: int = Field(description="rows accepted")
    buffered_rows: int = Field(description="accepted rows of every dataset not yet written")
    written: list[str] = Field(
        description="landing files this request wrote (when the buffer filled or flush=true)"
    )
