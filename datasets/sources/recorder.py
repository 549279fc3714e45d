"""Record episodes of any PettingZoo ``ParallelEnv`` as JSONL logs in the trajectory contract.

Users wrap their own environment and policy::

    with TrajectoryRecorder(env, "landing/my_env", file_prefix="my_env-s0") as recorder:
        for i in range(100):
            recorder.record_episode(policy, seed=i)

Each line is one ``(episode_id, step, agent_id)`` row (see :mod:`foresight.datasets.schema`): what the
agent saw at ``step``, what it did, what it received, and whether it was then terminated or
truncated. Agents that leave the episode stop having rows. Files rotate every
``episodes_per_file`` episodes and become visible only when complete (a hidden temp name then
a rename locally; a finished upload on S3), and a ``foresight_spec.json`` describing the
agents, observation sizes and action spec is written beside them before the first one.
"""

from __future__ import annotations

import gzip as gzip_module
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import orjson
from gymnasium import spaces

from foresight.datasets.schema import SPEC_FILENAME, ActionSpec, DatasetSpec, SpecError
from foresight.datasets.storage import FileSystem, is_s3, join

if TYPE_CHECKING:
    from pettingzoo import ParallelEnv

    from foresight.datasets.sources.policies import Policy

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE


@dataclass
class EpisodeStats:
    """What one recorded episode amounted to."""

    episode_id: str
    steps: int
    """Env steps taken (the last row's ``step`` + 1)."""
    rows: int
    returns: dict[str, float] = field(default_factory=dict)
    """Agent -> sum of its rewards over the episode."""

    @property
    def team_return(self) -> float:
        """Mean over agents of each agent's episode return."""
        return float(np.mean(list(self.returns.values()))) if self.returns else 0.0


def action_spec_of(env: ParallelEnv, agents: list[str]) -> ActionSpec:
    """The one :class:`ActionSpec` shared by ``agents``; a clear error if they differ."""
    specs = {}
    for agent in agents:
        space = env.action_space(agent)
        if isinstance(space, spaces.Discrete):
            if int(space.start) != 0:
                raise ValueError(
                    f"agent {agent!r} has Discrete actions starting at {space.start}; the "
                    "trajectory contract numbers discrete actions from 0"
                )
            specs[agent] = ActionSpec(kind="discrete", n=int(space.n))
        elif isinstance(space, spaces.Box):
            low, high = np.unique(space.low), np.unique(space.high)
            specs[agent] = ActionSpec(
                kind="continuous",
                dim=int(np.prod(space.shape)),
                # one bound for all components, or None (unbounded) when they differ
                low=float(low[0]) if low.size == 1 and np.isfinite(low[0]) else None,
                high=float(high[0]) if high.size == 1 and np.isfinite(high[0]) else None,
            )
        else:
            raise ValueError(
                f"agent {agent!r} has action space {space}; the recorder supports Discrete and Box"
            )
    distinct = set(specs.values())
    if len(distinct) > 1:
        detail = ", ".join(f"{a}: {s.describe()}" for a, s in specs.items())
        raise ValueError(f"all agents of a dataset must share one action spec; got {detail}")
    if not distinct:
        raise ValueError("the env has no agents to record")
    return distinct.pop()


class TrajectoryRecorder:
    """Runs episodes of a ParallelEnv with a policy and writes their rows as JSONL files."""

    def __init__(
        self,
        env: ParallelEnv,
        out: str,
        *,
        env_name: str | None = None,
        file_prefix: str = "episodes",
        episodes_per_file: int = 250,
        record_state: bool = False,
        gzip: bool = False,
        timestamps: bool = True,
        extra: dict[str, Any] | None = None,
        fs: FileSystem | None = None,
    ) -> None:
        """
        Args:
            env: the environment; its ``possible_agents`` and spaces make the dataset spec.
            out: a local folder or ``s3://bucket/prefix`` for the logs and the spec file.
            env_name: name in the spec (default: ``env.metadata["name"]``).
            file_prefix: files are ``{file_prefix}-part{k:04d}.jsonl[.gz]``; also the default
                episode id prefix. Give each run its own prefix so runs do not overwrite.
            episodes_per_file: rotate to a new file after this many episodes.
            record_state: add the ``state`` column from ``env.state()``.
            gzip: write ``.jsonl.gz``.
            timestamps: add a ``timestamp`` column (unix seconds when the action was taken).
            extra: free-form metadata for the spec's ``extra`` (policy, seed, ...).
            fs: file system for ``out`` (default: :class:`FileSystem` from the environment).
        """
        if episodes_per_file < 1:
            raise ValueError(f"episodes_per_file must be >= 1, got {episodes_per_file}")
        self.env = env
        self.out = out.rstrip("/")
        self.env_name = env_name or env.metadata.get("name") or type(env.unwrapped).__name__
        self.file_prefix = file_prefix
        self.episodes_per_file = episodes_per_file
        self.record_state = record_state
        self.gzip = gzip
        self.timestamps = timestamps
        self.extra = dict(extra or {})
        self.fs = fs or FileSystem()

        self.agents: list[str] = list(getattr(env, "possible_agents", None) or [])
        self.action_spec = action_spec_of(env, self.agents) if self.agents else None
        self._obs_spaces: dict[str, spaces.Space] = {}
        self._obs_sizes: dict[str, int] = {}
        for agent in self.agents:
            self._learn_agent(agent)
        self._state_dim: int | None = None

        self.files: list[str] = []
        """URIs of the finished files, in order."""
        self.episodes = 0
        self.rows = 0
        self._part = 0
        self._episodes_in_file = 0
        self._handle: BinaryIO | None = None
        self._raw: BinaryIO | None = None
        self._tmp_path: str | None = None
        self._written_spec: DatasetSpec | None = None
        self._closed = False
        self._staging = tempfile.mkdtemp(prefix="foresight-rec-") if is_s3(self.out) else None
        if self._staging is None:
            Path(self.out).mkdir(parents=True, exist_ok=True)

    # -- public --------------------------------------------------------------------------------
    @property
    def spec_uri(self) -> str:
        return join(self.out, SPEC_FILENAME)

    @property
    def spec(self) -> DatasetSpec:
        """The dataset spec of what has been recorded (agents seen so far included)."""
        if self.action_spec is None:
            raise ValueError("no agents known yet: record an episode first")
        return DatasetSpec(
            env=self.env_name,
            agents=dict(self._obs_sizes),
            action=self.action_spec,
            state_dim=self._state_dim if self.record_state else None,
            extra=self.extra,
        )

    def record_episode(
        self,
        policy: Policy,
        *,
        episode_id: str | None = None,
        seed: int | None = None,
        rng: np.random.Generator | None = None,
        max_steps: int | None = None,
    ) -> EpisodeStats:
        """Run one episode to its end (or ``max_steps``) and append its rows to the log.

        ``seed`` seeds ``env.reset``; ``rng`` drives the policy (default: a Generator from
        ``seed``). The episode's rows are buffered and written only once it is complete.
        """
        if self._closed:
            raise RuntimeError("this recorder is closed")
        env = self.env
        episode_id = episode_id or f"{self.file_prefix}-e{self.episodes:06d}"
        rng = rng if rng is not None else np.random.default_rng(seed)
        obs, _ = env.reset(seed=seed)
        policy.reset(rng, list(env.agents))
        state = self._state() if self.record_state else None
        discrete = None if self.action_spec is None else self.action_spec.discrete

        lines: list[bytes] = []
        returns: dict[str, float] = {}
        step = 0
        while env.agents and (max_steps is None or step < max_steps):
            agents = list(env.agents)
            actions = {}
            for agent in agents:
                if agent not in self._obs_sizes:
                    self._learn_agent(agent)
                    discrete = self.action_spec.discrete
                actions[agent] = self._check_action(agent, policy.act(agent, obs[agent]), discrete)
            now = time.time() if self.timestamps else None
            next_obs, rewards, terminations, truncations, _ = env.step(actions)
            cut = max_steps is not None and step + 1 >= max_steps and bool(env.agents)
            for agent in agents:
                reward = float(rewards.get(agent, 0.0))
                returns[agent] = returns.get(agent, 0.0) + reward
                row = {
                    "episode_id": episode_id,
                    "step": step,
                    "agent_id": agent,
                    "obs": self._flat_obs(agent, obs[agent]),
                    "action": actions[agent],
                    "reward": reward,
                    "terminated": bool(terminations.get(agent, False)),
                    "truncated": bool(truncations.get(agent, False)) or cut,
                    "policy_id": policy.policy_id(agent),
                }
                if state is not None:
                    row["state"] = state
                if now is not None:
                    row["timestamp"] = now
                lines.append(orjson.dumps(row, option=_DUMPS_OPTIONS))
            obs = next_obs
            step += 1
            if self.record_state:
                state = self._state()

        self._write_episode(b"".join(lines))
        self.rows += len(lines)
        return EpisodeStats(episode_id=episode_id, steps=step, rows=len(lines), returns=returns)

    def close(self) -> list[str]:
        """Publish the last (partial) file and the spec; returns the URIs of all files."""
        if self._closed:
            return self.files
        try:
            if self._handle is not None:
                self._publish()
            if self.action_spec is not None and self._written_spec != self.spec:
                self._write_spec()
        except BaseException:
            self._discard_current()
            raise
        finally:
            self._closed = True
            self._cleanup()
        return self.files

    def abort(self) -> None:
        """Drop the file being written (already published files stay)."""
        self._closed = True
        self._discard_current()
        self._cleanup()

    def __enter__(self) -> TrajectoryRecorder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- rows --------------------------------------------------------------------------------
    def _learn_agent(self, agent: str) -> None:
        """Remember an agent's observation space and size (for rows and for the spec)."""
        space = self.env.observation_space(agent)
        self._obs_spaces[agent] = space
        self._obs_sizes[agent] = int(spaces.flatdim(space))
        if agent not in self.agents:
            self.agents.append(agent)
        if self.action_spec is None:
            self.action_spec = action_spec_of(self.env, [agent])
        elif action_spec_of(self.env, [agent]) != self.action_spec:
            raise ValueError(f"agent {agent!r} joined with an action space unlike the others'")

    def _flat_obs(self, agent: str, obs: Any) -> np.ndarray:
        space = self._obs_spaces[agent]
        if isinstance(space, spaces.Box):
            flat = np.ascontiguousarray(obs, dtype=np.float32).reshape(-1)
        else:
            flat = np.asarray(spaces.flatten(space, obs), dtype=np.float32)
        if flat.size != self._obs_sizes[agent]:
            raise ValueError(
                f"agent {agent!r} observed {flat.size} values; its observation space says "
                f"{self._obs_sizes[agent]}"
            )
        return flat

    def _check_action(self, agent: str, action: Any, discrete: bool) -> int | np.ndarray:
        """The action as it is sent and recorded: an int in range, or a float32 vector."""
        spec = self.action_spec
        if discrete:
            value = int(action)
            if not 0 <= value < spec.n:
                raise ValueError(
                    f"policy chose action {value} for {agent!r}; valid: 0..{spec.n - 1}"
                )
            return value
        vector = np.ascontiguousarray(action, dtype=np.float32).reshape(-1)
        if vector.size != spec.dim:
            raise ValueError(
                f"policy chose a {vector.size}-vector for {agent!r}; the action space has {spec.dim}"
            )
        return vector

    def _state(self) -> np.ndarray:
        state = np.ascontiguousarray(self.env.state(), dtype=np.float32).reshape(-1)
        if self._state_dim is None:
            self._state_dim = int(state.size)
        elif state.size != self._state_dim:
            raise ValueError(f"env.state() changed size from {self._state_dim} to {state.size}")
        return state

    # -- files -------------------------------------------------------------------------------
    def _file_name(self) -> str:
        suffix = ".jsonl.gz" if self.gzip else ".jsonl"
        return f"{self.file_prefix}-part{self._part:04d}{suffix}"

    def _write_episode(self, data: bytes) -> None:
        if self._handle is None:
            self._open()
        self._handle.write(data)
        self._episodes_in_file += 1
        self.episodes += 1
        if self._episodes_in_file >= self.episodes_per_file:
            self._publish()

    def _open(self) -> None:
        name = self._file_name()
        if self._staging is not None:
            self._tmp_path = os.path.join(self._staging, name)
        else:  # hidden temp name in the target folder, so the final rename is atomic
            self._tmp_path = os.path.join(self.out, f".{name}.{uuid.uuid4().hex}.tmp")
        self._raw = open(self._tmp_path, "wb")  # noqa: SIM115 - closed in _publish/_discard
        if self.gzip:  # no file name or time in the header: same episodes, same bytes
            self._handle = gzip_module.GzipFile(
                filename="", mode="wb", fileobj=self._raw, compresslevel=6, mtime=0
            )
        else:
            self._handle = self._raw

    def _close_handles(self) -> None:
        if self._handle is not None and self._handle is not self._raw:
            self._handle.close()
        if self._raw is not None:
            self._raw.close()
        self._handle = self._raw = None

    def _publish(self) -> None:
        """Make the current file visible under its final name, spec first."""
        self._close_handles()
        if self._written_spec is None:
            self._write_spec()
        uri = join(self.out, self._file_name())
        if self._staging is not None:
            self.fs.upload(self._tmp_path, uri)
            os.remove(self._tmp_path)
        else:
            os.replace(self._tmp_path, uri)
        self._tmp_path = None
        self.files.append(uri)
        self._part += 1
        self._episodes_in_file = 0

    def _write_spec(self) -> None:
        """Write the spec, refusing to overwrite another dataset's spec in the same place."""
        spec = self.spec
        if self._written_spec is None and self.fs.exists(self.spec_uri):
            try:
                existing = DatasetSpec.from_json(self.fs.read_bytes(self.spec_uri))
            except SpecError:
                existing = None  # unreadable: replace it
            if existing is not None:
                if existing.env != spec.env:
                    raise SpecError(
                        f"{self.spec_uri} describes env {existing.env!r}, not {spec.env!r}; "
                        "record each env into its own folder"
                    )
                try:
                    existing.check_compatible(spec)
                except SpecError as exc:
                    raise SpecError(f"{self.spec_uri}: {exc}; use another folder") from exc
        self.fs.write_bytes(self.spec_uri, spec.to_json().encode())
        self._written_spec = spec

    def _discard_current(self) -> None:
        self._close_handles()
        if self._tmp_path is not None and os.path.exists(self._tmp_path):
            os.remove(self._tmp_path)
        self._tmp_path = None

    def _cleanup(self) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
