"""The model registry: immutable model versions with cards, and aliases that move.

Layout under the store (local folder or S3, same code):

    models/<name>/<version>/weights.safetensors   tensors only, no pickled code
    models/<name>/<version>/card.json             config, lineage, metrics; written LAST
    registry/models/<name>.json                   the model's mutable state: aliases, the log
                                                  of every alias move, the next version number
                                                  and the deleted (retired) numbers

A version exists once its card exists: weights are written first, the card last (an exclusive
create), so a registration that dies half-way leaves nothing that lists or loads. Versions
never change; aliases (``staging``, ``production``, ...) move, each move is logged, and
``rollback`` moves an alias back to where it pointed before.

Safe under concurrent writers (processes, machines) on both stores: every change to
``registry/models/<name>.json`` is a conditional read-modify-write (``Store.update_json``), so
a version number is claimed exactly once (deleted numbers stay retired), no alias move that
reported success is lost from the log, and a rollback computes its target on the document it
replaces, so two rollbacks at once go back two steps, not both to the same place.

References: ``world`` (latest version), ``world@3``, ``world@production``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foresight.datasets.storage import Store
from foresight.training.registry.card import CardError, ModelCard

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}\Z")
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}\Z")
WEIGHTS = "weights.safetensors"
CARD = "card.json"

log = logging.getLogger(__name__)


class RegistryError(ValueError):
    """A model reference, name or alias is wrong, or the version does not exist."""


def check_model_name(name: str) -> str:
    """``name`` when it is a valid model name, else a RegistryError saying what is allowed."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise RegistryError(
            f"invalid model name {name!r}: names start with a letter; letters, digits, "
            "'_', '-', '.' (at most 64)"
        )
    return name


def check_alias(alias: str) -> str:
    """``alias`` when it is a valid alias (not a number), else a RegistryError."""
    if not isinstance(alias, str) or not ALIAS_RE.match(alias) or alias.isdigit():
        raise RegistryError(
            f"invalid alias {alias!r}: starts with a letter; letters, digits, '_', '-', '.'"
        )
    return alias


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
    card: ModelCard = field(default_factory=ModelCard)

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


def check_architecture(mv: ModelVersion) -> None:
    """RegistryError when ``mv``'s card records another weights layout than this code builds."""
    from foresight.training.families import FAMILIES  # the table imports models: load lazily

    kind, config = mv.card.kind, mv.card.model_config
    fam = FAMILIES.get(kind) if isinstance(kind, str) else None
    if fam is None or not isinstance(config, dict):
        return  # not a model of a family in the table: nothing to build, nothing to check
    found, expected = config.get("architecture", fam.legacy_architecture), fam.architecture
    if found != expected and found not in fam.older_architectures:
        raise RegistryError(
            f"model {mv.ref} is a {kind} model of architecture {found!r}, but this code "
            f"builds {kind} models of architecture {expected!r}; its weights cannot be "
            f"loaded. Retrain it with this code (or load it with the code version that "
            f"trained it: git {mv.card.git_sha or 'unknown'})"
        )


class ModelRegistry:
    """Register, list, resolve, load, promote, roll back and delete model versions.

    Listings skip what they cannot read (an odd folder, a truncated card) instead of failing
    for every model; each such entry is described once in ``problems`` (and logged as a
    warning), so a caller such as the CLI can show what was skipped.
    """

    def __init__(self, store: Store | None = None) -> None:
        self.store = store or Store.from_env()
        self.problems: list[str] = []

    # -- checks and paths -----------------------------------------------------------------
    def _problem(self, message: str) -> None:
        if message not in self.problems:
            self.problems.append(message)
            log.warning("model registry: %s", message)

    def _version_uri(self, name: str, version: int, *parts: str) -> str:
        return self.store.uri("models", name, str(version), *parts)

    def _aliases_rel(self, name: str) -> str:
        return f"registry/models/{check_model_name(name)}.json"

    def _state(self, name: str) -> dict[str, Any]:
        """The model's registry document (aliases, log, counter), empty when there is none."""
        rel = self._aliases_rel(name)
        try:
            return _normalized(self.store.read_json(rel))
        except ValueError as exc:
            raise RegistryError(_corrupt_state(self.store.uri(rel), exc)) from exc

    def _update(self, name: str, change) -> dict[str, Any]:
        """``Store.update_json`` of the model's document: ``change`` sees the fresh one."""
        rel = self._aliases_rel(name)
        try:
            return self.store.update_json(rel, lambda doc: change(_normalized(doc)))
        except RegistryError:
            raise
        except ValueError as exc:  # the stored document is not JSON
            raise RegistryError(_corrupt_state(self.store.uri(rel), exc)) from exc

    # -- reading --------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Models with at least one version; odd folders are skipped and put in ``problems``."""
        out = []
        for uri in self.store.fs.list_dirs(self.store.uri("models")):
            name = uri.rstrip("/").rsplit("/", 1)[-1]
            if not NAME_RE.match(name):
                self._problem(
                    f"models/{name!r} is not a valid model name; skipped (rename or remove it)"
                )
            elif self.version_numbers(name):
                out.append(name)
        return sorted(out)

    def version_numbers(self, name: str) -> list[int]:
        """Versions whose card exists (complete registrations only)."""
        check_model_name(name)
        numbers = []
        for uri in self.store.fs.list_dirs(self.store.uri("models", name)):
            tail = uri.rstrip("/").rsplit("/", 1)[-1]
            if not (tail.isdigit() and tail == str(int(tail))):
                self._problem(
                    f"models/{name}/{tail!r} is not a version number; skipped (rename or remove it)"
                )
            elif self.store.fs.exists(f"{uri}/{CARD}"):
                numbers.append(int(tail))
        return sorted(numbers)

    def card(self, name: str, version: int) -> ModelCard:
        """The card of ``name@version``; a RegistryError when it is missing or unreadable."""
        uri = self._version_uri(check_model_name(name), version, CARD)
        try:
            card = json.loads(self.store.fs.read_bytes(uri))
        except FileNotFoundError as exc:
            raise RegistryError(f"model {name}@{version} does not exist") from exc
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise RegistryError(
                f"the card of model {name}@{version} is not valid JSON ({exc}) at {uri}; "
                f"delete the version (foresight models delete {name}@{version}) and retrain"
            ) from exc
        try:
            return ModelCard.from_dict(card)
        except CardError as exc:
            raise RegistryError(
                f"the card of model {name}@{version} at {uri} is not a model card ({exc}); "
                f"delete the version (foresight models delete {name}@{version}) and retrain"
            ) from exc

    def versions(self, name: str) -> list[ModelVersion]:
        """Every readable version; an unreadable card is skipped and put in ``problems``."""
        out = []
        for v in self.version_numbers(name):
            try:
                out.append(ModelVersion(name, v, self.card(name, v)))
            except RegistryError as exc:
                self._problem(f"{exc}; skipped")
        return out

    def aliases(self, name: str) -> dict[str, int]:
        return dict(self._state(name)["aliases"])

    def alias_log(self, name: str) -> list[dict[str, Any]]:
        return list(self._state(name)["log"])

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
    def _claim_version(self, name: str, present: list[int]) -> int:
        """A version number nobody was or will be given: the counter, moved on atomically.

        A store written before the counter existed continues after its highest version
        (``present``, the versions with a card); retired (deleted) numbers are never reused.
        """
        claimed: list[int] = []

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            number = max(
                int(doc.get("next_version") or 1),
                (present[-1] + 1) if present else 1,
                max(doc["deleted"], default=0) + 1,
            )
            claimed.append(number)
            return {**doc, "next_version": number + 1}

        self._update(name, change)
        return claimed[-1]

    def register(
        self,
        name: str,
        tensors: dict[str, Any],
        card: ModelCard | Mapping[str, Any],
        parent: int | None = None,
        extra_files: dict[str, bytes] | None = None,
    ) -> ModelVersion:
        """Store a new version: claim its number, write weights (and extra files), card last.

        The card makes the version visible, so a registration that dies half-way leaves
        nothing behind that lists or loads (its number stays used). The registry sets the
        card's ``name`` and ``version``, and ``created_at``, ``parent_version`` and
        ``git_sha`` unless the card carries them (a card registered again keeps its own).
        """
        from safetensors.torch import save

        check_model_name(name)
        for filename in extra_files or {}:
            if filename in (WEIGHTS, CARD) or not re.match(
                r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\Z", filename
            ):
                raise RegistryError(
                    f"invalid extra file name {filename!r} for model {name}: a plain file "
                    f"name (letters, digits, '_', '-', '.'), not {WEIGHTS} or {CARD}"
                )
        numbers = self.version_numbers(name)
        given = card if isinstance(card, ModelCard) else ModelCard.from_dict(card)
        if parent is None:
            parent = numbers[-1] if numbers else None
        filled = {
            "created_at": given.created_at if given.has("created_at") else time.time(),
            "parent_version": given.parent_version if given.has("parent_version") else parent,
            "git_sha": given.git_sha if given.has("git_sha") else git_sha(),
        }
        # fail before claiming or writing anything
        document = given.registered(name=name, version=0, **filled).to_dict()
        if bad := _non_finite(document):
            raise RegistryError(
                f"cannot register {name}: the card holds values that are not finite numbers "
                f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); a metric that could "
                "not be computed (e.g. a rollout horizon longer than the episodes) must be null"
            )
        json.dumps(document, allow_nan=False)
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        version = self._claim_version(name, numbers)
        full_card = given.registered(name=name, version=version, **filled)
        weights = save(tensors, metadata={"name": name, "version": str(version)})
        self.store.fs.write_bytes(self._version_uri(name, version, WEIGHTS), weights)
        for filename, data in (extra_files or {}).items():
            self.store.fs.write_bytes(self._version_uri(name, version, filename), data)
        body = json.dumps(full_card.to_dict(), indent=2, sort_keys=True).encode()
        if not self.store.fs.write_if(self._version_uri(name, version, CARD), body, None):
            raise RegistryError(  # the counter makes this unreachable; never overwrite a card
                f"model {name}@{version} already has a card in {self.store.root}: another "
                "writer registered this number (a registry written by older code?); retry"
            )
        return ModelVersion(name, version, full_card)

    def _move_alias(
        self, name: str, alias: str, version: int | None, action: str
    ) -> dict[str, Any]:
        """Point ``alias`` at ``version`` (None: remove it) and log the move, atomically."""
        entries: list[dict[str, Any]] = []

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            if version is not None and version in doc["deleted"]:
                raise RegistryError(f"model {name}@{version} was deleted; it cannot be {action}d")
            entry = _move(doc, alias, version, action)
            entries.append(entry)
            return doc

        self._update(name, change)
        return entries[-1]

    def promote(self, ref: str, alias: str) -> dict[str, Any]:
        """Point ``alias`` at the version ``ref`` resolves to."""
        check_alias(alias)
        mv = self.resolve(ref)
        return {"model": mv.name, **self._move_alias(mv.name, alias, mv.version, "promote")}

    def rollback(self, name: str, alias: str) -> dict[str, Any]:
        """Move ``alias`` back to the version it pointed at before its last move.

        The target is computed from the alias's own history on the document being replaced,
        so concurrent rollbacks each go one step further back. Promote 1, 2, 3: rollbacks go
        to 2, then 1. Promote 3, then 1: a rollback goes to 3.
        """
        check_model_name(name)
        check_alias(alias)
        entries: list[dict[str, Any]] = []

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            current = doc["aliases"].get(alias)
            if current is None:
                raise RegistryError(f"model {name!r} has no alias {alias!r} to roll back")
            stack = alias_history(doc["log"], alias, current)
            if len(stack) < 2:
                raise RegistryError(
                    f"alias {name}@{alias} has no earlier version to roll back to "
                    f"(it points at {current})"
                )
            target = stack[-2]
            if target in doc["deleted"] or not self.store.fs.exists(
                self._version_uri(name, target, CARD)
            ):
                raise RegistryError(
                    f"cannot roll back {name}@{alias} to version {target}: it was deleted; "
                    f"promote the version you want instead (foresight models promote "
                    f"{name}@N {alias})"
                )
            entries.append(_move(doc, alias, target, "rollback"))
            return doc

        self._update(name, change)
        return {"model": name, **entries[-1]}

    def delete(self, ref: str) -> dict[str, Any]:
        """Delete one version (refused while an alias points at it); its number is retired.

        The version is marked deleted in the model's document first, in the same atomic
        update that checks no alias points at it, so a concurrent promote or rollback either
        lands before (and the delete is refused) or sees the mark (and is refused).
        """
        parsed = ModelRef.parse(ref)
        if parsed.version is None:
            mv = self.resolve(parsed)
            raise RegistryError(f"delete needs an explicit version (e.g. {mv.name}@{mv.version})")
        name, version = parsed.name, parsed.version
        numbers = self.version_numbers(name)
        if version not in numbers:
            raise RegistryError(
                f"model {name!r} has no version {version} (versions: "
                f"{', '.join(map(str, numbers)) or 'none'})"
            )

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            pinned = sorted(a for a, v in doc["aliases"].items() if v == version)
            if pinned:
                raise RegistryError(
                    f"model {name}@{version} is pointed at by alias(es) {', '.join(pinned)}; "
                    "move them first"
                )
            return {
                **doc,
                "deleted": sorted({*doc["deleted"], version}),
                "next_version": max(int(doc.get("next_version") or 1), numbers[-1] + 1),
            }

        self._update(name, change)
        # The card goes first, so a half-done delete leaves an invisible version, not a broken one.
        self.store.fs.delete_tree(self._version_uri(name, version, CARD))
        self.store.fs.delete_tree(self._version_uri(name, version))
        return {"model": name, "version": version, "deleted": True}


def alias_history(log_entries: list[dict[str, Any]], alias: str, current: int | None) -> list[int]:
    """The versions ``alias`` stood at, oldest first, as a stack that rollbacks pop.

    A promote pushes its target (unless the alias is already there: no move, nothing to go
    back to), a rollback pops one. ``current`` ends the stack if the log lost moves (stores
    written before moves were atomic), so the alias's real position is always the top.
    """
    stack: list[int] = []
    for entry in log_entries:
        if entry.get("alias") != alias:
            continue
        to = entry.get("to")
        if to is None:  # the alias was removed: its history starts over
            stack = []
            continue
        if entry.get("action") == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1] != to:
            stack.append(to)
    if current is not None and (not stack or stack[-1] != current):
        stack.append(current)
    return stack


def _move(doc: dict[str, Any], alias: str, version: int | None, action: str) -> dict[str, Any]:
    """Move ``alias`` in ``doc`` (in place) and append the log entry, which it returns."""
    before = doc["aliases"].get(alias)
    if version is None:
        doc["aliases"].pop(alias, None)
    else:
        doc["aliases"][alias] = version
    entry = {"alias": alias, "from": before, "to": version, "action": action, "at": time.time()}
    doc["log"].append(entry)
    return entry


def _normalized(doc: dict[str, Any] | None) -> dict[str, Any]:
    """A model's registry document with every key present (older stores lack some)."""
    if doc is not None and not isinstance(doc, dict):
        raise ValueError(f"expected a JSON object, found {type(doc).__name__}")
    doc = dict(doc or {})
    doc["aliases"] = dict(doc.get("aliases") or {})
    doc["log"] = list(doc.get("log") or [])
    doc["deleted"] = sorted(int(v) for v in doc.get("deleted") or [])
    return doc


def _corrupt_state(uri: str, exc: Exception) -> str:
    return (
        f"the registry document {uri} is not valid JSON ({exc}); restore it from a backup "
        "or fix it by hand (it holds the model's aliases and their history)"
    )


def _non_finite(x: Any, path: str = "") -> list[str]:
    """The dotted paths of NaN and infinite floats in a JSON-like document."""
    if isinstance(x, float):
        return [] if math.isfinite(x) else [path or "card"]
    if isinstance(x, dict):
        return [p for k, v in x.items() for p in _non_finite(v, f"{path}.{k}" if path else str(k))]
    if isinstance(x, list | tuple):
        return [p for i, v in enumerate(x) for p in _non_finite(v, f"{path}.{i}")]
    return []


def load_registered(
    ref: str, store: Store | None = None, kind: str | None = None
) -> tuple[Any, ModelVersion]:
    """A registered model, rebuilt from its card's config, with its weights, in eval mode.
    ``kind``: the family it must be; a model of another is refused by name."""
    from foresight.training.loop.train import load_model

    tensors, mv = ModelRegistry(store or Store.from_env()).load(ref)
    if kind is not None and mv.card.kind != kind:
        raise RegistryError(
            f"{mv.ref} is {_a(mv.card.kind)} model, not {_a(kind)} model; train one with "
            f"`foresight train {kind} --dataset REF`"
        )
    return load_model(mv.card.kind, mv.card.model_config, tensors), mv


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"
