"""What the model families share: the order-free transformer block (world and behavior),
action encoding, the refusal of a config whose weights layout this code does not build
(world, behavior, offline-rl) and of a centralized model of a partial view. Imports
nothing of ours but torch and the dataset schema."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from foresight.datasets.schema import DatasetSpec, describe_view, view_of


def check_architecture(label: str, found: str, built: str, *older: str) -> None:
    """ValueError when a config records another weights layout than this code builds (or
    one of the ``older`` layouts it still builds)."""
    if found != built and found not in older:
        raise ValueError(
            f"{label} config has architecture {found!r}, this code builds {built!r}: "
            "retrain the model with this code version"
        )


def action_features(action: torch.Tensor, discrete: bool, n_actions: int) -> torch.Tensor:
    """(..., ) int index -> (..., n) one-hot, or (..., A) continuous -> unchanged float."""
    if discrete:
        return F.one_hot(action.long().clamp(0, n_actions - 1), n_actions).float()
    return action.float()


class Block(nn.Module):
    """Pre-LN transformer block over a set of tokens (no positions: order-free)."""

    def __init__(
        self, d_model: int, n_heads: int, mlp_ratio: int, dropout: float, act: type = nn.GELU
    ):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model {d_model} not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            act(),
            nn.Linear(mlp_ratio * d_model, d_model),
        )
        self.dropout = dropout

    def forward(self, x: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape  # (B, N, C) tokens; key_valid (B, N) bool
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, N, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        mask = key_valid[:, None, None, :]  # (B, 1, 1, N): which tokens may be attended to
        if x.device.type == "cpu" and not self.training:
            y = _small_attention(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )  # (B, H, N, C/H)
        x = x + self.proj(y.transpose(1, 2).reshape(B, N, C))
        return x + F.dropout(self.mlp(self.ln2(x)), self.dropout, self.training)


def _small_attention(q, k, v, mask):
    """Attention written out, scores and softmax in float32, for inference on a CPU: on the
    few tokens of a rollout step (the agents) the fused kernel is 2-3.5x slower than this
    in bfloat16 and up to 2.7x in float32 (at 10 agents; BENCHMARKS.md), mostly from a
    softmax over a last dimension of a few (torch's is ~7x slower there than the exp and
    sum below). The same function as ``scaled_dot_product_attention`` up to rounding."""
    s = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    s = s.masked_fill(~mask, float("-inf"))  # every row keeps a token (callers see to it)
    e = (s - s.amax(-1, keepdim=True)).exp()
    return (e / e.sum(-1, keepdim=True)).to(v.dtype) @ v


def check_decentralized(spec: DatasetSpec, centralized: bool, label: str, fix: str) -> None:
    """Refuse a centralized model of a partial view: an agent cannot read what it does not
    see. ``fix`` says which setting to change."""
    if centralized and view_of(spec) is not None:
        raise ValueError(
            f"a {label} of a {describe_view(spec)} must be decentralized (an agent cannot "
            f"read what it does not see): {fix}"
        )


def resolve_decentralized(asked: bool | None, spec: DatasetSpec, label: str) -> bool:
    """Whether a model of ``spec`` reads each agent's own history alone: ``asked``, or by
    default (None) exactly under a partial view, where centralized is refused."""
    check_decentralized(spec, asked is False, label, "leave decentralized unset or True")
    return view_of(spec) is not None if asked is None else bool(asked)
