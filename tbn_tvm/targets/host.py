"""Host CPU back end: Relax's default pipeline (fusion included) built with LLVM, run by the
Relax VM.  A target triple other than the host's cross-compiles: the artifact is then an
object-file archive (``model.tar``) to link on the target machine.

Target names: ``llvm`` (this machine: its CPU and every vector unit it has, as ``--mcpu
native``; ``--mcpu generic`` for portable code, or ``--mcpu NAME`` for another CPU), an LLVM
triple (``x86_64-linux-gnu``, ``aarch64-linux-gnu``...: generic code for that architecture
unless ``--mcpu`` names a CPU), or a TVM target string such as ``"llvm -mcpu=skylake
-num-cores=4"``.  The manifest records the build's CPU and instruction sets; loading it on a
CPU without them is refused (:func:`_check_cpu_features`).
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

import numpy as np

from tbn_tvm.errors import TBNError
from tbn_tvm.targets.base import Backend, Option, TargetSpec

# TVM's thread pool takes half the logical CPUs on x86 by default; use every core the process may
# run on unless the user chose (set before the pool starts, at the first parallel kernel).
if hasattr(os, "sched_getaffinity"):
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))

ARTIFACT_SO = "model.so"
ARTIFACT_TAR = "model.tar"

_TRIPLE = re.compile(r"^(?P<arch>[a-z0-9_]+)-(?P<rest>[a-z0-9_.]+(?:-[a-z0-9_.]+){0,2})$")
_HOST_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
_ARCHES = ("x86_64", "aarch64", "armv7", "armv7a", "riscv64", "i686")
_FLAG = re.compile(r"^-(?P<key>[a-z][a-z0-9-]*)=(?P<value>\S+)$")
_KEYS = ("mcpu", "mtriple", "mattr", "num-cores", "mabi", "mfloat-abi")


def _native_cpu() -> str:
    """LLVM's name of this machine's CPU (``generic`` when LLVM cannot tell)."""
    try:
        from tvm.target import codegen

        return str(codegen.llvm_get_system_cpu()) or "generic"
    except Exception:  # noqa: BLE001 - an LLVM without host detection: generic code
        return "generic"


def _check_mcpu(d: dict) -> None:
    """Refuse a CPU name LLVM does not know for the target's triple (LLVM would silently build
    generic code), hinting a close match and the valid names."""
    cpu = d.get("mcpu")
    if not cpu or not isinstance(cpu, str):
        return
    try:
        import tvm
        from tvm.target import codegen

        probe = {k: d[k] for k in ("kind", "mtriple") if k in d}
        known = sorted({str(c) for c in codegen.llvm_get_cpu_archlist(tvm.target.Target(probe))})
    except Exception:  # noqa: BLE001 - an LLVM that cannot list its CPUs: let it decide
        return
    if not known or cpu in known or cpu in ("generic", "native"):
        return
    import difflib

    close = difflib.get_close_matches(cpu, known, n=3, cutoff=0.6)
    near = f"did you mean {' or '.join(close)}? " if close else ""
    shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
    raise TBNError(
        f"--mcpu '{cpu}' is not a CPU LLVM knows for {d.get('mtriple', 'this host')}",
        hint=f"{near}'native' for this machine's CPU, 'generic', or one of: {shown}",
    )


def _contiguous(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array of the same shape (0-d stays 0-d, unlike np.ascontiguousarray)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy(order="C")


def build(
    mod,
    spec: TargetSpec,
    database=None,
    baselines: dict | None = None,
    hand_schedules: bool = True,
    facts: dict | None = None,
):
    """Lower and compile a prepared Relax module (:func:`tbn_tvm.passes.pipeline.lower_host`);
    returns TVM's executable, the kernels tuning records were applied to and those whose record
    was no faster than the hand schedule.  ``facts`` (a dict) receives ``steps``: the lowered
    module's kernel calls in order, with their layers."""
    import tvm

    from tbn_tvm.passes.pipeline import call_sites, lower_host
    from tbn_tvm.quiet import captured

    target = spec.tvm()
    with captured():
        try:
            mod, relax_pipeline, tuned, kept = lower_host(mod, target, database, baselines, hand_schedules)
            if facts is not None:
                facts.update(steps=call_sites(mod))
            return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline), tuned, kept
        except TBNError:
            raise
        except Exception as e:  # noqa: BLE001 - TVM cannot lower or compile something in the graph
            msg = " ".join(f"{type(e).__name__}: {e}".split())
            raise TBNError(
                f"TVM could not compile the model ({msg[-240:]})", hint="report it with the model"
            ) from None


class HostBackend(Backend):
    """Runs a host build through the Relax VM (only when the target matches this machine)."""

    family = "host"
    target_names = "llvm (this machine's CPU; --mcpu generic|NAME), an LLVM triple (x86_64-linux-gnu, aarch64-linux-gnu), 'llvm -mcpu=...'"
    pass_options = {"simd": True, "default_form": "auto"}
    run_options = {
        "profile": Option(
            False,
            "also time each kernel call of one inference (the first sample, repeated), through the "
            "Relax VM's call instrumentation: last_run_stats['profile']",
        ),
    }
    compile_options = {
        "tuning_db": Option(
            None, "a tuning database written by 'tbn-tvm tune' (records applied, forms chosen)"
        ),
        "hand_schedules": Option(
            True,
            "False: the project's kernels keep TVM's default loop nests (the search's starting point, "
            "a baseline for tuning figures); records of a tuning database still apply",
        ),
    }

    # ------------------------------------------------------------------ targets
    @classmethod
    def resolve(cls, target, mcpu: str | None) -> TargetSpec | None:
        if isinstance(target, dict):
            if target.get("kind") != "llvm" or "thumb" in str(target.get("mtriple", "")):
                return None
            d = dict(target)
            if mcpu:
                d["mcpu"] = mcpu
            if "mcpu" not in d and ("mtriple" not in d or _triple_is_native(str(d["mtriple"]))):
                d["mcpu"] = "native"  # this machine, as for the target name
            if d.get("mcpu") == "native":
                d["mcpu"] = _native_cpu()
            _check_mcpu(d)
            return TargetSpec("host", str(d.get("mtriple", "llvm")), d, d.get("mcpu"))
        words = target.split()
        head = words[0].lower()
        d: dict = {"kind": "llvm"}
        if head in ("llvm", "host", "cpu", "llvm-generic"):
            name = "llvm"
        elif head == "x86_64":
            name = "llvm"
        else:
            m = _TRIPLE.match(head)
            if not (m and m.group("arch") in _ARCHES and "none" not in head):
                return None
            name = head
            d["mtriple"] = head
        for word in words[1:]:
            f = _FLAG.match(word)
            if not f or f.group("key") not in _KEYS:
                raise TBNError(
                    f"target '{target}': cannot read '{word}'",
                    hint=f"write options as -KEY=VALUE with KEY one of {', '.join(_KEYS)}",
                )
            value = f.group("value")
            d[f.group("key")] = int(value) if f.group("key") == "num-cores" and value.isdigit() else value
        if "mtriple" in d and name == "llvm":
            name = str(d["mtriple"])
        if mcpu:
            d["mcpu"] = mcpu
        if "mcpu" not in d and ("mtriple" not in d or _triple_is_native(str(d["mtriple"]))):
            d["mcpu"] = "native"  # a build for this machine uses every vector unit it has
        if d.get("mcpu") == "native":
            if "mtriple" in d and not _triple_is_native(str(d["mtriple"])):
                raise TBNError("--mcpu native needs a target that is this machine")
            d["mcpu"] = _native_cpu()
        _check_mcpu(d)
        return TargetSpec("host", name, d, d.get("mcpu"))

    @classmethod
    def runs_here(cls, spec: TargetSpec) -> bool:
        triple = spec.tvm_target.get("mtriple")
        return triple is None or _triple_is_native(str(triple))

    # ------------------------------------------------------------------ build
    @classmethod
    def create(
        cls, spec: TargetSpec, prepared, inputs, outputs, *, tuning_db=None, hand_schedules=True
    ) -> tuple[HostBackend, dict]:
        database, baselines = None, None
        if tuning_db is not None:
            from tbn_tvm.schedules.records import open_database, read_baselines, target_key, tuning_target

            database = open_database(tuning_db, create=False)
            baselines = read_baselines(tuning_db, target_key(tuning_target(spec)))
        facts: dict = {}
        executable, tuned, kept = build(prepared.mod, spec, database, baselines, bool(hand_schedules), facts)
        extra = dict(facts)
        if tuning_db is not None:
            from tbn_tvm.schedules.records import layers_of

            extra["tuning"] = {
                "kernels": tuned,
                "layers": sorted({name for k in tuned for name in layers_of(k, prepared.layers)}),
                "kept_default": kept,
            }
        backend = cls(spec, executable=executable)
        backend.steps = facts["steps"]
        return backend, extra

    def __init__(self, spec: TargetSpec, executable=None, module=None) -> None:
        self.spec = spec
        self.executable = executable
        self._module = module
        self._vm = None
        self.steps: list[dict] = []  # the kernel calls of main in order, with their layers

    def _machine(self):
        import tvm
        from tvm import relax

        if not self.runs_here(self.spec):
            raise TBNError(
                f"a build for {self.spec.name} cannot run on this machine",
                hint="copy the artifact to a matching machine, or compile with --target llvm",
            )
        if self._vm is None:
            self._vm = relax.VirtualMachine(
                self.executable if self.executable is not None else self._module, tvm.cpu()
            )
        return self._vm

    # ------------------------------------------------------------------ running
    def run(self, arrays: list[np.ndarray], *, profile: bool = False) -> tuple[list[np.ndarray], dict]:
        import tvm

        vm = self._machine()
        n = arrays[0].shape[0] if arrays else 1
        per_sample = []
        for i in range(n):
            try:
                out = vm["main"](*[tvm.runtime.tensor(_contiguous(a[i])) for a in arrays])
            except Exception as e:  # noqa: BLE001 - a kernel TVM built but cannot run
                msg = " ".join(f"{type(e).__name__}: {e}".split())
                raise TBNError(
                    f"the compiled model failed while running ({msg[-200:]})", hint="report it with the model"
                ) from None
            outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
            per_sample.append([o.numpy() for o in outs])
        k = len(per_sample[0]) if per_sample else 0
        stats: dict = {"device": "cpu"}
        if profile:  # its own rounds: the wall time they took is reported apart from the run's
            began = time.perf_counter()
            stats["profile"] = self.profile([a[0] for a in arrays])
            stats["profile"]["seconds_profiling"] = time.perf_counter() - began
        return [np.stack([s[j] for s in per_sample]) for j in range(k)], stats

    def profile(self, sample: list[np.ndarray], min_seconds: float = 0.2, max_rounds: int = 50) -> dict:
        """Seconds per kernel call of one inference on ``sample`` (one array per input).

        The Relax VM of TVM 0.27 has no profiler; its call instrumentation times every call of
        a compiled kernel here (``vm.builtin.*`` bookkeeping left out), over at least 3 rounds
        after a warm-up and until ``min_seconds`` have passed (at most ``max_rounds``).
        Returns ``{"rounds", "seconds_per_inference", "calls": [{"kernel", "layers",
        "seconds"}], "kernels": [{"kernel", "calls", "seconds"}]}``: ``calls`` per call site in
        call order, each with the layers it computes (the build's call sites, :attr:`steps`),
        ``kernels`` per kernel (its calls together); ``seconds`` the mean per inference.
        """
        import time

        import tvm
        from tvm import relax

        self._machine()  # refuses a build for another machine
        vm = relax.VirtualMachine(self.executable if self.executable is not None else self._module, tvm.cpu())
        args = [tvm.runtime.tensor(_contiguous(a)) for a in sample]
        vm["main"](*args)  # warm-up: first-call allocations and page faults
        sites: list[list] = []  # per call of an inference, in order: [kernel, seconds summed]
        starts: list[float] = []
        index = [0]

        def instrument(func, symbol, before_run, ret_value, *call_args):  # noqa: ARG001 - VM signature
            now = time.perf_counter()
            if before_run:
                starts.append(now)
            else:
                began = starts.pop()
                if not str(symbol).startswith("vm.builtin."):
                    i = index[0]
                    if i == len(sites):
                        sites.append([str(symbol), 0.0])
                    sites[i][1] += now - began
                    index[0] += 1
            return 0  # VMInstrumentReturnKind.NO_OP

        vm.set_instrument(instrument)
        rounds, t0 = 0, time.perf_counter()
        while rounds < 3 or (time.perf_counter() - t0 < min_seconds and rounds < max_rounds):
            index[0] = 0
            vm["main"](*args)
            rounds += 1
        elapsed = time.perf_counter() - t0
        calls = [
            {"kernel": kernel, "layers": layers, "seconds": seconds / rounds}
            for (kernel, seconds), layers in zip(
                sites, _site_layers([k for k, _ in sites], self.steps), strict=True
            )
        ]
        kernels: dict[str, list] = {}
        for call in calls:
            entry = kernels.setdefault(call["kernel"], [0, 0.0])
            entry[0] += 1
            entry[1] += call["seconds"]
        return {
            "rounds": rounds,
            "seconds_per_inference": elapsed / rounds,
            "calls": calls,
            "kernels": [{"kernel": k, "calls": n, "seconds": secs} for k, (n, secs) in kernels.items()],
        }

    def time(self, arrays: list[np.ndarray], number: int = 10, repeat: int = 5) -> list[float]:
        """Seconds per call of ``main`` on one sample (one value per repeat), measured by TVM's
        time evaluator."""
        import tvm

        vm = self._machine()
        vm.set_input("main", *[tvm.runtime.tensor(_contiguous(a)) for a in arrays])
        res = vm.time_evaluator("invoke_stateful", tvm.cpu(), number=number, repeat=repeat)("main")
        return [float(r) for r in res.results]

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: Path) -> dict:
        from tbn_tvm.quiet import captured

        if self.executable is None:
            raise TBNError("this model was loaded from disk; save the original directory instead")
        name = ARTIFACT_SO if self.runs_here(self.spec) else ARTIFACT_TAR
        with captured():
            self.executable.export_library(str(out_dir / name))
        features = isa_features(self.spec.tvm_target)
        if name == ARTIFACT_TAR:  # tar headers carry times: rewritten so rebuilds are identical
            from tbn_tvm.outdir import normalize_tar

            normalize_tar(out_dir / name)
        return {"artifact": name, "cpu": self.spec.cpu or "generic", "cpu_features": features}

    @classmethod
    def load(cls, spec: TargetSpec, out_dir: Path, manifest: dict) -> HostBackend:
        import tvm

        from tbn_tvm.quiet import captured

        path = out_dir / manifest.get("artifact", ARTIFACT_SO)
        if not path.exists():
            raise TBNError(f"{out_dir}: the artifact {path.name} is missing", hint="compile the model again")
        if not cls.runs_here(spec):
            return cls(spec)
        _check_cpu_features(manifest, out_dir)
        from tbn_tvm.outdir import check_elf

        check_elf(path)  # a truncated library would be mapped and then die with SIGBUS
        try:
            with captured():
                module = tvm.runtime.load_module(str(path))
        except Exception as e:  # noqa: BLE001 - a damaged library
            raise TBNError(
                f"{path}: cannot load the compiled library ({' '.join(str(e).split())[:200]})"
            ) from None
        backend = cls(spec, module=module)
        backend.steps = list(manifest.get("steps", []))
        return backend


def _site_layers(kernels: list[str], steps: list[dict]) -> list[list[str]]:
    """The layers of each kernel call the VM made (``kernels``, in order), from the build's
    call sites (``steps``, in order): the calls are the steps, matched in order by kernel name
    (a call of a kernel no step names, which TVM's later passes may add, computes no layer)."""
    out, j = [], 0
    for kernel in kernels:
        k = next((k for k in range(j, len(steps)) if steps[k].get("kernel") == kernel), None)
        if k is None:
            out.append([])
            continue
        out.append(list(steps[k].get("layers", [])))
        j = k + 1
    return out


#: LLVM feature names that are instruction sets (a build using one dies with SIGILL on a CPU
#: without it); LLVM's other "features" are tuning hints (fast-*, slow-*, macrofusion, ...).
_ISA = re.compile(
    r"^(sse|ssse|avx|fma|f16c|bmi|popcnt|lzcnt|movbe|aes|pclmul|sha|gfni|vaes|vpclmulqdq|adx|amx|"
    r"neon|sve|dotprod|fullfp16|fp16fml|i8mm|bf16|crc|lse|rcpc|crypto|fp-armv8|v|zb|zfh)"
)


def isa_features(target: dict) -> list[str]:
    """The instruction-set features LLVM enables for a host target (its ``mcpu``/``mattr``),
    sorted; empty when LLVM cannot tell."""
    try:
        import tvm
        from tvm.target import codegen

        feats = codegen.llvm_get_cpu_features(tvm.target.Target(dict(target)))
    except Exception:  # noqa: BLE001 - an LLVM without the query
        return []
    return sorted(str(f) for f in feats if _ISA.match(str(f)))


def _check_cpu_features(manifest: dict, out_dir: Path) -> None:
    """Refuse to load a build whose instruction sets this CPU lacks (it would die with an
    illegal instruction in the first kernel)."""
    needed = manifest.get("cpu_features") or []
    if not needed:
        return
    have = set(isa_features({"kind": "llvm", "mcpu": _native_cpu()}))
    if not have:
        return
    missing = [f for f in needed if f not in have]
    if missing:
        shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise TBNError(
            f"{out_dir}: built for CPU '{manifest.get('cpu', '?')}', whose instructions this machine "
            f"lacks ({shown})",
            hint="compile again here, or with --mcpu generic (or the oldest CPU it must run on) "
            "for a portable build",
        )


def _triple_is_native(triple: str) -> bool:
    arch = triple.split("-", 1)[0]
    return (
        _HOST_ARCH.get(platform.machine().lower()) == arch
        and "linux" in triple
        and platform.system() == "Linux"
    )
