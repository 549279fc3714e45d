import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file, save_file

from foresight.datasets.schema import ActionSpec, DatasetSpec
from foresight.training.data import build_tensors, gather_window
from foresight.training.loop.train import (
    CRASH_ENV,
    TrainConfig,
    _use_progress,
    build_model,
    check_compatible,
    load_model,
    model_state,
    train,
)
from foresight.training.models.behavior_model import BehaviorModelConfig
from foresight.training.models.world_model import WorldModelConfig

REPO = Path(__file__).resolve().parents[2]
TINY_WORLD = WorldModelConfig(d_model=32, n_layers=1, n_heads=2, mlp_ratio=2)
TINY_BEHAVIOR = BehaviorModelConfig(d_model=16, context=4, expert_width=32)
TINY = {"world": TINY_WORLD, "behavior": TINY_BEHAVIOR}
FAST = TrainConfig(epochs=2, batch_size=64, seed=7, patience=10)


def _run(kind, tiny, workdir, config=FAST):
    frame, spec = tiny
    return train(kind, frame, spec, config, TINY[kind], workdir=workdir, progress=False)


@pytest.mark.parametrize("kind", ["world", "behavior"])
def test_same_seed_gives_identical_weights(kind, tiny, tmp_path):
    a = _run(kind, tiny, tmp_path / "a")
    b = _run(kind, tiny, tmp_path / "b")
    c = _run(kind, tiny, tmp_path / "c", TrainConfig(**{**asdict(FAST), "seed": 8}))
    sa, sb, sc = model_state(a.model), model_state(b.model), model_state(c.model)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa), "another seed, other weights"
    assert a.val_episode_ids == b.val_episode_ids
    assert not set(a.val_episode_ids) & set(a.train_episode_ids)


def test_history_metrics_file_and_result(tiny, tmp_path):
    result = _run("world", tiny, tmp_path)
    lines = [json.loads(x) for x in Path(result.metrics_path).read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2] and lines == result.history
    for key in (
        "train/loss",
        "val/loss",
        "val/nll",
        "perf/train_samples_per_s",
        "perf/data_fraction",
    ):
        assert key in lines[0], key
    assert 1 <= result.best_epoch <= 2
    assert not result.model.training


def test_early_stopping_stops_when_validation_stalls(tiny, tmp_path):
    config = TrainConfig(epochs=50, batch_size=64, lr=1e-9, patience=2, min_delta=1.0)
    result = _run("world", tiny, tmp_path, config)
    assert len(result.history) == 3 and result.best_epoch == 1


CRASH_SCRIPT = textwrap.dedent(
    """
    import torch
    torch.set_num_threads({threads})  # as in the parent: the reduction order changes the bits
    from tests.training.conftest import make_frame
    from foresight.training.loop.train import TrainConfig, train
    from foresight.training.models.world_model import WorldModelConfig
    frame, spec = make_frame()
    config = TrainConfig(epochs=4, batch_size=64, seed=7, patience=10)
    model = WorldModelConfig(d_model=32, n_layers=1, n_heads=2, mlp_ratio=2)
    train("world", frame, spec, config, model, workdir={workdir!r}, progress=False)
    print("finished")
    """
)


@pytest.mark.slow  # three training processes, one killed
def test_kill_and_resume_finishes_like_an_uninterrupted_run(tiny, tmp_path):
    workdir = tmp_path / "crashy"
    script = CRASH_SCRIPT.format(workdir=str(workdir), threads=torch.get_num_threads())
    env = {**os.environ, CRASH_ENV: "2"}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 17, proc.stderr[-2000:]
    assert "finished" not in proc.stdout
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 2

    config = TrainConfig(epochs=4, batch_size=64, seed=7, patience=10)
    resumed = train(
        "world", *tiny, config, TINY_WORLD, workdir=workdir, resume=True, progress=False
    )
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 4
    straight = _run("world", tiny, tmp_path / "straight", config)
    s1, s2 = model_state(resumed.model), model_state(straight.model)
    assert all(torch.equal(s1[k], s2[k]) for k in s1), "resume must continue the same run"


@pytest.mark.parametrize("kind", ["world", "behavior"])
def test_save_and_load_round_trip(kind, tiny, tmp_path):
    result = _run(kind, tiny, tmp_path, TrainConfig(epochs=1, batch_size=64))
    save_file(model_state(result.model), tmp_path / "model.safetensors")
    config = json.loads(json.dumps(asdict(result.model_config)))  # as a model card stores it
    loaded = load_model(kind, config, load_file(tmp_path / "model.safetensors"))
    frame, spec = tiny
    w = gather_window(build_tensors(frame, spec), torch.tensor([3, 40, 100]), result.model.context)
    if kind == "world":
        a, b = result.model.predict(w), loaded.predict(w)
        assert torch.equal(a.obs.loc, b.obs.loc) and torch.equal(a.obs.scale, b.obs.scale)
        assert torch.equal(a.reward, b.reward)
    else:
        a, b = result.model.action_distribution(w), loaded.action_distribution(w)
        assert torch.equal(a.logits, b.logits)
    fresh = build_model(kind, config)
    assert any(
        not torch.equal(v, fresh.state_dict()[k]) for k, v in model_state(result.model).items()
    ), "build_model alone gives untrained weights"
    with pytest.raises(ValueError, match="unknown"):
        build_model(kind, {**config, "bogus": 1})


def test_spec_mismatch_names_both_specs(tiny, tmp_path):
    result = _run("world", tiny, tmp_path, TrainConfig(epochs=1, batch_size=64))
    other = DatasetSpec(
        env="other_env", agents={"a": 7, "b": 7}, action=ActionSpec("discrete", n=5)
    )
    with pytest.raises(ValueError) as err:
        check_compatible(result.model, other)
    msg = str(err.value)
    assert "'agent_0': 4" in msg and "'a': 7" in msg and "other_env" in msg and "synthetic" in msg
    continuous = DatasetSpec(
        env="synthetic", agents={"agent_0": 4}, action=ActionSpec("continuous", dim=2)
    )
    with pytest.raises(ValueError, match="continuous"):
        check_compatible(result.model, continuous)
    more_agents = DatasetSpec(
        env="x", agents={f"n{i}": 4 for i in range(5)}, action=ActionSpec("discrete", n=5)
    )
    check_compatible(result.model, more_agents)  # other agent names and count are fine


def test_empty_dataset_is_a_clear_error(tiny, tmp_path):
    frame, spec = tiny
    with pytest.raises(ValueError, match="empty"):
        train("world", frame.head(0), spec, FAST, TINY_WORLD, workdir=tmp_path, progress=False)


def test_progress_bar_only_on_a_terminal(monkeypatch):
    assert _use_progress(None) is False  # pytest captures stderr: not a TTY
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert _use_progress(None) is True
    monkeypatch.setenv("CI", "1")
    assert _use_progress(None) is False
    assert _use_progress(False) is False and _use_progress(True) is True


def test_runs_of_two_stores_never_share_a_checkpoint_folder(tmp_path):
    """``synthetic@1`` of two stores are different data: a ``--resume`` in one must not pick
    up the other's checkpoint. Both train from one working folder (one FORESIGHT_RUNS)."""
    from foresight.datasets import ingest_logs
    from foresight.datasets.storage import Store
    from foresight.training.loop.workflow import runs_root, train_and_register

    from .conftest import make_frame

    for name, seed in (("a", 1), ("b", 2)):
        frame, spec = make_frame(episodes=8, steps=6, seed=seed)
        frame.write_parquet(tmp_path / f"{name}.parquet")
        store = Store(str(tmp_path / name))
        ingest_logs([str(tmp_path / f"{name}.parquet")], "synthetic", store, spec=spec)
        train_and_register(
            "behavior",
            "synthetic",
            store,
            TrainConfig(epochs=1, batch_size=64, device="cpu"),
            BehaviorModelConfig(d_model=8, context=2, expert_width=8, n_experts=2),
            resume=True,
            progress=False,
        )
    assert len(list(runs_root().iterdir())) == 2


def test_init_from_fine_tunes_a_registered_model_and_records_its_exact_version(tmp_path):
    """``init_from`` starts from a registered model's weights and normalizer: fine-tuned with
    lr 0 on a grown dataset version they come out unchanged, where a fresh start on that
    version computes its own normalizer; the card names the resolved version; a model of
    another kind or of a dataset it does not fit is refused by name."""
    from foresight.datasets import ingest_logs
    from foresight.datasets.storage import Store
    from foresight.training.loop.workflow import train_and_register
    from foresight.training.registry import ModelRegistry, load_registered

    from .conftest import make_frame

    store = Store(str(tmp_path / "store"))
    for seed in (1, 2):  # synthetic@0, then synthetic@1 with more episodes
        frame, spec = make_frame(episodes=8, steps=6, seed=seed)
        frame = frame.with_columns(pl.col("episode_id") + f"-{seed}")
        frame.write_parquet(tmp_path / f"{seed}.parquet")
        ingest_logs([str(tmp_path / f"{seed}.parquet")], "synthetic", store, spec=spec)
        if seed == 1:
            tiny = BehaviorModelConfig(d_model=8, context=2, expert_width=8, n_experts=2)
            fast = {"epochs": 1, "batch_size": 64, "device": "cpu"}
            first = train_and_register(
                "behavior", "synthetic@0", store, TrainConfig(**fast), tiny, progress=False
            )
            ModelRegistry(store).promote(first["model"], "production")
    still = TrainConfig(**fast, lr=0.0, init_from="behavior@production")
    tuned = train_and_register("behavior", "synthetic@1", store, still, progress=False)
    fresh = train_and_register(
        "behavior", "synthetic@1", store, TrainConfig(**fast, lr=0.0), tiny, progress=False
    )
    start, _ = load_registered(first["model"], store)
    same, mv = load_registered(tuned["model"], store)
    other, _ = load_registered(fresh["model"], store)
    want = start.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in same.state_dict().items())
    assert not torch.equal(other.state_dict()["obs_mean"], want["obs_mean"])
    assert mv.card.train_config["init_from"] == "behavior@1"
    assert mv.card.dataset.resolved == "synthetic@1"
    assert mv.card.model_config["d_model"] == 8  # the architecture it started from

    with pytest.raises(ValueError, match="behavior@1 is a behavior model, not a world model"):
        train_and_register("world", "synthetic", store, TrainConfig(**fast, init_from="behavior@1"))
    wide, wide_spec = make_frame(
        episodes=8, steps=6, seed=2, obs_sizes=dict.fromkeys(spec.agents, 7)
    )
    wide.write_parquet(tmp_path / "wide.parquet")
    ingest_logs([str(tmp_path / "wide.parquet")], "wide", store, spec=wide_spec)
    with pytest.raises(ValueError, match="behavior model to start from does not fit"):
        train_and_register("behavior", "wide", store, TrainConfig(**fast, init_from="behavior@1"))
    with pytest.raises(ValueError, match="pass the model to start from"):
        train("behavior", wide, wide_spec, TrainConfig(**fast, init_from="behavior@1"))
