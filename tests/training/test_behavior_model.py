"""The behavior model's mixture of experts: causal, steppable, and it reads agents' styles."""

from __future__ import annotations

import pytest
import torch

from foresight.training.data import build_tensors, gather_window
from foresight.training.loop.train import TrainConfig, train
from foresight.training.models.behavior_model import BehaviorModel, BehaviorModelConfig


def model(tiny, **kw) -> BehaviorModel:
    torch.manual_seed(0)
    config = BehaviorModelConfig(spec=tiny[1].to_dict(), d_model=16, expert_width=32, **kw)
    return BehaviorModel(config).eval()


def window(tiny, T: int = 6):
    data = build_tensors(*tiny)
    return gather_window(data, torch.tensor([5, 11, 30, 47]), T)


@pytest.mark.parametrize("n_experts", [4, 0])
def test_outputs_are_causal_and_a_split_scan_equals_one_scan(tiny, n_experts):
    m, w = model(tiny, context=6, n_experts=n_experts), window(tiny)
    out = m(w)  # (B, T, N, n)
    changed = w._map(lambda x: x.clone())
    changed.obs[:, 4:] += 1.0
    changed.prev_action[:, 4:] = (changed.prev_action[:, 4:] + 1) % 5
    assert torch.allclose(m(changed)[:, :4], out[:, :4], atol=1e-6), "step 4 leaked backwards"
    x = m.step_features(w)
    first, state = m.scan(x[:, :3], w._map(lambda v: v[:, :3]))
    second, _ = m.scan(x[:, 3:], w._map(lambda v: v[:, 3:]), state)
    assert torch.allclose(torch.cat([first, second], 1), out, atol=1e-5)


def test_out_is_a_normalized_log_probability(tiny):
    out = model(tiny, context=6)(window(tiny))
    assert torch.allclose(out.logsumexp(-1), torch.zeros(()), atol=1e-5)


def test_history_beats_one_step_on_agents_with_a_style(tiny, tmp_path):
    """conftest's agents each repeat a preferred action (eps-noisy) for a whole episode:
    history reveals it better than one step (whose velocity and last action hint at it)."""
    frame, spec = tiny
    config = TrainConfig(epochs=15, batch_size=96, lr=1e-2, seed=0, patience=20)
    nll = {}
    for context in (1, 8):
        cfg = BehaviorModelConfig(context=context, d_model=16, n_experts=6, expert_width=32)
        result = train(
            "behavior", frame, spec, config, cfg, tmp_path / str(context), progress=False
        )
        nll[context] = min(h["val/nll"] for h in result.history)
    assert nll[8] < nll[1] - 0.02, nll


def test_noise_levels_mix_equals_the_mixture_over_every_style(tiny):
    """mix() never builds the (K, J, n) tensor; it must equal Σ_z w_z p_z(a) built in full."""
    m = model(tiny, context=6, n_experts=4, noise_levels=3)
    torch.manual_seed(1)
    logp = torch.randn(7, 5, 4).log_softmax(-2)  # (batch, n, K)
    weights = torch.randn(7, 4 * 3).log_softmax(-1)  # (batch, Z)
    per_action = torch.stack([m.style_log_probs(logp[:, a]) for a in range(5)], dim=-1)
    eps = torch.sigmoid(m.noise_logit)  # (J,)
    explicit = ((1 - eps) * logp[:, 0, :, None].exp() + eps / 5).log().flatten(-2)
    assert torch.allclose(per_action[..., 0], explicit, atol=1e-6)  # (batch, Z)
    assert torch.allclose(per_action.logsumexp(-1), torch.zeros(()), atol=1e-5)
    full = torch.logsumexp(weights[..., None] + per_action, dim=-2)
    assert torch.allclose(m.mix(weights, logp), full, atol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"n_experts": 0}, {"gate": "gru"}, {"centralized": True}])
def test_last_only_scan_equals_the_last_step_of_a_full_scan(tiny, kw):
    m, w = model(tiny, context=6, **kw), window(tiny)
    x = m.step_features(w)
    full, state = m.scan(x, w)
    last, last_state = m.scan(x, w, last_only=True)
    assert last.shape[1] == 1
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-5)
    if state.evidence is not None:
        assert torch.allclose(last_state.evidence, state.evidence, atol=1e-5)
    # and from a carried state, as the planner steps it
    _head, mid = m.scan(x[:, :4], w._map(lambda v: v[:, :4]))
    tail, _ = m.scan(x[:, 4:], w._map(lambda v: v[:, 4:]), mid, last_only=True)
    assert torch.allclose(tail[:, 0], full[:, -1], atol=1e-5)


@pytest.mark.parametrize("centralized", [False, True])
def test_only_the_centralized_model_reads_the_other_agents(tiny, centralized):
    """Decentralized: agent 0's prediction is a function of its own history alone (what
    another agent can compute from outside); centralized: of the joint history."""
    m, w = model(tiny, context=6, centralized=centralized), window(tiny)
    changed = w._map(lambda x: x.clone())
    changed.obs[:, :, 1:] += 1.0
    changed.prev_action[:, :, 1:] = (changed.prev_action[:, :, 1:] + 2) % 5
    same = torch.allclose(m(changed)[:, :, 0], m(w)[:, :, 0], atol=1e-6)
    assert same != centralized


def test_a_centralized_model_trains(tiny, tmp_path):
    frame, spec = tiny
    config = TrainConfig(epochs=3, batch_size=96, lr=1e-2, seed=0, patience=20)
    cfg = BehaviorModelConfig(context=8, d_model=16, n_experts=4, expert_width=32, centralized=True)
    result = train("behavior", frame, spec, config, cfg, tmp_path, progress=False)
    losses = [h["train/loss"] for h in result.history]
    val = [h["val/nll"] for h in result.history]
    # a real fall, not noise: about 0.35 nats of train loss, 0.24 of validation NLL
    assert losses[-1] < losses[0] - 0.15, losses
    assert min(val) < val[0] - 0.1, val
    assert result.model.history_net and result.model.config.centralized
