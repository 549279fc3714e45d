"""The model registry: versions with their cards, aliases with their history, on the store.

:mod:`.catalog` holds the registry, :mod:`.card` the model card's type; the names a caller
needs are re-exported here.
"""

from foresight.training.registry.card import (
    CardError,
    DatasetLineage,
    ModelCard,
    QualityGate,
    TrainingSummary,
)
from foresight.training.registry.catalog import (
    CARD,
    WEIGHTS,
    ModelRef,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    check_alias,
    check_model_name,
    load_registered,
)

__all__ = [
    "CARD",
    "WEIGHTS",
    "CardError",
    "DatasetLineage",
    "ModelCard",
    "ModelRef",
    "ModelRegistry",
    "ModelVersion",
    "QualityGate",
    "RegistryError",
    "TrainingSummary",
    "check_alias",
    "check_model_name",
    "load_registered",
]
