"""The model card: what a registered version is, where it came from and how well it does.

Stored as ``models/<name>/<version>/card.json``. :class:`ModelCard` is its type: code writes
and reads it by attribute, and :meth:`ModelCard.from_dict` / :meth:`ModelCard.to_dict` are
the only places that know the JSON layout. The layout is the one cards have always had, so
cards stored by older code load unchanged and older code can read what this code writes:

- a key the type does not know is kept in ``extra`` and written back as it was;
- a known key a stored card lacks stays absent when the card is written again (it is not
  filled in with a default), so loading and saving a card gives back the same JSON.

For readers written against the plain-dict card, a card is also a read-only mapping of its
JSON (``card["dataset"]["resolved"]``); new code reads attributes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar


class CardError(ValueError):
    """A stored card (or a part of it) does not have the shape of a model card."""


@dataclass
class _Record:
    """A JSON object with typed fields, unknown keys kept in ``extra`` and absent keys kept
    absent (see the module docstring)."""

    NESTED: ClassVar[dict[str, type[_Record]]] = {}
    """Field -> the record type its JSON object is read into."""

    @classmethod
    def _keys(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.init and f.name != "extra"]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        if not isinstance(data, Mapping):
            raise CardError(f"{cls.__name__}: expected a JSON object, found {type(data).__name__}")
        keys = cls._keys()
        values: dict[str, Any] = {}
        for key in keys:
            if key not in data:
                continue
            value = data[key]
            if key in cls.NESTED and value is not None:
                try:
                    value = cls.NESTED[key].from_dict(value)
                except CardError as exc:
                    raise CardError(f"{cls.__name__}.{key}: {exc}") from exc
            values[key] = value
        record = cls(**values, extra={k: v for k, v in data.items() if k not in keys})
        record._absent = frozenset(k for k in keys if k not in data)
        return record

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: every field (nested records as objects), then ``extra``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if not f.init or f.name == "extra":
                continue
            value = getattr(self, f.name)
            if f.name in self._absent and value == _default(f):
                continue  # absent when read, still unset: stays absent
            out[f.name] = value.to_dict() if isinstance(value, _Record) else value
        out.update(self.extra)
        return out


def _default(f) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


@dataclass
class DatasetLineage(_Record):
    """The dataset version a model was trained on."""

    ref: str | None = None
    """The reference as given (``spread``, ``spread@golden``)."""
    name: str | None = None
    version: int | None = None
    resolved: str | None = None
    """``name@version``: the exact version, whatever ``ref`` said."""
    extra: dict[str, Any] = field(default_factory=dict)
    _absent: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)


@dataclass
class QualityGate(_Record):
    """Did the model beat every baseline on its family's gate metrics, and if not, why."""

    passed: bool = False
    failures: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    _absent: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)


@dataclass
class TrainingSummary(_Record):
    """How training went: epochs, the kept epoch, time, the split sizes, the history."""

    epochs_run: int = 0
    best_epoch: int = 0
    """1-based epoch whose weights were kept."""
    seconds: float = 0.0
    final: dict[str, Any] = field(default_factory=dict)
    """The last epoch's metrics (as in metrics.jsonl)."""
    n_train_episodes: int = 0
    n_val_episodes: int = 0
    n_calibration_episodes: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    """One metrics dict per epoch."""
    extra: dict[str, Any] = field(default_factory=dict)
    _absent: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)


REGISTRY_FIELDS = ("name", "version", "created_at", "parent_version", "git_sha")
"""What the registry fills in at registration (a card built in code leaves them None)."""


@dataclass(eq=False)
class ModelCard(_Record, Mapping):
    """One registered version's card: identity and lineage, configs, metrics, the gate."""

    NESTED: ClassVar[dict[str, type[_Record]]] = {
        "dataset": DatasetLineage,
        "quality_gate": QualityGate,
        "training": TrainingSummary,
    }

    name: str | None = None
    """Model name in the registry (set at registration)."""
    version: int | None = None
    """Version number (set at registration)."""
    kind: str | None = None
    """The model family (``world``, ``behavior``): how to rebuild and judge the model."""
    created_at: float | None = None
    """Registration time, seconds since the epoch."""
    parent_version: int | None = None
    """The version registered before this one (None for the first)."""
    git_sha: str | None = None
    """Code version that trained it (``+dirty`` with uncommitted changes)."""
    dataset: DatasetLineage | None = None
    spec: dict[str, Any] | None = None
    """The training data's DatasetSpec, as a dict."""
    train_config: dict[str, Any] | None = None
    """The resolved TrainConfig, as a dict."""
    model_config: dict[str, Any] | None = None
    """The resolved model config: rebuilds the architecture."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Held-out metrics of the model (NaN stored as null)."""
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Baseline name -> the same metrics, on the same episodes."""
    evaluation: dict[str, Any] = field(default_factory=dict)
    """How the evaluation ran (episodes, windows, seed, imagination policy, ...)."""
    quality_gate: QualityGate | None = None
    training: TrainingSummary | None = None
    behavior_model_for_imagination: str | None = None
    """World models: the behavior model that drove the other agents in imagination."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this type does not know, kept as stored."""
    _absent: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built in code: the registry fields not given are the registry's to fill in.
        self._absent = frozenset(k for k in REGISTRY_FIELDS if getattr(self, k) is None)

    @classmethod
    def coerce(cls, card: ModelCard | Mapping[str, Any] | None) -> ModelCard | None:
        """A ModelCard from a card or its JSON dict (None stays None)."""
        if card is None or isinstance(card, ModelCard):
            return card
        return cls.from_dict(card)

    def has(self, key: str) -> bool:
        """Whether the card carries ``key`` (a field it was read or built with, or an extra)."""
        if key in self.extra:
            return True
        return key in self._keys() and key not in self._absent

    def registered(self, **values: Any) -> ModelCard:
        """A copy with the registry's fields set (and present in the JSON from now on)."""
        card = copy.copy(self)
        for key, value in values.items():
            if key not in REGISTRY_FIELDS:
                raise KeyError(f"{key!r} is not a registry field of a model card")
            setattr(card, key, value)
        card._absent = self._absent - set(values)
        card.extra = {k: v for k, v in self.extra.items() if k not in values}
        return card

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ModelCard):
            return self.to_dict() == other.to_dict()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    # -- read-only mapping of the JSON, for readers of the plain-dict card ------------------
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
