"""Helpers that let one component take plain values or state Vars.

Given Vars (a view inside `rx.foreach`), they emit the client-side `rx.foreach` / `rx.cond` /
`rx.match`; given plain values (tests, static rendering), they choose in Python, so the
rendered output holds only what would be on screen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import reflex as rx
from reflex.vars import Var


def each(items: Iterable[Any] | Var, render: Callable[[Any], rx.Component]) -> rx.Component:
    """`render` every item: `rx.foreach` over a Var, a fragment over a plain list."""
    if isinstance(items, Var):
        return rx.foreach(items, render)
    return rx.fragment(*(render(item) for item in items))


def either(condition: Any, when_true: rx.Component, when_false: rx.Component) -> rx.Component:
    """`rx.cond` for a Var condition, the chosen branch for a plain one."""
    if isinstance(condition, Var):
        return rx.cond(condition, when_true, when_false)
    return when_true if condition else when_false


def pick(value: Any, cases: Mapping[str, Any], default: Any) -> Any:
    """`rx.match` for a Var value, the matching case for a plain one (components or props)."""
    if isinstance(value, Var):
        return rx.match(value, *cases.items(), default)
    return cases.get(value, default)


def is_empty(items: Iterable[Any] | Var) -> Any:
    """`len(items) == 0`, as a Var when `items` is one."""
    if isinstance(items, Var):
        return items.length() == 0  # type: ignore[attr-defined]
    return not list(items)


def any_true(*values: Any) -> Any:
    """Logical or of plain values and Vars (a Var as soon as one of them is)."""
    if any(isinstance(value, Var) for value in values):
        result = Var.create(values[0])
        for value in values[1:]:
            result = result | Var.create(value)
        return result
    return any(bool(value) for value in values)


def negate(value: Any) -> Any:
    """Logical not of a plain value or a Var."""
    return ~Var.create(value) if isinstance(value, Var) else not value
