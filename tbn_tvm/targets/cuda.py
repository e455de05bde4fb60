"""CUDA back end: the project's kernels hand-scheduled for NVIDIA GPUs, built by TVM, compiled
by nvcc to PTX and a cubin, run through the Relax VM on the GPU.

Target names: ``cuda`` (``--arch sm_80``, or ``--mcpu sm_80``, for A100-class GPUs, ``sm_90``
for H100/H200, the default), ``cuda-sm80``, ``cuda-sm90``, ``cuda -arch=sm_80``, the TVM tags
``nvidia/nvidia-a100`` and ``nvidia/nvidia-h100``, or a TVM target dict with ``kind: cuda``.
``tbn_tvm.compile(..., arch="sm_80")`` overrides the target's architecture.

Build (:meth:`CudaBackend.create`): :func:`tbn_tvm.passes.pipeline.lower_cuda` (fusion, the hand
schedules of :mod:`tbn_tvm.schedules.cuda`, dlight for the rest of the graph) and ``tvm.compile``.
TVM 0.27 keeps the CUDA source in the module and compiles it only when the module is loaded on
a GPU, so the back end takes the source out of the built module and compiles it itself with
nvcc (``PATH``, else ``$CUDA_HOME/bin``) to PTX and a cubin for the architecture: the build
fails here, on any machine, when the generated code does not compile.  The weights reach the
GPU as the model's constants: the uint32 tile words and the float scales, never a dense weight.

OUT_DIR layout::

    model.so        the TVM module (Relax VM code, host code, CUDA kernels) via export_library
    kernels.cu      the CUDA source TVM generated
    kernels.ptx     nvcc --ptx for the architecture
    kernels.cubin   nvcc --cubin for the architecture (what the GPU runs, see below)
    manifest.json   target, architecture, per-kernel schedules, file sizes

Running (:meth:`CudaBackend.run`) needs an NVIDIA GPU (``tvm.cuda(0).exist``); without one it
raises one clear error.  When TVM asks for the kernels' binary at load time, the back end hands
it the cubin built here (the PTX when the GPU is newer than the architecture) instead of letting
TVM compile the source again.  Without a GPU the schedules' numerics are checked through
:mod:`tbn_tvm.targets.gpu_check` (the same scheduled TIR on OpenCL).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from tbn_tvm.errors import TBNError
from tbn_tvm.targets.base import Backend, Option, TargetSpec

ARTIFACT = "model.so"
SOURCE = "kernels.cu"
PTX = "kernels.ptx"
CUBIN = "kernels.cubin"

#: Supported architectures -> the TVM tag whose limits the target uses (the tag's own arch is
#: replaced by the plain one: ``sm_90``, not ``sm_90a``, so the code runs on every sm_90 GPU).
ARCHES = {"sm_80": "nvidia/nvidia-a100", "sm_90": "nvidia/nvidia-h100"}
DEFAULT_ARCH = "sm_90"

#: What is checked without a GPU (for messages).
CHECKED_WITHOUT_GPU = (
    "code generation, nvcc compilation to PTX and cubin, and the schedules' numerics through "
    "the same scheduled TIR on OpenCL (tbn_tvm.targets.gpu_check)"
)

_ARCH_WORD = re.compile(r"^(?:sm_?)?(\d{2})a?$")
_TAG_ARCH = {"nvidia/nvidia-a100": "sm_80", "nvidia/nvidia-h100": "sm_90", "nvidia/nvidia-h200": "sm_90"}


def normalize_arch(value) -> str:
    """``"sm_80"``, ``"sm80"``, ``"80"``, ``"sm_90a"`` -> ``"sm_80"`` / ``"sm_90"``; TBNError for
    an architecture this back end does not build for.

    >>> normalize_arch("sm80"), normalize_arch("90")
    ('sm_80', 'sm_90')
    """
    m = _ARCH_WORD.match(str(value).strip().lower())
    arch = f"sm_{m.group(1)}" if m else str(value)
    if arch not in ARCHES:
        raise TBNError(f"unknown CUDA architecture '{value}'", hint=f"use one of: {', '.join(ARCHES)}")
    return arch


def cuda_target(arch: str) -> dict:
    """The TVM target dict for ``arch``: the thread, shared-memory and register limits of its
    tag (:data:`ARCHES`), the plain ``sm_XX`` architecture, an LLVM host.

    >>> cuda_target("sm_80")["max_shared_memory_per_block"]
    49152
    """
    return {
        "kind": "cuda",
        "arch": normalize_arch(arch),
        "max_num_threads": 1024,
        "max_threads_per_block": 1024,
        "thread_warp_size": 32,
        "max_shared_memory_per_block": 49152,
        "registers_per_block": 65536,
        "l2_cache_size_bytes": _L2_BYTES[normalize_arch(arch)],
        "host": {"kind": "llvm"},
    }


_L2_BYTES = {"sm_80": 41943040, "sm_90": 52428800}


def _spec(arch: str) -> TargetSpec:
    return TargetSpec("cuda", f"cuda-{arch.replace('_', '')}", cuda_target(arch), arch)


def gpu_present() -> bool:
    """Whether TVM sees a CUDA GPU here."""
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:  # noqa: BLE001 - no CUDA runtime: no GPU
        return False


# ----------------------------------------------------------------------------- nvcc
def find_nvcc() -> str:
    """nvcc on ``PATH``, else in ``$CUDA_HOME/bin`` (or ``$CUDA_PATH``, ``/usr/local/cuda``)."""
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    raise TBNError(
        "nvcc (the CUDA compiler) was not found: a CUDA build compiles its kernels with it",
        hint="install the CUDA toolkit, then put nvcc on PATH or set CUDA_HOME",
    )


def nvcc_version() -> str:
    """The ``release ...`` line of ``nvcc --version`` (empty when nvcc is missing)."""
    try:
        out = subprocess.run([find_nvcc(), "--version"], capture_output=True, text=True, timeout=60).stdout
    except (TBNError, OSError, subprocess.SubprocessError):
        return ""
    lines = [line for line in out.splitlines() if "release" in line]
    return lines[-1].strip() if lines else ""


def nvcc_compile(source: str, arch: str, fmt: str) -> bytes:
    """Compile CUDA ``source`` with nvcc to ``fmt`` (``ptx`` or ``cubin``) for ``arch``.

    IEEE float arithmetic (no ``--use_fast_math``), so the GPU computes what the OpenCL check
    computed."""
    if fmt not in ("ptx", "cubin"):
        raise ValueError(f"fmt must be ptx or cubin, not {fmt!r}")
    nvcc = find_nvcc()
    work = Path(tempfile.mkdtemp(prefix="tbn_nvcc_"))
    try:
        src, out = work / SOURCE, work / f"kernels.{fmt}"
        src.write_text(source)
        cmd = [
            nvcc,
            f"--{fmt}",
            "-O3",
            f"-arch={arch}",
            "-diag-suppress",
            "177,550",
            "-o",
            str(out),
            str(src),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            raise TBNError(f"nvcc could not run ({type(e).__name__}: {e})") from None
        if proc.returncode != 0 or not out.is_file():
            tail = " | ".join(line.strip() for line in (proc.stderr or proc.stdout).splitlines()[-3:])
            raise TBNError(
                f"nvcc could not compile the generated CUDA code for {arch} ({tail[-300:]})",
                hint="report it with the model",
            )
        return out.read_bytes()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cuda_source(executable) -> str:
    """The CUDA source inside a built module (TVM keeps it there until the module is loaded)."""
    stack = [executable.mod]
    while stack:
        m = stack.pop()
        if str(getattr(m, "kind", "")) == "cuda":
            return str(m.inspect_source("cuda"))
        stack.extend(m.imports)
    raise TBNError("TVM built no CUDA kernels for this model", hint="report it with the model")


def kernel_schedules(mod) -> dict[str, str]:
    """Kernel name -> the schedule it got (``tbn.cuda_schedule``) in a lowered module."""
    import tvm

    from tbn_tvm.schedules.cuda import ATTR

    return {
        gv.name_hint: str(f.attrs.get(ATTR, "")) if f.attrs else ""
        for gv, f in mod.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc)
    }


def _source_key(code: str) -> str:
    return hashlib.sha256(code.strip().encode()).hexdigest()


# The binaries this process built or loaded, by source: what TVM's load-time compile callback
# hands out instead of compiling the source again (see _install_compile_hook).
_BINARIES: dict[str, tuple[str, bytes, bytes]] = {}  # source key -> (arch, cubin, ptx)
_HOOKED: list = []


def binary_for(code: str, device_arch: str) -> bytes | None:
    """The binary built in this process (or loaded from an artifact) for CUDA source ``code``
    that a ``device_arch`` GPU runs: the cubin when the architectures match, the PTX (compiled
    by the driver) for a newer GPU, None otherwise."""
    built = _BINARIES.get(_source_key(code))
    if built is None:
        return None
    arch, cubin, ptx = built
    if device_arch == arch:
        return cubin
    if int(device_arch[3:]) > int(arch[3:]):
        return ptx
    return None


def _install_compile_hook() -> None:
    """Route TVM's load-time CUDA compile (``tvm_callback_cuda_compile``) to the binary built for
    the source (:func:`binary_for`); a source built elsewhere is compiled with nvcc for the GPU,
    or by TVM's own compiler when nvcc is missing."""
    if _HOOKED:
        return
    import tvm
    import tvm_ffi

    original = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)

    def compile_hook(code, *rest):
        device_arch = "sm_" + str(tvm.cuda(0).compute_version).replace(".", "")
        built = binary_for(str(code), device_arch)
        if built is not None:
            return bytearray(built)
        try:  # a source this process did not build: nvcc for this GPU, else TVM's compiler
            return bytearray(nvcc_compile(str(code), device_arch, "cubin"))
        except TBNError:
            if original is None:
                raise
            return original(code, *rest)

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_hook, override=True)
    _HOOKED.append(compile_hook)


# ----------------------------------------------------------------------------- the back end
class CudaBackend(Backend):
    """Builds for an NVIDIA GPU; runs only where one is present."""

    family = "cuda"
    target_names = "cuda [--arch sm_80|sm_90] (NVIDIA GPU, default sm_90), cuda-sm80, cuda-sm90"
    #: The bit-serial kernels (``prepare``'s default form): the schedules read the row words from
    #: shared memory and never hold decoded float rows; ``simd`` writes the conv's sign as a float
    #: factor (branch-free; the bit is warp-uniform anyway).
    pass_options = {"simd": True, "default_form": "bitserial"}
    compile_options = {
        "arch": Option(None, "GPU architecture: sm_80 (A100) or sm_90 (H100, H200); default sm_90"),
    }
    run_options = {}

    # ------------------------------------------------------------------ targets
    @classmethod
    def resolve(cls, target, mcpu: str | None) -> TargetSpec | None:
        if isinstance(target, dict):
            if target.get("kind") != "cuda":
                return None
            return _spec(normalize_arch(mcpu or target.get("arch") or DEFAULT_ARCH))
        words = target.split()
        head = words[0].lower()
        if head in _TAG_ARCH and len(words) == 1:
            return _spec(normalize_arch(mcpu or _TAG_ARCH[head]))
        m = re.fullmatch(r"cuda(?:[-_:](?P<arch>sm_?\d{2}a?))?", head)
        if not m:
            return None
        arch = m.group("arch")
        for word in words[1:]:
            f = re.fullmatch(r"-(?:arch|mcpu)=(\S+)", word)
            if not f:
                raise TBNError(
                    f"target '{target}': cannot read '{word}'", hint="write the architecture as -arch=sm_80"
                )
            arch = f.group(1)
        return _spec(normalize_arch(mcpu or arch or DEFAULT_ARCH))

    @classmethod
    def runs_here(cls, spec: TargetSpec) -> bool:
        return gpu_present()

    # ------------------------------------------------------------------ build
    @classmethod
    def create(cls, spec: TargetSpec, prepared, inputs, outputs, *, arch=None) -> tuple[CudaBackend, dict]:
        from tbn_tvm.passes.pipeline import call_sites

        if arch is not None:
            spec = _spec(normalize_arch(arch))
        scheduled, executable = build(prepared.mod, spec)
        source = cuda_source(executable)
        ptx = nvcc_compile(source, spec.cpu, "ptx")
        cubin = nvcc_compile(source, spec.cpu, "cubin")
        backend = cls(spec, executable=executable, source=source, ptx=ptx, cubin=cubin, scheduled=scheduled)
        extra = {
            "cuda": {
                "arch": spec.cpu,
                "nvcc": nvcc_version(),
                "kernels": kernel_schedules(scheduled),
                "source_bytes": len(source.encode()),
                "ptx_bytes": len(ptx),
                "cubin_bytes": len(cubin),
            },
            "steps": call_sites(scheduled),  # the kernel calls in order, with their layers
        }
        return backend, extra

    def __init__(
        self,
        spec: TargetSpec,
        executable=None,
        source: str = "",
        ptx: bytes = b"",
        cubin: bytes = b"",
        scheduled=None,
        library: Path | None = None,
    ) -> None:
        self.spec = spec
        self.executable = executable
        self.source = source
        self.ptx = ptx
        self.cubin = cubin
        #: The fused, scheduled Relax module (before TVM's finishing passes): what
        #: :class:`tbn_tvm.targets.gpu_check.OpenCLExecutor` runs.  None for a loaded artifact.
        self.scheduled = scheduled
        self._library = library
        self._vm = None
        self._checker = None
        if source:
            _BINARIES[_source_key(source)] = (spec.cpu, cubin, ptx)

    # ------------------------------------------------------------------ running
    def _machine(self):
        if not gpu_present():
            raise TBNError(
                f"running a CUDA build ({self.spec.name}) needs an NVIDIA GPU, and TVM finds none on this "
                f"machine (tvm.cuda(0) does not exist); checked here without a GPU: {CHECKED_WITHOUT_GPU}",
                hint="copy the output directory to a machine with a GPU and run it there",
            )
        if self._vm is None:
            import tvm
            from tvm import relax

            from tbn_tvm.quiet import captured

            _install_compile_hook()
            with captured():
                module = self.executable
                if module is None:
                    module = tvm.runtime.load_module(str(self._library))
                self._vm = relax.VirtualMachine(module, tvm.cuda(0))
        return self._vm

    def run(self, arrays: list[np.ndarray], **options) -> tuple[list[np.ndarray], dict]:
        import tvm

        if options:
            raise TBNError(f"unknown run option(s) for a CUDA build: {', '.join(sorted(options))}")
        vm = self._machine()
        dev = tvm.cuda(0)
        n = arrays[0].shape[0] if arrays else 1
        per_sample = []
        for i in range(n):
            try:
                args = [tvm.runtime.tensor(np.ascontiguousarray(a[i]), device=dev) for a in arrays]
                out = vm["main"](*args)
            except Exception as e:  # noqa: BLE001 - a kernel that fails on the device
                msg = " ".join(f"{type(e).__name__}: {e}".split())
                raise TBNError(
                    f"the compiled model failed on the GPU ({msg[-200:]})", hint="report it with the model"
                ) from None
            outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
            per_sample.append([o.numpy() for o in outs])
        k = len(per_sample[0]) if per_sample else 0
        return [np.stack([s[j] for s in per_sample]) for j in range(k)], {
            "device": f"cuda:0 ({self.spec.cpu})"
        }

    def time(self, arrays: list[np.ndarray], number: int = 10, repeat: int = 5) -> list[float]:
        """Seconds per call of ``main`` on one sample, on the GPU (TVM's time evaluator)."""
        import tvm

        vm = self._machine()
        dev = tvm.cuda(0)
        vm.set_input("main", *[tvm.runtime.tensor(np.ascontiguousarray(a), device=dev) for a in arrays])
        res = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat)("main")
        return [float(r) for r in res.results]

    def check_numerics(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Run one sample through the scheduled kernels on OpenCL (no GPU needed; see
        :mod:`tbn_tvm.targets.gpu_check`); a freshly compiled model only."""
        from tbn_tvm.targets import gpu_check

        if self.scheduled is None:
            raise TBNError("the OpenCL check needs the model compiled in this process, not loaded")
        reason = gpu_check.unavailable()
        if reason:
            raise TBNError(f"the OpenCL check cannot run here: {reason}")
        if self._checker is None:
            import tvm

            self._checker = gpu_check.OpenCLExecutor(
                self.scheduled, tvm.target.Target(cuda_target(self.spec.cpu))
            )
        return self._checker.run(arrays)

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: Path) -> dict:
        from tbn_tvm.quiet import captured

        if self.executable is None:
            raise TBNError("this model was loaded from disk; save the original directory instead")
        with captured():
            self.executable.export_library(str(out_dir / ARTIFACT))
        (out_dir / SOURCE).write_text(self.source)
        (out_dir / PTX).write_bytes(self.ptx)
        (out_dir / CUBIN).write_bytes(self.cubin)
        return {
            "artifact": ARTIFACT,
            "cuda_source": SOURCE,
            "ptx": PTX,
            "cubin": CUBIN,
            "arch": self.spec.cpu,
        }

    @classmethod
    def load(cls, spec: TargetSpec, out_dir: Path, manifest: dict) -> CudaBackend:
        files = {
            key: out_dir / manifest.get(key, default)
            for key, default in (
                ("artifact", ARTIFACT),
                ("cuda_source", SOURCE),
                ("ptx", PTX),
                ("cubin", CUBIN),
            )
        }
        for path in files.values():
            if not path.is_file():
                raise TBNError(f"{out_dir}: {path.name} is missing", hint="compile the model again")
        spec = replace(spec, cpu=normalize_arch(manifest.get("arch") or spec.cpu or DEFAULT_ARCH))
        return cls(
            spec,
            source=files["cuda_source"].read_text(),
            ptx=files["ptx"].read_bytes(),
            cubin=files["cubin"].read_bytes(),
            library=files["artifact"],
        )


def build(mod, spec: TargetSpec):
    """Lower and compile a prepared Relax module for ``spec``; returns the scheduled module
    (before TVM's finishing passes) and TVM's executable."""
    import tvm

    from tbn_tvm.passes.pipeline import lower_cuda
    from tbn_tvm.quiet import captured

    target = spec.tvm()
    with captured():
        try:
            scheduled, finish = lower_cuda(mod, target)
            return scheduled, tvm.compile(scheduled, target=target, relax_pipeline=finish)
        except TBNError:
            raise
        except Exception as e:  # noqa: BLE001 - TVM cannot lower or compile something in the graph
            msg = " ".join(f"{type(e).__name__}: {e}".split())
            raise TBNError(
                f"TVM could not compile the model for CUDA ({msg[-240:]})", hint="report it with the model"
            ) from None
