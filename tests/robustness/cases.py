"""The robustness corpus: malformed, hostile and edge-case inputs, generated (no files checked in).

Each kind of issue 15 is here, seeded so the corpus is the same on every run.  Tiny models keep a
case under a second on the host; a handful of kinds also build for Cortex-M (C and file names).
"""

from __future__ import annotations

import os
import random
import signal
import struct
from pathlib import Path

import numpy as np
import onnx
from harness import Case
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

REPO = Path(__file__).resolve().parents[2]
MNIST = REPO / "examples" / "tbn-mnist-mlp.onnx"


# ------------------------------------------------------------------ model builders (unchecked)
def make(nodes, inputs, outputs, inits=(), opset=17, ir=8, domains=()) -> onnx.ModelProto:
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [h.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        [nh.from_array(np.asarray(a), n) for n, a in inits],
    )
    ops = [h.make_opsetid("", opset)] + [h.make_opsetid(d, 1) for d in domains]
    m = h.make_model(g, opset_imports=ops)
    m.ir_version = ir
    return m


def tiled(shape, L, seed=0, scale=0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    tile = np.where(rng.random(L) < 0.5, -1.0, 1.0)
    return (scale * np.tile(tile, -(-n // L))[:n]).astype(np.float32).reshape(shape)


def gemm(w=None, x_shape=(1, 16), y_shape=(1, 8), trans_b=1, names=("x", "W", "y"), bias=False, **kw):
    w = tiled((8, 16), 4) if w is None else w
    x, wn, y = names
    inputs = [x, wn] + (["B"] if bias else [])
    inits = [(wn, w)] + ([("B", np.linspace(-1, 1, w.shape[0], dtype=np.float32))] if bias else [])
    return make(
        [h.make_node("Gemm", inputs, [y], transB=trans_b)],
        [(x, T.FLOAT, list(x_shape))],
        [(y, T.FLOAT, list(y_shape))],
        inits,
        **kw,
    )


def mlp(names=("x", "fc1", "relu", "fc2", "y"), node_names=("fc1", "relu", "fc2")) -> onnx.ModelProto:
    x, w1, r, w2, y = names
    return make(
        [
            h.make_node("Gemm", [x, w1], ["h1"], transB=1, name=node_names[0]),
            h.make_node("Relu", ["h1"], ["h2"], name=node_names[1]),
            h.make_node("Gemm", ["h2", w2], [y], transB=1, name=node_names[2]),
        ],
        [(x, T.FLOAT, [1, 16])],
        [(y, T.FLOAT, [1, 4])],
        [(w1, tiled((8, 16), 4)), (w2, tiled((4, 8), 8, seed=1))],
    )


def b(m: onnx.ModelProto) -> bytes:
    return m.SerializeToString()


BASE = b(gemm())
BASE_MLP = b(mlp())


def _compile_steps(*extra, expect="any"):
    return [{"argv": ["compile", "{model}", "-o", "{out}", *extra], "expect": expect}]


# ------------------------------------------------------------------ kinds
def truncations() -> list[Case]:
    cases = []
    for src, tag, count in ((BASE, "gemm", 40), (BASE_MLP, "mlp", 24)):
        offsets = sorted(set(np.linspace(0, len(src) - 1, count).astype(int).tolist()) | {1, len(src) - 1})
        for off in offsets:
            cases.append(Case(f"trunc-{tag}-{off}", "truncation", model=src[:off]))
    data = MNIST.read_bytes()
    for off in (0, 10, 100, 1000, 50_000, 200_000, len(data) - 4096, len(data) - 1):
        cases.append(Case(f"trunc-mnist-{off}", "truncation", model=data[:off], timeout=90))
    return cases


def random_bytes() -> list[Case]:
    rng = random.Random(15)
    cases = [Case("random-empty", "random bytes", model=b"", expect="error")]
    for i, n in enumerate([1, 2, 7, 16, 64, 100, 512, 1000, 4096, 10_000, 65_536, 3, 33, 255, 2048]):
        cases.append(Case(f"random-{i}-{n}", "random bytes", model=rng.randbytes(n)))
    # random bytes behind a valid-looking start, and valid bytes with random tails
    for i in range(6):
        cases.append(Case(f"random-tail-{i}", "random bytes", model=BASE[: 20 + 10 * i] + rng.randbytes(50)))
    for i in range(4):
        cases.append(Case(f"random-prefix-{i}", "random bytes", model=rng.randbytes(8 * (i + 1)) + BASE))
    return cases


def graph_faults() -> list[Case]:
    c = []
    w = tiled((16, 16), 4)
    # cycles
    cyc = make(
        [h.make_node("Add", ["x", "b"], ["a"]), h.make_node("Relu", ["a"], ["b"])],
        [("x", T.FLOAT, [1, 16])],
        [("b", T.FLOAT, [1, 16])],
    )
    c.append(Case("cycle-two", "cyclic graph", model=b(cyc), expect="error"))
    selfloop = make(
        [h.make_node("Gemm", ["y", "W"], ["y"], transB=1)],
        [("x", T.FLOAT, [1, 16])],
        [("y", T.FLOAT, [1, 16])],
        [("W", w)],
    )
    c.append(Case("cycle-self", "cyclic graph", model=b(selfloop), expect="error"))
    cyc3 = make(
        [
            h.make_node("Gemm", ["x", "W"], ["a"], transB=1),
            h.make_node("Add", ["a", "c"], ["b2"]),
            h.make_node("Relu", ["b2"], ["c"]),
            h.make_node("Identity", ["c"], ["y"]),
        ],
        [("x", T.FLOAT, [1, 16])],
        [("y", T.FLOAT, [1, 16])],
        [("W", w)],
    )
    c.append(Case("cycle-three", "cyclic graph", model=b(cyc3), expect="error"))
    # nodes out of topological order (valid for no one: ONNX requires sorted nodes)
    unsorted = make(
        [h.make_node("Relu", ["a"], ["y"]), h.make_node("Gemm", ["x", "W"], ["a"], transB=1)],
        [("x", T.FLOAT, [1, 16])],
        [("y", T.FLOAT, [1, 16])],
        [("W", w)],
    )
    c.append(Case("unsorted-nodes", "cyclic graph", model=b(unsorted)))
    # missing initializers / undefined tensors
    m = gemm()
    del m.graph.initializer[:]
    c.append(Case("missing-init-weight", "missing initializer", model=b(m), expect="error"))
    m = gemm(bias=True)
    del m.graph.initializer[1:]
    c.append(Case("missing-init-bias", "missing initializer", model=b(m), expect="error"))
    m = make(
        [h.make_node("Add", ["x", "nowhere"], ["y"])], [("x", T.FLOAT, [1, 4])], [("y", T.FLOAT, [1, 4])]
    )
    c.append(Case("missing-tensor", "missing initializer", model=b(m), expect="error"))
    m = make([h.make_node("Relu", ["x"], ["a"])], [("x", T.FLOAT, [1, 4])], [("y", T.FLOAT, [1, 4])])
    c.append(Case("missing-output-producer", "missing initializer", model=b(m), expect="error"))
    m = gemm()
    m.graph.initializer[0].ClearField("raw_data")
    c.append(Case("init-without-data", "missing initializer", model=b(m), expect="error"))
    # duplicated names
    m = make(
        [h.make_node("Relu", ["x"], ["y"]), h.make_node("Neg", ["x"], ["y"])],
        [("x", T.FLOAT, [1, 4])],
        [("y", T.FLOAT, [1, 4])],
    )
    c.append(Case("dup-output-name", "duplicated names", model=b(m), expect="error"))
    m = gemm()
    m.graph.initializer.append(nh.from_array(tiled((8, 16), 2, seed=3), "W"))
    c.append(Case("dup-initializer", "duplicated names", model=b(m), expect="error"))
    m = make(
        [h.make_node("Relu", ["x"], ["a"], name="n"), h.make_node("Neg", ["a"], ["y"], name="n")],
        [("x", T.FLOAT, [1, 4])],
        [("y", T.FLOAT, [1, 4])],
    )
    c.append(Case("dup-node-name", "duplicated names", model=b(m)))
    m = make(
        [h.make_node("Gemm", ["x", "x"], ["y"], transB=1)],
        [("x", T.FLOAT, [4, 4])],
        [("y", T.FLOAT, [4, 4])],
    )
    c.append(Case("same-input-twice", "duplicated names", model=b(m)))
    m = gemm()
    m.graph.input.append(h.make_tensor_value_info("x", T.FLOAT, [1, 16]))
    c.append(Case("dup-input", "duplicated names", model=b(m), expect="error"))
    m = gemm()
    m.graph.output.append(h.make_tensor_value_info("y", T.FLOAT, [1, 8]))
    c.append(Case("dup-graph-output", "duplicated names", model=b(m)))
    m = gemm(names=("x", "x2", "y"))
    m.graph.initializer[0].name = "x"
    c.append(Case("init-shadows-input", "duplicated names", model=b(m)))
    # empty graphs, no outputs
    c.append(Case("empty-graph", "graph faults", model=b(make([], [], [])), expect="error"))
    m = make([h.make_node("Relu", ["x"], ["y"])], [("x", T.FLOAT, [1, 4])], [])
    c.append(Case("no-outputs", "graph faults", model=b(m), expect="error"))
    m = make([], [("x", T.FLOAT, [1, 4])], [("x", T.FLOAT, [1, 4])])
    c.append(Case("input-is-output", "graph faults", model=b(m)))
    m = make(
        [h.make_node("Constant", [], ["y"], value=nh.from_array(np.arange(4, dtype=np.float32)))],
        [],
        [("y", T.FLOAT, [4])],
    )
    c.append(Case("no-inputs", "graph faults", model=b(m)))
    return c


def huge_dims() -> list[Case]:
    c = []
    for i, dims in enumerate(
        [[1 << 40], [1 << 31, 1 << 31], [8, 1 << 62], [0, 16], [-1, 16], [1 << 20, 1 << 20]]
    ):
        m = gemm()
        t = m.graph.initializer[0]
        del t.dims[:]
        t.dims.extend(dims)
        t.ClearField("raw_data")
        c.append(Case(f"huge-init-{i}", "huge dims", model=b(m), expect="error"))
    for i, shape in enumerate([[1 << 31, 16], [1 << 40, 16], [0, 16]]):
        m = gemm(x_shape=shape, y_shape=[shape[0], 8])
        c.append(Case(f"huge-input-{i}", "huge dims", model=b(m), expect="any" if shape[0] == 0 else "error"))
    exp = make(
        [h.make_node("Expand", ["x", "s"], ["y"])],
        [("x", T.FLOAT, [1, 1])],
        [("y", T.FLOAT, [40000, 40000])],
        [("s", np.array([40000, 40000], np.int64))],
    )
    c.append(Case("expand-40000", "huge dims", model=b(exp), expect="error"))
    rs = make(
        [h.make_node("ConstantOfShape", ["s"], ["y"], value=nh.from_array(np.array([1.0], np.float32)))],
        [],
        [("y", T.FLOAT, [1 << 20, 1 << 20])],
        [("s", np.array([1 << 20, 1 << 20], np.int64))],
    )
    c.append(Case("constantofshape-huge", "huge dims", model=b(rs), expect="error"))
    # raw_data shorter than the dims say
    m = gemm()
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:40]
    c.append(Case("init-short-data", "huge dims", model=b(m), expect="error"))
    return c


def opsets() -> list[Case]:
    c = []
    for v in (1, 6, 7, 9, 11, 13, 17, 21, 23, 99, 0, 1000):
        c.append(
            Case(
                f"opset-{v}",
                "opsets",
                model=b(gemm(opset=v, ir=3 if v < 7 else 8)),
                expect="error" if v in (0, 99, 1000) else "any",
            )
        )
    m = gemm()
    del m.opset_import[:]
    c.append(Case("opset-none", "opsets", model=b(m)))
    m = make(
        [h.make_node("Foo", ["x"], ["y"], domain="com.evil")],
        [("x", T.FLOAT, [1, 4])],
        [("y", T.FLOAT, [1, 4])],
        domains=["com.evil"],
    )
    c.append(Case("custom-domain", "opsets", model=b(m), expect="error"))
    m = make(
        [h.make_node("Relu", ["x"], ["y"], domain="com.evil")],
        [("x", T.FLOAT, [1, 4])],
        [("y", T.FLOAT, [1, 4])],
    )
    c.append(Case("custom-domain-unimported", "opsets", model=b(m), expect="error"))
    m = make(
        [h.make_node("FusedGemm", ["x", "W"], ["y"], domain="com.microsoft", transB=1)],
        [("x", T.FLOAT, [1, 16])],
        [("y", T.FLOAT, [1, 8])],
        [("W", tiled((8, 16), 4))],
        domains=["com.microsoft"],
    )
    c.append(Case("ms-domain", "opsets", model=b(m), expect="error"))
    m = make([h.make_node("Frobnicate", ["x"], ["y"])], [("x", T.FLOAT, [1, 4])], [("y", T.FLOAT, [1, 4])])
    c.append(Case("unknown-op", "opsets", model=b(m), expect="error"))
    m = gemm()
    m.ir_version = 99
    c.append(Case("ir-99", "opsets", model=b(m), expect="error"))
    for op in ("NonZero", "Unique"):
        m = make(
            [h.make_node(op, ["x"], ["y"])],
            [("x", T.FLOAT, [4])],
            [("y", T.INT64 if op == "NonZero" else T.FLOAT, None)],
        )
        c.append(Case(f"data-dependent-{op}", "data-dependent shapes", model=b(m), expect="error"))
    m = make(
        [h.make_node("Range", ["s", "l", "d"], ["y"])],
        [("s", T.FLOAT, []), ("l", T.FLOAT, []), ("d", T.FLOAT, [])],
        [("y", T.FLOAT, None)],
    )
    c.append(Case("data-dependent-Range", "data-dependent shapes", model=b(m), expect="error"))
    return c


def external_data() -> list[Case]:
    c = []

    def ext(location: str) -> bytes:
        m = gemm()
        t = m.graph.initializer[0]
        t.ClearField("raw_data")
        t.data_location = T.EXTERNAL
        del t.external_data[:]
        e = t.external_data.add()
        e.key, e.value = "location", location
        return b(m)

    def fifo(d: Path) -> None:  # read it and the case hangs: the proof that it was never read
        os.mkfifo(d / "secret.bin")
        (d / "model" / "sub").mkdir()

    for i, loc in enumerate(
        [
            "../secret.bin",
            "/etc/passwd",
            "SECRET_ABS",
            "sub/../../secret.bin",
            "./../secret.bin",
            "/proc/self/mem",
            "/dev/zero",
            "..",
            "",
            "a\x00b",
            "sub",
            "../" * 30 + "etc/passwd",
        ]
    ):

        def setup(d: Path, loc=loc) -> None:
            fifo(d)
            if loc == "SECRET_ABS":
                m = onnx.load_from_string(ext(str(d / "secret.bin")))
                (d / "model" / "model.onnx").write_bytes(b(m))

        c.append(
            Case(
                f"extdata-{i}",
                "external data outside",
                model=ext(loc),
                setup=setup,
                expect="error",
                timeout=30,
            )
        )

    # a good external-data model inside its folder builds
    def inside(d: Path) -> None:
        w = tiled((8, 16), 4)
        (d / "model" / "w.bin").write_bytes(w.tobytes())

    m = onnx.load_from_string(ext("w.bin"))
    t = m.graph.initializer[0]
    for k, v in (("offset", "0"), ("length", str(8 * 16 * 4))):
        e = t.external_data.add()
        e.key, e.value = k, v
    c.append(Case("extdata-inside", "external data outside", model=b(m), setup=inside, expect="any"))

    # a symlink inside the folder pointing outside it
    def link(d: Path) -> None:
        fifo(d)
        os.symlink(d / "secret.bin", d / "model" / "w.bin")

    c.append(
        Case(
            "extdata-symlink-out",
            "external data outside",
            model=ext("w.bin"),
            setup=link,
            expect="error",
            timeout=30,
        )
    )
    return c


HOSTILE = {
    "slash": "a/b",
    "dotdot": "../../canary-evil",  # from OUT_DIR/lib: the case folder; from OUT_DIR: the corpus root
    "dotdot3": "../../../canary-evil",
    "dotdot1": "../canary-evil",
    "dots": "..",
    "nul": "x\x00y",
    "long": "n" * 10_000,
    "include": 'x\n#include "/etc/hostname"\ny',
    "comment": "a*/ int pwned; /*",
    "quote": 'a"b\\',
    "space": "a b\tc",
    "unicode": "\u00e9\u4e2d\u202e",
    "digit": "1x",
    "empty": "",
    "percent": "%s%n%x",
    "macro": "__LINE__",
}


def hostile_names() -> list[Case]:
    c = []
    # raw model text that would be code (sanitised identifiers such as a_int_pwned are fine)
    forbid = ['#include "/etc/hostname"', "int pwned", "canary-evil"]
    for key, name in HOSTILE.items():
        # input, weight (initializer), output, and node names
        if name:
            c.append(
                Case(
                    f"name-input-{key}",
                    "hostile names",
                    model=b(gemm(names=(name, "W", "y"))),
                    forbid_in_c=forbid,
                )
            )
            c.append(
                Case(
                    f"name-init-{key}",
                    "hostile names",
                    model=b(gemm(names=("x", name, "y"))),
                    forbid_in_c=forbid,
                )
            )
            c.append(
                Case(
                    f"name-output-{key}",
                    "hostile names",
                    model=b(gemm(names=("x", "W", name))),
                    forbid_in_c=forbid,
                )
            )
        c.append(
            Case(
                f"name-node-{key}",
                "hostile names",
                model=b(mlp(node_names=(name, name + "r", name + "2"))),
                forbid_in_c=forbid,
            )
        )
    # invalid UTF-8 in names (protobuf strings edited in the serialised bytes)
    for where in ("node",):
        raw = b(mlp(node_names=("AAAfc1", "relu", "fc2")))
        c.append(
            Case(
                f"name-{where}-bad-utf8",
                "hostile names",
                model=raw.replace(b"AAAfc1", b"\xff\xfefc1!"),
                forbid_in_c=forbid,
            )
        )
    raw = b(gemm(names=("xxxx", "W", "y")))
    c.append(Case("name-input-bad-utf8", "hostile names", model=raw.replace(b"xxxx", b"x\xc3\x28x")))
    raw = b(gemm(names=("x", "WWWW", "y")))
    c.append(Case("name-init-bad-utf8", "hostile names", model=raw.replace(b"WWWW", b"W\xff\xffW")))
    # names that sanitise to the same C identifier (a/b, a_b, a-b), as nodes and as weights
    collide = mlp(names=("x", "a/b", "relu", "a_b", "y"), node_names=("a-b", "a.b", "a_b"))
    c.append(Case("names-collide", "hostile names", model=b(collide)))
    c.append(
        Case(
            "cm-names-collide", "hostile names (Cortex-M)", model=b(collide), target="cortex-m4", timeout=120
        )
    )
    # Cortex-M: the generated C library must compile and carry no model text
    for key in ("include", "nul", "slash", "comment", "long"):
        name = HOSTILE[key]
        m = mlp(
            names=(name, name + "w1", "relu", name + "w2", name + "o"),
            node_names=(name, name + "r", name + "2"),
        )
        c.append(
            Case(
                f"cm-names-{key}",
                "hostile names (Cortex-M)",
                model=b(m),
                target="cortex-m4",
                forbid_in_c=forbid,
                timeout=120,
            )
        )
    return c


def _npy_header(shape, descr="<f4") -> bytes:
    hdr = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
    hdr += b" " * (63 - (10 + len(hdr)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr


class _Pwn:
    """Unpickling this writes a file: the proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def run_inputs() -> list[Case]:
    c = []
    good = np.random.default_rng(1).standard_normal((1, 1, 16)).astype(np.float32)

    def case(name, make_input, expect="error", out="y.npy", extra=()):
        def setup(d: Path) -> None:
            make_input(d / "x.npy", d)

        steps = [
            {"argv": ["compile", "{model}", "-o", "{out}"], "expect": "ok"},
            {
                "argv": [
                    "run",
                    "{out}",
                    "--input",
                    "{d}/x.npy",
                    "--output",
                    out if out.startswith("/") else "{d}/" + out,
                    *extra,
                ],
                "expect": expect,
                "writes": [out],
            },
        ]
        c.append(Case(f"run-{name}", "run inputs", model=BASE, setup=setup, steps=steps))

    def arr(a):
        return lambda p, d: np.save(p, a)

    case("float64", arr(good.astype(np.float64)), "any")
    case("int32", arr(good.astype(np.int32)), "any")
    case("bool", arr(good > 0), "any")
    case("complex", arr(good.astype(np.complex64)))
    case("str", arr(np.array(["a", "b"])))
    case("rank1", arr(good.ravel()))
    case("rank2-one-sample", arr(good[0]), "ok")  # [1, 16]: exactly the input shape
    case("batch-axis", arr(np.zeros((3, 16), np.float32)), "ok")  # 3 samples on the batch axis of 1
    case("rank4", arr(good[None]))
    case("wrong-width", arr(np.zeros((1, 1, 15), np.float32)))
    case("empty-batch", arr(np.zeros((0, 1, 16), np.float32)), "any")
    case("scalar", arr(np.float32(1)))
    case("fortran", arr(np.asfortranarray(np.zeros((2, 1, 16), np.float32))), "any")
    case("big-endian", arr(good.astype(">f4")), "any")
    case("nan-inf", arr(np.array([[[np.nan, np.inf, -np.inf] + [0.0] * 13]], np.float32)), "any")
    case(
        "pickle", lambda p, d: np.save(p, np.array([_Pwn(str(d / "PWNED"))], dtype=object), allow_pickle=True)
    )
    case("truncated", lambda p, d: (np.save(p, good), p.write_bytes(p.read_bytes()[:100])))
    case("header-huge", lambda p, d: p.write_bytes(_npy_header((1 << 40, 1, 16)) + b"\0" * 64))
    case("header-bad", lambda p, d: p.write_bytes(b"\x93NUMPY\x01\x00\xff\xff{'descr': "))
    case("header-negative", lambda p, d: p.write_bytes(_npy_header((-1, 1, 16))))
    case("header-object", lambda p, d: p.write_bytes(_npy_header((1, 1, 16), "|O") + b"\x80\x04N."))
    case("not-npy", lambda p, d: p.write_bytes(b"hello"))
    case("empty-file", lambda p, d: p.write_bytes(b""))
    case("directory", lambda p, d: p.mkdir())
    case("missing", lambda p, d: None)
    case("fifo", lambda p, d: os.mkfifo(p))
    case(
        "npz",
        lambda p, d: np.savez(p.with_suffix(""), x=good) or os.rename(str(p.with_suffix("")) + ".npz", p),
        "any",
    )
    case("out-is-dir", arr(good), out="yd", extra=())
    c[-1].setup = lambda d: (np.save(d / "x.npy", good), (d / "yd").mkdir())
    case("out-parent-file", arr(good), out="notes/y.npy")
    c[-1].setup = lambda d: (np.save(d / "x.npy", good), (d / "notes").write_text("a file"))
    case("out-proc", arr(good), out="/proc/y.npy")
    case("out-bad-suffix", arr(good), out="y.txt", expect="any")
    case("timeout-nan", arr(good), extra=("--timeout", "nan"))
    case("timeout-negative", arr(good), extra=("--timeout", "-1"))
    case("named-wrong", arr(good))
    c[-1].steps[1]["argv"][3] = "nope={d}/x.npy"
    return c


def artifacts() -> list[Case]:
    """A good build whose files are then damaged or swapped before ``run``."""
    c = []
    good = np.random.default_rng(2).standard_normal((1, 1, 16)).astype(np.float32)

    def case(name, damage):
        def setup(d: Path) -> None:
            np.save(d / "x.npy", good)
            (d / "evil").mkdir()

        steps = [
            {"argv": ["compile", "{model}", "-o", "{out}"], "expect": "ok"},
            {"argv": ["python-damage"], "damage": damage},
            {
                "argv": ["run", "{out}", "--input", "{d}/x.npy", "--output", "{d}/y.npy"],
                "expect": "error",
                "writes": ["y.npy"],
            },
        ]
        c.append(Case(f"artifact-{name}", "unsafe artifacts", model=BASE, setup=setup, steps=steps))

    import json as _json

    def manifest_edit(fn):
        def damage(out: Path) -> None:
            m = _json.loads((out / "manifest.json").read_text())
            fn(m, out)
            (out / "manifest.json").write_text(_json.dumps(m))

        return damage

    def evil_so(m, out):
        import shutil

        shutil.copy(out / "model.so", out.parent / "evil" / "model.so")
        m["artifact"] = "../evil/model.so"

    case("manifest-dotdot", manifest_edit(evil_so))
    case(
        "manifest-abs", manifest_edit(lambda m, out: m.update(artifact=str(out.parent / "evil" / "model.so")))
    )
    case("manifest-dtype", manifest_edit(lambda m, out: m["inputs"][0].update(dtype="float99")))
    case("manifest-shape", manifest_edit(lambda m, out: m["inputs"][0].update(shape=[-5, "a"])))
    case("manifest-target", manifest_edit(lambda m, out: m.update(target={"family": "nope"})))
    case("manifest-files-gone", manifest_edit(lambda m, out: m.pop("files", None)))
    case("manifest-hash", manifest_edit(lambda m, out: m["files"].update({k: "0" * 64 for k in m["files"]})))
    case("manifest-list", lambda out: (out / "manifest.json").write_text("[1, 2]"))
    case("manifest-notjson", lambda out: (out / "manifest.json").write_text("{"))
    case("manifest-missing", lambda out: (out / "manifest.json").unlink())
    case("manifest-binary", lambda out: (out / "manifest.json").write_bytes(b"\xff\xfe\x00"))
    for n in (0, 100, 4096, -1000, -1):
        case(
            f"so-truncated-{n}",
            lambda out, n=n: (out / "model.so").write_bytes((out / "model.so").read_bytes()[:n]),
        )
    case("so-random", lambda out: (out / "model.so").write_bytes(random.Random(1).randbytes(20000)))

    def flip(out: Path) -> None:
        data = bytearray((out / "model.so").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (out / "model.so").write_bytes(bytes(data))

    case("so-flipped", flip)
    case("so-missing", lambda out: (out / "model.so").unlink())

    def rehashed(out: Path) -> None:  # truncated, and the manifest's SHA-256 updated to match
        import hashlib

        so = out / "model.so"
        so.write_bytes(so.read_bytes()[:4096])
        m = _json.loads((out / "manifest.json").read_text())
        m["files"]["model.so"] = hashlib.sha256(so.read_bytes()).hexdigest()
        (out / "manifest.json").write_text(_json.dumps(m))

    case("so-truncated-rehashed", rehashed)
    case(
        "so-symlink-out",
        lambda out: ((out / "model.so").unlink(), os.symlink(out.parent / "evil" / "x.so", out / "model.so")),
    )
    case("so-fifo", lambda out: ((out / "model.so").unlink(), os.mkfifo(out / "model.so")))
    steps = [
        {
            "argv": ["compile", "{model}", "-o", "{out}", "--target", "cortex-m4", "--no-measure"],
            "expect": "ok",
        },
        {
            "argv": ["python-damage"],
            "damage": lambda out: (out / "firmware.elf").write_bytes(
                (out / "firmware.elf").read_bytes()[:4096]
            ),
        },
        {
            "argv": ["run", "{out}", "--input", "{d}/x.npy", "--output", "{d}/y.npy"],
            "expect": "error",
            "writes": ["y.npy"],
        },
    ]
    c.append(
        Case(
            "artifact-cm-firmware-truncated",
            "unsafe artifacts",
            model=BASE,
            steps=steps,
            timeout=120,
            setup=lambda d: np.save(d / "x.npy", good),
        )
    )
    case("out-is-file", lambda out: (__import__("shutil").rmtree(out), out.write_text("x")))
    return c


def out_dirs() -> list[Case]:
    c = []

    def steps(out: str, expect: str, extra=()):
        return [{"argv": ["compile", "{model}", "-o", out, *extra], "expect": expect}]

    c.append(
        Case(
            "outdir-file",
            "OUT_DIR",
            model=BASE,
            setup=lambda d: (d / "out").write_text("a file"),
            steps=steps("{out}", "error"),
        )
    )
    c.append(
        Case(
            "outdir-parent-file",
            "OUT_DIR",
            model=BASE,
            setup=lambda d: (d / "p").write_text("a file"),
            steps=steps("{d}/p/out", "error"),
        )
    )
    c.append(
        Case(
            "outdir-grandparent-file",
            "OUT_DIR",
            model=BASE,
            setup=lambda d: (d / "p").write_text("x"),
            steps=steps("{d}/p/q/out", "error"),
        )
    )
    c.append(Case("outdir-dot", "OUT_DIR", model=BASE, steps=steps(".", "error")))
    c.append(Case("outdir-empty", "OUT_DIR", model=BASE, steps=steps("", "error")))
    c.append(Case("outdir-slash", "OUT_DIR", model=BASE, steps=steps("/", "error")))
    c.append(Case("outdir-dotdot", "OUT_DIR", model=BASE, steps=steps("..", "error")))
    c.append(Case("outdir-proc", "OUT_DIR", model=BASE, steps=steps("/proc/tbn-out", "error")))
    c.append(Case("outdir-proc-self", "OUT_DIR", model=BASE, steps=steps("/proc/self", "error")))
    c.append(Case("outdir-sys", "OUT_DIR", model=BASE, steps=steps("/sys/tbn-out", "error")))
    c.append(Case("outdir-devnull", "OUT_DIR", model=BASE, steps=steps("/dev/null", "error")))
    c.append(
        Case("outdir-long-250", "OUT_DIR", model=BASE, steps=steps("{d}/" + "o" * 250, "any"), out="o" * 250)
    )
    c.append(
        Case("outdir-long-255", "OUT_DIR", model=BASE, steps=steps("{d}/" + "o" * 255, "any"), out="o" * 255)
    )
    c.append(Case("outdir-long-300", "OUT_DIR", model=BASE, steps=steps("{d}/" + "o" * 300, "error")))
    c.append(
        Case(
            "outdir-dangling",
            "OUT_DIR",
            model=BASE,
            setup=lambda d: os.symlink(d / "nowhere", d / "out"),
            steps=steps("{out}", "error"),
        )
    )
    c.append(
        Case(
            "outdir-user-files",
            "OUT_DIR",
            model=BASE,
            setup=lambda d: ((d / "out").mkdir(), (d / "out" / "mine.txt").write_text("mine")),
            steps=steps("{out}", "error"),
        )
    )
    c.append(
        Case(
            "outdir-user-subdir",
            "OUT_DIR",
            model=BASE,
            setup=lambda d: (
                (d / "out" / "sub").mkdir(parents=True),
                (d / "out" / "sub" / "f").write_text("mine"),
            ),
            steps=steps("{out}", "error"),
        )
    )
    c.append(
        Case(
            "outdir-empty-dir",
            "OUT_DIR",
            model=BASE,
            setup=lambda d: (d / "out").mkdir(),
            steps=steps("{out}", "ok"),
        )
    )
    c.append(Case("outdir-model-itself", "OUT_DIR", model=BASE, steps=steps("{model}", "error")))
    c.append(Case("outdir-model-folder", "OUT_DIR", model=BASE, steps=steps("{d}/model", "error")))
    # earlier outputs: replaced when untouched, refused (and kept) when the user added or edited
    rebuild = [
        {"argv": ["compile", "{model}", "-o", "{out}"], "expect": "ok"},
        {"argv": ["compile", "{model}", "-o", "{out}"], "expect": "ok"},
    ]
    c.append(Case("outdir-rebuild", "OUT_DIR", model=BASE, steps=rebuild))
    notes = [
        {"argv": ["compile", "{model}", "-o", "{out}"], "expect": "ok"},
        {"argv": ["python-damage"], "damage": lambda out: (out / "notes.txt").write_text("the user's notes")},
        {"argv": ["compile", "{model}", "-o", "{out}"], "expect": "error"},
        {
            "argv": ["python-check"],
            "check": lambda out: (out / "notes.txt").read_text() == "the user's notes",
        },
    ]
    c.append(Case("outdir-notes-kept", "OUT_DIR", model=BASE, steps=notes))
    edited = [
        {"argv": ["compile", "{model}", "-o", "{out}"], "expect": "ok"},
        {"argv": ["python-damage"], "damage": lambda out: (out / "model.so").write_bytes(b"edited")},
        {"argv": ["compile", "{model}", "-o", "{out}"], "expect": "error"},
        {"argv": ["python-check"], "check": lambda out: (out / "model.so").read_bytes() == b"edited"},
    ]
    c.append(Case("outdir-edited-kept", "OUT_DIR", model=BASE, steps=edited))
    forced = [
        {"argv": ["compile", "{model}", "-o", "{out}"], "expect": "ok"},
        {"argv": ["python-damage"], "damage": lambda out: (out / "notes.txt").write_text("n")},
        {"argv": ["compile", "{model}", "-o", "{out}", "--force"], "expect": "ok"},
    ]
    c.append(Case("outdir-force", "OUT_DIR", model=BASE, steps=forced))
    fake = [
        {
            "argv": ["python-damage"],
            "damage": lambda out: (
                out.mkdir(),
                (out / "manifest.json").write_text('{"files": {}}'),
                (out / "a.txt").write_text("mine"),
            ),
        },
        {"argv": ["compile", "{model}", "-o", "{out}"], "expect": "error"},
    ]
    c.append(Case("outdir-fake-manifest", "OUT_DIR", model=BASE, steps=fake))
    fake2 = [
        {
            "argv": ["python-damage"],
            "damage": lambda out: (
                out.mkdir(),
                (out / "manifest.json").write_text('{"files": {"../user/notes.txt": "x"}}'),
            ),
        },
        {"argv": ["compile", "{model}", "-o", "{out}"], "expect": "any"},
    ]
    c.append(Case("outdir-manifest-dotdot", "OUT_DIR", model=BASE, steps=fake2))
    c.append(
        Case(
            "outdir-symlink-dir",
            "OUT_DIR",
            model=BASE,
            setup=lambda d: (
                (d / "real").mkdir(),
                (d / "real" / "mine.txt").write_text("m"),
                os.symlink(d / "real", d / "out"),
            ),
            steps=steps("{out}", "error"),
        )
    )
    c.append(
        Case(
            "outdir-in-tmp-names",
            "OUT_DIR",
            model=BASE,
            setup=lambda d: (d / ".out.tbn-AAAA").mkdir(),
            steps=steps("{out}", "ok"),
        )
    )
    # model path faults
    c.append(
        Case(
            "model-missing",
            "paths",
            steps=[{"argv": ["compile", "{d}/nope.onnx", "-o", "{out}"], "expect": "error"}],
        )
    )
    c.append(
        Case(
            "model-dir", "paths", steps=[{"argv": ["compile", "{d}/model", "-o", "{out}"], "expect": "error"}]
        )
    )
    c.append(
        Case(
            "model-fifo",
            "paths",
            setup=lambda d: os.mkfifo(d / "m.onnx"),
            steps=[{"argv": ["compile", "{d}/m.onnx", "-o", "{out}"], "expect": "error"}],
            timeout=30,
        )
    )
    c.append(
        Case(
            "model-devzero",
            "paths",
            steps=[{"argv": ["compile", "/dev/zero", "-o", "{out}"], "expect": "error"}],
            timeout=30,
        )
    )
    c.append(
        Case(
            "model-proc",
            "paths",
            steps=[{"argv": ["compile", "/proc/self/status", "-o", "{out}"], "expect": "error"}],
        )
    )
    c.append(
        Case(
            "model-dangling",
            "paths",
            setup=lambda d: os.symlink(d / "no", d / "m.onnx"),
            steps=[{"argv": ["compile", "{d}/m.onnx", "-o", "{out}"], "expect": "error"}],
        )
    )
    c.append(
        Case(
            "inspect-fifo",
            "paths",
            setup=lambda d: os.mkfifo(d / "m.onnx"),
            steps=[{"argv": ["inspect", "{d}/m.onnx"], "expect": "error"}],
            timeout=30,
        )
    )
    c.append(
        Case(
            "inspect-bad-utf8",
            "paths",
            model=b(mlp(node_names=("AAAfc1", "relu", "fc2"))).replace(b"AAAfc1", b"\xff\xfefc1!"),
            steps=[{"argv": ["inspect", "{model}"], "expect": "any"}],
        )
    )
    c.append(
        Case(
            "inspect-random",
            "paths",
            model=random.Random(3).randbytes(300),
            steps=[{"argv": ["inspect", "{model}"], "expect": "any"}],
        )
    )
    c.append(
        Case(
            "run-not-outdir",
            "paths",
            model=BASE,
            steps=[{"argv": ["run", "{d}/model", "--input", "{d}/x.npy"], "expect": "error"}],
        )
    )
    c.append(
        Case("inspect-outdir-missing", "paths", steps=[{"argv": ["inspect", "{d}/nope"], "expect": "error"}])
    )
    return c


def shape_faults() -> list[Case]:
    c = []
    k_mismatch = gemm(w=tiled((8, 15), 5), x_shape=(1, 16))
    c.append(Case("gemm-k-mismatch", "shape faults", model=b(k_mismatch), expect="error"))
    c.append(
        Case(
            "input-shape-k",
            "shape faults",
            model=BASE,
            compile_args=["--input-shape", "x=1,15"],
            expect="error",
        )
    )
    c.append(
        Case(
            "input-shape-rank",
            "shape faults",
            model=BASE,
            compile_args=["--input-shape", "x=16"],
            expect="error",
        )
    )
    c.append(
        Case(
            "input-shape-zero",
            "shape faults",
            model=BASE,
            compile_args=["--input-shape", "x=0,16"],
            expect="any",
        )
    )
    c.append(
        Case(
            "input-shape-neg",
            "shape faults",
            model=BASE,
            compile_args=["--input-shape", "x=-1,16"],
            expect="error",
        )
    )
    c.append(
        Case(
            "input-shape-huge",
            "shape faults",
            model=BASE,
            compile_args=["--input-shape", "x=99999999999999,16"],
            expect="error",
        )
    )
    c.append(
        Case(
            "input-shape-unknown",
            "shape faults",
            model=BASE,
            compile_args=["--input-shape", "nope=1,16"],
            expect="error",
        )
    )
    c.append(
        Case(
            "input-shape-junk",
            "shape faults",
            model=BASE,
            compile_args=["--input-shape", "x=a,b"],
            expect="error",
        )
    )
    dyn = gemm(x_shape=("N", 16), y_shape=("N", 8))
    c.append(Case("dynamic-batch", "shape faults", model=b(dyn), expect="any"))
    c.append(
        Case(
            "dynamic-batch-fixed",
            "shape faults",
            model=b(dyn),
            compile_args=["--input-shape", "x=2,16"],
            expect="any",
        )
    )
    m = gemm()
    m.graph.input[0].type.tensor_type.elem_type = T.UNDEFINED
    c.append(Case("elem-undefined", "shape faults", model=b(m), expect="error"))
    m = make(
        [h.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        [("x", T.INT64, [1, 4])],
        [("y", T.INT64, [1, 2])],
        [("W", np.ones((2, 4), np.int64))],
    )
    c.append(Case("gemm-int64", "shape faults", model=b(m), expect="error"))
    m = make(
        [h.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        [("x", T.FLOAT, [1, 16])],
        [("y", T.FLOAT, [1, 8])],
        [("W", tiled((8, 16), 4).astype(np.float16))],
    )
    c.append(Case("gemm-f32-f16", "shape faults", model=b(m), expect="error"))
    c.append(
        Case(
            "gemm-zero-size",
            "shape faults",
            model=b(gemm(w=np.zeros((0, 16), np.float32), y_shape=(1, 0))),
            expect="any",
        )
    )
    c.append(Case("gemm-transb0", "shape faults", model=b(gemm(trans_b=0)), expect="error"))
    m = onnx.load(str(MNIST))
    for n in m.graph.node:
        for a in n.attribute:
            if a.name == "transB":
                a.i = 0
    c.append(Case("mnist-transb0", "shape faults", model=b(m), expect="error"))
    c.append(Case("wrong-declared-output", "shape faults", model=b(gemm(y_shape=(1, 9))), expect="error"))
    c.append(
        Case(
            "wrong-declared-dtype",
            "shape faults",
            model=b(
                make([h.make_node("Relu", ["x"], ["y"])], [("x", T.FLOAT, [1, 4])], [("y", T.INT32, [1, 4])])
            ),
            expect="error",
        )
    )
    c.append(
        Case(
            "tile-40-over-8x12",
            "shape faults",
            model=b(gemm(w=tiled((8, 12), 40), x_shape=(1, 12))),
            expect="build",
        )
    )
    return c


def non_finite() -> list[Case]:
    c = []
    relu = make([h.make_node("Relu", ["x"], ["y"])], [("x", T.FLOAT, [3])], [("y", T.FLOAT, [3])])
    xs = np.array([np.nan, -1.0, 2.0], np.float32)
    c.append(Case("nan-relu", "NaN/Inf", model=b(relu), feeds={"x": xs}, expect="build"))
    c.append(
        Case(
            "nan-relu-cm",
            "NaN/Inf",
            model=b(relu),
            feeds={"x": xs},
            target="cortex-m4",
            expect="build",
            timeout=120,
        )
    )
    for op in ("Max", "Min"):
        m = make(
            [h.make_node(op, ["x", "z"], ["y"])],
            [("x", T.FLOAT, [4])],
            [("y", T.FLOAT, [4])],
            [("z", np.array([0, np.nan, 1, -np.inf], np.float32))],
        )
        c.append(
            Case(
                f"nan-{op.lower()}",
                "NaN/Inf",
                model=b(m),
                feeds={"x": np.array([np.nan, 1, np.inf, 2], np.float32)},
                expect="build",
            )
        )
        if op == "Max":
            feeds = {"x": np.array([np.nan, 1, np.inf, 2], np.float32)}
            c.append(
                Case(
                    "nan-max-cm",
                    "NaN/Inf",
                    model=b(m),
                    feeds=feeds,
                    target="cortex-m4",
                    expect="build",
                    timeout=120,
                )
            )
    m = make(
        [h.make_node("Clip", ["x", "lo", "hi"], ["y"])],
        [("x", T.FLOAT, [4])],
        [("y", T.FLOAT, [4])],
        [("lo", np.float32(0)), ("hi", np.float32(6))],
    )
    c.append(
        Case(
            "nan-clip",
            "NaN/Inf",
            model=b(m),
            feeds={"x": np.array([np.nan, -1, 7, np.inf], np.float32)},
            expect="build",
        )
    )
    for v, tag in ((np.nan, "nan"), (np.inf, "inf"), (-np.inf, "ninf")):
        for pos in (0, 37, 127):
            w = tiled((8, 16), 4)
            w.ravel()[pos] = v
            c.append(Case(f"weight-{tag}-{pos}", "NaN/Inf", model=b(gemm(w=w, bias=True)), expect="build"))
        w = tiled((8, 16), 4)
        w.ravel()[5] = v
        c.append(
            Case(
                f"weight-{tag}-cm",
                "NaN/Inf",
                model=b(gemm(w=w)),
                target="cortex-m4",
                expect="build",
                timeout=120,
            )
        )
    # NaN/Inf inputs through the tiled MLP (relu in the middle)
    for i, vals in enumerate(([np.nan], [np.inf], [-np.inf], [np.nan, np.inf], [3e38, 3e38])):
        x = np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32)
        x.ravel()[: len(vals)] = vals
        c.append(Case(f"input-nonfinite-{i}", "NaN/Inf", model=BASE_MLP, feeds={"x": x}, expect="build"))
    m = onnx.load(str(MNIST))
    w = nh.to_array(m.graph.initializer[0]).copy()
    w.ravel()[3] = np.nan
    m.graph.initializer[0].CopyFrom(nh.from_array(w, m.graph.initializer[0].name))
    c.append(Case("mnist-one-nan-weight", "NaN/Inf", model=b(m), expect="build", timeout=120))
    return c


def signals() -> list[Case]:
    """SIGINT/SIGTERM at several moments of a compile over an earlier output: that output stays
    as it was, no temporary entry is left, the exit is clean (130/143 or a finished build)."""
    c = []
    for sig, tag in ((signal.SIGINT, "int"), (signal.SIGTERM, "term")):
        for delay in (0.0, 0.05, 0.15, 0.3, 0.5):
            steps = [
                {"argv": ["compile", "{model}", "-o", "{out}"], "expect": "ok"},
                {"argv": ["compile", "{d}/model/other.onnx", "-o", "{out}"], "signal": [int(sig), delay]},
            ]
            c.append(
                Case(
                    f"signal-{tag}-{int(delay * 1000)}",
                    "signals",
                    model=BASE,
                    steps=steps,
                    setup=lambda d: (d / "model" / "other.onnx").write_bytes(BASE_MLP),
                )
            )
    for sig, tag in ((signal.SIGINT, "int"), (signal.SIGTERM, "term")):
        steps = [
            {
                "argv": ["compile", "{model}", "-o", "{out}", "--target", "cortex-m4", "--no-measure"],
                "signal": [int(sig), 1.0],
            }
        ]
        c.append(Case(f"signal-cm-{tag}", "signals", model=BASE, steps=steps, timeout=120))
    return c


# ------------------------------------------------------------------ mutations of valid models
def mutate(src: bytes, rng: random.Random) -> bytes:
    """One seeded mutation of a valid model: flip bytes, drop a node, swap inputs, change an
    attribute or a dimension."""
    how = rng.randrange(6)
    if how == 0:
        data = bytearray(src)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        return bytes(data)
    m = onnx.load_from_string(src)
    g = m.graph
    if how == 1 and len(g.node) > 0:
        del g.node[rng.randrange(len(g.node))]
    elif how == 2 and g.node:
        n = g.node[rng.randrange(len(g.node))]
        if len(n.input) >= 2:
            n.input[0], n.input[1] = n.input[1], n.input[0]
    elif how == 3 and g.node:
        n = g.node[rng.randrange(len(g.node))]
        for a in n.attribute:
            if a.type == onnx.AttributeProto.INT:
                a.i = rng.choice([0, 1, -1, 2, 1 << 40])
    elif how == 4:
        vals = list(g.input) + list(g.output)
        t = rng.choice(vals).type.tensor_type
        if t.shape.dim:
            t.shape.dim[rng.randrange(len(t.shape.dim))].dim_value = rng.choice([0, 1, 2, 15, 17, 1 << 33])
    else:
        init = g.initializer[rng.randrange(len(g.initializer))] if g.initializer else None
        if init is not None:
            a = nh.to_array(init).copy()
            flat = a.ravel()
            if flat.size:
                flat[rng.randrange(flat.size)] = rng.choice([np.nan, np.inf, 0.0, -1.0, 1e30])
            init.CopyFrom(nh.from_array(a, init.name))
    return m.SerializeToString()


def mutations(count: int = 40) -> list[Case]:
    rng = random.Random(1515)
    return [
        Case(f"mutation-{i}", "mutations", model=mutate(rng.choice([BASE, BASE_MLP]), rng))
        for i in range(count)
    ]


def corpus() -> list[Case]:
    cases = []
    for kind in (
        truncations,
        random_bytes,
        graph_faults,
        huge_dims,
        opsets,
        external_data,
        hostile_names,
        run_inputs,
        artifacts,
        out_dirs,
        shape_faults,
        non_finite,
        signals,
        mutations,
    ):
        cases.extend(kind())
    return cases
