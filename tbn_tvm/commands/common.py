"""Argument helpers shared by several commands."""

from __future__ import annotations

from tbn_tvm.errors import TBNError


def parse_shapes(items: list[str] | None) -> dict[str, list[int]]:
    """``["x=1,784", ...]`` -> ``{"x": [1, 784]}``."""
    shapes = {}
    for item in items or []:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
            if not shapes[name] or min(shapes[name]) <= 0:
                raise ValueError
        except ValueError:
            raise TBNError(f"bad --input-shape '{item}'", hint="write NAME=D0,D1,... e.g. x=1,784") from None
    return shapes
