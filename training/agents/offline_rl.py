"""The arena controller of the offline-RL peer: each agent takes the argmax of the shared
Q-network over its own history (:mod:`foresight.training.models.offline_rl`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from foresight.datasets.schema import DatasetSpec
from foresight.training.agents.planning import JointHistory, history_window
from foresight.training.models.offline_rl import SharedQNetwork


class OfflineRLController:
    """Greedy in the learned Q-values; reads each agent's own observations and actions only."""

    def __init__(self, model: SharedQNetwork) -> None:
        if not isinstance(model, SharedQNetwork):
            raise TypeError(f"offline-rl controller needs a SharedQNetwork, got {type(model)}")
        self.model = model.eval()
        self.spec = DatasetSpec.from_dict(model.config.spec)
        self.device = next(model.parameters()).device

    def reset(self, info) -> None:
        pass

    @torch.no_grad()
    def act(self, history: JointHistory, agents: Sequence[str]) -> dict[str, int]:
        w = history_window(
            history,
            self.model.context,
            self.model.obs_dim,
            self.spec.action,
            self.device,
            pad_short_history=True,
        )
        step = torch.tensor([history.start_step + history.length - 1], device=self.device)
        actions = self.model.act(w, step, self.model.agent_index(history.agent_ids))[0]  # (N,)
        return {a: int(actions[history.agent_ids.index(a)]) for a in agents}
