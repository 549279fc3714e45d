"""The offline-RL peer: what its shared Q-network reads, the transitions it learns from,
that TorchRL's CQL loss learns the better action from the dataset's rewards, resuming, the
registered card, and the arena controller."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import polars as pl
import pytest
import torch

from foresight.datasets import Store, ingest_logs
from foresight.datasets.schema import ActionSpec, DatasetSpec
from foresight.training.agents.offline_rl import OfflineRLController
from foresight.training.agents.planning import JointHistory
from foresight.training.data import build_tensors, gather_window, sample_rows
from foresight.training.loop.config import OfflineRLTrainConfig
from foresight.training.loop.offline_rl import (
    build_transitions,
    make_loss,
    offline_rl_gate,
    train_offline_rl,
    validation_metrics,
)
from foresight.training.loop.offline_rl_workflow import train_and_register_offline_rl
from foresight.training.loop.workflow import evaluate_registered
from foresight.training.models.offline_rl import OfflineRLConfig, SharedQNetwork
from foresight.training.registry import ModelRegistry, RegistryError, load_registered

from .conftest import continuous_store, make_frame

FAST = dict(batch_size=64, eval_every=50, eval_episodes=0, device="cpu")


def signal_frame(episodes: int = 40, steps: int = 6, seed: int = 0):
    """Two agents see a sign s in {-1, +1}; the logged actions are uniform at random; the
    reward is 1 for action 1 when s > 0, for action 2 when s < 0, else 0. A learner that
    reads the rewards must pick the action the sign asks for; imitation cannot (the logs
    are random)."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("episode_id", "step", "agent_id", "obs", "action")}
    rows["reward"] = []
    for ep in range(episodes):
        for t in range(steps):
            for name in ("a", "b"):
                s = float(rng.choice([-1.0, 1.0]))
                act = int(rng.integers(0, 3))
                rows["episode_id"].append(f"e{ep:03d}")
                rows["step"].append(t)
                rows["agent_id"].append(name)
                rows["obs"].append([s, float(rng.normal())])
                rows["action"].append(act)
                rows["reward"].append(float(act == (1 if s > 0 else 2)))
    n = len(rows["step"])
    frame = pl.DataFrame(
        {**rows, "terminated": [False] * n, "truncated": [s == steps - 1 for s in rows["step"]]},
        schema_overrides={
            "step": pl.Int32,
            "obs": pl.List(pl.Float32),
            "action": pl.Int32,
            "reward": pl.Float32,
        },
    )
    spec = DatasetSpec(env="synthetic", agents={"a": 2, "b": 2}, action=ActionSpec("discrete", n=3))
    return frame, spec


def tiny_network(spec: DatasetSpec, context: int = 3) -> SharedQNetwork:
    torch.manual_seed(0)
    return SharedQNetwork(OfflineRLConfig(spec=spec.to_dict(), context=context, hidden=16))


def test_an_agent_reads_its_own_last_k_steps_only():
    frame, spec = make_frame(episodes=2, agents=3, steps=8)
    data = build_tensors(frame, spec)
    model = tiny_network(spec, context=3)
    t = torch.tensor([6])  # step 6 of episode 0
    agents = model.agent_index(data.agent_ids)
    base = model.features(gather_window(data, t, 3), torch.tensor([6]), agents)  # (1, N, F)

    def changed(step: int, agent: int) -> torch.Tensor:
        saved = data.obs[step, agent].clone()
        data.obs[step, agent] += 1.0
        out = model.features(gather_window(data, t, 3), torch.tensor([6]), agents)
        data.obs[step, agent] = saved
        return (out != base).any(-1)[0]  # (N,) whose features moved

    assert changed(6, 1).tolist() == [False, True, False]  # another agent's obs: only its own
    assert changed(4, 0).tolist() == [True, False, False]  # 2 steps back: inside the window
    assert changed(3, 0).tolist() == [False, False, False]  # 3 steps back: outside it
    assert base.shape == (1, 3, model.in_features)


def test_transitions_pair_each_step_with_the_next_one_of_the_same_agent():
    frame, spec = make_frame(episodes=3, agents=2, steps=5, absent={"agent_1": (2, 2)})
    data = build_tensors(frame, spec)
    model = tiny_network(spec)
    rows = sample_rows(data, data.episode_ids)
    td = build_transitions(model, data, rows, reward_scale=2.0)
    # one transition per present (step, agent): agent_1 misses step 2 of every episode
    assert td.shape[0] == 3 * (5 + 4)
    agents = model.agent_index(data.agent_ids)
    step = rows - data.ep_start[rows]
    x = model.features(gather_window(data, rows, model.context), step, agents)  # (M, N, F)
    present = data.present[rows]
    assert torch.equal(td["observation"], x[present])
    assert torch.equal(td["next", "reward"][:, 0], 2.0 * data.reward[rows][present])
    assert torch.equal(td["action"], data.action[rows][present])
    # episode ends: the last logged step of every agent, and agent_1 before its gap
    end = td["next", "terminated"][:, 0].reshape(-1).tolist()
    flat = [(int(s), n) for s, pres in zip(step, present, strict=True) for n in range(2) if pres[n]]
    expected = [s == 4 or (n == 1 and s == 1) for s, n in flat]
    assert end == expected and torch.equal(td["next", "done"], td["next", "terminated"])
    # where the episode goes on, the next observation is the same agent's features a step on
    for i, (s, n) in enumerate(flat[:9]):  # episode 0
        if not expected[i]:
            j = flat.index((s + 1, n))
            assert torch.equal(td["next", "observation"][i], td["observation"][j])


def test_cql_learns_the_rewarded_action_that_the_logs_do_not_show():
    frame, spec = signal_frame()
    config = OfflineRLTrainConfig(steps=400, lr=3e-3, gamma=0.5, cql_alpha=0.5, **FAST)
    result = train_offline_rl(frame, spec, config, OfflineRLConfig(context=1, hidden=32))
    model = result.model
    data = build_tensors(frame, spec)
    rows = sample_rows(data, result.val_episode_ids)
    step = rows - data.ep_start[rows]
    acts = model.act(gather_window(data, rows, 1), step, model.agent_index(data.agent_ids))
    best = torch.where(data.obs[rows, :, 0] > 0, 1, 2)  # (M, N)
    assert (acts == best).float().mean() > 0.95
    # the logs are random, so agreeing with the logged action is about chance
    assert result.metrics["val/agreement"] < 0.5
    assert [h["step"] for h in result.history] == list(range(50, 401, 50))


def test_resume_continues_where_the_checkpoint_left_off(tmp_path):
    frame, spec = signal_frame(episodes=10)
    mc = OfflineRLConfig(context=2, hidden=16)
    kw = dict(batch_size=32, eval_every=4, target_update_interval=2, eval_episodes=0)
    straight = train_offline_rl(
        frame, spec, OfflineRLTrainConfig(steps=12, **kw), mc, tmp_path / "a", progress=False
    )
    train_offline_rl(frame, spec, OfflineRLTrainConfig(steps=8, **kw), mc, tmp_path / "b")
    resumed = train_offline_rl(
        frame, spec, OfflineRLTrainConfig(steps=12, **kw), mc, tmp_path / "b", resume=True
    )
    assert [h["step"] for h in resumed.history] == [4, 8, 12]
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_continuous_actions_are_refused_by_name():
    frame, spec = make_frame(episodes=2)
    spec = DatasetSpec(env="synthetic", agents=spec.agents, action=ActionSpec("continuous", dim=2))
    with pytest.raises(ValueError, match=r"offline-rl needs discrete actions.*continuous"):
        train_offline_rl(frame, spec, OfflineRLTrainConfig(steps=1))


def test_an_agent_the_model_never_saw_is_refused():
    _frame, spec = make_frame(episodes=2, agents=2)
    model = tiny_network(spec)
    with pytest.raises(ValueError, match=r"knows agents \['agent_0', 'agent_1'\], not \['x'\]"):
        model.agent_index(["agent_0", "x"])


def test_the_gate_refuses_a_policy_that_does_not_beat_random():
    val = {"val/td_loss": 0.1}
    assert offline_rl_gate({**val, "closed_loop/return": -50.0}, _random(-60.0)) == (True, [])
    passed, failures = offline_rl_gate({**val, "closed_loop/return": -70.0}, _random(-60.0))
    assert not passed and failures == ["closed_loop/return: -70 does not beat random -60"]
    passed, failures = offline_rl_gate({"val/td_loss": float("nan")}, {})
    assert not passed and failures == ["val/td_loss is not finite (nan)"]


def _random(value: float) -> dict:
    return {"random": {"closed_loop/return": value}}


def test_registered_with_its_lineage_and_loaded_back(tmp_path, store: Store):
    frame, spec = signal_frame(episodes=12)
    frame.write_parquet(tmp_path / "signal.parquet")
    ingest_logs([str(tmp_path / "signal.parquet")], "signal", store, spec=spec)
    config = OfflineRLTrainConfig(steps=20, **{**FAST, "eval_every": 10})
    out = train_and_register_offline_rl(
        "signal", store, config, OfflineRLConfig(context=2, hidden=8), progress=False
    )
    assert out["model"] == "offline-rl@1" and out["dataset"] == "signal@0"
    card = ModelRegistry(store).resolve("offline-rl@1").card
    assert card["kind"] == "offline-rl"
    assert card["dataset"]["resolved"] == "signal@0"
    assert card["train_config"] == asdict(config)
    assert card["model_config"]["spec"] == spec.to_dict() and card["model_config"]["context"] == 2
    assert card["git_sha"] and set(card["metrics"]) >= {"val/td_loss", "val/cql", "val/agreement"}
    assert card["training"]["reward_scale"] > 0 and len(card["training"]["history"]) == 2
    model, mv = load_registered("offline-rl", store, kind="offline-rl")
    assert isinstance(model, SharedQNetwork) and mv.version == 1
    # the loaded network (weights, normalizer, config) gives back the card's validation numbers
    split = json.loads(store.fs.read_bytes(store.uri("models", "offline-rl", "1", "split.json")))
    data = build_tensors(frame, spec)
    val = build_transitions(
        model, data, sample_rows(data, split["val"]), card["training"]["reward_scale"]
    )
    loss, _ = make_loss(model, config)
    again = validation_metrics(model, loss, val, config.cql_alpha)
    assert again["agreement"] == card["metrics"]["val/agreement"]
    assert again["td_loss"] == pytest.approx(card["metrics"]["val/td_loss"], rel=1e-5)
    history = JointHistory(["a", "b"], np.ones((1, 2, 2), np.float32), np.zeros((1, 2), int))
    controller = OfflineRLController(model)
    assert set(controller.act(history, ["a", "b"])) == {"a", "b"}
    ModelRegistry(store).register("world", model.state_dict(), {"kind": "world"})
    with pytest.raises(RegistryError, match="world@1 is a world model, not an offline-rl model"):
        load_registered("world", store, kind="offline-rl")
    # its loop evaluated it: `foresight evaluate` sends the user to the arena instead
    with pytest.raises(
        ValueError, match=r"offline-rl@1 \(offline-rl\) was evaluated by its own training loop"
    ):
        evaluate_registered("offline-rl", store=store)


def test_a_dataset_with_continuous_actions_is_refused_before_training(tmp_path):
    store = continuous_store(tmp_path)
    with pytest.raises(ValueError, match=r"offline-rl needs discrete actions"):
        train_and_register_offline_rl("cont", store, OfflineRLTrainConfig(steps=1))
    assert ModelRegistry(store).names() == []  # nothing registered


def test_the_arena_plays_the_offline_rl_team():
    from foresight.training.agents.arena import env_spec, run_arena

    model = tiny_network(env_spec("simple_spread"), context=2).eval()
    result = run_arena(
        "simple_spread", 2, ["offline-rl", "offline-rl+greedy"], offline_rl=model, max_cycles=4
    )
    for team in ("offline-rl", "offline-rl+greedy"):
        r = result["controllers"][team]
        assert r["episodes"] == 2 and np.isfinite(r["mean_return"])
    mixed = result["controllers"]["offline-rl+greedy"]["per_controller_decisions_per_s"]
    assert set(mixed) == {"offline-rl", "greedy"}
    with pytest.raises(ValueError, match="needs a offline_rl model"):
        run_arena("simple_spread", 1, ["offline-rl"], max_cycles=2)
    _frame, spec = signal_frame(episodes=2)
    with pytest.raises(ValueError, match="offline-rl model does not fit this dataset"):
        run_arena("simple_spread", 1, ["offline-rl"], offline_rl=tiny_network(spec), max_cycles=2)


def test_the_controller_acts_as_the_network_on_the_same_history():
    from foresight.training.agents.arena import env_spec

    spec = env_spec("simple_spread")
    model = tiny_network(spec, context=3).eval()
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(5, 3, 18)).astype(np.float32)
    prev = rng.integers(0, 5, (5, 3))
    prev[0] = 0
    ids = list(spec.agents)
    controller = OfflineRLController(model)
    got = controller.act(JointHistory(ids, obs, prev), ids)
    # by hand: the last 3 steps, the agent's one-hot id, time = step 4 / horizon
    q = []
    for n in range(3):
        steps = []
        for t in (2, 3, 4):
            x = (torch.from_numpy(obs[t, n]) - model.obs_mean) / model.obs_std
            a = torch.nn.functional.one_hot(torch.tensor(int(prev[t, n])), 5).float()
            steps.append(torch.cat([x, a, torch.ones(1)]))
        ident = torch.nn.functional.one_hot(torch.tensor(n), 3).float()
        x = torch.cat([*steps, ident, torch.tensor([4 / model.config.horizon])])
        q.append(model(x))
    assert got == {a: int(q[n].argmax()) for n, a in enumerate(ids)}
