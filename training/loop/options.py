"""A config dataclass as the one declaration of its options: name, type, default, help.

The CLI flags of ``foresight train`` and the Dagster config of the model assets are built
from :class:`~foresight.training.loop.config.TrainConfig` with :func:`options`, so an option
is declared (and documented) once, in the dataclass, with the docstring under its field
(and its allowed values, if limited, in ``field(metadata={"choices": ...})``).
"""

from __future__ import annotations

import ast
import inspect
import itertools
import textwrap
import types
import typing
from dataclasses import MISSING, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Option:
    """One field of a config dataclass, as a front end needs it."""

    name: str
    type: Any
    """The resolved annotation (``int``, ``int | None``, ...)."""
    default: Any
    help: str
    """The field's docstring, on one line ('' when it has none)."""
    choices: tuple | None = None
    """The allowed values (``field(metadata={"choices": ...})``), None: any of the type."""

    @property
    def optional(self) -> bool:
        """Whether None is allowed (``X | None``)."""
        return type(None) in typing.get_args(self.type)

    @property
    def base(self) -> type:
        """The type without ``| None``."""
        args = [a for a in typing.get_args(self.type) if a is not type(None)]
        if isinstance(self.type, types.UnionType) or typing.get_origin(self.type) is typing.Union:
            if len(args) != 1:
                raise TypeError(f"option {self.name}: only X | None unions are supported")
            return args[0]
        return self.type


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body, on one line."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def options(cls: type) -> list[Option]:
    """The fields of the dataclass ``cls``, in order, with their types, defaults and help."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in fields(cls):
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"{cls.__name__}.{f.name} has no default: not an option")
        choices = f.metadata.get("choices")
        out.append(
            Option(f.name, hints[f.name], default, docs.get(f.name, ""), choices and tuple(choices))
        )
    return out
