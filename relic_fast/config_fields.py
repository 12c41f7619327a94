"""Typed dataclass fields read from and written to TOML: name a type for an error, convert a value, document a field.

Nothing here knows the config's sections; `relic_fast.config` builds its typed sections with these, so
every error names what a key expects in words (`describe_type`) and `config show --explain` prints the
docstring written under each field (`field_docs`).
"""

from __future__ import annotations

import ast
import inspect
import types
import typing
from typing import Any, Literal


def describe_type(tp: Any) -> str:
    """Human name of a field type, listing the choices of a Literal."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe_type(args[0])}"
        return f"a list of {len(args)} {describe_type(args[0])}s"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def coerce_field(value: Any, tp: Any) -> Any:
    """Convert a TOML value to the field type `tp`, or raise TypeError/ValueError explaining why."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"expected {describe_type(tp)}, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected {describe_type(tp)}, got {value!r}")
        if not (len(args) == 2 and args[1] is Ellipsis) and len(value) != len(args):
            raise ValueError(f"expected {describe_type(tp)}, got {len(value)} values")
        item = args[0]
        return tuple(coerce_field(v, item) for v in value)
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"unsupported field type {tp}")
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported field type {tp}")


def toml_value(value: Any) -> str:
    """TOML literal of a config value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass `cls` (for `config show --explain`)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for stmt, following in zip(body, body[1:]):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[stmt.target.id] = " ".join(following.value.value.split())
    return docs
