"""Training loop for the models of every family (training.families): one loop.

    result = train("world", frame, spec, TrainConfig(epochs=20), workdir="runs/world")

The dataset is turned into tensors once, on the training device; a batch is a set of
flat step indices, gathered into windows on the device. The loop is seeded and
deterministic on CPU, checkpoints every epoch (model, optimizer, RNG state, history) to
``workdir/checkpoint.pt`` so ``resume=True`` continues after a crash, appends one JSON
line of metrics per epoch to ``workdir/metrics.jsonl`` and stops early when the
validation loss stops improving. The returned model holds the best epoch's weights.

Distributed: started under ``torchrun`` (or ``foresight train --nproc N``), ``train`` runs
DistributedDataParallel, NCCL on GPUs and gloo on the CPU. Every rank holds the whole
dataset and draws the same shuffled order; each global batch of ``batch_size`` rows is dealt
out across the ranks, so every training window is used exactly once per epoch across them
and the optimizer sees the same global batch size as a single process. Validation is
sharded and summed across ranks; only rank 0 writes the checkpoint and the metrics.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import polars as pl
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from foresight.datasets.schema import DatasetSpec
from foresight.training.data import (
    TrajectoryTensors,
    build_tensors,
    check_model_spec,
    compute_normalizer,
    gather_targets,
    gather_window,
    sample_rows,
    split_episodes,
    targets_for,
)
from foresight.training.device import select_device  # (also imported from here)
from foresight.training.families import ModelFamily, family
from foresight.training.loop.config import TrainConfig  # (also imported from here)

CRASH_ENV = "FORESIGHT_TRAIN_CRASH_AFTER_EPOCH"
"""Test hook: when set to k, the process exits abruptly right after epoch k is saved."""
TRACE_ENV = "FORESIGHT_TRAIN_TRACE"
"""Test hook: a folder; each rank appends, per epoch, the (episode, step) of every window it
trained on and a digest of its weights to ``trace-rank<r>.jsonl``."""
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


@dataclass
class TrainResult:
    model: nn.Module
    """The trained model with the best epoch's weights, in eval mode."""
    model_config: Any
    """Its resolved config, the family's config dataclass with the training spec:
    build_model(kind, asdict(config))."""
    train_config: TrainConfig
    history: list[dict[str, float]]
    """One metrics dict per epoch, as written to metrics.jsonl."""
    best_epoch: int
    """1-based epoch whose weights were kept."""
    metrics_path: str
    val_episode_ids: list[str]
    """Held-out episodes (never trained on): evaluate on these."""
    train_episode_ids: list[str] = field(default_factory=list)
    """Training episodes (fit baselines on these)."""
    calib_episode_ids: list[str] = field(default_factory=list)
    """Validation episodes the world model's stds were calibrated on (empty: none)."""

    @property
    def heldout_episode_ids(self) -> list[str]:
        """Episodes nothing was fitted on (validation minus calibration): evaluate on these."""
        calib = set(self.calib_episode_ids)
        return [e for e in self.val_episode_ids if e not in calib]


@dataclass(frozen=True)
class Ranks:
    """This process's place in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def ranks() -> Ranks:
    """The current process group's rank and size (rank 0 of 1 outside one)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def init_distributed(device: str = "auto") -> Ranks:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1):
    NCCL when training on CUDA, gloo on the CPU. Outside torchrun: rank 0 of 1, nothing
    to join."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return ranks()
    target = select_device(device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return ranks()


def _batch_bounds(n: int, batch_size: int, world: int) -> list[int]:
    """Where one epoch's ``n`` shuffled rows are cut into global batches (len = steps + 1).
    A last batch too small to give each of the ``world`` ranks a row joins the one before."""
    if batch_size < world:
        raise ValueError(f"batch size {batch_size} is smaller than the {world} ranks")
    if n < world:
        raise ValueError(f"{n} training windows cannot be split across {world} processes")
    steps = math.ceil(n / batch_size)
    if steps > 1 and n - (steps - 1) * batch_size < world:
        steps -= 1
    return [i * batch_size for i in range(steps)] + [n]


def rank_batches(
    order: torch.Tensor, batch_size: int, rank: int = 0, world: int = 1
) -> list[torch.Tensor]:
    """This rank's share of one epoch: ``order`` cut into global batches of ``batch_size``
    rows, each dealt out round-robin across the ``world`` ranks.

    Every row lands in exactly one rank's batch and every rank runs the same number of
    steps (DDP needs that). With one rank this is plain slicing.
    """
    b = _batch_bounds(order.numel(), batch_size, world)
    return [order[b[i] : b[i + 1]][rank::world] for i in range(len(b) - 1)]


class _LossModule(nn.Module):
    """The model's loss as a forward pass, so DistributedDataParallel can wrap it (DDP
    synchronizes the gradients of what runs through its ``forward``)."""

    def __init__(self, model: nn.Module, chunked: bool):
        super().__init__()
        self.model, self.chunked = model, chunked

    def forward(self, window, targets):
        if self.chunked:
            return self.model.loss(window, targets, all_steps=True)
        return self.model.loss(window, targets)


def _all_reduce_sums(values: dict[str, float], device: torch.device, world: int) -> dict:
    """Sum a dict of floats over the ranks (same keys on every rank)."""
    if world == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))


def _trace(data: TrajectoryTensors, rank: int, epoch: int, rows: list, model) -> None:
    folder = os.environ.get(TRACE_ENV)
    if not folder:
        return
    t = torch.cat(rows).cpu() if rows else torch.empty(0, dtype=torch.long)
    episodes = data.episode[t.to(data.episode.device)].cpu().tolist()
    steps = (t - data.ep_start[t.to(data.ep_start.device)].cpu()).tolist()
    digest = hashlib.sha256()
    for v in model.state_dict().values():
        digest.update(v.detach().float().cpu().numpy().tobytes())
    line = {
        "epoch": epoch,
        "rank": rank,
        "windows": [[data.episode_ids[e], s] for e, s in zip(episodes, steps, strict=True)],
        "weights": digest.hexdigest(),
    }
    with (Path(folder) / f"trace-rank{rank}.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")


def build_model(kind: str, model_config: dict[str, Any]) -> nn.Module:
    """Rebuild the architecture saved in ``model_config`` (weights still to be loaded)."""
    return family(kind).build(model_config)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights and normalization buffers as contiguous CPU tensors (safetensors-ready)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def load_model(
    kind: str, model_config: dict[str, Any], state: dict[str, torch.Tensor]
) -> nn.Module:
    """build_model + load the weights, in eval mode."""
    model = build_model(kind, model_config)
    model.load_state_dict(state)
    return model.eval()


def check_compatible(model: nn.Module, spec: DatasetSpec) -> None:
    """ValueError naming both specs when ``model`` cannot run on data of ``spec``."""
    check_model_spec(type(model).__name__, model.config.spec, spec)


def _resolve_model_config(fam: ModelFamily, model_config, spec: DatasetSpec, config: TrainConfig):
    config_cls = fam.config_cls
    if model_config is None:
        mc = config_cls()
    elif isinstance(model_config, dict):
        mc = config_cls(**model_config)
    else:
        if not isinstance(model_config, config_cls):
            raise TypeError(
                f"{fam.name} model needs a {config_cls.__name__}, got {type(model_config).__name__}"
            )
        mc = copy.deepcopy(model_config)
    mc.spec = spec.to_dict()
    if config.context is not None:
        mc.context = config.context
    if mc.context < 1:
        raise ValueError(f"context must be >= 1, got {mc.context}")
    return mc


def _init_config(fam: ModelFamily, init: nn.Module, model_config, spec: DatasetSpec, config):
    """The config of a model started from ``init``: its own (its spec sized its layers; the
    card records this dataset's), with ``config.context`` where one is given."""
    if not isinstance(init, fam.model_cls):
        raise TypeError(f"a {fam.name} model starts from a {fam.name} model, got {type(init)}")
    if model_config is not None:
        raise ValueError(
            "init_from takes the architecture of the model it starts from: pass no model config"
        )
    check_model_spec(f"{fam.name} model to start from", init.config.spec, spec)
    mc = copy.deepcopy(init.config)
    if hasattr(fam.model_cls, "upgraded"):  # an older layout trains on in the latest one
        mc = fam.model_cls.upgraded(mc)
    if config.context is not None:
        mc.context = config.context
    return mc


def _load_initial(model: nn.Module, init: nn.Module) -> None:
    """``init``'s weights into ``model``; only weights new in the latest layout
    (the model's ``fresh_when_upgraded``) may be missing, and they stay fresh."""
    new = getattr(model, "fresh_when_upgraded", ())
    missing, unexpected = model.load_state_dict(init.state_dict(), strict=False)
    wrong = [k for k in missing if not k.startswith(new)] + list(unexpected)
    if wrong:
        raise RuntimeError(f"weights that do not fit: {wrong[:5]}")


def _use_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return sys.stderr.isatty() and not os.environ.get("CI")


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    data: TrajectoryTensors,
    rows: torch.Tensor,
    batch_size: int = 4096,
    autocast: bool = False,
) -> dict[str, float]:
    """Mean loss and loss parts of ``model`` over the windows ending at ``rows``."""
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    n = 0
    for i in range(0, rows.numel(), batch_size):
        t = rows[i : i + batch_size]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss, parts = model.loss(
                gather_window(data, t, model.context), targets_for(model, data, t)
            )
        for k, v in {"loss": loss, **parts}.items():
            totals[k] = totals.get(k, 0.0) + v.item() * t.numel()
        n += t.numel()
    model.train(was_training)
    return {k: v / max(n, 1) for k, v in totals.items()}


def _validation_loss(model, data, rows, batch_size, autocast, rk: Ranks, device) -> dict:
    """evaluate_loss over ``rows``, sharded across the ranks and summed back together."""
    if rk.world == 1 or rows.numel() < rk.world:
        return evaluate_loss(model, data, rows, batch_size, autocast)
    shard = rows[rk.rank :: rk.world]
    part = evaluate_loss(model, data, shard, batch_size, autocast)
    sums = _all_reduce_sums(
        {"n": float(shard.numel()), **{k: v * shard.numel() for k, v in part.items()}},
        device,
        rk.world,
    )
    n = sums.pop("n")
    return {k: v / n for k, v in sums.items()}


def _lr_at(step: int, total: int, config: TrainConfig) -> float:
    warmup = max(1, min(100, total // 10))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _epoch_rows(
    fam: ModelFamily, data: TrajectoryTensors, rows: torch.Tensor, context: int, epoch: int
):
    """Window ends trained on in one epoch: every step, or, for a family that learns from
    every step of a window (``trains_on_chunks``), windows tiling each episode in chunks of
    ``context`` steps (their phase shifts each epoch), so every step is a label about once
    per epoch."""
    if not fam.trains_on_chunks or context == 1:
        return rows
    pos = rows - data.ep_start[rows]  # (M,) step within the episode
    return rows[(pos % context == epoch % context) | (rows == data.ep_end[rows])]


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint intact


def split_rows(data, config, ckpt: dict | None, unit: str) -> tuple[list, list, Any, Any]:
    """Train and validation episode ids (a resumed checkpoint's own split, else a fresh one
    seeded by ``config.seed``) and the sample rows of each; refused when training has none."""
    if ckpt is not None:
        train_ids, val_ids = ckpt["train_episode_ids"], ckpt["val_episode_ids"]
    else:
        train_ids, val_ids = split_episodes(data.episode_ids, config.val_fraction, config.seed)
    train_rows, val_rows = sample_rows(data, train_ids), sample_rows(data, val_ids)
    if train_rows.numel() == 0:
        raise ValueError(f"no training {unit}: every training episode has no agent rows")
    return train_ids, val_ids, train_rows, val_rows


def train(
    kind: str,
    frame: pl.DataFrame | pl.LazyFrame,
    spec: DatasetSpec,
    config: TrainConfig | None = None,
    model_config: Any = None,
    workdir: str | os.PathLike = "runs/train",
    resume: bool = False,
    progress: bool | None = None,
    init: nn.Module | None = None,
) -> TrainResult:
    """Train a model of family ``kind`` on ``frame`` (contract format); return the best.

    ``model_config``: the family's config dataclass, a dict of its fields, or None (its
    defaults). ``init``: a model of this family to start from (its config, weights and
    normalizer; ``model_config`` and ``config.context`` must then be None), for
    ``TrainConfig.init_from``.

    ``resume=True`` continues from ``workdir/checkpoint.pt`` when it exists (its model
    config and data split win over the arguments); otherwise training starts fresh.
    """
    config = config or TrainConfig()
    if config.init_from and init is None:
        raise ValueError(
            f"init_from={config.init_from!r}: pass the model to start from as init "
            "(train_and_register loads it from the registry)"
        )
    fam = family(kind)
    rk = ranks()
    device = select_device(config.device)
    autocast = device.type == "cuda"
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path, metrics_path = workdir / CHECKPOINT, workdir / METRICS
    ckpt = None
    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["kind"] != kind:
            raise ValueError(f"checkpoint in {workdir} is a {ckpt['kind']} model")

    data = build_tensors(frame, spec, device=device)
    train_ids, val_ids, train_rows, val_rows = split_rows(data, config, ckpt, "windows")

    torch.manual_seed(config.seed)
    if ckpt is not None:
        model_config = fam.config_cls(**ckpt["model_config"])
        check_model_spec(f"checkpointed {kind} model", model_config.spec, spec)
    elif init is not None:
        model_config = _init_config(fam, init, model_config, spec, config)
    else:
        model_config = _resolve_model_config(fam, model_config, spec, config)
    model = fam.model_cls(model_config).to(device)
    if init is not None and ckpt is None:  # its normalizer too: the weights expect it
        try:
            _load_initial(model, init)
        except RuntimeError as exc:
            raise ValueError(
                f"cannot start from that {kind} model with context {model_config.context}: "
                f"its weights have another shape ({str(exc).splitlines()[0]})"
            ) from exc
    else:
        model.set_normalizer(compute_normalizer(data, train_rows))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )

    chunked = fam.trains_on_chunks and model.context > 1
    batch_size = max(1, config.batch_size // model.context) if chunked else config.batch_size
    batch_size = max(batch_size, rk.world)  # every rank gets at least one window a step
    step_loss: nn.Module = _LossModule(model, chunked)
    if rk.world > 1:
        # Same seed, same initial weights on every rank (DDP also broadcasts rank 0's); the
        # normalizer comes from the same rows everywhere, so buffers need no per-step sync.
        step_loss = nn.parallel.DistributedDataParallel(
            step_loss,
            device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False,
        )

    def epoch_steps(epoch_rows: torch.Tensor) -> int:
        n = len(_batch_bounds(epoch_rows.numel(), batch_size, rk.world)) - 1
        return min(n, config.max_steps_per_epoch) if config.max_steps_per_epoch else n

    total_steps = epoch_steps(_epoch_rows(fam, data, train_rows, model.context, 0)) * config.epochs
    history: list[dict[str, float]] = []
    start_epoch, step = 0, 0
    best_val, best_epoch, best_state = math.inf, 0, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if ckpt["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        start_epoch, step, history = ckpt["epoch"], ckpt["step"], ckpt["history"]
        best_val, best_epoch, best_state = ckpt["best_val"], ckpt["best_epoch"], ckpt["best_model"]
    # metrics.jsonl always mirrors the checkpoint's history (no duplicate lines on resume).
    if rk.main:
        metrics_path.write_text("".join(json.dumps(h) + "\n" for h in history))

    bar = tqdm(
        total=total_steps,
        leave=False,
        initial=step,
        disable=not rk.main or not _use_progress(progress),
        desc=f"train {kind}",
        unit="step",
    )
    stopped = best_epoch > 0 and start_epoch - best_epoch >= config.patience
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for epoch in range(start_epoch, 0 if stopped else config.epochs):
        model.train()
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        rows = _epoch_rows(fam, data, train_rows, model.context, epoch)
        order = rows[torch.randperm(rows.numel(), generator=gen).to(device)]
        batches = rank_batches(order, batch_size, rk.rank, rk.world)
        steps_per_epoch = epoch_steps(rows)
        bounds = _batch_bounds(rows.numel(), batch_size, rk.world)
        sums: dict[str, float] = {}
        data_time, samples = 0.0, 0
        t_epoch = time.perf_counter()
        for i in range(steps_per_epoch):
            t0 = time.perf_counter()
            t = batches[i]
            window, tg = gather_window(data, t, model.context), targets_for(model, data, t)
            sync()
            data_time += time.perf_counter() - t0
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, config)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                loss, parts = step_loss(window, tg)
            optimizer.zero_grad(set_to_none=True)
            if rk.world > 1:
                # DDP averages the ranks' gradients; weight each rank's mean by its share of
                # the global batch so the step follows the global batch's mean loss.
                (loss * (t.numel() * rk.world / (bounds[i + 1] - bounds[i]))).backward()
            else:
                loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            for k, v in {"loss": loss, **parts}.items():
                sums[k] = sums.get(k, 0.0) + v.item()
            samples += int(window.time_valid.sum()) if chunked else t.numel()  # labels
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        train_time = time.perf_counter() - t_epoch
        _trace(data, rk.rank, epoch + 1, batches[:steps_per_epoch], model)
        if rk.world > 1:  # one collective: the ranks' loss sums (averaged) and label counts
            total = _all_reduce_sums({**sums, "/samples": samples}, device, rk.world)
            samples = int(total.pop("/samples"))
            sums = {k: v / rk.world for k, v in total.items()}
        record: dict[str, float] = {"epoch": epoch + 1, "step": step}
        record.update({f"train/{k}": v / steps_per_epoch for k, v in sums.items()})
        val = (
            _validation_loss(model, data, val_rows, config.eval_batch_size, autocast, rk, device)
            if val_rows.numel()
            else {}
        )
        record.update({f"val/{k}": v for k, v in val.items()})
        record["lr"] = optimizer.param_groups[0]["lr"]
        record["time/epoch_s"] = time.perf_counter() - t_epoch
        record["perf/train_samples_per_s"] = samples / train_time
        record["perf/data_fraction"] = data_time / train_time
        history.append(record)

        score = record.get("val/loss", record["train/loss"])
        if score < best_val - config.min_delta:
            best_val, best_epoch = score, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if rk.main:
            _save_checkpoint(
                ckpt_path,
                {
                    "kind": kind,
                    "model_config": asdict(model_config),
                    "train_config": asdict(config),
                    "model": model.state_dict(),
                    "best_model": best_state,
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "step": step,
                    "history": history,
                    "best_val": best_val,
                    "best_epoch": best_epoch,
                    "train_episode_ids": train_ids,
                    "val_episode_ids": val_ids,
                    "rng": {
                        "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all()
                        if torch.cuda.is_available()
                        else None,
                    },
                },
            )
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if os.environ.get(CRASH_ENV) == str(epoch + 1):
            os._exit(17)  # simulate a crash after this epoch's checkpoint
        if epoch + 1 - best_epoch >= config.patience:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    calib_ids: list[str] = []
    if fam.calibrates and config.calibrate and len(val_ids) >= 2:
        calib_ids = sorted(val_ids)[::2]
        calib_rows = sample_rows(data, calib_ids)[: config.eval_batch_size * 8]
        model.calibrate(
            (gather_window(data, t, model.context), gather_targets(data, t))
            for t in calib_rows.split(config.eval_batch_size)
        )
    model.eval()
    return TrainResult(
        model=model,
        model_config=model_config,
        train_config=config,
        history=history,
        best_epoch=best_epoch,
        metrics_path=str(metrics_path),
        val_episode_ids=list(val_ids),
        train_episode_ids=list(train_ids),
        calib_episode_ids=calib_ids,
    )


def config_dict(config: Any) -> dict[str, Any]:
    """asdict for a config dataclass (helper for model cards)."""
    if not is_dataclass(config):
        raise TypeError(f"expected a dataclass config, got {type(config).__name__}")
    return asdict(config)
