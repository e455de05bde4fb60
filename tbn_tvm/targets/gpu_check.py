"""Numerics of the CUDA schedules without a GPU: the same scheduled TIR, run on OpenCL.

The CUDA back end (:mod:`tbn_tvm.targets.cuda`) schedules every kernel of the fused graph for a
GPU (thread bindings, shared memory, cross-thread reductions).  That scheduled module is
target-neutral TIR; this module lowers *the same* PrimFuncs with TVM's OpenCL code generator
instead of the CUDA one and runs them with pyopencl, on whatever OpenCL device the machine has
(PoCL on a CPU: Debian ``pocl-opencl-icd``).  So the loop nests, index arithmetic, bit
unpacking, shared-memory staging and barriers, thread bindings and epilogues the GPU would run
are executed in parallel work-groups and compared with a reference, on a machine with no GPU.

What differs from the CUDA build: TVM lowers a cross-thread reduction with warp shuffles for
CUDA (warp size 32) and through shared memory for this OpenCL target (warp size 1), and the
final code comes from another code generator and compiler.  Speed is not measured here.

How a kernel runs: each PrimFunc goes through TVM's default TIR pipeline for the OpenCL target;
the host half it leaves (``call_ffi_kernel`` launches with their grid and block sizes, the
workspace buffers it allocates) is read back from the lowered IR and replayed with pyopencl, in
order; the device half is TVM's OpenCL source.  The Relax graph between kernels (the fused
module's ``main``: ``call_tir`` steps, reshapes) is walked by :func:`tbn_tvm.targets.clib.lower.extract`.

>>> unavailable() is None or isinstance(unavailable(), str)
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: The Debian packages that give an OpenCL device on a CPU.
APT_PACKAGES = "pocl-opencl-icd ocl-icd-libopencl1"

_DIM = {"x": 0, "y": 1, "z": 2}


def unavailable() -> str | None:
    """Why OpenCL cannot run here (None when a device is usable)."""
    try:
        import pyopencl as cl
    except ImportError:
        return "pyopencl is not installed (pip install pyopencl)"
    try:
        devices = [d for p in cl.get_platforms() for d in p.get_devices()]
    except Exception as e:  # noqa: BLE001 - no ICD loader or no platform
        return f"no OpenCL platform ({' '.join(str(e).split())[:120]}; apt-get install {APT_PACKAGES})"
    if not devices:
        return f"no OpenCL device (apt-get install {APT_PACKAGES})"
    return None


def opencl_target(cuda_target=None):
    """The OpenCL target the CUDA schedules are re-lowered for: the CUDA target's thread and
    shared-memory limits (so TVM accepts the same launch shapes), warp size 1."""
    import tvm

    d = {
        "kind": "opencl",
        "max_num_threads": 1024,
        "max_threads_per_block": 1024,
        "max_shared_memory_per_block": 49152,
        "thread_warp_size": 1,
    }
    if cuda_target is not None:
        for key in ("max_num_threads", "max_threads_per_block", "max_shared_memory_per_block"):
            value = cuda_target.attrs.get(key)
            if value is not None:
                d[key] = int(value)
    return tvm.target.Target(d, host={"kind": "llvm"})


@dataclass
class Launch:
    """One kernel launch replayed from the lowered host code."""

    kernel: str
    args: list[tuple]  # ("param", i) | ("work", j) | ("scalar", value, dtype)
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    dyn_shared: int = 0


@dataclass
class LoweredKernel:
    """A PrimFunc lowered for OpenCL: its device source, launches and workspace buffers."""

    name: str
    source: str
    launches: list[Launch]
    workspaces: list[int] = field(default_factory=list)  # bytes of each workspace buffer
    num_params: int = 0


def _walk(stmt, visit) -> None:
    """Visit ``stmt`` and every statement under it, in program order."""
    import tvm

    visit(stmt)
    if isinstance(stmt, tvm.tirx.Evaluate):
        visit(stmt.value)
    for x in getattr(stmt, "seq", None) or []:
        _walk(x, visit)
    for name in ("body", "then_case", "else_case"):
        b = getattr(stmt, name, None)
        if isinstance(b, tvm.tirx.Stmt):
            _walk(b, visit)


def lower_for_opencl(name: str, prim, target) -> LoweredKernel:
    """Lower one scheduled PrimFunc for ``target`` (:func:`opencl_target`) and read its launches."""
    import tvm
    from tvm.tirx.build import codegen_build, split_host_device_mods

    mod = tvm.IRModule({name: prim.with_attr("global_symbol", name)})
    mod = tvm.tirx.transform.BindTarget(target)(mod)
    pipeline, _finish_host, finish_device = tvm.tirx.get_default_tir_pipeline(target)
    with target:
        mod = pipeline(mod)
    host_mod, device_mods = split_host_device_mods(mod)
    sources, kernel_params = [], {}
    for dev_target, dev_mod in device_mods.items():
        dev_mod = finish_device()(dev_mod)
        for gv, f in dev_mod.functions_items():
            kernel_params[gv.name_hint] = [str(p.ty) for p in f.params]
        sources.append(codegen_build(dev_mod, dev_target).inspect_source())
    host = [f for _, f in host_mod.functions_items()]
    if len(host) != 1:
        raise RuntimeError(f"{name}: expected one host function after lowering, got {len(host)}")
    params = list(prim.params)
    origin: dict = {}  # buffer var -> ("param", i) | ("work", j)
    workspaces: list[int] = []
    launches: list[Launch] = []

    def resolve(expr):
        if (
            isinstance(expr, tvm.ir.Call)
            and isinstance(expr.op, tvm.ir.Op)
            and expr.op.name == "tirx.buffer_data"
        ):
            return resolve(expr.args[0])
        for key, value in origin.items():
            if key.same_as(expr):
                return value
        return None

    def visit(node) -> None:
        kind = type(node).__name__
        if kind == "DeclBuffer":
            buf = node.buffer
            for i, p in enumerate(params):
                if buf.same_as(p):
                    origin[buf] = ("param", i)
                    return
            src = resolve(node.data) if node.data is not None else None
            if src is not None:
                origin[buf] = src
        elif kind == "AllocBuffer":
            buf = node.buffer
            n = int(np.prod([int(d) for d in buf.shape])) if len(buf.shape) else 1
            origin[buf] = ("work", len(workspaces))
            workspaces.append(max(n * np.dtype(str(buf.dtype)).itemsize, 4))
        elif kind == "Call" and isinstance(node.op, tvm.ir.Op) and node.op.name == "tirx.call_ffi_kernel":
            kname = str(node.args[0].value)
            n_args = len(kernel_params[kname])
            args: list[tuple] = []
            for a in node.args[1 : 1 + n_args]:
                src = resolve(a)
                if src is not None:
                    args.append(src)
                elif isinstance(a, tvm.tirx.IntImm | tvm.tirx.FloatImm):
                    args.append(("scalar", a.value, str(a.ty)))
                else:
                    raise RuntimeError(f"{name}: cannot follow kernel argument {a} of {kname}")
            grid, block, dyn = [1, 1, 1], [1, 1, 1], 0
            values = [int(v) for v in node.args[1 + n_args :]]
            for tag, value in zip(node.attrs.launch_params, values, strict=True):
                tag = str(tag)
                if tag.startswith("blockIdx."):
                    grid[_DIM[tag[-1]]] = value
                elif tag.startswith("threadIdx."):
                    block[_DIM[tag[-1]]] = value
                elif "dyn_shared" in tag:
                    dyn = value
            launches.append(Launch(kname, args, tuple(grid), tuple(block), dyn))

    _walk(host[0].body, visit)
    return LoweredKernel(name, "\n".join(sources), launches, workspaces, len(params))


class OpenCLExecutor:
    """Runs a fused, GPU-scheduled Relax module (what :func:`tbn_tvm.passes.pipeline.lower_cuda`
    returns before TVM's finishing passes) kernel by kernel on an OpenCL device.

    >>> ex = OpenCLExecutor(scheduled_mod, cuda_target)     # doctest: +SKIP
    >>> ex.run([x])[0]                                      # doctest: +SKIP
    """

    def __init__(self, mod, cuda_target=None) -> None:
        import pyopencl as cl

        from tbn_tvm.targets.clib.lower import extract

        self.graph = extract(mod)
        self.target = opencl_target(cuda_target)
        self.kernels = {
            name: lower_for_opencl(name, prim, self.target) for name, prim in self.graph.kernels.items()
        }
        self.ctx = cl.Context([_device()])
        self.queue = cl.CommandQueue(self.ctx)
        self._launchers: dict[tuple[str, str], object] = {}  # (PrimFunc, kernel) -> cl.Kernel
        for name, k in self.kernels.items():
            program = cl.Program(self.ctx, k.source).build()
            for launch in k.launches:
                self._launchers.setdefault((name, launch.kernel), cl.Kernel(program, launch.kernel))
        self._consts: dict[str, object] = {}

    @property
    def sources(self) -> dict[str, str]:
        """OpenCL source of every kernel (name -> source)."""
        return {name: k.source for name, k in self.kernels.items()}

    def _buffer(self, array: np.ndarray):
        import pyopencl as cl

        a = np.ascontiguousarray(array)
        flags = cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR
        return cl.Buffer(self.ctx, flags, hostbuf=a if a.nbytes else np.zeros(1, np.float32))

    def _empty(self, nbytes: int):
        import pyopencl as cl

        return cl.Buffer(self.ctx, cl.mem_flags.READ_WRITE, max(int(nbytes), 4))

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """One call of ``main`` with its inputs (the module's shapes); returns its outputs."""
        import pyopencl as cl

        g = self.graph
        bufs: dict[str, object] = {}
        for name, v in g.values.items():
            if v.alias_of is not None:
                continue
            if v.kind == "input":
                a = np.asarray(arrays[v.index])
                if tuple(a.shape) != tuple(v.shape) or str(a.dtype) != v.dtype:
                    raise ValueError(
                        f"input {v.index}: expected {v.dtype}{list(v.shape)}, got {a.dtype}{list(a.shape)}"
                    )
                bufs[name] = self._buffer(a)
            elif v.kind == "const":
                if name not in self._consts:
                    self._consts[name] = self._buffer(v.data)
                bufs[name] = self._consts[name]
            else:
                bufs[name] = self._empty(v.nbytes)
        for step in g.steps:
            k = self.kernels[step.kernel]
            args = [bufs[g.root(a)] for a in step.args]
            work = [self._empty(n) for n in k.workspaces]
            for launch in k.launches:
                cl_args = []
                for a in launch.args:
                    if a[0] == "param":
                        cl_args.append(args[a[1]])
                    elif a[0] == "work":
                        cl_args.append(work[a[1]])
                    else:
                        cl_args.append(np.dtype(a[2]).type(a[1]))
                if launch.dyn_shared:
                    cl_args.append(cl.LocalMemory(launch.dyn_shared))
                gsize = tuple(launch.grid[i] * launch.block[i] for i in range(3))
                self._launchers[(step.kernel, launch.kernel)](self.queue, gsize, launch.block, *cl_args)
        outs = []
        for name in g.outputs:
            v = g.values[name]
            host = np.empty(v.shape, v.dtype)
            cl.enqueue_copy(self.queue, host, bufs[g.root(name)])
            outs.append(host)
        self.queue.finish()
        return outs


def _device():
    import pyopencl as cl

    devices = [d for p in cl.get_platforms() for d in p.get_devices()]
    if not devices:
        raise RuntimeError(f"no OpenCL device (apt-get install {APT_PACKAGES})")
    return devices[0]
