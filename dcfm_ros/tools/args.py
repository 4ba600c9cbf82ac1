"""argparse types for the spec grammars of `dcfm_ros.engine.specs`, shared by every tool."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from dcfm_ros.engine import specs

T = TypeVar("T")


def arg_type(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Wrap a specs parser so argparse prints its message ("argument --size: size must be HxW ...")."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


size_type = arg_type(specs.parse_size)
size_wh_type = arg_type(specs.parse_size_wh)
policy_type = arg_type(specs.parse_policy)
blend_type = arg_type(specs.parse_blend)


def list_of(parse: Callable[[str], T]) -> Callable[[str], list[T]]:
    """A comma-separated list whose items `parse` reads ("fixed:2,motion:0.1")."""

    def convert(text: str) -> list[T]:
        items = specs.split_list(text)
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
        return [arg_type(parse)(item) for item in items]

    convert.__name__ = f"list_of_{parse.__name__}"
    return convert


def doc_summary(module: object) -> str:
    """A library module's first docstring paragraph: the tool's --help description."""
    return (getattr(module, "__doc__", None) or "").split("\n\n")[0]


def doc_details(module: object) -> str:
    """The rest of the module's docstring: the tool's --help epilog."""
    parts = (getattr(module, "__doc__", None) or "").split("\n\n", 1)
    return parts[1] if len(parts) > 1 else ""
