"""Targets: what a ``--target`` string means and which back end builds it.

:data:`BACKENDS` is the registry (family -> back-end class, imported lazily so that the CLI
stays fast); each back end resolves its own target names (:mod:`tbn_tvm.targets.base`).

>>> resolve_target("llvm").family
'host'
>>> resolve_target("aarch64-linux-gnu").tvm_target["mtriple"]
'aarch64-linux-gnu'
>>> resolve_target("cortex-m7").family
'cortex-m'
"""

from __future__ import annotations

import importlib

from tbn_tvm.errors import TBNError
from tbn_tvm.targets.base import Backend, Option, TargetSpec

__all__ = ["BACKENDS", "Backend", "Option", "TargetSpec", "backend_class", "known_targets", "resolve_target"]

#: Target family -> ``module:Class`` of its back end, tried in this order when resolving.
BACKENDS: dict[str, str] = {
    "host": "tbn_tvm.targets.host:HostBackend",
    "cortex-m": "tbn_tvm.targets.cortex_m.backend:CortexMBackend",
    "cuda": "tbn_tvm.targets.cuda:CudaBackend",
}


def backend_class(family: str) -> type[Backend]:
    """The back-end class of ``family`` (TBNError for an unknown one, e.g. a damaged manifest)."""
    path = BACKENDS.get(family)
    if path is None:
        raise TBNError(f"no back end for target family '{family}'", hint=f"known: {', '.join(BACKENDS)}")
    module, _, cls = path.partition(":")
    return getattr(importlib.import_module(module), cls)


def known_targets() -> str:
    """What ``--target`` accepts, for messages and ``--help``."""
    return "; ".join(f"{family}: {backend_class(family).target_names}" for family in BACKENDS)


def resolve_target(target: str | dict | TargetSpec, mcpu: str | None = None) -> TargetSpec:
    """Turn what the user typed into a :class:`TargetSpec`, or raise a one-line TBNError.

    ``target`` is a name (``llvm``, ``cortex-m4``, an LLVM triple...), a TVM target string
    (``"llvm -mcpu=skylake"``), a TVM target dict, or a spec already resolved."""
    if isinstance(target, TargetSpec):
        return target
    if isinstance(target, dict):
        text = dict(target)
    else:
        text = str(target).strip()
        if not text:
            raise TBNError("the target is empty", hint=f"use one of: {known_targets()}")
    for family in BACKENDS:
        spec = backend_class(family).resolve(text, mcpu)
        if spec is not None:
            return spec
    shown = text if isinstance(text, str) else repr(text)
    raise TBNError(f"unknown target '{shown}'", hint=f"use one of: {known_targets()}")
