"""The one rollout: termination, state, shared states and the planner all use its contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from foresight.datasets.schema import ActionSpec, DatasetSpec
from foresight.training.agents.planning import (
    JointHistory,
    Planner,
    PlannerConfig,
    resolve_precision,
)
from foresight.training.data import Window
from foresight.training.models.behavior_model import BehaviorModel, BehaviorModelConfig
from foresight.training.models.graphs import BehaviorStep, TracedWorld
from foresight.training.models.rollout import (
    BehaviorStepper,
    RolloutNoise,
    distinct_states,
    imagine,
    low_precision,
    rollout,
)
from foresight.training.models.world_model import (
    ObsDistribution,
    WorldModel,
    WorldModelConfig,
    WorldPrediction,
)

IDS = ["agent_0", "agent_1"]
SPEC = DatasetSpec(
    env="synthetic", agents=dict.fromkeys(IDS, 2), action=ActionSpec("discrete", n=3)
).to_dict()


class Counter(nn.Module):
    """Every observation counts up by one per step; each present agent earns 1 per step;
    agent 0 terminates after the step at which its observation reads ``end_at``. Records
    the windows it is asked about."""

    def __init__(self, end_at: float = 0.5):
        super().__init__()
        self.config = WorldModelConfig(spec=SPEC)
        self.context, self.obs_dim, self.end_at = 2, 2, end_at
        self.seen: list[Window] = []
        self.dummy = nn.Parameter(torch.zeros(1))

    def predict(self, w: Window) -> WorldPrediction:
        self.seen.append(w)
        last = w.obs[:, -1]  # (B, N, D)
        ones = torch.ones_like(last)[..., None]
        term = torch.zeros(last.shape[:2])
        term[:, 0] = (last[:, 0, 0] >= self.end_at).float()
        return WorldPrediction(
            obs=ObsDistribution(ones * 0, (last + 1)[..., None], ones * 1e-6),
            reward=torch.ones(last.shape[:2]),
            term_prob=term,
            dim_mask=w.feat_mask,
        )


def start_window(B: int = 1, T: int = 2, state: bool = False) -> Window:
    w = Window(
        obs=torch.zeros(B, T, 2, 2),
        feat_mask=torch.ones(2, 2, dtype=torch.bool),
        present=torch.ones(B, T, 2, dtype=torch.bool),
        time_valid=torch.ones(B, T, dtype=torch.bool),
        action=torch.zeros(B, T, 2, dtype=torch.long),
        prev_action=torch.zeros(B, T, 2, dtype=torch.long),
        prev_valid=torch.ones(B, T, 2, dtype=torch.bool),
        prev_reward=torch.zeros(B, T, 2),
    )
    if state:
        w.state, w.state_valid = torch.ones(B, T, 3), torch.ones(B, T, dtype=torch.bool)
    return w


def test_an_agent_that_terminates_mid_rollout_is_gone_from_the_next_step_on():
    world = Counter(end_at=0.5)  # agent 0 reads 1 after step 0: it ends after step 1
    im = imagine(world, start_window(), 4, actions={0: torch.zeros(4), 1: torch.zeros(4)})
    # agent 0: its reward and final observation of step 1 count, nothing after
    assert im.reward[0, 0, :, 0].tolist() == [1, 1, 0, 0]
    assert im.terminated[0, 0, :, 0].tolist() == [False, True, True, True]
    assert im.obs[0, 0, :, 0, 0].tolist() == pytest.approx([1, 2, 0, 0], abs=1e-4)
    # agent 1 goes on; the world sees agent 0 absent from step 2 on
    assert im.reward[0, 0, :, 1].tolist() == [1, 1, 1, 1]
    assert not im.terminated[0, 0, :, 1].any()
    assert im.obs[0, 0, :, 1, 0].tolist() == pytest.approx([1, 2, 3, 4], abs=1e-4)
    present_now = [w.present[0, -1].tolist() for w in world.seen]
    assert present_now == [[True, True], [True, True], [False, True], [False, True]]


def test_the_planner_scores_a_terminating_future_by_the_same_rule():
    """Two agents, every plan earns the same, agent 0 ends after step 1: the team's
    discounted return is 2 + 2 * 0.9 + 1 * 0.9**2 + 1 * 0.9**3, for every candidate."""
    beh = BehaviorModel(BehaviorModelConfig(spec=SPEC, d_model=8, context=2, expert_width=8))
    cfg = PlannerConfig(horizon=4, n_samples=2, discount=0.9, precision="float32")
    history = JointHistory(IDS, np.zeros((2, 2, 2)), np.zeros((2, 2), np.int64))
    [d] = Planner(Counter(end_at=0.5), beh.eval(), cfg).decide(history, ["agent_1"])
    expect = 2 + 2 * 0.9 + 0.9**2 + 0.9**3
    assert all(s == pytest.approx(expect) for _, s in d.candidate_scores), d.candidate_scores
    # without the termination every step earns 2
    [d] = Planner(Counter(end_at=99.0), beh, cfg).decide(history, ["agent_1"])
    assert d.predicted_return == pytest.approx(2 * (1 + 0.9 + 0.9**2 + 0.9**3))
    # a team of agent 0 alone (a competitive env's own side) counts its rewards only
    planner = Planner(Counter(end_at=0.5), beh, cfg)
    [d] = planner.decide(history, ["agent_1"], team=["agent_0"])
    assert d.predicted_return == pytest.approx(1 + 0.9)
    with pytest.raises(ValueError, match="team agent 'agent_9' is not in this episode"):
        planner.decide(history, ["agent_1"], team=["agent_9"])


def test_imagined_steps_have_no_global_state_the_history_keeps_its_own():
    world = Counter()
    imagine(world, start_window(state=True), 3, actions={0: torch.zeros(3), 1: torch.zeros(3)})
    valid = [w.state_valid[0].tolist() for w in world.seen]
    assert valid == [[True, True], [True, False], [False, False]]
    assert world.seen[1].state[0, 0].tolist() == [1, 1, 1]  # the logged state, kept


def test_rows_sharing_a_sample_and_actions_are_one_state_and_exact():
    """Four rows with the same plan and sample give the one row's future, computed once."""
    torch.manual_seed(0)
    world = WorldModel(WorldModelConfig(spec=SPEC, d_model=16, n_layers=1, n_heads=2)).eval()
    beh = BehaviorModel(BehaviorModelConfig(spec=SPEC, d_model=8, context=2, expert_width=8))
    start = start_window()
    start.obs = torch.randn_like(start.obs)
    plans = torch.tensor([0, 1, 2]).repeat(4, 1)[:, :, None].expand(4, 3, 2).contiguous()
    held = torch.tensor([[True, False]] * 4)
    noise = RolloutNoise.draw(1, 3, 2, 2, 3, True, generator=torch.Generator().manual_seed(3))
    zeros = torch.zeros(4, dtype=torch.long)
    many = rollout(world, beh.eval(), start, 3, noise, start_of=zeros, sample_of=zeros,
                   plans=plans, held=held, record_all=True)  # fmt: skip
    one = rollout(world, beh, start, 3, noise, start_of=zeros[:1], sample_of=zeros[:1],
                  plans=plans[:1], held=held[:1], record_all=True)  # fmt: skip
    assert many.states == one.states == 3, "one state per step"
    assert torch.equal(many.reward, one.reward.expand(4, -1, -1))
    assert torch.equal(many.obs, one.obs.expand(4, -1, -1, -1))


def test_imagine_matches_the_planner_score_of_the_same_plan():
    """With every agent held, the planner's score of a plan is imagine's discounted team
    return (one rollout; the world here is deterministic)."""
    beh = BehaviorModel(BehaviorModelConfig(spec=SPEC, d_model=8, context=2, expert_width=8))
    cfg = PlannerConfig(horizon=3, n_samples=1, discount=0.5, precision="float32")
    history = JointHistory(IDS, np.zeros((2, 2, 2)), np.zeros((2, 2), np.int64))
    planner = Planner(Counter(end_at=0.0), beh.eval(), cfg)  # agent 0 ends after step 0
    [d0, d1] = planner.decide(history, IDS)
    im = imagine(
        Counter(end_at=0.0),
        planner.window(history),
        3,
        actions={0: torch.tensor(d0.plan), 1: torch.tensor(d1.plan)},
    )
    team = im.reward[0, 0].sum(-1)  # (H,)
    assert float((team * 0.5 ** torch.arange(3)).sum()) == pytest.approx(d0.predicted_return)


def test_low_precision_world_predicts_close_to_float32():
    torch.manual_seed(0)
    world = WorldModel(WorldModelConfig(spec=SPEC, d_model=32, n_layers=1, n_heads=2)).eval()
    low = low_precision(world)
    assert next(low.parameters()).dtype == torch.bfloat16
    assert next(world.parameters()).dtype == torch.float32, "the original is untouched"
    w = start_window(B=8)
    w.obs = torch.randn_like(w.obs)
    a, b = world.predict(w), low.predict(w)
    assert b.reward.dtype == torch.float32
    assert torch.allclose(a.reward, b.reward, atol=0.05)
    assert torch.allclose(a.obs.loc, b.obs.loc, atol=0.05)
    assert resolve_precision("float32", torch.device("cpu")) == "float32"
    assert resolve_precision("auto", torch.device("cpu"), world) == "float32", "32 wide"
    wide = WorldModel(WorldModelConfig(spec=SPEC, d_model=128, n_layers=1, n_heads=2))
    assert resolve_precision("auto", torch.device("cpu"), wide) in ("float32", "bfloat16")
    with pytest.raises(ValueError, match="precision"):
        PlannerConfig(precision="fp8")


def _predictions_equal(a: WorldPrediction, b: WorldPrediction) -> bool:
    parts = lambda p: (p.obs.logits, p.obs.loc, p.obs.scale, p.reward, p.term_prob)  # noqa: E731
    return all(torch.equal(x, y) for x, y in zip(parts(a), parts(b), strict=True))


@pytest.mark.parametrize(
    "spec_kw, world_kw",
    [({"state_dim": 3}, {}), ({}, {}), ({"extra": {"obs_radius": 0.5}}, {})],
    ids=["with-state", "no-state", "decentralized"],
)
def test_traced_world_predicts_exactly_what_the_eager_model_does(spec_kw, world_kw):
    """The traced graph gives the eager model's outputs bit for bit, at batch sizes other
    than the one it was traced at, in float32 and in the bfloat16 planning copy; one graph
    per window signature, the batch size free."""
    spec = DatasetSpec(
        env="synthetic", agents=dict.fromkeys(IDS, 2), action=ActionSpec("discrete", n=3), **spec_kw
    ).to_dict()
    torch.manual_seed(0)
    world = WorldModel(WorldModelConfig(spec=spec, d_model=32, n_layers=1, n_heads=2, **world_kw))
    for model in (world.eval(), low_precision(world)):
        traced = TracedWorld(model)
        for B in (5, 1, 37):
            w = start_window(B=B, state="state_dim" in spec_kw)
            w.obs = torch.randn_like(w.obs)
            w.action = torch.randint(0, 3, w.action.shape)
            w.present[0, -1, 1] = False  # an absent agent masks its token
            assert _predictions_equal(model.predict(w), traced.predict(w)), (B, model)
        assert len(traced.graphs) == 1, "the batch size is not part of the signature"
    if "state_dim" in spec_kw:  # a window without the state is another signature
        for B in (4, 9, 1):
            w = start_window(B=B)
            w.obs = torch.randn_like(w.obs)
            assert _predictions_equal(model.predict(w), traced.predict(w)), B
        assert len(traced.graphs) == 2
    with pytest.raises(ValueError, match="window has 3 steps, model reads 2"):
        traced._forward(start_window(B=2, T=3))  # the eager model's checks, before tracing


def test_planner_with_traced_world_decides_as_the_eager_one():
    torch.manual_seed(1)
    world = WorldModel(WorldModelConfig(spec=SPEC, d_model=32, n_layers=1, n_heads=2))
    beh = BehaviorModel(BehaviorModelConfig(spec=SPEC, context=4))
    history = JointHistory(
        agent_ids=IDS,
        obs=np.random.default_rng(0).normal(size=(4, 2, 2)).astype(np.float32),
        prev_actions=np.array([[0, 1], [2, 0], [1, 1], [0, 2]]),
    )
    eager, traced = (Planner(world, beh, PlannerConfig(traced=t)) for t in (False, True))
    assert isinstance(traced.rollout_world, TracedWorld) and traced.behavior_step is not None
    assert not isinstance(eager.rollout_world, TracedWorld) and eager.behavior_step is None
    traced.warm_up()  # traces the graphs, leaves the sampled futures where they were
    assert len(traced.rollout_world.graphs) == 1 and len(traced.behavior_step.graphs) == 2
    for _ in range(3):  # the same stream of sampled futures
        a, b = eager.decide(history, IDS), traced.decide(history, IDS)
        assert [d.candidate_scores for d in a] == [d.candidate_scores for d in b]
        assert [d.action for d in a] == [d.action for d in b]
    assert len(traced.rollout_world.graphs) == 1, "the real decisions traced nothing new"


def test_planner_warm_up_with_continuous_actions():
    spec = DatasetSpec(
        env="synthetic",
        agents=dict.fromkeys(IDS, 2),
        action=ActionSpec("continuous", dim=2, low=-1.0, high=1.0),
    ).to_dict()
    world = WorldModel(WorldModelConfig(spec=spec, d_model=16, n_layers=1, n_heads=2))
    beh = BehaviorModel(BehaviorModelConfig(spec=spec, context=3, d_model=16))
    planner = Planner(world, beh, PlannerConfig(cem_population=8, cem_elites=2))
    state = planner.generator.get_state()
    planner.warm_up()
    assert torch.equal(planner.generator.get_state(), state)
    assert len(planner.rollout_world.graphs) == 1


@pytest.mark.parametrize(
    "beh_kw",
    [{}, {"gate": "gru"}, {"n_experts": 0}, {"noise_levels": 0}],
    ids=["static-experts", "gru-gate", "no-experts", "no-noise-levels"],
)
def test_traced_behavior_step_advances_exactly_as_the_eager_model(beh_kw):
    """BehaviorStepper with the graphs' step gives the eager model's distributions and
    carried state bit for bit, over steps, after repeating rows (other batch sizes)."""
    torch.manual_seed(0)
    beh = BehaviorModel(BehaviorModelConfig(spec=SPEC, context=4, d_model=16, **beh_kw)).eval()
    step = BehaviorStep(beh)
    w = start_window(B=3, T=4)
    w.obs, w.prev_action = torch.randn_like(w.obs), torch.randint(0, 3, w.prev_action.shape)
    eager, traced = BehaviorStepper(beh, w), BehaviorStepper(beh, w, step=step)
    assert eager.incremental
    g = torch.Generator().manual_seed(1)
    for h in range(4):
        assert torch.equal(eager.distribution().logits, traced.distribution().logits), h
        for name in ("h", "evidence", "last_logp", "last_present"):
            a, b = getattr(eager.state, name), getattr(traced.state, name)
            assert (a is None and b is None) or torch.equal(a, b), (h, name)
        rows = torch.randint(0, eager.out.shape[0], (2 + 3 * h,), generator=g)
        nxt = start_window(B=rows.shape[0], T=1)
        nxt.obs = torch.randn(nxt.obs.shape, generator=g)
        nxt.prev_action = torch.randint(0, 3, nxt.prev_action.shape, generator=g)
        nxt.present[0, 0, 1] = False
        eager, traced = eager.repeat(rows), traced.repeat(rows)
        eager.advance(nxt)
        traced.advance(nxt)
    assert len(step.graphs) == 2, "the first read of the history, then one step at a time"


@pytest.mark.parametrize("agents, actions", [(3, 5), (10, 5), (2, 40)])
def test_packed_state_keys_dedupe_like_unique_rows(agents, actions):
    """The packed int64 keys find the same distinct states, in the same order, as comparing
    the rows themselves; negative actions and too-wide keys take the row comparison."""
    g = torch.Generator().manual_seed(agents)
    R = 400
    state_of = torch.randint(0, 7, (R,), generator=g)
    sample_of = torch.randint(0, 4, (R,), generator=g)
    joint = torch.randint(0, 2, (R, agents), generator=g) * (actions - 1)  # repeats, wide digits
    rows = torch.cat([state_of[:, None], sample_of[:, None], joint], 1)
    uniq, inverse = torch.unique(rows, dim=0, return_inverse=True)
    for j in (joint, joint - 1):  # with -1 among the actions: the fallback
        parent, k_of, inv = distinct_states(state_of, sample_of, j, discrete=True)
        assert torch.equal(parent, uniq[:, 0]) and torch.equal(k_of, uniq[:, 1])
        assert torch.equal(inv, inverse)
    wide = joint * 2**40  # 2**40 per digit cannot pack: the fallback, same answer
    parent, k_of, inv = distinct_states(state_of, sample_of, wide, discrete=True)
    assert torch.equal(parent, uniq[:, 0]) and torch.equal(inv, inverse)


def test_written_out_attention_matches_the_fused_kernel():
    """The CPU inference attention is scaled_dot_product_attention up to rounding,
    masked tokens included."""
    from foresight.training.models.layers import _small_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 2, 10, 8, generator=g) for _ in range(3))
    mask = torch.rand(5, 1, 1, 10, generator=g) > 0.4
    mask[..., 0] = True  # every row keeps a token
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(_small_attention(q, k, v, mask), fused, atol=1e-5)
    low = [t.bfloat16() for t in (q, k, v)]
    fused_low = torch.nn.functional.scaled_dot_product_attention(*low, attn_mask=mask)
    assert torch.allclose(_small_attention(*low, mask).float(), fused_low.float(), atol=0.05)
