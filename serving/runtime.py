"""Model loading and prediction for the service, with no HTTP in it.

:class:`ModelHost` loads the world and behavior models by registry reference (or, inside a
built bento, from BentoML's model store), keeps them as one immutable :class:`ModelSet`,
and swaps in a new set when an alias moves. A request takes the current set once and uses
it to the end, so a swap never disturbs requests in flight.

The predict functions turn parsed requests (:mod:`foresight.serving.schemas`) into model windows,
batch queries that share an agent layout, and turn the model's tensors back into response
types.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from foresight.datasets.storage import Store
from foresight.serving import schemas as S
from foresight.training.agents.planning import JointHistory, Planner, PlannerConfig
from foresight.training.data import Window
from foresight.training.models.rollout import imagine
from foresight.training.registry import (
    ModelCard,
    ModelRef,
    ModelRegistry,
    RegistryError,
    load_registered,
)

log = logging.getLogger("foresight.serving")

Role = Literal["world", "behavior"]
ROLES: tuple[Role, ...] = ("world", "behavior")
DEFAULT_REFS: dict[Role, str] = {"world": "world@production", "behavior": "behavior@production"}
ENV_REFS: dict[Role, str] = {
    "world": "FORESIGHT_WORLD_MODEL",
    "behavior": "FORESIGHT_BEHAVIOR_MODEL",
}
SOURCE_ENV = "FORESIGHT_MODEL_SOURCE"
"""``registry`` (default): load from the store's registry and follow its aliases.
``bento``: load the versions packaged in the bento (a container without the store)."""
BENTO_PREFIX = "foresight-"


class ModelLoadError(RuntimeError):
    """A model reference does not resolve or its model cannot be served."""


@dataclass(frozen=True)
class LoadedModel:
    role: Role
    ref: str
    """The reference followed (``world@production``)."""
    version: str
    """The version loaded (``world@3``)."""
    model: torch.nn.Module
    card: ModelCard
    signature: S.ModelSignature
    bento_tag: str | None
    loaded_at: float


@dataclass(frozen=True)
class ModelSet:
    """The served models, and the planner built from them (None, with the reason, when
    they cannot plan together)."""

    world: LoadedModel
    behavior: LoadedModel
    planner: Planner | None = field(default=None, compare=False)
    planner_error: str | None = None

    def get(self, role: Role) -> LoadedModel:
        return self.world if role == "world" else self.behavior

    @classmethod
    def build(cls, world: LoadedModel, behavior: LoadedModel) -> ModelSet:
        """The set with its :class:`Planner` (default config; /act overrides H and K)."""

        def planner_of(config: PlannerConfig) -> Planner:
            return Planner(
                world.model,
                behavior.model,
                config,
                world_card=world.card,
                behavior_card=behavior.card,
            )

        try:
            planner = planner_of(PlannerConfig())
        except ValueError as exc:  # other endpoints still serve; /act says why not
            log.warning("no planner for %s + %s: %s", world.version, behavior.version, exc)
            return cls(world, behavior, None, str(exc))
        try:
            planner.warm_up()  # the first /act does not trace the graphs
        except Exception as exc:  # plan eagerly rather than not at all
            log.warning(
                "planner graphs for %s + %s failed (%s); planning eagerly",
                world.version,
                behavior.version,
                exc,
            )
            planner = planner_of(PlannerConfig(traced=False))
        return cls(world, behavior, planner)


def refs_from_env(world: str | None = None, behavior: str | None = None) -> dict[Role, str]:
    """Explicit refs win, then FORESIGHT_WORLD_MODEL / FORESIGHT_BEHAVIOR_MODEL, then defaults."""
    given = {"world": world, "behavior": behavior}
    return {
        role: given[role] or os.environ.get(ENV_REFS[role]) or DEFAULT_REFS[role] for role in ROLES
    }


# -- BentoML model store ---------------------------------------------------------------------


def bento_tag_for(role: Role, card: ModelCard) -> str:
    """``foresight-world:world-3-<card digest>``: one tag per registry version and store."""
    body = json.dumps(card.to_dict(), sort_keys=True, default=str)
    digest = hashlib.sha256(body.encode()).hexdigest()
    version = f"{card.name}-{card.version}-{digest[:10]}".lower()
    return f"{BENTO_PREFIX}{role}:{version}"


def export_to_bento(role: Role, loaded: LoadedModel, aliases: list[str]) -> str:
    """Save a loaded model's weights and card into BentoML's model store (once per version)."""
    import bentoml
    from bentoml.exceptions import NotFound
    from safetensors.torch import save_file

    from foresight.training.loop.train import model_state

    tag = bento_tag_for(role, loaded.card)
    try:
        bentoml.models.get(tag)
        return tag
    except NotFound:
        pass
    labels = {
        "registry_name": str(loaded.card.name),
        "registry_version": str(loaded.card.version),
        "aliases": ",".join(sorted(aliases)),
        "kind": str(loaded.card.kind),
        "dataset": str((loaded.card.dataset.resolved if loaded.card.dataset else None) or ""),
    }
    with bentoml.models.create(tag, labels=labels) as bento_model:
        save_file(model_state(loaded.model), bento_model.path_of("weights.safetensors"))
        with open(bento_model.path_of("card.json"), "w") as f:
            json.dump(loaded.card.to_dict(), f, indent=2, sort_keys=True, default=str)
    return tag


def _load_from_bento(role: Role, ref: str) -> LoadedModel:
    """The packaged version of ``role`` that ``ref`` names (by the registry labels)."""
    import bentoml
    from safetensors.torch import load_file

    from foresight.training.loop.train import load_model

    parsed = ModelRef.parse(ref)
    candidates = []
    for m in bentoml.models.list(f"{BENTO_PREFIX}{role}"):
        labels = m.info.labels
        if labels.get("registry_name") != parsed.name:
            continue
        if parsed.version is not None and labels.get("registry_version") != str(parsed.version):
            continue
        if parsed.alias is not None and parsed.alias not in labels.get("aliases", "").split(","):
            continue
        candidates.append(m)
    if not candidates:
        raise ModelLoadError(
            f"{role} model {ref!r}: no packaged BentoML model {BENTO_PREFIX}{role} matches "
            f"(FORESIGHT_MODEL_SOURCE=bento); packaged: "
            f"{[str(m.tag) for m in bentoml.models.list(f'{BENTO_PREFIX}{role}')] or 'none'}"
        )
    chosen = max(candidates, key=lambda m: int(m.info.labels.get("registry_version", 0)))
    with open(chosen.path_of("card.json")) as f:
        card = ModelCard.from_dict(json.load(f))
    model = load_model(
        card.kind, card.model_config, load_file(chosen.path_of("weights.safetensors"))
    )
    return _loaded(role, ref, model, card, str(chosen.tag))


# -- loading ---------------------------------------------------------------------------------


def _loaded(role: Role, ref: str, model, card: ModelCard, bento_tag: str | None) -> LoadedModel:
    if card.kind != role:
        raise ModelLoadError(
            f"{role} model {ref!r} resolves to {card.name}@{card.version}, "
            f"a {card.kind!r} model; pass a {role} model"
        )
    spec = model.config.spec
    return LoadedModel(
        role=role,
        ref=ref,
        version=f"{card.name}@{card.version}",
        model=model,
        card=card,
        signature=S.ModelSignature.from_spec(spec),
        bento_tag=bento_tag,
        loaded_at=time.time(),
    )


def load_model_ref(
    role: Role, ref: str, store: Store | None, source: str = "registry", export: bool = True
) -> LoadedModel:
    """Load one model by reference; ModelLoadError says which reference failed and why."""
    if source == "bento":
        return _load_from_bento(role, ref)
    if source != "registry":
        raise ModelLoadError(f"{SOURCE_ENV} must be 'registry' or 'bento', got {source!r}")
    store = store or Store.from_env()
    try:
        model, mv = load_registered(ref, store)
    except RegistryError as exc:
        raise ModelLoadError(
            f"{role} model {ref!r} does not resolve in {store.root}: {exc}. Register and "
            f"promote one (`foresight models promote`) or pass another reference "
            f"({ENV_REFS[role]} / --{role})"
        ) from exc
    loaded = _loaded(role, ref, model, mv.card, None)
    if export:
        aliases = [a for a, v in ModelRegistry(store).aliases(mv.name).items() if v == mv.version]
        loaded = replace(loaded, bento_tag=export_to_bento(role, loaded, aliases))
    return loaded


class ModelHost:
    """The served models: loaded at construction, swapped when a followed alias moves."""

    def __init__(
        self,
        refs: dict[Role, str],
        store: Store | None = None,
        source: str | None = None,
        export: bool = True,
    ) -> None:
        self.refs = dict(refs)
        self.source = source or os.environ.get(SOURCE_ENV, "registry")
        self.store = store if store is not None or self.source == "bento" else Store.from_env()
        self.export = export
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.poll_interval = 0.0
        self.current = ModelSet.build(*(self._load(role, self.refs[role]) for role in ROLES))
        self._publish(self.current)

    def _load(self, role: Role, ref: str) -> LoadedModel:
        return load_model_ref(role, ref, self.store, self.source, self.export)

    def _publish(self, models: ModelSet) -> None:
        """Requests parsed from now on are checked against these models."""
        for role in ROLES:
            S.set_served_signature(role, models.get(role).signature, owner=self)

    def reload(self) -> list[S.ReloadChange]:
        """Resolve every followed reference again; load and swap in what moved."""
        with self._lock:  # one reload at a time (the poller and POST /reload)
            current = self.current
            changes, new = [], {}
            for role in ROLES:
                now, ref = current.get(role), self.refs[role]
                try:
                    version = self._resolve(role, ref)
                    if version != now.version:
                        new[role] = self._load(role, ref)
                        version = new[role].version
                    changes.append(
                        S.ReloadChange(
                            role=role,
                            ref=ref,
                            previous=now.version,
                            current=version,
                            changed=version != now.version,
                        )
                    )
                except Exception as exc:  # keep serving what is loaded
                    log.warning("reload of %s model %s failed: %s", role, ref, exc)
                    changes.append(
                        S.ReloadChange(
                            role=role,
                            ref=ref,
                            previous=now.version,
                            current=now.version,
                            changed=False,
                            error=str(exc),
                        )
                    )
            if new:
                swapped = ModelSet.build(  # a new planner for the new models
                    world=new.get("world", current.world),
                    behavior=new.get("behavior", current.behavior),
                )
                self._publish(swapped)
                self.current = swapped  # one assignment: in-flight requests keep the old set
                log.info("swapped in %s", {r: m.version for r, m in new.items()})
            return changes

    def _resolve(self, role: Role, ref: str) -> str:
        if self.source == "bento":
            return self.current.get(role).version
        mv = ModelRegistry(self.store).resolve(ref)
        return mv.ref

    def start_polling(self, interval: float) -> None:
        """Check the followed aliases every ``interval`` seconds in a daemon thread."""
        self.poll_interval = interval if self.source == "registry" else 0.0
        if self.poll_interval <= 0 or self._poller is not None:
            return

        def loop() -> None:
            while not self._stop.wait(self.poll_interval):
                try:
                    self.reload()
                except Exception:  # never let the poller die
                    log.exception("alias poll failed")

        self._poller = threading.Thread(target=loop, name="foresight-alias-poll", daemon=True)
        self._poller.start()

    def close(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)
            self._poller = None
        for role in ROLES:  # requests parsed after this host are not checked against its models
            S.set_served_signature(role, None, owner=self)


# -- requests -> windows ---------------------------------------------------------------------


def _layout(query: S._HistoryFields) -> tuple[int, ...]:
    """Observation size of each agent, in request order: queries with equal layouts batch."""
    return tuple(len(steps[0]) for steps in query.obs.values())


def _grouped(queries: list) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, q in enumerate(queries):
        groups.setdefault(_layout(q), []).append(i)
    return groups


def build_window(
    queries: list[S._HistoryFields],
    model: torch.nn.Module,
    context: int,
    current_actions: list[dict[str, Any]] | None = None,
) -> Window:
    """One window of ``context`` steps per query (same agent layout), left-padded like the
    start of an episode when the history is shorter, cut to its last steps when longer."""
    B, C, D = len(queries), context, model.obs_dim
    sizes = _layout(queries[0])
    N = len(sizes)
    discrete, A = model.discrete, model.n_actions
    obs = np.zeros((B, C, N, D), np.float32)
    present = np.zeros((B, C, N), bool)
    action = np.zeros((B, C, N) if discrete else (B, C, N, A), np.int64 if discrete else np.float32)
    prev_action = np.zeros_like(action)
    prev_valid = np.zeros((B, C, N), bool)
    state_dim = getattr(model, "state_dim", None)
    state = np.zeros((B, C, state_dim or 1), np.float32)
    state_valid = np.zeros((B, C), bool)
    for b, q in enumerate(queries):
        T = len(next(iter(q.obs.values())))
        t = min(T, C)  # window steps filled; window step j holds history step T - C + j
        for n, (agent, steps) in enumerate(q.obs.items()):
            obs[b, C - t :, n, : sizes[n]] = steps[T - t :]
            present[b, C - t :, n] = True
            past = (q.past_actions or {}).get(agent)
            if past:  # past[h] is the action after history step h (h = 0 .. T-2)
                action[b, C - t : C - 1, n] = past[T - t :]
                first = max(T - t, 1)  # prev_action of step h is past[h - 1], h >= 1
                prev_action[b, C - T + first :, n] = past[first - 1 :]
                prev_valid[b, C - T + first :, n] = True
            if current_actions is not None:
                action[b, C - 1, n] = current_actions[b][agent]
        if state_dim and q.state is not None:
            state[b, C - t :] = q.state[T - t :]
            state_valid[b, C - t :] = True
    time_valid = present.any(axis=2)
    feat_mask = np.arange(D)[None, :] < np.array(sizes)[:, None]  # (N, D)
    w = Window(
        obs=torch.from_numpy(obs),
        feat_mask=torch.from_numpy(feat_mask),
        present=torch.from_numpy(present),
        time_valid=torch.from_numpy(time_valid),
        action=torch.from_numpy(action),
        prev_action=torch.from_numpy(prev_action),
        prev_valid=torch.from_numpy(prev_valid),
        prev_reward=torch.zeros(B, C, N),
    )
    if state_dim:
        w.state = torch.from_numpy(state)
        w.state_valid = torch.from_numpy(state_valid)
    return w


def _action_list(x: torch.Tensor, discrete: bool) -> list:
    return x.tolist() if discrete else x.float().tolist()


# -- predictions -----------------------------------------------------------------------------


@torch.inference_mode()
def predict_actions(models: ModelSet, queries: list[S.ActionQuery]) -> list[S.ActionPrediction]:
    """Each agent's next-action distribution, for every query."""
    served = models.behavior
    model = served.model
    out: list[S.ActionPrediction | None] = [None] * len(queries)
    for idx in _grouped(queries).values():
        group = [queries[i] for i in idx]
        dist = model.action_distribution(build_window(group, model, model.context))  # (B, N)
        n_samples = max(q.samples for q in group)
        samples = (
            torch.stack([dist.sample() for _ in range(n_samples)], dim=1) if n_samples else None
        )  # (B, K, N[, A])
        # one tensor -> list conversion per batch; the answers are built unvalidated
        # (model_construct): their values come from the model, with the declared types
        none = [[None] * len(group[0].obs)] * len(group)  # (B, N)
        probs = dist.probs().tolist() if dist.discrete else none
        mean = none if dist.discrete else dist.mean.tolist()
        std = none if dist.discrete else dist.std.tolist()
        mode = _action_list(dist.mode(), dist.discrete)
        for b, (i, q) in enumerate(zip(idx, group, strict=True)):
            wanted = q.agents or q.obs
            agents = {}
            for n, agent in enumerate(q.obs):
                if agent not in wanted:
                    continue
                agents[agent] = S.ActionDistribution.model_construct(
                    probs=probs[b][n],
                    mean=mean[b][n],
                    std=std[b][n],
                    mode=mode[b][n],
                    samples=(
                        _action_list(samples[b, : q.samples, n], dist.discrete)
                        if q.samples
                        else None
                    ),
                )
            out[i] = S.ActionPrediction.model_construct(model=served.version, agents=agents)
    return out  # type: ignore[return-value]


@torch.inference_mode()
def predict_next(models: ModelSet, queries: list[S.NextQuery]) -> list[S.NextPrediction]:
    """Distribution of the next joint observation, rewards and termination, per query."""
    served = models.world
    model = served.model
    out: list[S.NextPrediction | None] = [None] * len(queries)
    for idx in _grouped(queries).values():
        group = [queries[i] for i in idx]
        w = build_window(group, model, model.context, [q.action for q in group])
        pred = model.predict(w)
        mean = pred.obs.mean()  # (B, N, D)
        std = torch.where(pred.dim_mask, pred.obs.stddev(), 0.0)  # copied features: exact
        n_samples = max(q.samples for q in group)
        samples = (
            torch.stack([pred.obs.sample() for _ in range(n_samples)], dim=1) if n_samples else None
        )  # (B, K, N, D)
        sizes = _layout(group[0])
        for b, (i, q) in enumerate(zip(idx, group, strict=True)):
            agents = {}
            for n, agent in enumerate(q.obs):
                d = sizes[n]
                agents[agent] = S.NextObservation(
                    mean=mean[b, n, :d].tolist(),
                    std=std[b, n, :d].tolist(),
                    reward=float(pred.reward[b, n]),
                    termination_prob=float(pred.term_prob[b, n]),
                    samples=samples[b, : q.samples, n, :d].tolist() if q.samples else None,
                )
            out[i] = S.NextPrediction(model=served.version, agents=agents)
    return out  # type: ignore[return-value]


@torch.inference_mode()
def imagine_futures(models: ModelSet, req: S.ImagineRequest) -> S.ImagineResponse:
    """K sampled futures of H steps; planned agents follow their plans, the rest the
    behavior model."""
    world, behavior = models.world.model, models.behavior.model
    C = max(world.context, behavior.context)
    start = build_window([req], world, C)
    agent_ids = list(req.obs)
    dtype = torch.int64 if world.discrete else torch.float32
    plans = {a: torch.tensor(p, dtype=dtype) for a, p in (req.plans or {}).items()}
    generator = torch.Generator().manual_seed(req.seed) if req.seed is not None else None
    im = imagine(
        world,
        start,
        req.horizon,
        req.samples,
        actions=plans,
        policy=behavior,
        agent_ids=agent_ids,
        generator=generator,
    )
    sizes = _layout(req)
    obs, actions = im.obs[0], im.action[0]  # (K, H, N, D), (K, H, N[, A])
    rewards, terminated = im.reward[0].tolist(), im.terminated[0]  # (K, H, N)
    any_term = terminated.any(dim=2)  # (K, H)
    futures = []
    for k in range(req.samples):
        agents = {
            agent: S.ImaginedAgent(
                obs=obs[k, :, n, : sizes[n]].tolist(),
                actions=_action_list(actions[k, :, n], world.discrete),
                rewards=[r[n] for r in rewards[k]],
                terminated=terminated[k, :, n].tolist(),
            )
            for n, agent in enumerate(agent_ids)
        }
        hits = torch.nonzero(any_term[k]).flatten()
        futures.append(
            S.ImaginedFuture(
                agents=agents, first_termination=int(hits[0]) if hits.numel() else None
            )
        )
    return S.ImagineResponse(
        world_model=models.world.version,
        behavior_model=models.behavior.version,
        horizon=req.horizon,
        futures=futures,
    )


# -- /act ------------------------------------------------------------------------------------


class ActInputError(ValueError):
    """A request the planner cannot take; the message starts with the field."""


class PlannerUnavailable(RuntimeError):
    """The served world and behavior models cannot plan together."""


def joint_history(req: S.ActRequest, discrete: bool, n_actions: int) -> JointHistory:
    """The request's per-agent history as the planner's :class:`JointHistory`.

    ``prev_actions[t]`` (the joint action before ``obs[t]``) is ``past_actions[a][t-1]``;
    row 0 is zeros, ignored by the planner at an episode start and outside its window
    otherwise (a later start needs more steps than the context).
    """
    agents = list(req.obs)
    T, N = len(req.obs[agents[0]]), len(agents)
    sizes = {a: len(steps[0]) for a, steps in req.obs.items()}
    obs = np.zeros((T, N, max(sizes.values())), np.float32)  # (T, N, D)
    prev = np.zeros((T, N) if discrete else (T, N, n_actions), np.int64 if discrete else np.float32)
    for n, agent in enumerate(agents):
        obs[:, n, : sizes[agent]] = req.obs[agent]
        if T > 1:
            prev[1:, n] = req.past_actions[agent]
    return JointHistory(agents, obs, prev, start_step=req.start_step, obs_sizes=sizes)


def act(
    models: ModelSet, req: S.ActRequest, timing: dict[str, float] | None = None
) -> S.ActResponse:
    """The planner's decision for each ego agent of the request. ``timing``, when given,
    receives ``decide``: the seconds the planner's decision took (the service reports it
    in the ``Server-Timing`` header, so a client sees what the service adds to it)."""
    planner = models.planner
    if planner is None:
        raise PlannerUnavailable(
            f"act: the served models cannot plan together: {models.planner_error}"
        )
    T = len(next(iter(req.obs.values())))
    C = planner.context
    if req.start_step > 0 and T <= C:
        raise ActInputError(
            f"obs: has {T} steps and start_step is {req.start_step}, so the history does not "
            f"begin the episode; the models read {C} steps: send at least {C + 1} (the "
            "first one's previous action is not in the request), or the whole episode so "
            "far with start_step 0"
        )
    config = planner.config
    horizon, samples = req.horizon or config.horizon, req.samples or config.n_samples
    if (horizon, samples) != (config.horizon, config.n_samples):
        planner = copy.copy(planner)  # same models and random stream, other H and K
        planner.config = replace(config, horizon=horizon, n_samples=samples)
    if req.objective is not None:
        try:
            planner = planner.with_objective(req.objective)
        except ValueError as exc:
            raise ActInputError(f"objective: {exc}") from exc
    history = joint_history(req, planner.discrete, planner.n_actions)
    started = time.perf_counter()
    try:
        decisions = planner.decide(history, req.egos, team=req.team)
    except ValueError as exc:
        raise ActInputError(f"obs: {exc}") from exc
    if timing is not None:
        timing["decide"] = time.perf_counter() - started
    return S.ActResponse(
        world_model=models.world.version,
        behavior_model=models.behavior.version,
        horizon=horizon,
        samples=samples,
        objective=planner.config.objective,
        agents={
            d.agent: S.EgoDecision(
                action=d.action,
                predicted_return=d.predicted_return,
                candidates=[S.CandidateScore(action=a, score=v) for a, v in d.candidate_scores],
                predicted_others=d.predicted_others,
                plan=d.plan,
            )
            for d in decisions
        },
    )
