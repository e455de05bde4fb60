"""Which layer refused an input, and what it takes: one clear error instead of torch's trace.

:func:`watch` records, during one forward pass, the modules being run and the shapes they were
given; when the pass fails, :func:`input_error` turns the failure into one
:class:`~tbn_tvm.errors.TBNError` that names the shape the user passed, the layer that refused
it, the shape that layer got and the shape it takes.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
>>> with watch(model) as seen:
...     try:
...         model(torch.zeros(2, 100))
...     except RuntimeError as e:
...         print(input_error(model, (2, 100), e, seen, "the input").message)   # doctest: +ELLIPSIS
the input of shape [2x100] does not fit the model: layer '1' (Linear) takes [..., 784] but got [2x100] (...)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from tbn_tvm.errors import TBNError

__all__ = ["watch", "input_error", "expected_input", "takes", "SHAPE_ERRORS"]

#: What a forward pass raises on an input of the wrong shape.
SHAPE_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)


@dataclass
class Seen:
    """The modules entered and not yet left, innermost last, with the shape each was given."""

    stack: list[tuple[str, nn.Module, tuple[int, ...] | None]] = field(default_factory=list)

    @property
    def failed(self) -> tuple[str, nn.Module, tuple[int, ...] | None] | None:
        """After a failed pass: the innermost module that was running (name, module, the shape of
        its first input); None when no module was entered."""
        return self.stack[-1] if self.stack else None


def _shape(args) -> tuple[int, ...] | None:
    first = args[0] if args else None
    return tuple(first.shape) if isinstance(first, torch.Tensor) else None


@contextlib.contextmanager
def watch(model: nn.Module) -> Iterator[Seen]:
    """Hooks on every module of ``model`` for the duration of the block; the yielded
    :class:`Seen` holds, after a failed forward pass, the innermost module that was running
    (``seen.failed``: name, module, shape of its first input)."""
    seen = Seen()
    handles = []

    def enter(name):
        def hook(module, args):
            seen.stack.append((name, module, _shape(args)))

        return hook

    def leave(module, args, out):
        if seen.stack:
            seen.stack.pop()

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name)))
        handles.append(module.register_forward_hook(leave))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def takes(module: nn.Module) -> str | None:
    """The input shape ``module`` takes, in words (``[N, 3, H, W]``, ``[..., 784]``), or None."""
    channels, features = getattr(module, "in_channels", None), getattr(module, "in_features", None)
    if isinstance(channels, int) and channels > 0:
        rank = len(getattr(module, "kernel_size", (0, 0)))
        dims = {1: "L", 2: "H, W", 3: "D, H, W"}.get(rank, "...")
        return f"[N, {channels}, {dims}]"
    if isinstance(features, int) and features > 0:
        return f"[..., {features}]"
    if isinstance(module, nn.MultiheadAttention):
        return f"[..., {module.embed_dim}]"
    return None


def expected_input(model: nn.Module) -> str | None:
    """What the model's first layer takes, in words (``its first layer 'conv1' takes [N, 3, H, W]``)."""
    for name, m in model.named_modules():
        channels, features = getattr(m, "in_channels", None), getattr(m, "in_features", None)
        who = f"its first layer '{name}'" if name else "it"
        if isinstance(channels, int) and channels > 0:
            return f"{who} takes {takes(m)}"
        if isinstance(features, int) and features > 0:
            return f"{who} takes {features} features per sample (after any flatten)"
    return None


def _plain(text: str) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).split())


def _dims(shape) -> str:
    return "[" + "x".join(map(str, shape)) + "]"


def input_error(model: nn.Module, shape, exc: BaseException, seen: Seen | None, what: str) -> TBNError:
    """One :class:`TBNError` for a forward pass of ``model`` that failed with ``exc`` on an input
    of ``shape``: names that shape, the layer that refused it (from ``seen``), the shape the
    layer got and the shape it takes, and torch's own reason (first 200 characters)."""
    reason = _plain(str(exc))[:200]
    culprit = seen.failed if seen is not None else None
    head = f"{what} of shape {_dims(shape)} does not fit the model"
    if culprit is not None and (culprit[0] or takes(culprit[1])):
        name, module, got = culprit
        wants = takes(module)
        layer = (
            f"layer '{name}' ({type(module).__name__})" if name else f"the model ({type(module).__name__})"
        )
        got_text = f"got {_dims(got)}" if got is not None else "failed"
        detail = f"{layer} takes {wants} but {got_text}" if wants else f"{layer} {got_text}"
        first = expected_input(model)
        hint = first if first and name and f"'{name}'" not in first else None
        return TBNError(f"{head}: {detail} ({reason})", hint=hint)
    expected = expected_input(model)
    return TBNError(f"{head} ({reason})", hint=expected)
