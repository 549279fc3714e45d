"""Frozen TorchScript graphs of the models' inference steps, for rollouts.

    world = TracedWorld(world)     # world.predict(w), the network run from a graph
    step = BehaviorStep(behavior)  # BehaviorStepper(behavior, w, step=step)

A rollout step is a few hundred small ops on a few hundred rows. Run one by one from
Python, each costs more in dispatch than in arithmetic: a default-size world step on 4
rows takes ~1.9 ms eager and ~1.0 ms traced (one CPU thread). A traced graph runs the same
ops without the Python between them, so its outputs equal the eager model's bit for bit.

The graphs are traced and frozen (weights as constants) on first use, ~0.2 s each, one per
signature: which arguments are given, their dtypes and ranks, the shape of the first past
its batch dimension, the device. The batch size stays free: shapes are traced as values.
A model is traced as it is when first used; later changes to its weights are not seen.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

import torch

from foresight.training.data import Window
from foresight.training.models.behavior_model import BehaviorState


class Graphs:
    """``fn(model, *tensors)`` (a tuple of tensors, some None; arguments may be None too)
    run from frozen TorchScript graphs of it, one per signature (module docstring)."""

    def __init__(self, model: torch.nn.Module, fn: Callable[..., tuple]):
        self.model, self.fn = model, fn
        self._graphs: dict[tuple, tuple[torch.jit.ScriptModule, tuple[bool, ...]]] = {}
        self._tracing = threading.Lock()  # one trace at a time (threads of one service)

    def __len__(self) -> int:
        return len(self._graphs)

    def __call__(self, *args: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        given = [a for a in args if a is not None]
        key = tuple(None if a is None else (a.dtype, a.ndim) for a in args)
        key += (tuple(given[0].shape[1:]), given[0].device)
        if key not in self._graphs:
            with self._tracing:
                if key not in self._graphs:
                    self._graphs[key] = self._trace(args, given)
        graph, absent = self._graphs[key]
        outs = iter(graph(*given))
        return tuple(None if gone else next(outs) for gone in absent)

    def _trace(self, args, given):
        flat = _Flat(self.model, self.fn, [a is not None for a in args])
        with warnings.catch_warnings():  # shapes are traced as values, not baked in
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(flat.eval(), tuple(given), check_trace=False)
        return torch.jit.freeze(traced), flat.absent


class _Flat(torch.nn.Module):
    """``fn`` of the given arguments only, returning its outputs that are not None (which
    ones are is recorded in ``absent`` while tracing): what a trace can take."""

    def __init__(self, model: torch.nn.Module, fn: Callable[..., tuple], given: list[bool]):
        super().__init__()
        self.model, self.fn, self.given = model, fn, given
        self.absent: tuple[bool, ...] = ()

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        it = iter(tensors)
        outs = self.fn(self.model, *[next(it) if g else None for g in self.given])
        self.absent = tuple(o is None for o in outs)
        return tuple(o for o in outs if o is not None)


class TracedWorld:
    """A world model whose network runs from graphs: ``predict`` and ``context`` as the
    model's (its checks included), the same outputs."""

    def __init__(self, world: torch.nn.Module):
        self.world = world.eval()
        self.context = world.context
        self.config = world.config
        self.graphs = Graphs(world, lambda m, *a: m.network(*a))

    def predict(self, w: Window):
        return self.world.predict(w, forward=self._forward)

    def _forward(self, w: Window):
        self.world.check_window(w)
        return self.graphs(w.obs, w.feat_mask, w.present, w.action, w.state, w.state_valid)


class BehaviorStep:
    """A behavior model's incremental step from graphs, for
    :class:`~.rollout.BehaviorStepper`: ``step(w, state)`` is ``(out (B, N, out), state)``
    as ``model.scan(model.step_features(w), w, state, last_only=True)`` gives them."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        self.graphs = Graphs(model, _behavior_step)

    def __call__(self, w: Window, state: BehaviorState | None = None):
        s = state or BehaviorState(None)
        out, *carried = self.graphs(
            w.obs, w.feat_mask, w.present, w.prev_action, w.prev_valid,
            s.h, s.evidence, s.last_logp, s.last_present,
        )  # fmt: skip
        return out, BehaviorState(*carried)


def _behavior_step(model, obs, feat_mask, present, prev_action, prev_valid, *state):
    # A behavior model reads these parts of a window; the others are placeholders.
    w = Window(
        obs=obs,
        feat_mask=feat_mask,
        present=present,
        time_valid=present[..., 0],
        action=torch.zeros_like(prev_action),
        prev_action=prev_action,
        prev_valid=prev_valid,
        prev_reward=torch.zeros_like(present, dtype=obs.dtype),
    )
    carried = None if state[-1] is None else BehaviorState(*state)
    out, new = model.scan(model.step_features(w), w, carried, last_only=True)
    return out[:, -1], new.h, new.evidence, new.last_logp, new.last_present
