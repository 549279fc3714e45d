import numpy as np
import polars as pl
import pytest
import torch

from foresight.training.data import (
    build_tensors,
    gather_targets,
    gather_window,
    sample_rows,
    split_episodes,
)

from .conftest import make_frame


def test_tensors_hold_every_row_at_its_place(tiny):
    frame, spec = tiny
    data = build_tensors(frame, spec)
    assert data.obs.shape == (24 * 12, 3, 4)
    row = frame.filter((pl.col("episode_id") == "ep005") & (pl.col("step") == 7))
    s = 5 * 12 + 7
    for r in row.iter_rows(named=True):
        n = data.agent_ids.index(r["agent_id"])
        assert torch.allclose(data.obs[s, n], torch.tensor(r["obs"]))
        assert int(data.action[s, n]) == r["action"]
        assert float(data.reward[s, n]) == pytest.approx(r["reward"])
    # shuffled rows and a LazyFrame give the same tensors
    again = build_tensors(frame.sample(fraction=1.0, shuffle=True, seed=1).lazy(), spec)
    assert torch.equal(again.obs, data.obs) and torch.equal(again.action, data.action)


def test_windows_pad_before_episode_start_and_targets_stop_at_its_end(tiny):
    frame, spec = tiny
    data = build_tensors(frame, spec)
    t = torch.tensor([12 + 1, 12 + 11])  # episode 1: its 2nd and last step
    w, tg = gather_window(data, t, context=4), gather_targets(data, t)
    assert w.obs.shape == (2, 4, 3, 4)
    assert w.time_valid[0].tolist() == [False, False, True, True]
    assert w.time_valid[1].all()
    assert not w.present[0, :2].any() and (w.obs[0, :2] == 0).all()
    assert torch.equal(w.obs[0, 2], data.obs[12]) and torch.equal(w.obs[0, 3], data.obs[13])
    # previous action: none at the episode's first step, then the step before's action
    assert not w.prev_valid[0, 2].any() and w.prev_valid[0, 3].all()
    assert torch.equal(w.prev_action[0, 3], data.action[12])
    assert torch.equal(tg.next_obs[0], data.obs[14]) and tg.next_valid[0].all()
    assert not tg.next_valid[1].any(), "the last step of an episode has no next observation"
    assert tg.valid[1].all()


def test_absent_agents_and_padded_observations_are_masked():
    frame, spec = make_frame(
        episodes=3,
        steps=6,
        obs_sizes={"agent_0": 4, "agent_1": 6, "agent_2": 4},
        absent={"agent_2": (2, 3)},
    )
    data = build_tensors(frame, spec)
    assert data.obs.shape[-1] == 6
    assert data.feat_mask.tolist() == [
        [True] * 4 + [False] * 2,
        [True] * 6,
        [True] * 4 + [False] * 2,
    ]
    assert (data.obs[:, [0, 2], 4:] == 0).all(), "padding of the smaller observations is zero"
    n2 = data.agent_ids.index("agent_2")
    assert data.present[:, n2].tolist()[:6] == [True, True, False, False, True, True]
    w, tg = gather_window(data, torch.tensor([1, 4]), 2), gather_targets(data, torch.tensor([1, 4]))
    assert not tg.next_valid[0, n2], "agent_2 leaves at step 2: no next observation at step 1"
    assert not w.present[1, 0, n2] and w.present[1, 1, n2]
    assert not w.prev_valid[1, 1, n2], "agent_2 just came back: no previous action"
    assert tg.next_valid[0, 0] and tg.valid[1, n2]


def test_split_is_by_episode_deterministic_and_order_free():
    ids = [f"e{i}" for i in range(50)]
    train, val = split_episodes(ids, 0.2, seed=3)
    assert len(val) == 10 and not set(train) & set(val) and set(train) | set(val) == set(ids)
    assert split_episodes(list(reversed(ids)), 0.2, seed=3) == (train, val)
    assert split_episodes(ids, 0.2, seed=4)[1] != val
    frame, spec = make_frame(episodes=10)
    data = build_tensors(frame, spec)
    tr, va = split_episodes(data.episode_ids, 0.3, 0)
    train_eps = set(data.episode[sample_rows(data, tr)].tolist())
    val_eps = set(data.episode[sample_rows(data, va)].tolist())
    assert train_eps and val_eps and not train_eps & val_eps


def test_bad_inputs_raise_clear_errors(tiny):
    frame, spec = tiny
    with pytest.raises(ValueError, match="empty"):
        build_tensors(frame.head(0), spec)
    with pytest.raises(ValueError, match="not list"):
        build_tensors(frame.with_columns(agent_id=pl.lit("stranger")), spec)
    short = frame.with_columns(pl.col("obs").list.head(3))
    with pytest.raises(ValueError, match="size 3 but the dataset spec says 4"):
        build_tensors(short, spec)
    with pytest.raises(ValueError, match="duplicate"):
        build_tensors(pl.concat([frame, frame.head(1)]), spec)
    with pytest.raises(ValueError, match="at least 2 episodes"):
        split_episodes(["only"], 0.2, 0)


def test_build_keeps_every_row_of_many_episodes():
    """Many copies of two episodes land at their places (speed: bench/build_tensors.py)."""
    frame, spec = make_frame(episodes=2, steps=5)
    big = pl.concat([frame.with_columns(pl.col("episode_id") + f"_{k}") for k in range(400)])
    data = build_tensors(big, spec)
    assert data.obs.shape[0] == 4_000  # 800 episodes x 5 steps, agents along dim 1
    assert len(data.episode_ids) == 800
    assert np.isfinite(data.obs.numpy()).all()
    one = build_tensors(frame, spec)
    for k in (0, 123, 399):  # each copy holds the two episodes' rows, in order
        rows = data.rows_of_episodes([f"ep000_{k}", f"ep001_{k}"])
        assert torch.equal(data.obs[rows], one.obs) and torch.equal(data.action[rows], one.action)


def test_value_targets_sum_the_discounted_rewards_after_each_step_inside_the_episode(tiny):
    frame, spec = tiny  # 24 episodes of 12 steps, truncated at their end
    data = build_tensors(frame, spec)
    t = torch.tensor([12 + 0, 12 + 8, 12 + 9, 12 + 11])  # episode 1
    tg = gather_targets(data, t, value_steps=3, value_discount=0.5)
    r = data.reward
    by_hand = r[13] + 0.5 * r[14] + 0.25 * r[15]
    assert torch.allclose(tg.value[0], by_hand)
    assert torch.allclose(tg.value[1], r[21] + 0.5 * r[22] + 0.25 * r[23])
    # step 9 of 12 has 2 steps after it, step 11 none: what was logged, and incomplete
    assert torch.allclose(tg.value[2], r[22] + 0.5 * r[23])
    assert (tg.value[3] == 0).all()
    assert tg.value_valid.tolist() == [[True] * 3, [True] * 3, [False] * 3, [False] * 3]
    assert gather_targets(data, t).value is None, "no value unless asked for"


def test_a_value_is_complete_when_the_agent_terminated_before_its_end(tiny):
    frame, spec = tiny
    data = build_tensors(frame, spec)
    data.terminated[12 + 9, 0] = True  # agent 0's episode ends after step 9
    tg = gather_targets(data, torch.tensor([12 + 8, 12 + 9]), value_steps=5, value_discount=1.0)
    assert tg.value_valid[:, 0].tolist() == [True, True]
    assert tg.value_valid[:, 1:].sum() == 0, "the others were cut by the log's end"


def test_a_value_is_incomplete_when_the_agent_left_without_terminating():
    frame, spec = make_frame(episodes=2, steps=12, absent={"agent_2": (5, 6)})
    data = build_tensors(frame, spec)
    n2 = data.agent_ids.index("agent_2")
    tg = gather_targets(data, torch.tensor([2, 6, 7]), value_steps=3, value_discount=1.0)
    # from step 2 the next three are 3, 4, 5: agent_2 has no row at 5, so its sum misses one
    assert tg.value_valid[:, n2].tolist() == [False, False, True]
    assert tg.value_valid[0, 0] and tg.value_valid[0, 1]
