"""Training the offline-RL peer: TorchRL's discrete CQL loss on the dataset's own rewards.

    result = train_offline_rl(frame, spec, OfflineRLTrainConfig(), workdir="runs/orl")
    model, mv = load_registered("offline-rl@production", store, kind="offline-rl")  # arena

Every (step, agent) of the training episodes is one transition of that agent: its window
features now and one step later (:meth:`SharedQNetwork.features`), its action, its reward,
and whether its episode ended (terminated, or the last logged step: with the time in the
features, the horizon is part of the state). One network is shared by the agents
(independent learners with parameter sharing). The loss is
``torchrl.objectives.DiscreteCQLLoss`` (TD(0) with a target network plus the CQL term
``logsumexp_a Q - Q(a_logged)``, weighted by ``cql_alpha``), the target network is copied
every ``target_update_interval`` steps by ``torchrl.objectives.HardUpdate``.

The final weights are kept (no selection on the environment). Held-out episodes give the
validation losses; a supported mpe2 env gives a closed-loop return next to random and
greedy, on episode seeds of their own (``seed + 10_000``), not the arena's.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl
import torch
from tensordict import TensorDict
from tqdm import tqdm

from foresight.datasets.schema import DatasetSpec
from foresight.training.data import (
    TrajectoryTensors,
    build_tensors,
    check_model_spec,
    compute_normalizer,
    gather_window,
)
from foresight.training.loop.config import OfflineRLTrainConfig
from foresight.training.loop.train import select_device, split_rows
from foresight.training.models.offline_rl import OfflineRLConfig, SharedQNetwork, check_discrete

KIND = "offline-rl"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass
class OfflineRLResult:
    model: SharedQNetwork
    """The trained network (final weights), in eval mode."""
    model_config: OfflineRLConfig
    train_config: OfflineRLTrainConfig
    history: list[dict[str, float]]
    """One metrics dict per evaluation, as written to metrics.jsonl."""
    metrics: dict[str, float]
    """The final evaluation: val/* losses and closed_loop/* returns."""
    baselines: dict[str, dict[str, float]]
    """Closed-loop returns of random and greedy on the same episodes (empty: not evaluated)."""
    reward_scale: float
    metrics_path: str
    train_episode_ids: list[str] = field(default_factory=list)
    val_episode_ids: list[str] = field(default_factory=list)


def build_transitions(
    model: SharedQNetwork,
    data: TrajectoryTensors,
    rows: torch.Tensor,
    reward_scale: float,
    chunk: int = 8192,
) -> TensorDict:
    """One transition per present (step, agent) of ``rows``, in TorchRL's layout.

    Keys: ``observation`` (M, F), ``action`` (M,), and under ``next``: ``observation``,
    ``reward`` (M, 1), ``done`` and ``terminated`` (M, 1), True where the agent's episode
    ends after this step (its next step is not logged or it terminated).
    """
    agents = model.agent_index(data.agent_ids)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("x", "a", "r", "xn", "end")}
    for t in rows.split(chunk):
        has_next = t < data.ep_end[t]  # (b,)
        nxt = torch.minimum(t + 1, data.ep_end[t])
        step = t - data.ep_start[t]  # (b,) episode step
        x = model.features(gather_window(data, t, model.context), step, agents)  # (b, N, F)
        xn = model.features(gather_window(data, nxt, model.context), step + 1, agents)
        present = data.present[t]  # (b, N)
        end = data.terminated[t] | ~(has_next[:, None] & data.present[nxt])  # (b, N)
        parts["x"].append(x[present])
        parts["xn"].append(xn[present])
        parts["a"].append(data.action[t][present])
        parts["r"].append(data.reward[t][present] * reward_scale)
        parts["end"].append(end[present])
    x, xn, a, r, end = (torch.cat(parts[k]) for k in ("x", "xn", "a", "r", "end"))
    M = x.shape[0]
    return TensorDict(
        {
            "observation": x,
            "action": a,
            "next": {
                "observation": xn,
                "reward": r[:, None],
                "done": end[:, None],
                "terminated": end[:, None],
            },
        },
        batch_size=[M],
        device=x.device,
    )


def make_loss(model: SharedQNetwork, config: OfflineRLTrainConfig):
    """TorchRL's DiscreteCQLLoss around ``model`` with its TD(0) estimator and target updater."""
    try:
        from torchrl.data import Categorical
        from torchrl.modules import QValueActor
        from torchrl.objectives import DiscreteCQLLoss, HardUpdate
    except ImportError as exc:  # pragma: no cover - torchrl is a dependency
        raise ImportError(
            "offline-rl needs TorchRL: pip install torchrl==0.14.1 (or reinstall foresight)"
        ) from exc
    space = Categorical(model.n_actions)
    actor = QValueActor(model, in_keys=["observation"], spec=space)
    loss = DiscreteCQLLoss(actor, action_space=space, delay_value=True)
    loss.make_value_estimator(gamma=config.gamma)
    updater = HardUpdate(loss, value_network_update_interval=config.target_update_interval)
    return loss, updater


@torch.no_grad()
def validation_metrics(model, loss, transitions: TensorDict, alpha: float) -> dict[str, float]:
    """Mean TD loss, CQL term, Q of the logged action and agreement of the argmax with the
    logged action, over ``transitions``."""
    sums = {"td_loss": 0.0, "cql": 0.0, "q_logged": 0.0, "agreement": 0.0}
    n = transitions.shape[0]
    for i in range(0, n, 8192):
        td = transitions[i : i + 8192].clone()
        out = loss(td)
        q = td["pred_val"]  # (b, A)
        b = td.shape[0]
        sums["td_loss"] += out["loss_qvalue"].item() * b
        sums["cql"] += out["loss_cql"].item() * b
        sums["q_logged"] += q.gather(-1, td["action"][:, None]).sum().item()
        sums["agreement"] += (q.argmax(-1) == td["action"]).float().sum().item()
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out["loss"] = out["td_loss"] + alpha * out["cql"]
    return out


def closed_loop(
    model: SharedQNetwork, spec: DatasetSpec, episodes: int, seed: int, baselines: bool = False
) -> dict[str, dict[str, float]] | None:
    """Team returns in the dataset's env (None when it is not a supported mpe2 env)."""
    from foresight.datasets.sources.simulators import simulator_of
    from foresight.training.agents.arena import run_arena

    env = simulator_of(spec.env)
    if env is None or episodes <= 0:
        return None
    teams = [KIND, "random", "greedy"] if baselines else [KIND]
    was = model.training
    # the model's own team size and view (run_arena reads them from the model's spec)
    result = run_arena(env, episodes, teams, seed, offline_rl=model)
    model.train(was)
    return {
        team: {"return": r["mean_return"], "ci95_low": r["ci95"][0], "ci95_high": r["ci95"][1]}
        for team, r in result["controllers"].items()
    }


def train_offline_rl(
    frame: pl.DataFrame | pl.LazyFrame,
    spec: DatasetSpec,
    config: OfflineRLTrainConfig | None = None,
    model_config: OfflineRLConfig | dict | None = None,
    workdir: str | os.PathLike = "runs/offline-rl",
    resume: bool = False,
    progress: bool | None = None,
) -> OfflineRLResult:
    """Train the shared Q-network on ``frame`` (contract format) with TorchRL's CQL loss.

    ``resume=True`` continues from ``workdir/checkpoint.pt`` (saved at every evaluation).
    """
    config = config or OfflineRLTrainConfig()
    check_discrete(spec)
    for name in ("steps", "batch_size", "target_update_interval", "eval_every"):
        if getattr(config, name) < 1:
            raise ValueError(f"offline-rl {name} must be >= 1, got {getattr(config, name)}")
    if not (0.0 < config.gamma <= 1.0) or config.cql_alpha < 0 or config.lr <= 0:
        raise ValueError(
            f"offline-rl needs 0 < gamma <= 1, cql_alpha >= 0 and lr > 0; got gamma="
            f"{config.gamma}, cql_alpha={config.cql_alpha}, lr={config.lr}"
        )
    device = select_device(config.device)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path, metrics_path = workdir / CHECKPOINT, workdir / METRICS
    ckpt = None
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)

    data = build_tensors(frame, spec, device=device)
    train_ids, val_ids, train_rows, val_rows = split_rows(data, config, ckpt, "transitions")

    if ckpt is not None:
        mc = OfflineRLConfig(**ckpt["model_config"])
        check_model_spec("checkpointed offline-rl model", mc.spec, spec)
    elif isinstance(model_config, OfflineRLConfig):
        mc = OfflineRLConfig(**asdict(model_config))
    else:
        mc = OfflineRLConfig(**(model_config or {}))
    if ckpt is None and config.context is not None:
        mc = replace(mc, context=config.context)
    mc.spec = spec.to_dict()
    mc.horizon = int((data.ep_end - data.ep_start).max().item()) + 1
    torch.manual_seed(config.seed)
    model = SharedQNetwork(mc).to(device)
    model.set_normalizer(compute_normalizer(data, train_rows))
    r = data.reward[train_rows][data.present[train_rows]]
    scale = config.reward_scale
    if scale is None:
        scale = 1.0 / max(float(r.std()) if r.numel() > 1 else 1.0, 1e-3)
    train_td = build_transitions(model, data, train_rows, scale)
    val_td = build_transitions(model, data, val_rows, scale) if val_rows.numel() else None
    del data

    loss, updater = make_loss(model, config)
    optimizer = torch.optim.Adam(loss.parameters(), lr=config.lr)
    history: list[dict[str, float]] = []
    step = 0
    gen = torch.Generator().manual_seed(config.seed)
    if ckpt is not None:
        loss.load_state_dict(ckpt["loss"])
        optimizer.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        step, history = ckpt["step"], ckpt["history"]
    metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))

    show = progress if progress is not None else (os.isatty(2) and not os.environ.get("CI"))
    bar = tqdm(total=config.steps, initial=step, disable=not show, desc="train offline-rl")
    M = train_td.shape[0]
    sums = {"td_loss": 0.0, "cql": 0.0}
    since, t0 = 0, time.perf_counter()
    final: dict[str, float] = history[-1] if history else {}
    while step < config.steps:
        idx = torch.randint(M, (config.batch_size,), generator=gen).to(device)
        out = loss(train_td[idx])
        total = out["loss_qvalue"] + config.cql_alpha * out["loss_cql"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(loss.parameters(), config.grad_clip)
        optimizer.step()
        updater.step()
        sums["td_loss"] += out["loss_qvalue"].item()
        sums["cql"] += out["loss_cql"].item()
        step, since = step + 1, since + 1
        bar.update(1)
        if step % config.eval_every == 0 or step == config.steps:
            record: dict[str, float] = {"step": step}
            record.update({f"train/{k}": v / since for k, v in sums.items()})
            if not all(math.isfinite(v) for v in record.values()):
                raise FloatingPointError(
                    f"offline-rl training diverged at step {step} ({record}); lower lr or "
                    "reward_scale, or raise cql_alpha"
                )
            model.eval()
            if val_td is not None:
                val = validation_metrics(model, loss, val_td, config.cql_alpha)
                record.update({f"val/{k}": v for k, v in val.items()})
            cl = closed_loop(model, spec, config.eval_episodes, config.seed + 10_000)
            if cl is not None:
                record["closed_loop/return"] = cl[KIND]["return"]
            model.train()
            record["time/steps_per_s"] = since / (time.perf_counter() - t0)
            history.append(record)
            final = record
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            _save(
                ckpt_path,
                {
                    "model_config": asdict(mc),
                    "train_config": asdict(config),
                    "loss": loss.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "generator": gen.get_state(),
                    "step": step,
                    "history": history,
                    "train_episode_ids": train_ids,
                    "val_episode_ids": val_ids,
                },
            )
            sums, since, t0 = {"td_loss": 0.0, "cql": 0.0}, 0, time.perf_counter()
    bar.close()
    model.eval()
    metrics = {k: v for k, v in final.items() if k.startswith(("val/", "closed_loop/"))}
    baselines: dict[str, dict[str, float]] = {}
    cl = closed_loop(model, spec, config.eval_episodes, config.seed + 10_000, baselines=True)
    if cl is not None:
        metrics.update({f"closed_loop/{k}": v for k, v in cl[KIND].items()})
        baselines = {
            team: {f"closed_loop/{k}": v for k, v in r.items()}
            for team, r in cl.items()
            if team != KIND
        }
    return OfflineRLResult(
        model=model,
        model_config=mc,
        train_config=config,
        history=history,
        metrics=metrics,
        baselines=baselines,
        reward_scale=scale,
        metrics_path=str(metrics_path),
        train_episode_ids=list(train_ids),
        val_episode_ids=list(val_ids),
    )


def _save(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint intact


def offline_rl_gate(
    metrics: dict[str, float], baselines: dict[str, dict[str, float]]
) -> tuple[bool, list[str]]:
    """Is the policy worth promoting? (passed, failures).

    Every validation metric must be finite, and where it played closed-loop episodes its
    mean return must beat random's on the same episodes. What cannot be measured refuses.
    """
    failures = [f"{k} is not finite ({v})" for k, v in metrics.items() if not math.isfinite(v)]
    if not any(k.startswith("val/") for k in metrics):
        failures.append("no validation metrics: hold out some episodes (val_fraction > 0)")
    mine = metrics.get("closed_loop/return")
    theirs = baselines.get("random", {}).get("closed_loop/return")
    if mine is not None and theirs is not None and not mine > theirs:
        failures.append(f"closed_loop/return: {mine:.4g} does not beat random {theirs:.4g}")
    return not failures, failures
