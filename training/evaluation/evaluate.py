"""Evaluation on held-out episodes, every metric next to the baselines of the same run.

    result = evaluate("world", world, frame, spec, val_ids, behavior=behavior)
    write_report(result, history, "reports/world")

World metrics (raw observation units; NLL in nats per feature, over the features that
change over time; MSE over all existing features):

- ``nll``, ``mse``, ``coverage_90`` (share of true next-step features inside the predicted
  central 90% interval), ``reward_mse``: one step ahead.
- ``rollout_mse_{1,5,10}``: open loop from logged histories, feeding back the predicted
  mean and the logged joint actions.
- ``imagine_{nll,mse,coverage}_{5,10}``: only the ego agent's logged actions are given; the
  others act by a policy (the behavior model for the model, the marginal action
  frequencies for the baselines). The sampled futures' predicted distributions form an
  equal-weight mixture: its 90% interval gives the coverage, its mean the MSE, and a
  Gaussian with its mean and variance the NLL (a mixture of a few sharp samples would
  make the NLL a lottery).

Behavior metrics: ``nll`` of the logged action, ``accuracy`` (top-1; ``mse`` of the mean
action for continuous specs).

The result is ``{"model": {...}, "baselines": {name: {...}}, "meta": {...}, "curves":
{...}, "examples": {...}}`` with the same metric names in the model and baseline sections.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch

from foresight.datasets.schema import DatasetSpec
from foresight.training.data import (
    TrajectoryTensors,
    build_tensors,
    check_model_spec,
    compute_normalizer,
    gather_targets,
    gather_window,
    sample_rows,
    targets_for,
)
from foresight.training.device import select_device
from foresight.training.evaluation.baselines import (
    Kinematics,
    fit_behavior_baselines,
    fit_world_baselines,
    mpe_kinematics,
)
from foresight.training.models.rollout import append_step, imagine
from foresight.training.models.world_model import ObsDistribution

ROLLOUT_HORIZONS = (1, 5, 10)
IMAGINE_HORIZONS = (5, 10)


def _ratio(total: float, count: float) -> float:
    """A mean, or NaN when nothing was counted (e.g. episodes shorter than the horizon)."""
    return total / count if count > 0 else float("nan")


def _batches(rows: torch.Tensor, size: int):
    for i in range(0, rows.numel(), size):
        yield rows[i : i + size]


@torch.no_grad()
def _one_step(pred_fn, data, rows, dyn, kin, batch_size) -> dict[str, float]:
    fm = data.feat_mask  # (N, D)
    s = dict.fromkeys(["se", "n", "nll", "nd", "cov", "rse", "nr", "vse", "nv"], 0.0)
    values: list[tuple[torch.Tensor, torch.Tensor]] = []  # (predicted, target) complete ones
    for t in _batches(rows, batch_size):
        tg = targets_for(pred_fn, data, t)
        p = pred_fn.predict(gather_window(data, t, pred_fn.context))
        m_all = tg.next_valid[..., None] & fm  # (B, N, D)
        m_dyn = (m_all & dyn).float()
        m_all = m_all.float()
        se = (p.obs.mean() - tg.next_obs) ** 2
        s["se"] += (se * m_all).sum().item()
        s["n"] += m_all.sum().item()
        s["nll"] += -(p.obs.log_prob(tg.next_obs) * m_dyn).sum().item()
        s["nd"] += m_dyn.sum().item()
        lo, hi = p.obs.interval(0.9)
        inside = ((tg.next_obs >= lo) & (tg.next_obs <= hi)).float()
        s["cov"] += (inside * m_dyn).sum().item()
        v = tg.valid.float()
        s["rse"] += (((p.reward - tg.reward) ** 2) * v).sum().item()
        s["nr"] += v.sum().item()
        if p.value is not None and tg.value is not None:
            values.append((p.value[tg.value_valid], tg.value[tg.value_valid]))
        if kin is not None and kin.velocity:
            mv = m_all[..., kin.velocity]
            s["vse"] += (se[..., kin.velocity] * mv).sum().item()
            s["nv"] += mv.sum().item()
    out = {
        "nll": _ratio(s["nll"], s["nd"]),
        "mse": _ratio(s["se"], s["n"]),
        "coverage_90": _ratio(s["cov"], s["nd"]),
        "reward_mse": _ratio(s["rse"], s["nr"]),
    }
    if values:  # the value head: its error, and the share of the targets' variance it explains
        predicted, target = (torch.cat(x) for x in zip(*values, strict=True))
        if target.numel() > 1:
            out["value_mse"] = float(((predicted - target) ** 2).mean())
            out["value_r2"] = 1 - out["value_mse"] / max(float(target.var()), 1e-12)
    if kin is not None and kin.velocity:
        out["mse_vel"] = _ratio(s["vse"], s["nv"])
    return out


@torch.no_grad()
def rollout_mse(
    predictor, data: TrajectoryTensors, starts: torch.Tensor, horizon: int, batch_size: int = 2048
) -> list[float]:
    """Open-loop MSE at k = 1..horizon: predicted means fed back, logged actions given."""
    fm = data.feat_mask
    se, n = torch.zeros(horizon), torch.zeros(horizon)
    for t in _batches(starts, batch_size):
        w = gather_window(data, t, predictor.context)
        end = data.ep_end[t]
        for k in range(1, horizon + 1):
            p = predictor.predict(w)
            mean = p.obs.mean() * fm  # (B, N, D)
            idx = torch.minimum(t + k, end)
            ok = (t + k <= end)[:, None] & data.present[idx]  # (B, N)
            m = (ok[..., None] & fm).float()
            se[k - 1] += (((mean - data.obs[idx]) ** 2) * m).sum().cpu()
            n[k - 1] += m.sum().cpu()
            w = append_step(w, mean, w.action[:, -1], ok, p.reward)
            w.action[:, -1] = data.action[idx]  # the logged joint action at t+k
    return [_ratio(float(a), float(b)) for a, b in zip(se, n, strict=True)]


def _mixture_of_samples(dist: ObsDistribution) -> ObsDistribution:
    """(B, S, N, D, K) sample distributions -> one equal-weight mixture (B, N, D, S*K)."""
    B, S, N, D, K = dist.loc.shape
    merge = lambda x: x.permute(0, 2, 3, 1, 4).reshape(B, N, D, S * K)  # noqa: E731
    return ObsDistribution(merge(dist.logits.log_softmax(-1)), merge(dist.loc), merge(dist.scale))


@torch.no_grad()
def _imagination_metrics(
    predictor, policy, data, starts, dyn, n_samples, ego, seed, batch_size
) -> dict[str, float]:
    H = max(IMAGINE_HORIZONS)
    fm = data.feat_mask
    sums = {k: dict(nll=0.0, se=0.0, cov=0.0, n=0.0) for k in IMAGINE_HORIZONS}
    gen = torch.Generator(device=data.obs.device).manual_seed(seed)
    context = max(predictor.context, getattr(policy, "context", 1))
    for t in _batches(starts, max(1, batch_size // n_samples)):
        end = data.ep_end[t]
        plan_idx = torch.minimum(t[:, None] + torch.arange(H, device=t.device), end[:, None])
        plan = data.action[plan_idx][:, :, ego]  # (B, H[, A]) the ego's logged actions
        im = imagine(
            predictor,
            gather_window(data, t, context),
            H,
            n_samples,
            actions={ego: plan},
            policy=policy,
            generator=gen,
        )
        for k in IMAGINE_HORIZONS:
            mix = _mixture_of_samples(im.obs_dist.index(lambda x, k=k: x[:, :, k - 1]))
            idx = torch.minimum(t + k, end)
            truth = data.obs[idx]  # (B, N, D)
            ok = (t + k <= end)[:, None] & data.present[idx]
            m_dyn = (ok[..., None] & fm & dyn).float()
            m_all = (ok[..., None] & fm).float()
            lo, hi = mix.interval(0.9)
            mean, std = mix.mean(), mix.stddev().clamp_min(1e-6)  # (B, N, D)
            gauss = ObsDistribution(
                torch.zeros_like(mean)[..., None], mean[..., None], std[..., None]
            )
            sums[k]["nll"] += -(gauss.log_prob(truth) * m_dyn).sum().item()
            sums[k]["cov"] += (((truth >= lo) & (truth <= hi)).float() * m_dyn).sum().item()
            sums[k]["se"] += (((mix.mean() - truth) ** 2) * m_all).sum().item()
            sums[k]["n"] += m_dyn.sum().item()
            sums[k]["n_all"] = sums[k].get("n_all", 0.0) + m_all.sum().item()
    out = {}
    for k, s in sums.items():
        out[f"imagine_nll_{k}"] = _ratio(s["nll"], s["n"])
        out[f"imagine_mse_{k}"] = _ratio(s["se"], s.get("n_all", 0))
        out[f"imagine_coverage_{k}"] = _ratio(s["cov"], s["n"])
    return out


@torch.no_grad()
def _behavior_metrics(policy, data, rows, batch_size) -> dict[str, float]:
    s = dict(nll=0.0, hit=0.0, se=0.0, n=0.0)
    for t in _batches(rows, batch_size):
        tg = gather_targets(data, t)
        dist = policy.action_distribution(gather_window(data, t, policy.context))
        v = tg.valid.float()
        s["nll"] += -(dist.log_prob(tg.action) * v).sum().item()
        s["n"] += v.sum().item()
        if data.discrete:
            s["hit"] += ((dist.mode() == tg.action).float() * v).sum().item()
        else:
            s["se"] += (((dist.mode() - tg.action) ** 2).mean(-1) * v).sum().item()
    if data.discrete:
        return {"nll": _ratio(s["nll"], s["n"]), "accuracy": _ratio(s["hit"], s["n"])}
    return {"nll": _ratio(s["nll"], s["n"]), "mse": _ratio(s["se"], s["n"])}


def _example_imagination(model, policy, data, rows, ego, kin, seed, n_samples=8) -> dict[str, Any]:
    """One imagined future from the start of a held-out episode, for the report plot."""
    t = rows[:1]
    end = int(data.ep_end[t][0])
    H = max(1, min(20, end - int(t[0])))
    context = max(model.context, getattr(policy, "context", 1))
    idx = torch.minimum(t[:, None] + torch.arange(H + 1, device=t.device), data.ep_end[t][:, None])
    plan = data.action[idx[:, :H]][:, :, ego]
    gen = torch.Generator(device=data.obs.device).manual_seed(seed)
    im = imagine(
        model, gather_window(data, t, context), H, n_samples, {ego: plan}, policy, generator=gen
    )
    feats = [2, 3] if kin is not None and kin.velocity else [0, 1]
    return {
        "features": feats,
        "ego_agent": data.agent_ids[ego],
        "agent_ids": data.agent_ids,
        "real": data.obs[idx[0]][..., feats].cpu().tolist(),  # (H+1, N, 2)
        "samples": im.obs[0][..., feats].cpu().tolist(),  # (S, H, N, 2)
    }


@dataclass
class _HeldOut:
    """What every family's evaluation starts from: the data on the device, the held-out
    and training rows, the rollout start points, the behavior baselines."""

    model: torch.nn.Module
    spec: DatasetSpec
    data: TrajectoryTensors
    train_rows: torch.Tensor
    eval_rows: torch.Tensor
    starts: torch.Tensor
    n_actions: int
    meta: dict[str, Any]
    behavior_baselines: dict[str, Any]
    extra: dict[str, Any]
    behavior: torch.nn.Module | None
    kinematics: Kinematics | Literal["auto"] | None
    n_samples: int
    max_starts: int | None
    ego_agent: int
    seed: int
    batch_size: int


def evaluate(
    kind: str,
    model: torch.nn.Module,
    frame: pl.DataFrame | pl.LazyFrame,
    spec: DatasetSpec,
    episode_ids: list[str],
    **options: Any,
) -> dict[str, Any]:
    """The evaluation of a built-in family by its name (``world``, ``behavior``), for
    scripts; code that holds a family calls ``family.evaluate`` (training.families)."""
    by_name = {"world": evaluate_world, "behavior": evaluate_behavior}
    if kind not in by_name:
        raise ValueError(f"kind must be 'world' or 'behavior', got {kind!r}")
    return by_name[kind](model, frame, spec, episode_ids, **options)


def evaluate_behavior(
    model: torch.nn.Module,
    frame: pl.DataFrame | pl.LazyFrame,
    spec: DatasetSpec,
    episode_ids: list[str],
    **options: Any,
) -> dict[str, Any]:
    """Behavior metrics (action NLL, accuracy or MSE) next to the marginal, repeat-last and
    ``extra_baselines`` policies; options as :func:`held_out`."""
    h = held_out("behavior", model, frame, spec, episode_ids, **options)
    policies = {**h.behavior_baselines, **h.extra}
    return {
        "model": _behavior_metrics(h.model, h.data, h.eval_rows, h.batch_size),
        "baselines": {
            name: _behavior_metrics(p, h.data, h.eval_rows, h.batch_size)
            for name, p in policies.items()
        },
        "meta": h.meta,
        "curves": {},
        "examples": {},
    }


def held_out(
    kind: str,
    model: torch.nn.Module,
    frame: pl.DataFrame | pl.LazyFrame,
    spec: DatasetSpec,
    episode_ids: list[str],
    *,
    behavior: torch.nn.Module | None = None,
    extra_baselines: dict[str, Any] | None = None,
    train_episode_ids: list[str] | None = None,
    kinematics: Kinematics | Literal["auto"] | None = "auto",
    n_samples: int = 16,
    max_starts: int | None = 2048,
    ego_agent: int = 0,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 2048,
) -> _HeldOut:
    """Prepare scoring ``model`` on the held-out ``episode_ids`` of ``frame`` next to
    baselines (one of the family evaluations does the scoring).

    Baselines are fit on ``train_episode_ids`` (default: every other episode of ``frame``).
    ``behavior``: the behavior model that drives the non-ego agents in imagination (world
    only; the marginal action frequencies when None). ``extra_baselines``: more predictors
    or policies to score, e.g. ``{"context1": behavior_model_trained_with_context_1}``.
    """
    check_model_spec(type(model).__name__, model.config.spec, spec)
    if behavior is not None:
        check_model_spec(type(behavior).__name__, behavior.config.spec, spec)
    dev = select_device(device)
    data = build_tensors(frame, spec, device=dev)
    eval_ids = list(episode_ids)
    if not eval_ids:
        raise ValueError("no held-out episodes to evaluate on (episode_ids is empty)")
    train_ids = train_episode_ids or sorted(set(data.episode_ids) - set(eval_ids))
    if not train_ids:
        raise ValueError(
            "baselines are fit on training episodes, but the frame holds only the held-out "
            "ones; pass the whole dataset (or train_episode_ids)"
        )
    train_rows, eval_rows = sample_rows(data, train_ids), sample_rows(data, eval_ids)
    if eval_rows.numel() == 0:
        raise ValueError("held-out episodes have no rows")
    model = model.to(dev).eval()
    n_actions = spec.action.n if spec.action.discrete else spec.action.dim
    gen = torch.Generator().manual_seed(seed)
    starts = eval_rows[torch.randperm(eval_rows.numel(), generator=gen).to(dev)]
    if max_starts is not None:
        starts = starts[:max_starts]
    meta: dict[str, Any] = {
        "kind": kind,
        "n_eval_episodes": len(eval_ids),
        "n_train_episodes": len(train_ids),
        "n_eval_windows": int(eval_rows.numel()),
        "seed": seed,
    }
    behavior_baselines = fit_behavior_baselines(data, train_rows, n_actions)
    extra = dict(extra_baselines or {})
    for m in extra.values():
        if isinstance(m, torch.nn.Module):
            m.to(dev).eval()
    if behavior is not None:
        behavior = behavior.to(dev).eval()
    return _HeldOut(
        model,
        spec,
        data,
        train_rows,
        eval_rows,
        starts,
        n_actions,
        meta,
        behavior_baselines,
        extra,
        behavior,
        kinematics,
        n_samples,
        max_starts,
        ego_agent,
        seed,
        batch_size,
    )  # fmt: skip (one field per argument, in order)


def evaluate_world(
    model: torch.nn.Module,
    frame: pl.DataFrame | pl.LazyFrame,
    spec: DatasetSpec,
    episode_ids: list[str],
    **options: Any,
) -> dict[str, Any]:
    """World metrics (one step, open-loop rollouts, imagination) next to the world
    baselines and ``extra_baselines`` predictors; options as :func:`held_out`."""
    h = held_out("world", model, frame, spec, episode_ids, **options)
    model, data, train_rows, eval_rows, starts = (
        h.model,
        h.data,
        h.train_rows,
        h.eval_rows,
        h.starts,
    )
    meta, extra, behavior, batch_size = h.meta, h.extra, h.behavior, h.batch_size
    n_samples, max_starts, seed, ego = h.n_samples, h.max_starts, h.seed, h.ego_agent
    kin = mpe_kinematics(spec) if h.kinematics == "auto" else h.kinematics
    dyn = compute_normalizer(data, train_rows).dynamic  # (D,) features that ever change
    predictors = {
        "model": model,
        **fit_world_baselines(data, train_rows, h.n_actions, kin),
        **extra,
    }
    marginal = h.behavior_baselines["marginal"]
    if not (0 <= ego < data.feat_mask.shape[0]):
        raise ValueError(f"ego_agent {ego} out of range")
    results, curves = {}, {}
    for name, pred in predictors.items():
        policy = (behavior or marginal) if name == "model" else marginal
        metrics = _one_step(pred, data, eval_rows, dyn, kin, batch_size)
        curve = rollout_mse(pred, data, starts, max(ROLLOUT_HORIZONS), batch_size)
        metrics.update({f"rollout_mse_{k}": curve[k - 1] for k in ROLLOUT_HORIZONS})
        im_starts = starts[: max(1, (max_starts or starts.numel()) // 2)]
        metrics.update(
            _imagination_metrics(
                pred, policy, data, im_starts, dyn, n_samples, ego, seed, batch_size
            )
        )
        results[name] = metrics
        curves[name] = curve
    meta.update(
        n_samples=n_samples,
        ego_agent=data.agent_ids[ego],
        imagination_policy="behavior model" if behavior is not None else "marginal",
        baseline_imagination_policy="marginal",
        kinematics=None if kin is None else kin.moves,
    )
    example = _example_imagination(model, behavior or marginal, data, eval_rows, ego, kin, seed)
    return {
        "model": results.pop("model"),
        "baselines": results,
        "meta": meta,
        "curves": {"rollout_mse": curves},
        "examples": {"imagination": example},
    }


def write_report(
    result: dict[str, Any],
    history: list[dict[str, float]] | dict[str, list[dict[str, float]]],
    out_dir: str | Path,
) -> dict[str, str]:
    """Write ``report.json`` and PNG plots to ``out_dir``; return {name: path}.

    The plots follow what ``result`` holds: learning curves always; rollout error and an
    imagined trajectory for a model with rollout curves (world), else the action NLL next
    to the baselines (behavior)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / "report.json")}
    histories = history if isinstance(history, dict) else {result["meta"]["kind"]: history}
    Path(paths["json"]).write_text(
        json.dumps(
            _nan_to_none({"result": result, "history": histories}),
            indent=2,
            default=_json_default,
        )
    )

    fig, axes = plt.subplots(1, len(histories), figsize=(6 * len(histories), 4), squeeze=False)
    for ax, (name, hist) in zip(axes[0], histories.items(), strict=True):
        epochs = [h["epoch"] for h in hist]
        for key, style in (("train/loss", "-o"), ("val/loss", "-s")):
            if hist and key in hist[0]:
                ax.plot(epochs, [h[key] for h in hist], style, label=key, markersize=3)
        ax.set(title=f"{name}: learning curves", xlabel="epoch", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    paths["learning_curves"] = str(out / "learning_curves.png")
    fig.savefig(paths["learning_curves"], dpi=110)
    plt.close(fig)

    if result["curves"].get("rollout_mse"):  # a model that predicts the world
        curves = result["curves"]["rollout_mse"]
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for name, curve in curves.items():
            ks = np.arange(1, len(curve) + 1)
            ax.plot(
                ks,
                curve,
                "-o" if name == "model" else "--",
                label=name,
                markersize=3,
                lw=2 if name == "model" else 1.2,
            )
        ax.set(
            title="open-loop rollout error (held-out episodes, logged actions)",
            xlabel="steps ahead k",
            ylabel="MSE per feature",
            yscale="log",
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        fig.tight_layout()
        paths["rollout_error"] = str(out / "rollout_error.png")
        fig.savefig(paths["rollout_error"], dpi=110)
        plt.close(fig)
        paths["imagined_trajectory"] = _plot_imagination(
            result["examples"]["imagination"], out, plt
        )
    elif "nll" in result["model"]:  # a policy: its action NLL next to the baselines
        names = ["model", *result["baselines"]]
        nll = [result["model"]["nll"]] + [b["nll"] for b in result["baselines"].values()]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        bars = ax.bar(names, nll, color=["tab:blue"] + ["tab:gray"] * (len(names) - 1))
        ax.bar_label(bars, fmt="%.3f")
        ax.set(title="action NLL on held-out episodes (lower is better)", ylabel="nats per action")
        fig.tight_layout()
        paths["behavior_nll"] = str(out / "behavior_nll.png")
        fig.savefig(paths["behavior_nll"], dpi=110)
        plt.close(fig)
    return paths


def _plot_imagination(example: dict[str, Any], out: Path, plt) -> str:
    real = np.asarray(example["real"])  # (H+1, N, 2)
    samples = np.asarray(example["samples"])  # (S, H, N, 2)
    fig, ax = plt.subplots(figsize=(6, 6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, agent in enumerate(example["agent_ids"]):
        c = colors[n % len(colors)]
        for s in range(samples.shape[0]):
            path = np.concatenate([real[:1, n], samples[s, :, n]], axis=0)
            ax.plot(path[:, 0], path[:, 1], color=c, alpha=0.3, lw=1)
        tag = " (ego: logged actions)" if agent == example["ego_agent"] else ""
        ax.plot(real[:, n, 0], real[:, n, 1], color=c, lw=2.5, label=f"{agent} real{tag}")
        ax.plot(real[0, n, 0], real[0, n, 1], "o", color=c, markersize=8)
    f0, f1 = example["features"]
    ax.set(
        title=f"imagined futures (thin, {samples.shape[0]} samples) vs real (thick), {samples.shape[1]} steps",
        xlabel=f"obs[{f0}]",
        ylabel=f"obs[{f1}]",
    )
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    path = str(out / "imagined_trajectory.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _nan_to_none(x):
    """NaN (a metric with nothing to count) becomes null: valid JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_nan_to_none(v) for v in x]
    return x


def _json_default(x):
    if isinstance(x, np.generic | torch.Tensor):
        return x.item() if x.ndim == 0 else x.tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")
