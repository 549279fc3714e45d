"""Arena controllers that decide through a live service: the real external-client path.

``foresight arena --via-http URL`` plugs these in for ``anticipatory`` (``POST /act``) and
``bc`` (``POST /predict_actions``), so every decision of those agents is an HTTP call.
Episodes they play are recorded (every agent of the episode) and posted to ``POST
/episodes`` as each one finishes (:mod:`foresight.serving.recorder`); each row's
``policy_id`` names the controller and the model versions the service answered with, e.g.
``anticipatory(world@3,behavior@2)``, ``bc(behavior@2)``, ``greedy``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from foresight.serving.client import ForesightClient
from foresight.serving.recorder import ArenaRecording, EpisodeRecorder, policy_id
from foresight.serving.schemas import ServedModel
from foresight.training.agents.arena import EpisodeInfo, team_agents
from foresight.training.agents.planning import JointHistory


def history_body(history: JointHistory) -> dict[str, Any]:
    """A planner history as the service's ``obs`` / ``past_actions`` fields."""
    obs = np.asarray(history.obs)
    prev = np.asarray(history.prev_actions)
    sizes = history.obs_sizes or {}
    body_obs, past = {}, {}
    for n, agent in enumerate(history.agent_ids):
        width = sizes.get(agent, obs.shape[-1])
        body_obs[agent] = obs[:, n, :width].astype(float).tolist()
        # prev_actions[t] led to obs[t]; the service wants the action taken after each step.
        past[agent] = prev[1:, n].tolist()
    body: dict[str, Any] = {"obs": body_obs}
    if obs.shape[0] > 1:
        body["past_actions"] = past
    return body


class HttpAnticipatoryController:
    """Asks ``POST /act`` for the actions of the agents it drives."""

    def __init__(
        self,
        client: ForesightClient,
        observer: ArenaRecording | None = None,
        objective: str | None = None,
    ) -> None:
        self.client = client
        self.observer = observer
        self.objective = objective
        self.policy_id = "anticipatory"
        self.team: list[str] | None = None

    def reset(self, info: EpisodeInfo) -> None:
        self.team = team_agents(info.team)  # a competitive env's own side

    def act(self, history: JointHistory, agents: Sequence[str]) -> Mapping[str, Any]:
        body = history_body(history) | {"egos": list(agents), "start_step": history.start_step}
        if self.team is not None:
            body["team"] = self.team
        if self.objective is not None:
            body["objective"] = self.objective
        response = self.client.act(body)
        self.policy_id = policy_id("anticipatory", response.world_model, response.behavior_model)
        if self.observer is not None:
            self.observer.recorder.note_act(response)
        return {agent: response.agents[agent].action for agent in agents}


class HttpBehaviorController:
    """The behavior model's most likely action, from ``POST /predict_actions``."""

    def __init__(self, client: ForesightClient, observer: ArenaRecording | None = None) -> None:
        self.client = client
        self.observer = observer
        self.policy_id = "bc"

    def reset(self, info: EpisodeInfo) -> None:
        pass

    def act(self, history: JointHistory, agents: Sequence[str]) -> Mapping[str, Any]:
        [prediction] = self.client.predict_actions(
            [history_body(history) | {"agents": list(agents)}]
        )
        self.policy_id = policy_id("bc", behavior=prediction.model)
        return {agent: prediction.agents[agent].mode for agent in agents}


def http_factories(
    url: str,
    api_key: str | None = None,
    record: bool = True,
    dataset: str | None = None,
    objective: str | None = None,
) -> dict[str, Any]:
    """Arena factories for ``anticipatory`` and ``bc`` that call the service at ``url``
    (``objective``: what ``/act`` scores plans by, the service's default if None).

    ``record``: the episodes they play are posted to the service's ``/episodes`` (into
    ``dataset``'s landing folder; default: the dataset the served world model was trained
    on). One recorder serves both, so an episode is recorded once whatever its team."""
    client = ForesightClient(url, api_key=api_key)
    if not client.ready():
        raise ValueError(f"no Foresight service ready at {url} (GET /readyz failed)")
    observer = ArenaRecording(EpisodeRecorder(client, dataset=dataset)) if record else None
    served = client.models().models
    return {
        "anticipatory": RemoteFactory(
            lambda: HttpAnticipatoryController(client, observer, objective), served_specs(served)
        ),
        "bc": RemoteFactory(
            lambda: HttpBehaviorController(client, observer), served_specs(served, "behavior")
        ),
    }


def served_specs(served: Sequence[ServedModel], role: str | None = None) -> dict[str, dict]:
    """Label -> training spec of each of the service's models (``GET /models``; of ``role``
    if given)."""
    return {
        f"served {m.role} model {m.version}": m.card["spec"]
        for m in served
        if m.card.get("spec") and role in (None, m.role)
    }


class RemoteFactory:
    """An arena factory for controllers that decide through the service. ``model_specs``
    (the served models' training specs, read when the factory is made) lets the arena
    refuse a team size or view they were not trained on before the first episode, as it
    does for local models, and play their own size and view by default."""

    def __init__(self, build: Callable[[], Any], model_specs: dict[str, dict]) -> None:
        self.build, self.model_specs = build, model_specs

    def __call__(self, env: str, models: Any) -> Any:
        return self.build()
