"""Host CPU back end: Relax's default pipeline (fusion included) built with LLVM, run by the
Relax VM.  A target triple other than the host's cross-compiles: the artifact is then an
object-file archive (``model.tar``) to link on the target machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tbn_tvm.errors import TBNError
from tbn_tvm.targets import TargetSpec

# TVM's thread pool takes half the logical CPUs on x86 by default; use every core the process may
# run on unless the user chose (set before the pool starts, at the first parallel kernel).
if hasattr(os, "sched_getaffinity"):
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))

ARTIFACT_SO = "model.so"
ARTIFACT_TAR = "model.tar"


def build(mod, spec: TargetSpec):
    """Compile a prepared Relax module; returns TVM's Executable."""
    import tvm
    from tvm import relax

    from tbn_tvm.passes.legalize import Legalize
    from tbn_tvm.schedules.cpu import schedule_cpu

    target = spec.tvm()
    with target:
        mod = Legalize()(mod)
        mod = schedule_cpu(mod, target)
    return tvm.compile(mod, target=target, relax_pipeline=relax.get_default_pipeline(target))


def _contiguous(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array of the same shape (0-d stays 0-d, unlike np.ascontiguousarray)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy(order="C")


class HostBackend:
    """Runs a host build through the Relax VM (only when the target matches this machine)."""

    @classmethod
    def create(cls, spec: TargetSpec, prepared, inputs, outputs, **options) -> tuple[HostBackend, dict]:
        if options:
            raise TBNError(f"unknown option(s) for a host build: {', '.join(sorted(options))}")
        spec = spec.with_native_cpu()
        return cls(spec, executable=build(prepared.mod, spec)), {}

    def __init__(self, spec: TargetSpec, executable=None, module=None) -> None:
        self.spec = spec
        self.executable = executable
        self._module = module
        self._vm = None

    def _machine(self):
        import tvm
        from tvm import relax

        if not self.spec.runs_here:
            raise TBNError(
                f"a build for {self.spec.name} cannot run on this machine",
                hint="copy the artifact to a matching machine, or compile with --target llvm",
            )
        if self._vm is None:
            self._vm = relax.VirtualMachine(
                self.executable if self.executable is not None else self._module, tvm.cpu()
            )
        return self._vm

    def run_one(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        import tvm

        vm = self._machine()
        out = vm["main"](*[tvm.runtime.tensor(_contiguous(a)) for a in arrays])
        outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
        return [o.numpy() for o in outs]

    def time_one(self, arrays: list[np.ndarray], number: int = 10, repeat: int = 5) -> list[float]:
        """Seconds per call of ``main`` (one value per repeat), measured by TVM's time evaluator."""
        import tvm

        vm = self._machine()
        vm.set_input("main", *[tvm.runtime.tensor(_contiguous(a)) for a in arrays])
        res = vm.time_evaluator("invoke_stateful", tvm.cpu(), number=number, repeat=repeat)("main")
        return [float(r) for r in res.results]

    def save(self, out_dir: Path) -> dict:
        if self.executable is None:
            raise TBNError("this model was loaded from disk; save the original directory instead")
        name = ARTIFACT_SO if self.spec.runs_here else ARTIFACT_TAR
        self.executable.export_library(str(out_dir / name))
        return {"artifact": name}

    @classmethod
    def load(cls, spec: TargetSpec, out_dir: Path, manifest: dict) -> HostBackend:
        import tvm

        path = out_dir / manifest.get("artifact", ARTIFACT_SO)
        if not path.exists():
            raise TBNError(f"{out_dir}: the artifact {path.name} is missing", hint="compile the model again")
        if not spec.runs_here:
            return cls(spec)
        try:
            module = tvm.runtime.load_module(str(path))
        except Exception as e:
            raise TBNError(
                f"{path}: cannot load the compiled library ({' '.join(str(e).split())[:200]})"
            ) from None
        return cls(spec, module=module)
