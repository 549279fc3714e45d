"""Record what served agents live through and post each finished episode to ``/episodes``.

    recorder = EpisodeRecorder(client)                     # a ForesightClient
    recorder.begin()                                       # a fresh episode id
    for each step:
        response = client.act(...)                         # the decision, if any
        recorder.note_act(response)                        # its versions and scores
        recorder.record_step(obs, actions, rewards, terminated, truncated,
                             policies={"agent_0": "anticipatory", ...})
    recorder.finish()                                      # POST /episodes

Rows are the trajectory contract, one per agent and step: what the agent saw, what it did
and what it got for it. ``policy_id`` names the controller and, for a decision that came
from the service, the model versions that took it: ``anticipatory(world@3,behavior@2)``
(:func:`policy_id`). A noted ``/act`` decision goes into that row's ``info`` (predicted
return, the model versions). A post the service refuses for now (503, a network error) is
retried on the next :meth:`finish` and by :meth:`close`; a 4xx is a bug in what was
recorded and raises.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
import numpy as np

from foresight.serving.client import ForesightClient, ForesightError
from foresight.serving.schemas import ActResponse, EpisodesResponse

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429, 503})
"""Answers that say "later": the episode stays pending."""


def policy_id(controller: str, world: str | None = None, behavior: str | None = None) -> str:
    """``controller(world@3,behavior@2)``: who decided a row, and with which models."""
    versions = [v for v in (world, behavior) if v]
    return f"{controller}({','.join(versions)})" if versions else controller


def _value(x: Any) -> Any:
    """A JSON value of an observation, action or reward (numpy arrays and scalars too)."""
    if isinstance(x, np.ndarray):
        return x.astype(float).reshape(-1).tolist() if x.ndim else x.item()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, list | tuple):
        return [float(v) for v in x]
    return x


class EpisodeRecorder:
    """Collects the rows of one episode at a time and posts each finished one."""

    def __init__(
        self,
        client: ForesightClient,
        dataset: str | None = None,
        prefix: str = "served",
        attempts: int = 3,
    ) -> None:
        """``dataset``: where the service lands the episodes (default: the dataset the served
        world model was trained on). ``prefix`` starts every episode id."""
        self.client = client
        self.dataset = dataset
        self.prefix = prefix
        self.attempts = attempts
        self.episode_id: str | None = None
        self._rows: list[dict[str, Any]] = []
        self._step = 0
        self._decisions: dict[str, dict[str, Any]] = {}
        self._policies: dict[str, str] = {}
        self.pending: list[list[dict[str, Any]]] = []
        """Finished episodes the service has not accepted yet."""
        self.posted: list[str] = []
        """Ids of the episodes the service accepted."""

    def begin(self, episode_id: str | None = None) -> str:
        """Start an episode (a fresh unique id unless given); rows recorded so far and not
        finished are dropped."""
        self.episode_id = episode_id or f"{self.prefix}-{uuid.uuid4().hex}"
        self._rows, self._step, self._decisions = [], 0, {}
        return self.episode_id

    def note_act(self, response: ActResponse, controller: str = "anticipatory") -> None:
        """The service's ``/act`` decisions for this step: each ego's next row gets the model
        versions as its ``policy_id`` and the decision in its ``info``."""
        pid = policy_id(controller, response.world_model, response.behavior_model)
        for agent, d in response.agents.items():
            self._policies[agent] = pid
            self._decisions[agent] = {
                "act": {
                    "predicted_return": d.predicted_return,
                    "world_model": response.world_model,
                    "behavior_model": response.behavior_model,
                }
            }

    def note_policy(self, agent: str, pid: str) -> None:
        """The ``policy_id`` of ``agent``'s next row (when it did not come from ``/act``)."""
        self._policies[agent] = pid

    def record_step(
        self,
        obs: Mapping[str, Any],
        actions: Mapping[str, Any],
        rewards: Mapping[str, float],
        terminated: Mapping[str, bool],
        truncated: Mapping[str, bool],
        policies: Mapping[str, str] | None = None,
    ) -> None:
        """One step: per agent that acted, what it saw, did and received. ``policies``
        (agent -> policy id) fills in agents whose policy was not noted for this step."""
        if self.episode_id is None:
            raise RuntimeError("EpisodeRecorder.record_step before begin()")
        now = time.time()
        for agent, action in actions.items():
            row: dict[str, Any] = {
                "episode_id": self.episode_id,
                "step": self._step,
                "agent_id": agent,
                "obs": _value(obs[agent]),
                "action": _value(action),
                "reward": float(rewards.get(agent, 0.0)),
                "terminated": bool(terminated.get(agent, False)),
                "truncated": bool(truncated.get(agent, False)),
                "timestamp": now,
            }
            pid = self._policies.pop(agent, None) or (policies or {}).get(agent)
            if pid:
                row["policy_id"] = pid
            if agent in self._decisions:
                row["info"] = json.dumps(self._decisions.pop(agent))
            self._rows.append(row)
        self._step += 1

    def finish(self) -> EpisodesResponse | None:
        """Post the episode (and any still pending); the service's answer, or None when it
        asked to wait (the episodes stay pending)."""
        if self._rows:
            self.pending.append(self._rows)
        self._rows, self.episode_id = [], None
        answer = self._post(flush=False)
        if self.pending:
            log.warning(
                "%d recorded episodes wait for the service to accept them (retried with "
                "the next episode and by close())",
                len(self.pending),
            )
        return answer

    def close(self, flush: bool = True) -> EpisodesResponse | None:
        """Post what is pending and (``flush``) ask the service to write its buffer to the
        landing zone now. Raises ForesightError when episodes remain unaccepted."""
        answer = self._post(flush=flush)
        if self.pending:
            raise ForesightError(
                503, f"{len(self.pending)} recorded episodes were not accepted by the service"
            )
        return answer

    def _post(self, flush: bool) -> EpisodesResponse | None:
        if not self.pending and not flush:
            return None
        body = {"dataset": self.dataset or "", "episodes": self.pending, "flush": flush}
        for attempt in range(self.attempts):
            try:
                answer = self.client.post_episodes(body)
            except ForesightError as exc:
                if exc.status not in RETRY_STATUSES:
                    raise
            except httpx.TransportError:
                pass
            else:
                self.posted.extend(answer.episode_ids)
                self.pending = []
                return answer
            time.sleep(0.2 * (attempt + 1))
        return None


class ArenaRecording:
    """The arena's episode observer (``foresight.training.agents.arena``) over an
    :class:`EpisodeRecorder`: every agent of an episode is recorded, each row's
    ``policy_id`` naming the controller that drove it (with the models, for HTTP ones)."""

    def __init__(self, recorder: EpisodeRecorder) -> None:
        self.recorder = recorder

    def begin(self, info) -> None:
        self.recorder.begin(f"{self.recorder.prefix}-{info.env}-{uuid.uuid4().hex}")

    def step(
        self,
        obs: Mapping[str, Any],
        actions: Mapping[str, Any],
        rewards: Mapping[str, float],
        terminated: Mapping[str, bool],
        truncated: Mapping[str, bool],
        policies: Mapping[str, str],
    ) -> None:
        self.recorder.record_step(obs, actions, rewards, terminated, truncated, policies)

    def end(self) -> None:
        self.recorder.finish()
