"""The contract every back end implements, and the resolved target it works from.

A back end owns one *target family* (``host``, ``cortex-m``, ...).  It

* **resolves** what a user types (``--target``, ``--mcpu``) into a :class:`TargetSpec`, or says it
  does not know it (:meth:`Backend.resolve` returns None);
* names the **pass options** the compiler needs for it (:attr:`Backend.pass_options`, e.g.
  ``simd=False`` on a scalar microcontroller; ``default_form``: how tiled kernels compute where
  no tuning chose, ``auto`` only where the back end schedules the decoded form) and the **compile options** it accepts
  (:attr:`Backend.compile_options`: ``board``, ``flash_size``...);
* **builds** a prepared Relax module (:meth:`create`), **saves** and **loads** its artifact, and
  **runs** stacked samples with its **run options** (:attr:`Backend.run_options`:
  ``count_instructions``, ``timeout``, ``port``...), returning outputs and statistics.

Adding a target family is one back-end module plus one line in
:data:`tbn_tvm.targets.BACKENDS`; nothing else names a family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: its family (a key of :data:`tbn_tvm.targets.BACKENDS`), a name for
    people and the manifest, the dict TVM's ``Target`` takes, and the CPU when one is fixed."""

    family: str
    name: str
    tvm_target: dict = field(default_factory=dict)
    cpu: str | None = None

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "name": self.name,
            "tvm_target": dict(self.tvm_target),
            "cpu": self.cpu,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> TargetSpec:
        return cls(str(d["family"]), str(d["name"]), dict(d["tvm_target"]), d.get("cpu"))

    def tvm(self):
        import tvm

        return tvm.target.Target(dict(self.tvm_target))

    @property
    def runs_here(self) -> bool:
        """Whether the artifact runs on this machine (see the back end's ``runs_here``)."""
        from tbn_tvm.targets import backend_class

        return backend_class(self.family).runs_here(self)


@dataclass(frozen=True)
class Option:
    """A keyword option of a back end: its default and one line of help."""

    default: Any
    help: str


class Backend(ABC):
    """Base class of the back ends (see the module docstring)."""

    #: The target family this back end builds (the key in ``BACKENDS``).
    family: ClassVar[str] = ""
    #: What ``--target`` values it resolves, for error messages and ``tbn-tvm targets``.
    target_names: ClassVar[str] = ""
    #: Options of :class:`tbn_tvm.passes.compress_weights.CompressWeights` for this family.
    pass_options: ClassVar[dict[str, Any]] = {"simd": True, "default_form": "bitserial"}
    #: Keyword options of :meth:`create` (``tbn_tvm.compile(..., **options)``).
    compile_options: ClassVar[dict[str, Option]] = {}
    #: Keyword options of :meth:`run` (``CompiledModel.run(x, **run_options)``).
    run_options: ClassVar[dict[str, Option]] = {}

    spec: TargetSpec

    @classmethod
    @abstractmethod
    def resolve(cls, target: str, mcpu: str | None) -> TargetSpec | None:
        """The spec for ``target`` (already stripped, lower-case) or None when not this family's."""

    @classmethod
    def runs_here(cls, spec: TargetSpec) -> bool:
        """Whether an artifact for ``spec`` can run from this machine (natively or emulated)."""
        return True

    @classmethod
    @abstractmethod
    def create(cls, spec: TargetSpec, prepared, inputs, outputs, **options) -> tuple[Backend, dict]:
        """Build the prepared module; returns the back end and facts for the manifest."""

    @abstractmethod
    def save(self, out_dir: Path) -> dict:
        """Write the artifact files into ``out_dir``; returns manifest entries (``artifact`` ...)."""

    @classmethod
    @abstractmethod
    def load(cls, spec: TargetSpec, out_dir: Path, manifest: dict) -> Backend:
        """The back end of a saved artifact."""

    @abstractmethod
    def run(self, arrays: list[np.ndarray], **options) -> tuple[list[np.ndarray], dict]:
        """Run stacked samples (one ``[N, *shape]`` array per input); returns ``[N, ...]``
        outputs and statistics (``device``, ``instructions_per_inference``, ...)."""

    def close(self) -> None:  # noqa: B027 - optional hook: most back ends hold nothing
        """Release temporary files or devices (idempotent)."""
