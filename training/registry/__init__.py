"""The model registry: versions with their cards, aliases with their history, on the store.

:mod:`.catalog` holds it; the names a caller needs are re-exported here.
"""

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
    "ModelRef",
    "ModelRegistry",
    "ModelVersion",
    "RegistryError",
    "check_alias",
    "check_model_name",
    "load_registered",
]
