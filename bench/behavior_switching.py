"""Behavior models against partners that change: NLL after a switch next to the Bayes answer.

    python bench/behavior_switching.py --out runs/switching [--episodes 1200] [--eval 200]
        [--hazard 0.1] [--epochs 50] [--only NAME]

Generates simple_spread logs (``switching`` policy with ``--hazard``, and ``mixed``), trains
behavior models with the default config on them (``TrainConfig`` defaults but ``--epochs``):

- ``mixed``: trained on mixed-policy logs, where a style lasts the whole episode (a model
  that has never seen a switch);
- ``switching``: the same on switching logs;
- ``switching-context5``: on switching logs with a 5-step history window (a window that
  forgets what came before a switch).

and scores them on ``--eval`` held-out switching episodes (another seed) next to three
references computed from the scripts, as ``bench/behavior_bayes.py`` does:

- ``bayes_hazard``: Bayes filter over (rule, epsilon) with a change-point prior that knows
  the hazard (before each later step, the style is redrawn from the prior with probability
  ``hazard``): the best any history model can do on these logs;
- ``bayes_static``: the same filter assuming one style per episode (hazard 0);
- ``oracle``: the true current rule and epsilon.

Reported: NLL over all actions, over the 5 actions from each switch on (the switch step
and the 4 after it), and per step relative to a switch (for the plot). ``--only NAME``
trains that one model and exits (run several at once); a model already trained for
``--epochs`` under ``OUT/NAME`` is loaded, one trained for fewer goes on from its checkpoint. Output: ``OUT/behavior-switching.json``
and ``OUT/behavior-switching.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.end_to_end import load_dataset
from foresight.datasets.sources.generate import generate_episodes
from foresight.datasets.sources.policies import SpreadController, parse_policy_id
from foresight.training.data import build_tensors, gather_targets, gather_window
from foresight.training.loop.train import TrainConfig, train
from foresight.training.models.behavior_model import BehaviorModelConfig

MODELS = {
    "mixed": ("mixed", {}),
    "switching": ("switching", {}),
    "switching-context5": ("switching", {"context": 5}),
}
AFTER = 5  # the switch step and the 4 after it
OFFSETS = range(-3, 10)  # steps relative to a switch, for the plot


def bayes_nll(frame: pl.DataFrame, hazard: float) -> dict[tuple[str, str, int], dict[str, float]]:
    """(episode, agent, step) -> NLL of the logged action under each reference."""
    controller = SpreadController()
    controller.reset(sorted(frame["agent_id"].unique().to_list()))
    rules = ["nearest", "unclaimed", "farthest", "fixed0", "fixed1", "fixed2"]
    eps = np.round(np.arange(0, 0.601, 0.01), 2)  # MixedPolicy rounds epsilon to 0.01
    prior = np.array([0.25, 0.25, 0.25, 1 / 12, 1 / 12, 1 / 12])[:, None] / len(eps)
    prior = prior * np.ones(len(eps))  # (rules, eps), sums to 1
    out: dict[tuple[str, str, int], dict[str, float]] = {}
    for (ep, agent), g in frame.group_by(["episode_id", "agent_id"], maintain_order=True):
        obs, act = np.array(g["obs"].to_list()), g["action"].to_numpy()
        steps, pids = g["step"].to_list(), g["policy_id"].to_list()
        post = {"bayes_hazard": prior.copy(), "bayes_static": prior.copy()}
        hz = {"bayes_hazard": hazard, "bayes_static": 0.0}
        for t in range(len(act)):
            greedy = np.array([controller.action(agent, obs[t], r) for r in rules])
            lik = (1 - eps)[None] * (greedy == act[t])[:, None] + eps[None] / 5  # (R, E)
            row = {}
            for name, p in post.items():
                if t > 0:
                    p = (1 - hz[name]) * p + hz[name] * prior  # change-point prior
                joint = p * lik
                z = joint.sum()
                row[name] = -float(np.log(z))
                post[name] = joint / z
            rule, e, _ = parse_policy_id(pids[t])
            hit = greedy[rules.index(rule)] == act[t]
            row["oracle"] = -float(np.log((1 - e) * hit + e / 5))
            out[(ep, agent, steps[t])] = row
    return out


def model_nll(model, frame: pl.DataFrame, spec) -> dict[tuple[str, str, int], float]:
    """(episode, agent, step) -> the model's NLL of the logged action."""
    data = build_tensors(frame, spec)
    model = model.eval()
    out = {}
    rows = torch.arange(data.obs.shape[0])
    with torch.no_grad():
        for t in rows.split(4096):
            tg = gather_targets(data, t)
            lp = model.action_distribution(gather_window(data, t, model.context)).log_prob(
                tg.action
            )
            ep, step = data.episode[t], t - data.ep_start[t]
            for i in range(t.numel()):
                for n, agent in enumerate(data.agent_ids):
                    if tg.valid[i, n]:
                        key = (data.episode_ids[int(ep[i])], agent, int(step[i]))
                        out[key] = -float(lp[i, n])
    return out


def summarize(frame: pl.DataFrame, scores: dict[str, dict]) -> dict:
    """NLL per predictor: over all actions, in the AFTER steps from each switch, by offset."""
    keys = list(zip(frame["episode_id"], frame["agent_id"], frame["step"], strict=True))
    since = {k: parse_policy_id(p)[2] for k, p in zip(keys, frame["policy_id"], strict=True)}
    switches = [(e, a, t) for (e, a, t), s in since.items() if t > 0 and s == t]
    result = {"actions": len(keys), "switches": len(switches), "predictors": {}}
    for name, nll in scores.items():
        after = [
            nll[(e, a, t + k)]
            for e, a, t in switches
            for k in range(AFTER)
            if (e, a, t + k) in nll and since[(e, a, t + k)] == t  # not past the next switch
        ]
        by_offset = defaultdict(list)
        for e, a, t in switches:
            for k in OFFSETS:
                if (e, a, t + k) in nll:
                    by_offset[k].append(nll[(e, a, t + k)])
        result["predictors"][name] = {
            "nll": round(float(np.mean([nll[k] for k in keys])), 4),
            "nll_after_switch": round(float(np.mean(after)), 4),
            "after_switch_actions": len(after),
            "by_offset": {k: round(float(np.mean(v)), 4) for k, v in sorted(by_offset.items())},
        }
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in result["predictors"].items():
        ks = sorted(int(k) for k in r["by_offset"])
        style = "--" if name.startswith(("bayes", "oracle")) else "-"
        ax.plot(ks, [r["by_offset"][k] for k in ks], style, marker="o", ms=3, label=name)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("step relative to a switch (0: first action of the new style)")
    ax.set_ylabel("NLL of the logged action (nats)")
    ax.set_title(f"simple_spread, switching partners, hazard {result['hazard']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/switching")
    parser.add_argument("--episodes", type=int, default=1200, help="training episodes per policy")
    parser.add_argument("--eval", type=int, default=200, help="held-out switching episodes")
    parser.add_argument("--hazard", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--only", choices=sorted(MODELS), default=None)
    args = parser.parse_args()
    out = Path(args.out)
    params = {"switching": {"hazard": args.hazard}, "mixed": {}}
    dirs = {p: out / f"data-{p}" for p in params}
    for policy, folder in dirs.items():  # seed 1 for training, seed 2 held out
        if not (folder / "foresight_spec.json").exists():
            generate_episodes(
                "simple_spread", args.episodes, policy, str(folder), 1, policy_params=params[policy]
            )
    eval_dir = out / "data-eval"
    if not (eval_dir / "foresight_spec.json").exists():
        generate_episodes(
            "simple_spread",
            args.eval,
            "switching",
            str(eval_dir),
            2,
            policy_params=params["switching"],
        )

    models, info = {}, {}
    for name, (policy, overrides) in MODELS.items():
        if args.only not in (None, name):
            continue
        path, done = out / name / "model.pt", out / name / "train.json"
        before = json.loads(done.read_text()) if done.exists() else {}
        if path.exists() and before.get("epochs") == args.epochs:
            models[name] = torch.load(path, weights_only=False)
            continue
        frame, spec = load_dataset(dirs[policy])
        started = time.perf_counter()
        config = replace(BehaviorModelConfig(), **overrides)
        result = train(  # constant learning rate: resuming to more epochs is one longer run
            "behavior",
            frame,
            spec,
            TrainConfig(epochs=args.epochs),
            config,
            out / name,
            resume=True,
        )
        info[name] = {
            "epochs": args.epochs,
            "train_seconds": round(
                before.get("train_seconds", 0) + time.perf_counter() - started, 1
            ),
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
        }
        torch.save(result.model, path)
        (out / name / "train.json").write_text(json.dumps(info[name]))
        models[name] = result.model
    if args.only:
        return

    frame, spec = load_dataset(eval_dir)
    frame = frame.sort(["episode_id", "agent_id", "step"])
    bayes = bayes_nll(frame, args.hazard)
    scores = {k: {key: r[k] for key, r in bayes.items()} for k in next(iter(bayes.values()))}
    for name, model in models.items():
        scores[name] = model_nll(model, frame, spec)
    result = {
        "hazard": args.hazard,
        "train_episodes": args.episodes,
        "eval_episodes": args.eval,
        "epochs": args.epochs,
        "load_average": os.getloadavg(),
        "training": {
            n: json.loads((out / n / "train.json").read_text())
            for n in models
            if (out / n / "train.json").exists()
        },
    } | summarize(frame, scores)
    (out / "behavior-switching.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "behavior-switching.png")
    print(json.dumps({k: v for k, v in result.items() if k != "predictors"}, indent=1))
    for name, r in result["predictors"].items():
        print(f"{name:22s} nll {r['nll']:.4f}  after switch {r['nll_after_switch']:.4f}")


if __name__ == "__main__":
    main()
