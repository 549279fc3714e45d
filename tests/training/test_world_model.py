import pytest
import torch

from foresight.datasets.schema import ActionSpec, DatasetSpec
from foresight.training.data import (
    build_tensors,
    compute_normalizer,
    gather_targets,
    gather_window,
    sample_rows,
)
from foresight.training.evaluation.evaluate import evaluate
from foresight.training.loop.train import TrainConfig, train
from foresight.training.loop.workflow import quality_gate
from foresight.training.models.behavior_model import BehaviorModel, BehaviorModelConfig
from foresight.training.models.rollout import imagine
from foresight.training.models.world_model import ObsDistribution, WorldModel, WorldModelConfig

from .conftest import make_frame

TINY = dict(d_model=32, n_layers=1, n_heads=2, mlp_ratio=2)


def spec_with(agents: int, size: int = 4) -> DatasetSpec:
    return DatasetSpec(
        env="synthetic",
        agents={f"agent_{i}": size for i in range(agents)},
        action=ActionSpec("discrete", n=5),
    )


def test_world_model_beats_persistence_after_a_few_epochs(tmp_path):
    frame, spec = make_frame(episodes=120, steps=15, seed=1)
    result = train(
        "world",
        frame,
        spec,
        TrainConfig(epochs=4, batch_size=32, lr=3e-3, seed=0),
        WorldModelConfig(**TINY),
        workdir=tmp_path,
        progress=False,
    )
    data = build_tensors(frame, spec)
    rows = sample_rows(data, result.val_episode_ids)
    rows = rows[rows < data.ep_end[rows]]  # steps that have a next observation
    w = gather_window(data, rows, result.model.context)
    truth = data.obs[rows + 1]
    model_mse = ((result.model.predict(w).obs.mean() - truth) ** 2).mean()
    persistence_mse = ((w.obs[:, -1] - truth) ** 2).mean()
    assert model_mse < 0.5 * persistence_mse, (float(model_mse), float(persistence_mse))


def test_the_value_head_learns_what_the_agents_earn_after_a_step(tmp_path):
    """The synthetic reward is minus the distance to the centre, so what an agent earns in
    the next steps follows from where it is and where it is heading."""
    frame, spec = make_frame(episodes=120, steps=15, seed=1)
    config = TrainConfig(epochs=4, batch_size=32, lr=3e-3, seed=0)
    model_config = WorldModelConfig(value_steps=4, value_discount=0.9, **TINY)
    result = train("world", frame, spec, config, model_config, tmp_path, progress=False)
    assert "train/value_mse" in result.history[-1]
    data = build_tensors(frame, spec)
    rows = sample_rows(data, result.val_episode_ids)
    tg = gather_targets(data, rows, *result.model.value_target)
    assert result.model.value_target == (4, 0.9)
    predicted = result.model.predict(gather_window(data, rows, result.model.context)).value
    truth, ok = tg.value[tg.value_valid], predicted[tg.value_valid]
    mse, spread = float(((ok - truth) ** 2).mean()), float(truth.var())
    assert mse < 0.2 * spread, (mse, spread)  # in rewards, not normalized units


def test_a_world_model_without_a_value_head_predicts_none():
    model = WorldModel(WorldModelConfig(spec=spec_with(3).to_dict(), value_steps=0, **TINY))
    frame, spec = make_frame(episodes=2, steps=5)
    data = build_tensors(frame, spec)
    rows = sample_rows(data, data.episode_ids)
    assert model.predict(gather_window(data, rows, 2)).value is None
    _, parts = model.loss(gather_window(data, rows, 2), gather_targets(data, rows))
    assert "value_mse" not in parts
    with pytest.raises(ValueError, match="value_steps must be >= 0"):
        WorldModel(WorldModelConfig(spec=spec_with(3).to_dict(), value_steps=-1))
    with pytest.raises(ValueError, match="value_discount must be in"):
        WorldModel(WorldModelConfig(spec=spec_with(3).to_dict(), value_discount=0.0))
    with pytest.raises(ValueError, match="targets hold no value"):
        WorldModel(WorldModelConfig(spec=spec_with(3).to_dict())).loss(
            gather_window(data, rows, 2), gather_targets(data, rows)
        )


def test_runs_on_more_agents_and_is_permutation_equivariant():
    torch.manual_seed(0)
    model = WorldModel(WorldModelConfig(spec=spec_with(3).to_dict(), **TINY)).eval()
    frame, spec4 = make_frame(episodes=2, agents=4, steps=6)
    data = build_tensors(frame, spec4)
    w = gather_window(data, torch.tensor([3, 9]), model.context)
    pred = model.predict(w)
    assert pred.obs.mean().shape == (2, 4, 4) and pred.reward.shape == (2, 4)
    perm = torch.tensor([2, 0, 3, 1])
    wp = gather_window(data, torch.tensor([3, 9]), model.context)
    for name in ("obs", "present", "action", "prev_action", "prev_valid", "prev_reward"):
        setattr(wp, name, getattr(wp, name)[:, :, perm])
    wp.feat_mask = wp.feat_mask[perm]
    pp = model.predict(wp)
    assert torch.allclose(pp.obs.mean(), pred.obs.mean()[:, perm], atol=1e-5)
    assert torch.allclose(pp.reward, pred.reward[:, perm], atol=1e-5)
    # and the prediction of an agent depends on the others (attention across agents)
    w.obs[:, :, 1] += 1.0
    moved = model.predict(w).obs.mean()
    assert not torch.allclose(moved[:, 0], pred.obs.mean()[:, 0], atol=1e-4)


def _models(spec):
    torch.manual_seed(0)
    world = WorldModel(WorldModelConfig(spec=spec.to_dict(), **TINY)).eval()
    behavior = BehaviorModel(
        BehaviorModelConfig(spec=spec.to_dict(), context=4, d_model=16, expert_width=32)
    ).eval()
    return world, behavior


def test_imagine_shapes_and_fixed_actions(tiny):
    frame, spec = tiny
    world, behavior = _models(spec)
    data = build_tensors(frame, spec)
    start = gather_window(data, torch.tensor([2, 30, 50]), 4)
    plan = torch.tensor([1, 2, 3, 4, 0])
    im = imagine(
        world,
        start,
        horizon=5,
        n_samples=7,
        actions={"agent_1": plan},
        policy=behavior,
        agent_ids=data.agent_ids,
        generator=torch.Generator().manual_seed(0),
    )
    assert im.obs.shape == (3, 7, 5, 3, 4)
    assert im.action.shape == im.reward.shape == im.terminated.shape == (3, 7, 5, 3)
    assert im.obs_dist.loc.shape == (3, 7, 5, 3, 4, 1)
    assert (im.action[:, :, :, 1] == plan).all(), "the fixed agent follows its plan"
    others = im.action[:, :, :, [0, 2]]
    assert others.unique().numel() > 1, "the other agents' actions are sampled"
    assert im.obs.std(dim=1).max() > 0, "samples differ"
    # per-start plans, and an error for agents with neither a plan nor a policy
    per_start = torch.arange(15).reshape(3, 5) % 5
    im2 = imagine(world, start, 5, 2, actions={0: per_start, 1: plan, 2: plan})
    assert torch.equal(im2.action[:, 0, :, 0], per_start)
    with pytest.raises(ValueError, match="no policy"):
        imagine(world, start, 5, 2, actions={0: plan})
    with pytest.raises(ValueError, match="covers 5 steps"):
        imagine(world, start, 6, 2, actions={0: plan}, policy=behavior)


def test_imagination_is_reproducible_with_a_generator(tiny):
    frame, spec = tiny
    world, behavior = _models(spec)
    data = build_tensors(frame, spec)
    start = gather_window(data, torch.tensor([5]), 4)
    a = imagine(world, start, 4, 3, policy=behavior, generator=torch.Generator().manual_seed(1))
    b = imagine(world, start, 4, 3, policy=behavior, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.obs, b.obs) and torch.equal(a.action, b.action)


def test_normalizer_marks_constant_features_and_model_copies_them():
    frame, spec = make_frame(episodes=4, obs_sizes={f"agent_{i}": 6 for i in range(3)})
    data = build_tensors(frame, spec)
    norm = compute_normalizer(data, sample_rows(data, data.episode_ids))
    assert norm.dynamic.tolist() == [True] * 4 + [False] * 2
    model = WorldModel(WorldModelConfig(spec=spec.to_dict(), **TINY)).eval()
    model.set_normalizer(norm)
    w = gather_window(data, torch.tensor([3]), model.context)
    w.obs[..., 5] = 7.0
    assert torch.allclose(model.predict(w).obs.mean()[..., 5], torch.tensor(7.0))


def test_mixture_interval_and_log_prob():
    loc = torch.tensor([[0.0, 0.0]])[..., None].expand(1, 2, 3)  # (1, 2 features, K=3)
    scale = torch.ones(1, 2, 3)
    mix = ObsDistribution(torch.zeros(1, 2, 3), loc, scale)
    single = ObsDistribution(torch.zeros(1, 2, 1), loc[..., :1], scale[..., :1])
    lo, hi = mix.interval(0.9)
    lo1, hi1 = single.interval(0.9)
    assert torch.allclose(lo, lo1, atol=1e-4) and torch.allclose(
        hi1, torch.full_like(hi1, 1.6449), atol=1e-3
    )
    x = torch.tensor([[0.3, -1.0]])
    assert torch.allclose(mix.log_prob(x), single.log_prob(x), atol=1e-5)
    two = ObsDistribution(torch.zeros(1, 1, 2), torch.tensor([[[-5.0, 5.0]]]), torch.ones(1, 1, 2))
    assert torch.allclose(two.mean(), torch.zeros(1, 1))
    lo, hi = two.interval(0.5)
    assert torch.allclose(two.cdf(hi) - two.cdf(lo), torch.tensor([[0.5]]), atol=1e-4)


def _coverage(model, data, rows) -> torch.Tensor:
    """Per-feature share of true next values inside the predicted 90% interval."""
    rows = rows[rows < data.ep_end[rows]]
    lo, hi = model.predict(gather_window(data, rows, model.context)).obs.interval(0.9)
    truth = data.obs[rows + 1]
    inside = ((truth >= lo) & (truth <= hi)).float()
    dyn = model.dynamic & data.feat_mask  # (N, D)
    return (inside * dyn).sum(dim=(0, 1)) / dyn.sum(0).clamp_min(1) / rows.numel()


@pytest.mark.slow  # trains two world models
def test_calibrated_intervals_cover_90_percent_of_held_out_episodes(tmp_path):
    # 600 episodes: 45 held out, enough that each feature's coverage is known to +-0.02
    frame, spec = make_frame(episodes=600, steps=15, seed=4)
    config = TrainConfig(epochs=2, batch_size=32, seed=0)
    result = train("world", frame, spec, config, WorldModelConfig(**TINY), tmp_path, progress=False)
    calib, heldout = set(result.calib_episode_ids), set(result.heldout_episode_ids)
    assert calib and heldout and not calib & heldout
    assert calib | heldout == set(result.val_episode_ids)
    assert not calib & set(result.train_episode_ids)

    data = build_tensors(frame, spec)
    model = result.model
    dyn_features = (model.dynamic & data.feat_mask).any(0)
    fitted = model.std_scale.clone()
    assert not torch.equal(fitted, torch.ones_like(fitted)), "calibration moved the stds"
    # measured on episodes the factors were not fitted on
    cover = _coverage(model, data, sample_rows(data, result.heldout_episode_ids))[dyn_features]
    assert torch.allclose(cover, torch.full_like(cover, 0.9), atol=0.05), cover

    # From deliberately overconfident stds, calibrating again lands on the same factors.
    model.std_scale.fill_(0.05)
    assert _coverage(model, data, sample_rows(data, result.calib_episode_ids)).max() < 0.5
    calib_rows = sample_rows(data, result.calib_episode_ids)
    model.calibrate(
        [(gather_window(data, calib_rows, model.context), gather_targets(data, calib_rows))]
    )
    assert torch.allclose(model.std_scale, fitted, rtol=1e-3)

    uncalibrated = train(
        "world",
        frame,
        spec,
        TrainConfig(epochs=2, batch_size=32, seed=0, calibrate=False),
        WorldModelConfig(**TINY),
        tmp_path / "raw",
        progress=False,
    )
    assert uncalibrated.calib_episode_ids == []
    assert torch.equal(uncalibrated.model.std_scale, torch.ones_like(fitted))


@pytest.mark.slow  # trains a world model to a gate
def test_world_model_beats_the_linear_baseline_on_one_step_mse(tmp_path):
    """Linear least squares is the gate's hardest baseline: the synthetic dynamics are
    linear except for the repulsion between near agents, which only the model can learn."""
    frame, spec = make_frame(episodes=120, steps=15, seed=3)
    config = TrainConfig(epochs=40, batch_size=64, lr=3e-3, seed=0)
    model_config = WorldModelConfig(d_model=64, n_layers=1, n_heads=2, mlp_ratio=2)
    result = train("world", frame, spec, config, model_config, tmp_path, progress=False)
    evaluation = evaluate(
        "world",
        result.model,
        frame,
        spec,
        result.heldout_episode_ids,
        train_episode_ids=result.train_episode_ids,
        max_starts=64,
        n_samples=2,
    )
    mse, linear = evaluation["model"]["mse"], evaluation["baselines"]["linear"]["mse"]
    assert mse < 0.8 * linear, (mse, linear)  # about 0.5x measured
    # the gate's 1-step check passes; its 10-step rollout check is not asserted: at this size
    # the model's compounding error still loses to linear's there (about 1.3x)
    assert not [f for f in quality_gate("world", evaluation)[1] if f.startswith("mse:")]
