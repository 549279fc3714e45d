"""Offline-RL peer: one Q-network shared by every agent, over each agent's own history.

This is the policy a user with logged multi-agent data would train instead of Foresight's
models: independent learners with parameter sharing and a conservative (CQL) Q-loss, the
IQL+CQL family of OG-MARL. The loss and the target network come from TorchRL
(:mod:`foresight.training.loop.offline_rl`); this module holds the network and what it reads.

Per agent n at step t the network reads (nothing of the other agents):

    for each of the last K steps τ = t-K+1..t:  [obs_norm_τ, prev action one-hot_τ, valid_τ]
    + agent id one-hot (the dataset's agent order) + t / horizon (episodes have a fixed length,
      so the time left changes what an action is worth)
    -> MLP -> Q(history, a) for every discrete action a

Acting is the argmax over actions. Steps before the episode start are zeros with valid=0,
the same windows (:func:`foresight.training.data.gather_window`) the other models train on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from foresight.datasets.schema import DatasetSpec
from foresight.training.data import Normalizer, Window
from foresight.training.models.layers import action_features, check_architecture

ARCHITECTURE = "shared-q-window/1"
"""Layout of the weights this module builds; a saved model of another layout cannot load."""


@dataclass
class OfflineRLConfig:
    spec: dict | None = None
    """DatasetSpec.to_dict() of the training data; filled in by training, fixes the sizes."""
    context: int = 4
    """Steps of the agent's own history read (MPE observations carry velocities, so a few
    steps show where the agent and the others are heading)."""
    hidden: int = 256
    """Width of the Q-network's hidden layers."""
    layers: int = 2
    """Hidden layers of the Q-network."""
    horizon: int = 25
    """Longest logged episode in steps (filled in by training): scales the time feature."""
    architecture: str = ARCHITECTURE
    """Weights layout (set by the code, saved in cards; checked when a model is loaded)."""

    def dataset_spec(self) -> DatasetSpec:
        if self.spec is None:
            raise ValueError("OfflineRLConfig.spec is unset; training fills it")
        return DatasetSpec.from_dict(self.spec)


def check_discrete(spec: DatasetSpec) -> None:
    """ValueError unless ``spec`` has discrete actions (the Q-network scores each action)."""
    if not spec.action.discrete:
        raise ValueError(
            f"offline-rl needs discrete actions, but dataset env={spec.env!r} has "
            f"{spec.action.describe()} actions: its Q-network scores every action, which a "
            "continuous action space does not have. Use the world and behavior models instead."
        )


class SharedQNetwork(nn.Module):
    """Q-values of every action for every agent, from that agent's own window."""

    def __init__(self, config: OfflineRLConfig):
        super().__init__()
        check_architecture("offline-rl", config.architecture, ARCHITECTURE)
        spec = config.dataset_spec()
        check_discrete(spec)
        if config.context < 1 or config.hidden < 1 or config.layers < 1 or config.horizon < 1:
            raise ValueError(
                "offline-rl context, hidden, layers and horizon must be >= 1, got "
                f"{config.context}, {config.hidden}, {config.layers}, {config.horizon}"
            )
        self.config = config
        self.agent_ids = list(spec.agents)
        self.n_actions = spec.action.n
        self.obs_dim = D = max(spec.agents.values())
        self.context = config.context
        self.register_buffer("obs_mean", torch.zeros(D))
        self.register_buffer("obs_std", torch.ones(D))
        self.in_features = config.context * (D + self.n_actions + 1) + len(self.agent_ids) + 1
        layers: list[nn.Module] = []
        width = self.in_features
        for _ in range(config.layers):
            layers += [nn.Linear(width, config.hidden), nn.ReLU()]
            width = config.hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, self.n_actions))

    def set_normalizer(self, norm: Normalizer) -> None:
        self.obs_mean.copy_(norm.obs_mean)
        self.obs_std.copy_(norm.obs_std)

    def agent_index(self, agent_ids: Sequence[str]) -> torch.Tensor:
        """(N,) position of each column's agent in the training data's agent order."""
        unknown = [a for a in agent_ids if a not in self.agent_ids]
        if unknown:
            raise ValueError(
                f"offline-rl model knows agents {self.agent_ids}, not {unknown}: it was "
                "trained with one id per agent of its dataset"
            )
        return torch.tensor([self.agent_ids.index(a) for a in agent_ids], dtype=torch.long)

    def features(self, w: Window, step: torch.Tensor, agent_index: torch.Tensor) -> torch.Tensor:
        """(B, N, F) what each agent's Q reads: its last K steps, its id, the time.

        ``w``: windows of at least K steps ending at the decision step; ``step``: (B,) episode
        step of the window's last step; ``agent_index``: (N,) from :meth:`agent_index`.
        """
        w = w.last(self.context)
        B, _K, N, D = w.obs.shape
        assert self.obs_dim == D, (D, self.obs_dim)
        assert step.shape == (B,), (step.shape, B)
        valid = (w.present & w.time_valid[..., None]).float()[..., None]  # (B, K, N, 1)
        obs = (w.obs - self.obs_mean) / self.obs_std * w.feat_mask.float() * valid  # (B, K, N, D)
        prev = action_features(w.prev_action, True, self.n_actions)
        prev = prev * (w.prev_valid.float()[..., None] * valid)  # (B, K, N, A)
        steps = torch.cat([obs, prev, valid], dim=-1)  # (B, K, N, D + A + 1)
        steps = steps.transpose(1, 2).reshape(B, N, -1)  # (B, N, K * (D + A + 1))
        ident = nn.functional.one_hot(agent_index.to(w.obs.device), len(self.agent_ids))
        ident = ident.float().expand(B, N, -1)  # (B, N, n_ids)
        time = (step.float() / self.config.horizon)[:, None, None].expand(B, N, 1)
        return torch.cat([steps, ident, time], dim=-1)  # (B, N, F)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(..., F) features -> (..., n_actions) Q-values."""
        return self.net(features)

    @torch.no_grad()
    def act(self, w: Window, step: torch.Tensor, agent_index: torch.Tensor) -> torch.Tensor:
        """(B, N) greedy action of every agent: the argmax of its Q-values."""
        return self(self.features(w, step, agent_index)).argmax(-1)
