"""Behavior model: for each agent, a distribution over its next action given its history.

Decentralized (default): each agent's own history of (observation, previous action) only,
which any other agent can compute from outside.

Discrete actions (``n_experts > 0``) use a latent-style mixture, because that is how agent
populations are usually built: a few decision rules applied to what the agent sees now,
and a per-agent choice among them and a noise level, fixed for an episode, that only its
history reveals. A style z = (expert k, noise level j):

    per agent n, per step τ:  x_τ = [obs_norm, feature mask, prev action, flags]
    experts:   x_τ -> MLP -> K action distributions p_k(a | now)      (current step only)
    styles:    p_z(a | now) = (1 - ε_j) p_k(a | now) + ε_j / n_actions  (J learned ε_j)
    evidence:  e_τ[z] = Σ_{σ<τ in the window} log p_z(a_σ | x_σ)       (how well each
               style explained the agent's own past actions)
    prior:     learned logits π[z], the same for every agent (gate="static")
    p(a_τ | history) = Σ_z softmax(π + e_τ)[z] p_z(a_τ | now)          (Bayes' rule)

Over a whole episode the per-step losses sum to -log Σ_z π_z Π_τ p_z(a_τ | x_τ), the
likelihood of a mixture model whose latent is the agent's style: the history acts only
through Bayes' rule, so what can memorize is the experts, which see one step at a time.
With one step of history the evidence is empty and the model is a mixture of the current
step's experts (the "1-step model"). ``gate="gru"`` computes the prior from the history
with a GRU instead: more freedom, and on simple_spread it memorized the training episodes
(2k episodes, held-out NLL 1.116 against 1.003 for the static prior; BENCHMARKS.md).

Continuous actions (or ``n_experts=0``) use one head on [h_τ, MLP(x_τ)] where h_τ is a GRU
over the history (Gaussian mean/std for continuous). ``centralized=True`` lets the agents'
GRU states attend to each other (for the experts' prior, or the head).

The model never reads ``window.action`` (the action at the last step is its target);
only ``window.prev_action``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from foresight.datasets.schema import DatasetSpec
from foresight.training.data import Normalizer, Targets, Window
from foresight.training.models.layers import (
    Block,
    action_features,
    check_architecture,
    check_decentralized,
)

ARCHITECTURE = "bayes-experts/3"
"""Layout of the weights this module builds; a saved model of another layout cannot load."""


@dataclass
class BehaviorModelConfig:
    spec: dict | None = None
    """DatasetSpec.to_dict() of the training data; filled in by train(), fixes the sizes."""
    context: int = 25
    """Steps of an agent's own history read (style shows over many steps; MPE episodes
    last 25 steps, so 25 reads every step of them)."""
    d_model: int = 64
    """Width of the step encoder, the experts and the GRU state."""
    n_experts: int = 16
    """Experts of the mixture (discrete actions); 0: one head on [GRU state, step]."""
    expert_width: int = 128
    """Hidden width of the experts' MLP (shared by all experts): the experts carry the
    hard part, what each decision rule does with the observation. With noise levels
    crossed in, 128 learns as well as 256 (simple_spread, 2k episodes: held-out NLL 1.0037
    vs 1.0030) for less than half the compute, which the service pays on every history
    step of every query."""
    expert_layers: int = 3
    """Hidden layers of the experts' MLP (rules like "go to the nearest landmark" select
    before they act: 3 layers learn them clearly better than 2)."""
    gate: str = "static"
    """Prior over the styles (discrete actions): "static", one learned prior for every
    agent, so the history acts only through Bayes' rule; "gru", a prior computed from the
    history by a GRU (more freedom, and more room to memorize episodes). Centralized models
    always use a GRU (with attention across agents)."""
    noise_levels: int = 8
    """Learned noise levels ε_j crossed with the experts: expert k at level j acts as
    (1 - ε_j) p_k(a | now) + ε_j uniform, so one rule expert covers agents of every
    noise level and the evidence tells them apart. 0: no noise levels."""
    centralized: bool = False
    """Condition on the joint history (attention across agents) instead of one agent's;
    refused under a partial view (``spec.extra["obs_radius"]``), where an agent cannot read
    what it does not see."""
    n_layers: int = 1
    """Transformer blocks across agents (centralized only)."""
    n_heads: int = 4
    """Attention heads per block (centralized only)."""
    dropout: float = 0.2
    """Dropout on the history path (GRU input and state): long histories make episodes
    easy to memorize."""
    expert_dropout: float = 0.25
    """Dropout on the experts' hidden layers: their labels are noisy (agents that act at
    random some of the time), which a wide MLP memorizes within a few epochs (simple_spread,
    2k episodes: held-out NLL 1.150 with 0.1, 1.116 with 0.25)."""
    min_std: float = 1e-2
    """Smallest std of a continuous action component (raw action units)."""
    architecture: str = ARCHITECTURE
    """Weights layout (set by the code, saved in cards; checked when a model is loaded)."""

    def dataset_spec(self) -> DatasetSpec:
        if self.spec is None:
            raise ValueError("BehaviorModelConfig.spec is unset; train() fills it")
        return DatasetSpec.from_dict(self.spec)


@dataclass
class ActionDistribution:
    """Per-agent action distribution, batch dims (B, N) (or (B, T, N) inside training)."""

    logits: torch.Tensor | None = None
    """(B, N, n) categorical logits (discrete)."""
    mean: torch.Tensor | None = None
    """(B, N, A) Gaussian mean (continuous)."""
    std: torch.Tensor | None = None
    """(B, N, A) Gaussian std (continuous)."""

    @property
    def discrete(self) -> bool:
        return self.logits is not None

    @property
    def batch_shape(self) -> torch.Size:
        return (self.logits if self.discrete else self.mean).shape[:-1]

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """(B, N) log-probability of the actions (B, N) or (B, N, A)."""
        if action.shape[: len(self.batch_shape)] != self.batch_shape:
            raise ValueError(
                f"action shape {tuple(action.shape)} does not start with the batch shape {tuple(self.batch_shape)}"
            )
        if self.discrete:
            logp = self.logits.log_softmax(-1)
            return logp.gather(-1, action.long()[..., None]).squeeze(-1)
        z = (action - self.mean) / self.std
        return (-0.5 * z**2 - self.std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.discrete:
            probs = self.logits.softmax(-1)
            flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
            return flat.reshape(probs.shape[:-1])  # (B, N)
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device)
        return self.mean + self.std * eps  # (B, N, A)

    def mode(self) -> torch.Tensor:
        return self.logits.argmax(-1) if self.discrete else self.mean

    def probs(self) -> torch.Tensor:
        if not self.discrete:
            raise ValueError("probs() is for discrete actions")
        return self.logits.softmax(-1)


@dataclass
class BehaviorState:
    """What the model carries from one step to the next (for step-by-step use)."""

    h: torch.Tensor | None
    """(1, B*N, d) GRU state (None: the model has no GRU)."""
    evidence: torch.Tensor | None = None
    """(B, N, Z) summed log-likelihood of the agent's past actions under each style."""
    last_logp: torch.Tensor | None = None
    """(B, N, n, K) each expert's action log-probabilities at the last step read."""
    last_present: torch.Tensor | None = None
    """(B, N) bool, the agent was present at the last step read."""

    def index(self, rows: torch.Tensor) -> BehaviorState:
        """The state of a batch whose row i is this batch's row ``rows[i]``."""
        N = self.last_present.shape[1]
        flat = (rows[:, None] * N + torch.arange(N, device=rows.device)).reshape(-1)
        pick = lambda x: None if x is None else x[rows]  # noqa: E731
        h = None if self.h is None else self.h[:, flat]
        return BehaviorState(h, pick(self.evidence), pick(self.last_logp), pick(self.last_present))


class BehaviorModel(nn.Module):
    def __init__(self, config: BehaviorModelConfig):
        super().__init__()
        check_architecture("behavior model", config.architecture, ARCHITECTURE)
        spec = config.dataset_spec()
        check_decentralized(spec, config.centralized, "behavior model", "set centralized=False")
        self.config = config
        self.discrete = spec.action.discrete
        self.n_actions = spec.action.n if self.discrete else spec.action.dim
        self.obs_dim = D = max(spec.agents.values())
        self.context = config.context
        d = config.d_model
        self.register_buffer("obs_mean", torch.zeros(D))
        self.register_buffer("obs_std", torch.ones(D))
        F_in = 2 * D + self.n_actions + 2  # obs, feature mask, prev action, 2 flags
        if config.gate not in ("static", "gru"):
            raise ValueError(f"behavior model gate must be 'static' or 'gru', got {config.gate!r}")
        self.n_experts = K = config.n_experts if self.discrete else 0
        self.noise_levels = J = config.noise_levels if K else 0
        self.history_net = not K or config.gate == "gru" or config.centralized
        """Whether a GRU reads the history (for the head, or for the experts' prior)."""
        if self.history_net:
            self.step_encoder = nn.Sequential(nn.Linear(F_in, d), nn.GELU())
            self.gru = nn.GRU(d, d, batch_first=True)
        if config.centralized:
            self.blocks = nn.ModuleList(
                Block(d, config.n_heads, 4, 0.0) for _ in range(config.n_layers)
            )
        if K:
            n, e = self.n_actions, config.expert_width
            q = config.expert_dropout
            layers: list[nn.Module] = [nn.Linear(F_in, e), nn.GELU(), nn.Dropout(q)]
            for _ in range(config.expert_layers - 1):
                layers += [nn.Linear(e, e), nn.GELU(), nn.Dropout(q)]
            self.experts = nn.Sequential(*layers, nn.Linear(e, K * n))
            Z = K * max(J, 1)  # latent styles: (expert, noise level)
            if J:
                eps = torch.linspace(0.02, 0.8, J)
                self.noise_logit = nn.Parameter((eps / (1 - eps)).log())
            if self.history_net:
                self.gate = nn.Sequential(
                    nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, Z)
                )
            else:
                self.prior = nn.Parameter(torch.zeros(Z))
        else:
            out = self.n_actions if self.discrete else 2 * self.n_actions
            self.head = nn.Sequential(
                nn.LayerNorm(2 * d), nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, out)
            )

    def set_normalizer(self, norm: Normalizer) -> None:
        self.obs_mean.copy_(norm.obs_mean)
        self.obs_std.copy_(norm.obs_std)

    def step_features(self, w: Window) -> torch.Tensor:
        """(B, T, N, F) what the model reads of each step: observation, previous action."""
        B, T, N, D = w.obs.shape
        if self.obs_dim != D:
            raise ValueError(f"window obs width {D} != model's {self.obs_dim}")
        fmask = w.feat_mask.float()  # (N, D)
        pres = w.present.float()[..., None]  # (B, T, N, 1)
        pv = w.prev_valid.float()[..., None]  # (B, T, N, 1)
        obs = (w.obs - self.obs_mean) / self.obs_std * fmask * pres  # (B, T, N, D)
        prev = action_features(w.prev_action, self.discrete, self.n_actions) * pv
        return torch.cat([obs, fmask.expand(B, T, N, D), prev, pv, pres], dim=-1)  # (B, T, N, F)

    def scan(
        self,
        x: torch.Tensor,
        w: Window,
        state: BehaviorState | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, BehaviorState]:
        """Head output at every step of ``w`` (B, T, N, out) and the state after its last
        step. ``x``: step_features(w); ``state``: the state before w's first step (None:
        w starts the history). Position τ reads steps ≤ τ only. ``last_only``: the output
        at the last step only, (B, 1, N, out), for a fraction of the work (what a
        prediction needs; training reads every step)."""
        B, T, N, _ = x.shape
        h_last = h = None
        if self.history_net:
            p, d = self.config.dropout, self.config.d_model
            enc = self.step_encoder(x)  # (B, T, N, d)
            z = F.dropout(enc, p, self.training)
            seq = z.transpose(1, 2).reshape(B * N, T, d)
            h, h_last = self.gru(seq, None if state is None else state.h)  # (B*N, T, d)
            h = h.view(B, N, T, d).transpose(1, 2)  # (B, T, N, d)
            present = w.present
            if last_only:  # the attention below mixes agents within a step, never steps
                h, enc, present = h[:, -1:], enc[:, -1:], present[:, -1:]
            if self.config.centralized:
                S = h.shape[1]
                valid = present.reshape(B * S, N)
                valid = valid | ~valid.any(dim=1, keepdim=True)
                h = h.reshape(B * S, N, d)  # agents attend to each other at every step
                for block in self.blocks:
                    h = block(h, valid)
                h = h.view(B, S, N, d)
            h = F.dropout(h, p, self.training)
            if not self.n_experts:
                out = self.head(torch.cat([h, enc], dim=-1)).float()
                return out, BehaviorState(h_last, last_present=w.present[:, -1])
        K, n = self.n_experts, self.n_actions
        # (B, T, N, n, K): actions before experts, so that the softmax over the n actions
        # runs across rows of K (over a last dim of 5 it is ~12x slower on the CPU).
        logp = self.experts(x).float().view(B, T, N, n, K).log_softmax(-2)
        # Evidence: how well each style explained the action taken at the step before.
        if state is None or state.last_logp is None:
            before = logp.new_zeros(B, 1, N, n, K)
            before_ok = w.present.new_zeros(B, 1, N)
            evidence0 = None
        else:
            before, before_ok = state.last_logp[:, None], state.last_present[:, None]
            evidence0 = state.evidence
        prev_logp = torch.cat([before, logp[:, :-1]], dim=1)  # (B, T, N, n, K)
        prev_ok = torch.cat([before_ok, w.present[:, :-1]], dim=1) & w.prev_valid  # (B, T, N)
        prev = w.prev_action.long().clamp(0, n - 1)[..., None, None].expand(B, T, N, 1, K)
        ll = self.style_log_probs(prev_logp.gather(-2, prev).squeeze(-2))  # (B, T, N, Z)
        ll = ll * prev_ok[..., None]
        evidence = ll.sum(dim=1, keepdim=True) if last_only else ll.cumsum(dim=1)
        if evidence0 is not None:
            evidence = evidence + evidence0[:, None]
        prior = self.prior if h is None else self.gate(h).float()  # (Z,) or (B, T, N, Z)
        weights = (prior + evidence).log_softmax(-1)  # (B, T, N, Z) log-posterior
        out = self.mix(weights, logp[:, -1:] if last_only else logp)  # (B, T, N, n) log-probs
        return out, BehaviorState(h_last, evidence[:, -1], logp[:, -1], w.present[:, -1])

    def style_log_probs(self, logp: torch.Tensor) -> torch.Tensor:
        """(..., K) expert log-probabilities of an action -> (..., Z) those of every latent
        style z = (expert k, noise level j): log[(1 - ε_j) p_k(a) + ε_j / n]. (In
        probability space: one multiply-add and one log, a fraction of ``logaddexp``'s
        work; ε_j / n > 0 keeps the log finite.)"""
        if not self.noise_levels:
            return logp
        keep = torch.sigmoid(-self.noise_logit)  # 1 - ε_j, (J,)
        floor = torch.sigmoid(self.noise_logit) / self.n_actions  # ε_j / n
        mixed = torch.addcmul(floor, logp.exp()[..., None], keep).log()  # (..., K, J)
        return mixed.flatten(-2)  # (..., K*J)

    def mix(self, weights: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """log Σ_z w_z p_z(a) for every action a: (..., Z) log-weights and (..., n, K) expert
        log-probs -> (..., n). With noise levels, Σ_kj w_kj [(1 - ε_j) p_k + ε_j / n] is
        Σ_k (Σ_j w_kj (1 - ε_j)) p_k + (Σ_kj w_kj ε_j) / n: no (K, J, n) tensor is built."""
        if not self.noise_levels:
            return torch.logsumexp(weights[..., None, :] + logp, dim=-1)
        K, J = self.n_experts, self.noise_levels
        w = weights.unflatten(-1, (K, J))  # (..., K, J)
        log_keep = F.logsigmoid(-self.noise_logit)
        log_eps = F.logsigmoid(self.noise_logit)
        keep = torch.logsumexp(w + log_keep, dim=-1)  # (..., K)
        noise = torch.logsumexp(w + log_eps, dim=(-2, -1))  # (...)
        acting = torch.logsumexp(keep[..., None, :] + logp, dim=-1)  # (..., n)
        return torch.logaddexp(acting, (noise - math.log(self.n_actions))[..., None])

    def forward(self, w: Window) -> torch.Tensor:
        """Head output at every step (B, T, N, n) logits, or (B, T, N, 2A) mean and raw std.
        Position τ reads steps ≤ τ only (the GRU and the evidence are causal)."""
        if w.context > self.context:
            raise ValueError(f"window has {w.context} steps, model reads at most {self.context}")
        return self.scan(self.step_features(w), w)[0]

    def distribution(self, out: torch.Tensor) -> ActionDistribution:
        """The action distribution of head outputs (..., out)."""
        if self.discrete:
            return ActionDistribution(logits=out)
        mean, raw = out.chunk(2, dim=-1)
        return ActionDistribution(mean=mean, std=self.config.min_std + F.softplus(raw))

    def action_distribution(self, w: Window) -> ActionDistribution:
        """Each agent's next action at the last step of ``w``, batch dims (B, N)."""
        w = w.last(self.context)
        return self.distribution(self.scan(self.step_features(w), w, last_only=True)[0][:, -1])

    def loss(
        self, w: Window, tg: Targets, all_steps: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean action NLL over present agents (accuracy too for discrete actions).

        ``all_steps=False``: the action at the last step (``tg.action``), from the full
        window. ``all_steps=True`` (training): the action at every valid step of the
        window from the steps up to it; the window's actions are the targets.
        """
        if all_steps:
            dist, action = self.distribution(self(w)), w.action  # batch dims (B, T, N)
            valid = (w.present & w.time_valid[..., None]).float()
        else:
            dist, action, valid = self.action_distribution(w), tg.action, tg.valid.float()
        count = valid.sum().clamp_min(1)
        nll = -(dist.log_prob(action) * valid).sum() / count
        parts = {"nll": nll}
        if self.discrete:
            parts["accuracy"] = ((dist.mode() == action).float() * valid).sum() / count
        return nll, parts
