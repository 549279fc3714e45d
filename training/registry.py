"""The model registry: immutable model versions with cards, and aliases that move.

Layout under the store (local folder or S3, same code):

    models/<name>/<version>/weights.safetensors   tensors only, no pickled code
    models/<name>/<version>/card.json             config, lineage, metrics; written LAST
    registry/models/<name>.json                   aliases and the log of every alias move

A version exists once its card exists: weights are written first, the card last, so a
registration that dies half-way leaves nothing that lists or loads. Versions never change;
aliases (``staging``, ``production``, ...) move, each move is logged, and ``rollback`` moves
an alias back to where it pointed before.

References: ``world`` (latest version), ``world@3``, ``world@production``.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets.storage import Store

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}\Z")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}\Z")
WEIGHTS = "weights.safetensors"
CARD = "card.json"


class RegistryError(ValueError):
    """A model reference, name or alias is wrong, or the version does not exist."""


@dataclass(frozen=True)
class ModelRef:
    """``name``, ``name@N`` or ``name@alias``, parsed."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, ref: str) -> ModelRef:
        name, sep, selector = (ref or "").partition("@")
        if not NAME_RE.match(name):
            raise RegistryError(
                f"invalid model reference {ref!r}: expected name, name@N or name@alias "
                "(names start with a letter; letters, digits, '_', '-', '.')"
            )
        if not sep:
            return cls(name)
        if selector.isdigit():
            return cls(name, version=int(selector))
        if ALIAS_RE.match(selector):
            return cls(name, alias=selector)
        raise RegistryError(f"invalid model reference {ref!r}: expected name, name@N or name@alias")

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


@dataclass
class ModelVersion:
    """One registered version: where it is and its card."""

    name: str
    version: int
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def git_sha(path: str | Path | None = None) -> str:
    """The code version: the git commit (``+dirty`` with uncommitted changes), or 'unknown'."""
    cwd = str(path or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


LEGACY_ARCHITECTURES = {"world": "agent-transformer/1", "behavior": "gru/1"}
"""The layout of each kind's cards saved before ``model_config["architecture"]`` existed."""


def current_architectures() -> dict[str, str]:
    """Model kind -> the weights layout this code builds (``model_config["architecture"]``)."""
    from training.behavior_model import ARCHITECTURE as BEHAVIOR
    from training.world_model import ARCHITECTURE as WORLD

    return {"world": WORLD, "behavior": BEHAVIOR}


def check_architecture(mv: ModelVersion) -> None:
    """RegistryError when ``mv``'s card records another weights layout than this code builds."""
    kind, config = mv.card.get("kind"), mv.card.get("model_config")
    expected = current_architectures().get(kind)
    if expected is None or not isinstance(config, dict):
        return  # not a world/behavior model with a config: nothing to build, nothing to check
    found = config.get("architecture", LEGACY_ARCHITECTURES[kind])
    if found != expected:
        raise RegistryError(
            f"model {mv.ref} is a {kind} model of architecture {found!r}, but this code "
            f"builds {kind} models of architecture {expected!r}; its weights cannot be "
            f"loaded. Retrain it with this code (or load it with the code version that "
            f"trained it: git {mv.card.get('git_sha', 'unknown')})"
        )


class ModelRegistry:
    """Register, list, resolve, load, promote, roll back and delete model versions."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store or Store.from_env()

    # -- paths ----------------------------------------------------------------------------
    def _version_uri(self, name: str, version: int, *parts: str) -> str:
        return self.store.uri("models", name, str(version), *parts)

    def _aliases_rel(self, name: str) -> str:
        return f"registry/models/{name}.json"

    # -- reading --------------------------------------------------------------------------
    def names(self) -> list[str]:
        out = []
        for uri in self.store.fs.list_dirs(self.store.uri("models")):
            name = uri.rstrip("/").rsplit("/", 1)[-1]
            if NAME_RE.match(name) and self.version_numbers(name):
                out.append(name)
        return sorted(out)

    def version_numbers(self, name: str) -> list[int]:
        """Versions whose card exists (complete registrations only)."""
        numbers = []
        for uri in self.store.fs.list_dirs(self.store.uri("models", name)):
            tail = uri.rstrip("/").rsplit("/", 1)[-1]
            if tail.isdigit() and self.store.fs.exists(f"{uri}/{CARD}"):
                numbers.append(int(tail))
        return sorted(numbers)

    def card(self, name: str, version: int) -> dict[str, Any]:
        try:
            return json.loads(self.store.fs.read_bytes(self._version_uri(name, version, CARD)))
        except FileNotFoundError as exc:
            raise RegistryError(f"model {name}@{version} does not exist") from exc

    def versions(self, name: str) -> list[ModelVersion]:
        return [ModelVersion(name, v, self.card(name, v)) for v in self.version_numbers(name)]

    def aliases(self, name: str) -> dict[str, int]:
        return dict((self.store.read_json(self._aliases_rel(name)) or {}).get("aliases", {}))

    def alias_log(self, name: str) -> list[dict[str, Any]]:
        return list((self.store.read_json(self._aliases_rel(name)) or {}).get("log", []))

    def resolve(self, ref: str | ModelRef) -> ModelVersion:
        """The version a reference points at; a clear error when it does not resolve."""
        parsed = ModelRef.parse(ref) if isinstance(ref, str) else ref
        numbers = self.version_numbers(parsed.name)
        if not numbers:
            known = ", ".join(self.names()) or "none"
            raise RegistryError(
                f"model {parsed.name!r} has no versions in {self.store.root} (models: {known})"
            )
        if parsed.alias is not None:
            aliases = self.aliases(parsed.name)
            if parsed.alias not in aliases:
                raise RegistryError(
                    f"model {parsed.name!r} has no alias {parsed.alias!r}; "
                    f"aliases: {', '.join(f'{a}->{v}' for a, v in sorted(aliases.items())) or 'none'}"
                )
            version = aliases[parsed.alias]
        elif parsed.version is not None:
            version = parsed.version
            if version not in numbers:
                raise RegistryError(
                    f"model {parsed.name!r} has no version {version} (versions: "
                    f"{', '.join(map(str, numbers))})"
                )
        else:
            version = numbers[-1]
        return ModelVersion(parsed.name, version, self.card(parsed.name, version))

    def load(self, ref: str | ModelRef) -> tuple[dict[str, Any], ModelVersion]:
        """The tensors (torch) of a version and its card.

        Refuses (RegistryError naming both layouts) a version whose card records a weights
        layout other than the one this code builds for its kind.
        """
        from safetensors.torch import load

        mv = self.resolve(ref)
        check_architecture(mv)
        data = self.store.fs.read_bytes(self._version_uri(mv.name, mv.version, WEIGHTS))
        return load(data), mv

    # -- writing --------------------------------------------------------------------------
    def register(
        self,
        name: str,
        tensors: dict[str, Any],
        card: dict[str, Any],
        parent: int | None = None,
        extra_files: dict[str, bytes] | None = None,
    ) -> ModelVersion:
        """Store a new version: weights (and extra files) first, the card last.

        The card makes the version visible, so a registration that dies half-way leaves
        nothing behind that lists or loads.
        """
        from safetensors.torch import save

        if not NAME_RE.match(name):
            raise RegistryError(f"invalid model name {name!r}")
        numbers = self.version_numbers(name)
        version = (numbers[-1] + 1) if numbers else 1
        full_card = {
            "name": name,
            "version": version,
            "created_at": time.time(),
            "parent_version": parent if parent is not None else (numbers[-1] if numbers else None),
            "git_sha": card.get("git_sha") or git_sha(),
            **{k: v for k, v in card.items() if k not in {"name", "version"}},
        }
        json.dumps(full_card, allow_nan=False)  # fail before writing anything
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        weights = save(tensors, metadata={"name": name, "version": str(version)})
        self.store.fs.write_bytes(self._version_uri(name, version, WEIGHTS), weights)
        for filename, data in (extra_files or {}).items():
            assert filename not in (WEIGHTS, CARD), filename
            self.store.fs.write_bytes(self._version_uri(name, version, filename), data)
        self.store.fs.write_bytes(
            self._version_uri(name, version, CARD),
            json.dumps(full_card, indent=2, sort_keys=True).encode(),
        )
        return ModelVersion(name, version, full_card)

    def _move_alias(
        self, name: str, alias: str, version: int | None, action: str
    ) -> dict[str, Any]:
        data = self.store.read_json(self._aliases_rel(name)) or {"aliases": {}, "log": []}
        before = data["aliases"].get(alias)
        if version is None:
            data["aliases"].pop(alias, None)
        else:
            data["aliases"][alias] = version
        entry = {"alias": alias, "from": before, "to": version, "action": action, "at": time.time()}
        data["log"].append(entry)
        self.store.write_json(self._aliases_rel(name), data)
        return entry

    def promote(self, ref: str, alias: str) -> dict[str, Any]:
        """Point ``alias`` at the version ``ref`` resolves to."""
        if not ALIAS_RE.match(alias) or alias.isdigit():
            raise RegistryError(f"invalid alias {alias!r}: letters, digits, '_', '-', '.'")
        mv = self.resolve(ref)
        return {"model": mv.name, **self._move_alias(mv.name, alias, mv.version, "promote")}

    def rollback(self, name: str, alias: str) -> dict[str, Any]:
        """Move ``alias`` back to the version it pointed at before its last move."""
        current = self.aliases(name).get(alias)
        if current is None:
            raise RegistryError(f"model {name!r} has no alias {alias!r} to roll back")
        # Replay the alias's moves: a promote pushes its target, a rollback pops one; the
        # rollback target is the entry below the top. So 1 -> 2 -> 3 rolls back to 2, then 1.
        stack: list[int] = []
        for entry in self.alias_log(name):
            if entry["alias"] != alias:
                continue
            if entry["action"] == "rollback":
                stack.pop()
            else:
                stack.append(entry["to"])
        if len(stack) < 2:
            raise RegistryError(
                f"alias {name}@{alias} has no earlier version to roll back to (it points at {current})"
            )
        target = stack[-2]
        if target not in self.version_numbers(name):
            raise RegistryError(
                f"cannot roll back {name}@{alias} to version {target}: it was deleted"
            )
        return {"model": name, **self._move_alias(name, alias, target, "rollback")}

    def delete(self, ref: str) -> dict[str, Any]:
        """Delete one version (refused while an alias points at it)."""
        mv = self.resolve(ref)
        if ModelRef.parse(ref).version is None:
            raise RegistryError(f"delete needs an explicit version (e.g. {mv.name}@{mv.version})")
        pinned = sorted(a for a, v in self.aliases(mv.name).items() if v == mv.version)
        if pinned:
            raise RegistryError(
                f"model {mv.ref} is pointed at by alias(es) {', '.join(pinned)}; move them first"
            )
        # The card goes first, so a half-done delete leaves an invisible version, not a broken one.
        self.store.fs.delete_tree(self._version_uri(mv.name, mv.version, CARD))
        self.store.fs.delete_tree(self._version_uri(mv.name, mv.version))
        return {"model": mv.name, "version": mv.version, "deleted": True}
