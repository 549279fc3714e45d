"""How low can a behavior model's NLL go on mixed-policy simple_spread logs?

The mixed policy gives each agent, per episode, a rule (nearest / unclaimed / farthest
landmark, or fixed landmark k) and an epsilon ~ U(0, 0.6) of acting uniformly at random
(``foresight.datasets.sources.policies.MixedPolicy``). Knowing the scripts, three reference NLLs
(nats per action) follow exactly:

- oracle: the agent's true rule and epsilon are known;
- Bayes with history: the posterior over (rule, epsilon) from the agent's own past
  actions in the episode (what a perfect history model reaches);
- Bayes, no history: the prior over (rule, epsilon) only (a perfect 1-step model would
  do a little better, since velocity and the last action hint at the rule).

    .venv/bin/python bench/behavior_bayes.py DIR/simple_spread-s0-part0007.jsonl
"""

from __future__ import annotations

import sys

import numpy as np
import polars as pl

from foresight.datasets.sources.policies import SpreadController


def main(path: str) -> None:
    frame = pl.read_ndjson(path).sort(["episode_id", "agent_id", "step"])
    controller = SpreadController()
    controller.reset(sorted(frame["agent_id"].unique().to_list()))
    rules = ["nearest", "unclaimed", "farthest", "fixed0", "fixed1", "fixed2"]
    log_prior = np.log([0.25, 0.25, 0.25, 1 / 12, 1 / 12, 1 / 12])[:, None]  # draw_rule
    eps = np.round(np.arange(0, 0.601, 0.01), 2)  # MixedPolicy rounds epsilon to 0.01
    nll = {"oracle": 0.0, "bayes_history": 0.0, "bayes_no_history": 0.0}
    n = 0
    for _, g in frame.group_by(["episode_id", "agent_id"], maintain_order=True):
        obs, act = np.array(g["obs"].to_list()), g["action"].to_numpy()
        agent, policy_id = g["agent_id"][0], g["policy_id"][0]  # greedy-{rule}/eps={e}
        true_rule, true_eps = (
            policy_id.split("/")[0][len("greedy-") :],
            float(policy_id.split("=")[-1]),
        )
        log_post = log_prior + np.zeros(len(eps))  # (rules, eps)
        for t in range(len(act)):
            greedy = np.array([controller.action(agent, obs[t], r) for r in rules])
            lik = (1 - eps)[None] * (greedy == act[t])[:, None] + eps[None] / 5  # (R, E)
            post = np.exp(log_post - log_post.max())
            nll["bayes_history"] -= np.log((post / post.sum() * lik).sum())
            prior = np.exp(log_prior) / len(eps)
            nll["bayes_no_history"] -= np.log((prior * lik).sum())
            hit = greedy[rules.index(true_rule)] == act[t]
            nll["oracle"] -= np.log((1 - true_eps) * hit + true_eps / 5)
            log_post = log_post + np.log(np.maximum(lik, 1e-300))
            n += 1
    print({k: round(float(v) / n, 4) for k, v in nll.items()}, f"({n} actions)")


if __name__ == "__main__":
    main(sys.argv[1])
