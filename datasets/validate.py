"""Checks of typed records against a dataset spec, vectorized with polars.

Two levels: :func:`check_rows` looks at each row alone (sizes, ranges, NaN/inf, known
agent); :func:`check_episodes` looks at whole episodes once every file of an ingest has
been read (duplicates, contiguous steps, episodes already in the dataset), because an
episode may be spread over several files and its rows may come in any order.
"""

from __future__ import annotations

import polars as pl

from foresight.datasets.schema import MAX_CHARS, REQUIRED_COLUMNS, DatasetSpec

INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite float32: a reward beyond it would be stored as inf."""


def _finite_list(col: str) -> pl.Expr:
    # The sum of a list is finite exactly when every element is (NaN and inf propagate);
    # one pass per row instead of a per-element expression.
    return pl.col(col).list.eval(pl.element().cast(pl.Float64)).list.sum().is_finite()


def row_reasons(spec: DatasetSpec) -> pl.Expr:
    """One expression: the first problem of each row, or null for a valid row."""
    agents = ", ".join(sorted(spec.agents))
    obs_size = pl.col("agent_id").replace_strict(spec.agents, default=None, return_dtype=pl.Int64)
    missing = pl.concat_str(
        [pl.when(pl.col(c).is_null()).then(pl.lit(c)) for c in REQUIRED_COLUMNS],
        separator=", ",
        ignore_nulls=True,
    )
    checks: list[tuple[pl.Expr, pl.Expr]] = [
        (missing != "", pl.format("missing field(s): {}", missing)),
        (pl.col("step") < 0, pl.format("step {} is negative", pl.col("step"))),
        (pl.col("step") > INT32_MAX, pl.format("step {} is too large", pl.col("step"))),
        (pl.col("episode_id") == "", pl.lit("empty episode_id")),
        *(
            (
                pl.col(name).str.len_chars() > limit,
                pl.format(
                    "{} has {} characters, more than the limit of {}",
                    pl.lit(name),
                    pl.col(name).str.len_chars(),
                    pl.lit(limit),
                ),
            )
            for name, limit in MAX_CHARS.items()
        ),
        (
            obs_size.is_null(),
            pl.format(
                "unknown agent_id '{}' (dataset agents: {})", pl.col("agent_id"), pl.lit(agents)
            ),
        ),
        (
            pl.col("obs").list.len() != obs_size,
            pl.format(
                "obs has {} values but agent '{}' has observation size {}",
                pl.col("obs").list.len(),
                pl.col("agent_id"),
                obs_size,
            ),
        ),
        (~_finite_list("obs"), pl.lit("obs contains NaN or inf")),
        (~pl.col("reward").is_finite(), pl.lit("reward is NaN or inf")),
        (
            pl.col("reward").abs() > FLOAT32_MAX,
            pl.format("reward {} does not fit float32", pl.col("reward")),
        ),
    ]
    action = spec.action
    if action.discrete:
        checks.append(
            (
                (pl.col("action") < 0) | (pl.col("action") >= action.n),
                pl.format(
                    "action {} outside the action spec discrete({})",
                    pl.col("action"),
                    pl.lit(action.n),
                ),
            )
        )
        checks.append(
            (
                pl.col("action_mask").is_not_null()
                & (pl.col("action_mask").list.len() != action.n),
                pl.format(
                    "action_mask has {} entries, expected {}",
                    pl.col("action_mask").list.len(),
                    pl.lit(action.n),
                ),
            )
        )
    else:
        checks.append(
            (
                pl.col("action").list.len() != action.dim,
                pl.format(
                    "action has {} values, the action spec has {}",
                    pl.col("action").list.len(),
                    pl.lit(action.dim),
                ),
            )
        )
        checks.append((~_finite_list("action"), pl.lit("action contains NaN or inf")))
        if action.low is not None:
            checks.append(
                (
                    pl.col("action").list.min() < action.low,
                    pl.format("action below the spec's low bound {}", pl.lit(action.low)),
                )
            )
        if action.high is not None:
            checks.append(
                (
                    pl.col("action").list.max() > action.high,
                    pl.format("action above the spec's high bound {}", pl.lit(action.high)),
                )
            )
    state_present = pl.col("state").is_not_null()
    if spec.state_dim is None:
        checks.append((state_present, pl.lit("state given but the dataset spec has no state")))
    else:
        checks.append(
            (
                state_present & (pl.col("state").list.len() != spec.state_dim),
                pl.format(
                    "state has {} values, expected {}",
                    pl.col("state").list.len(),
                    pl.lit(spec.state_dim),
                ),
            )
        )
        checks.append((state_present & ~_finite_list("state"), pl.lit("state contains NaN or inf")))
    checks.append(
        (
            pl.col("timestamp").is_not_null() & ~pl.col("timestamp").is_finite(),
            pl.lit("timestamp is NaN or inf"),
        )
    )
    expr = pl.when(checks[0][0]).then(checks[0][1])
    for cond, message in checks[1:]:
        expr = expr.when(cond).then(message)
    return expr.otherwise(pl.lit(None, dtype=pl.String)).alias("reason")


def check_rows(rows: pl.DataFrame, spec: DatasetSpec) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split typed rows into (valid, rejected-with-``reason``)."""
    reasons = rows.select(row_reasons(spec)).to_series()
    bad = reasons.is_not_null()
    if not bad.any():
        return rows, rows.clear().with_columns(pl.lit(None, dtype=pl.String).alias("reason"))
    return rows.filter(~bad), rows.filter(bad).with_columns(reasons.filter(bad))


def check_episodes(keys: pl.DataFrame, existing_episodes: pl.Series | None) -> pl.DataFrame:
    """Episode-level problems of the rows of one ingest.

    ``keys`` has ``episode_id, step, agent_id, _ord`` (``_ord``: the row's position in the
    ingest, so "first" is well defined) and ``_tainted``: the episode lost a row to a row
    level check. Returns ``_ord, reason`` for every row to quarantine: whole episodes that
    are already in the dataset, are tainted, or whose steps are not contiguous from 0; and
    every repeat of an (episode_id, step, agent_id) after its first occurrence.
    """
    # A (step, agent) pair as one integer, so counting distinct pairs per episode is cheap.
    pair = pl.col("step") * (1 << 24) + pl.col("agent_id").cast(pl.Categorical).to_physical().cast(
        pl.Int64
    )
    per_episode = keys.group_by("episode_id").agg(
        pl.len().alias("n_rows"),
        pair.n_unique().alias("n_pairs"),
        pl.col("step").n_unique().alias("n_steps"),
        pl.col("step").max().alias("max_step"),
        pl.col("_tainted").any().alias("tainted"),
    )
    with_repeats = per_episode.filter(pl.col("n_rows") != pl.col("n_pairs"))["episode_id"]
    if len(with_repeats):
        ranked = keys.filter(pl.col("episode_id").is_in(with_repeats.implode())).with_columns(
            pl.col("_ord").rank("ordinal").over("episode_id", "step", "agent_id").alias("_rank")
        )
        repeats = ranked.filter(pl.col("_rank") > 1)
        duplicates = repeats.select(
            "_ord",
            pl.format(
                "duplicate row for episode '{}' step {} agent '{}'",
                pl.col("episode_id"),
                pl.col("step"),
                pl.col("agent_id"),
            ).alias("reason"),
        )
        firsts = keys.join(repeats.select("_ord"), on="_ord", how="anti")
    else:
        duplicates = pl.DataFrame(schema={"_ord": pl.Int64, "reason": pl.String})
        firsts = keys
    in_dataset = (
        pl.col("episode_id").is_in(existing_episodes.implode())
        if existing_episodes is not None and len(existing_episodes)
        else pl.lit(False)
    )
    bad_episodes = per_episode.select(
        "episode_id",
        pl.when(in_dataset)
        .then(pl.format("episode '{}' is already in the dataset", pl.col("episode_id")))
        .when(pl.col("tainted"))
        .then(
            pl.format(
                "episode '{}' has other rows that were quarantined; an episode is kept whole or not at all",
                pl.col("episode_id"),
            )
        )
        .when(pl.col("n_steps") != pl.col("max_step") + 1)
        .then(
            pl.format(
                "episode '{}' steps are not contiguous from 0 ({} distinct steps, last step {})",
                pl.col("episode_id"),
                pl.col("n_steps"),
                pl.col("max_step"),
            )
        )
        .otherwise(None)
        .alias("reason"),
    ).filter(pl.col("reason").is_not_null())
    episode_rows = firsts.join(bad_episodes, on="episode_id", how="inner").select("_ord", "reason")
    return pl.concat([duplicates, episode_rows])
