"""The CMSIS-NN int8 baseline of issue 13: the authors' MNIST MLP as two ``arm_fully_connected_s8``
calls, on the same QEMU firmware harness and instruction-count plugin as tbn-tvm's builds.

CMSIS-NN is not part of tbn-tvm: it is built from its public source
(https://github.com/ARM-software/CMSIS-NN) at the pinned commit :data:`PINNED_COMMIT`.  Where
the source comes from, first found wins:

1. ``python -m benchmarks --cmsis-nn DIR``, else the environment variable
   ``TBN_BENCH_CMSIS_NN``: a clone of CMSIS-NN (a work tree or a bare/mirror git directory;
   the pinned commit is extracted from it with ``git archive``), or an unpacked source tree
   holding ``Include/arm_nnfunctions.h`` (used as it is; its commit is then unknown).
2. The cache ``$XDG_CACHE_HOME/tbn-tvm/cmsis-nn-<commit>`` (``~/.cache/...``), filled by an
   earlier run from 1.

Nothing is downloaded: with no source the row is skipped with a printed reason
(``git clone https://github.com/ARM-software/CMSIS-NN`` and point ``TBN_BENCH_CMSIS_NN`` at it).

The model: the float weights of ``tbn_tvm.zoo.authors_mnist_mlp`` (784-128-10, no biases)
quantized per tensor as TFLite does (weights int8 symmetric, scale max|W|/127; activations
int8 asymmetric: the input with scale 1/255 and zero point -128 (pixels in [0, 1]), fc1's output
and the logits with ranges calibrated on ``CALIBRATION_IMAGES`` MNIST test images).
``tbn_model_run`` quantizes the 784 input floats, runs ``arm_fully_connected_s8`` twice (fc1's
ReLU is its activation clamp) and dequantizes the 10 logits: the instruction count covers all
of it, from the entry of ``tbn_model_run`` to its return.  Built with the board's flags
(``-mcpu=cortex-m4 -mfloat-abi=hard``, ``__ARM_FEATURE_DSP``: the SMLAD path) at ``-O2``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

PINNED_COMMIT = "99f736a63036613032f9b70de36b493bcd7802d4"
UPSTREAM = "https://github.com/ARM-software/CMSIS-NN"
ENV = "TBN_BENCH_CMSIS_NN"
#: The CMSIS-NN sources the two int8 fully connected layers need (headers: all of Include/).
SOURCES = (
    "Source/FullyConnectedFunctions/arm_fully_connected_s8.c",
    "Source/NNSupportFunctions/arm_nn_vec_mat_mult_t_s8.c",
)
CALIBRATION_IMAGES = 1000
TITLE = f"CMSIS-NN int8 `arm_fully_connected_s8` x2 (per-tensor; CMSIS-NN {PINNED_COMMIT[:7]})"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tbn-tvm"


def _git_dir(path: Path) -> list[str] | None:
    """git arguments reading ``path`` (a work tree or a bare/mirror git directory), or None."""
    for args in (["-C", str(path)], ["--git-dir", str(path)]):
        proc = subprocess.run(
            ["git", *args, "rev-parse", "--git-dir"], capture_output=True, text=True, check=False
        )
        if proc.returncode == 0:
            return args
    return None


def _extract(git_args: list[str], dest: Path) -> None:
    """The pinned commit's Include/ and :data:`SOURCES` from a git repository into ``dest``."""
    proc = subprocess.run(
        ["git", *git_args, "archive", "--format=tar", PINNED_COMMIT, "Include", *SOURCES, "LICENSE"],
        capture_output=True,
        check=False,
    )
    if proc.returncode:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise LookupError(
            f"commit {PINNED_COMMIT[:7]} not in it ({msg[-1] if msg else 'git archive failed'})"
        )
    tmp = Path(tempfile.mkdtemp(prefix=".cmsis-nn-", dir=dest.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        (tmp / "COMMIT").write_text(PINNED_COMMIT + "\n")
        tmp.rename(dest)  # atomic: a cache dir is complete or absent
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def find_source(option: str | None = None) -> tuple[Path | None, str]:
    """``(source tree, where it came from)``, or ``(None, why not)``."""
    given = option or os.environ.get(ENV)
    how = "--cmsis-nn" if option else ENV
    cached = cache_root() / f"cmsis-nn-{PINNED_COMMIT[:12]}"
    if given:
        path = Path(given).expanduser()
        if not path.exists():
            return None, f"{how} names a path that does not exist"
        git_args = _git_dir(path)
        if git_args is not None:
            if not (cached / "COMMIT").is_file():
                cached.parent.mkdir(parents=True, exist_ok=True)
                try:
                    _extract(git_args, cached)
                except LookupError as e:
                    return None, f"the CMSIS-NN clone of {how}: {e}"
            return cached, f"git {PINNED_COMMIT[:7]} (from the clone named by {how})"
        if (path / "Include" / "arm_nnfunctions.h").is_file() and all((path / s).is_file() for s in SOURCES):
            return path, f"a source tree named by {how} (commit not checked)"
        return None, f"{how} names neither a CMSIS-NN clone nor a CMSIS-NN source tree"
    if (cached / "COMMIT").is_file():
        return cached, f"git {PINNED_COMMIT[:7]} (cached by an earlier run)"
    return None, (
        f"no CMSIS-NN source: set {ENV} (or --cmsis-nn DIR) to a clone of {UPSTREAM} "
        f"(pinned commit {PINNED_COMMIT[:7]})"
    )


# ------------------------------------------------------------------------------- quantization
def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``real = m * 2^(shift - 31)`` with ``m`` a Q31 int."""
    if real == 0.0:
        return 0, 0
    mant, shift = np.frexp(real)
    q = int(round(float(mant) * (1 << 31)))
    if q == 1 << 31:
        q //= 2
        shift += 1
    return q, int(shift)


def _zero_point(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zp = int(round(-128 - lo / scale))
    return float(scale), int(np.clip(zp, -128, 127))


def quantize(w1: np.ndarray, w2: np.ndarray, calib: np.ndarray) -> dict:
    """Per-tensor int8 parameters of ``y = W2 relu(W1 x)`` (``W`` as ``[out, in]``)."""
    s_in, zp_in = 1.0 / 255.0, -128
    s_w1 = float(np.abs(w1).max()) / 127.0
    s_w2 = float(np.abs(w2).max()) / 127.0
    q_w1 = np.clip(np.round(w1 / s_w1), -127, 127).astype(np.int8)
    q_w2 = np.clip(np.round(w2 / s_w2), -127, 127).astype(np.int8)
    h = np.maximum(calib.astype(np.float64) @ w1.T.astype(np.float64), 0)
    s_h, zp_h = _zero_point(0.0, float(h.max()))
    logits = h @ w2.T.astype(np.float64)
    s_y, zp_y = _zero_point(float(logits.min()), float(logits.max()))
    m1, sh1 = quantize_multiplier(s_in * s_w1 / s_h)
    m2, sh2 = quantize_multiplier(s_h * s_w2 / s_y)
    return dict(
        s_in=s_in, zp_in=zp_in, q_w1=q_w1, q_w2=q_w2, s_h=s_h, zp_h=zp_h, s_y=s_y, zp_y=zp_y,
        m1=m1, sh1=sh1, m2=m2, sh2=sh2,
    )  # fmt: skip


def _c_array(name: str, arr: np.ndarray, ctype: str) -> str:
    vals = arr.reshape(-1).tolist()
    rows = [", ".join(str(v) for v in vals[i : i + 24]) for i in range(0, len(vals), 24)]
    body = ",\n    ".join(rows)
    return f"static const {ctype} {name}[{len(vals)}] __attribute__((aligned(4))) = {{\n    {body}\n}};\n"


def write_library(q: dict, src: Path, lib: Path) -> None:
    """The model C library (``model.h`` + ``model.c`` + the CMSIS-NN sources) in ``lib``."""
    (lib / "cmsis").mkdir(parents=True)
    shutil.copytree(src / "Include", lib / "cmsis" / "Include")
    for s in SOURCES:
        shutil.copyfile(src / s, lib / "cmsis" / Path(s).name)
    n_in, n_h = q["q_w1"].shape[1], q["q_w1"].shape[0]
    n_out = q["q_w2"].shape[0]
    (lib / "model.h").write_text(
        "#ifndef TBN_MODEL_H\n#define TBN_MODEL_H\n"
        f"#define TBN_MODEL_INPUT_SIZE {n_in}\n#define TBN_MODEL_OUTPUT_SIZE {n_out}\n"
        f"#define TBN_MODEL_ARENA_BYTES {n_in + n_h + n_out}\n"
        "int tbn_model_run(const float *in, float *out);\n#endif\n"
    )
    (lib / "model.c").write_text(
        f"""/* The authors' MNIST MLP in int8 with CMSIS-NN {PINNED_COMMIT[:7]} (generated by benchmarks/cmsis_nn.py). */
#include "model.h"
#include "arm_nnfunctions.h"

{_c_array("fc1_w", q["q_w1"], "int8_t")}
{_c_array("fc2_w", q["q_w2"], "int8_t")}
static int8_t x_q[{n_in}] __attribute__((aligned(4)));
static int8_t h_q[{n_h}] __attribute__((aligned(4)));
static int8_t y_q[{n_out}] __attribute__((aligned(4)));

/* One fully connected layer; the name is the one the instruction counter's per-kernel list
 * looks up (run_qemu(per_kernel=["cmsis_fc"])), so the count of the two CMSIS-NN calls is
 * reported apart from the quantization around them. */
__attribute__((noinline)) int __tvm_ffi_cmsis_fc(const cmsis_nn_fc_params *fc, const cmsis_nn_per_tensor_quant_params *qp,
                                                 const cmsis_nn_dims *in_d, const int8_t *in, const cmsis_nn_dims *f_d,
                                                 const int8_t *w, const cmsis_nn_dims *b_d, const cmsis_nn_dims *o_d,
                                                 int8_t *out)
{{
    cmsis_nn_context ctx = {{0, 0}};
    return arm_fully_connected_s8(&ctx, fc, qp, in_d, in, f_d, w, b_d, 0, o_d, out) != ARM_CMSIS_NN_SUCCESS;
}}

int tbn_model_run(const float *in, float *out)
{{
    /* quantize: q = round(x / s_in) + zp_in, s_in = 1/255 */
    for (int i = 0; i < {n_in}; ++i) {{
        float f = in[i] * 255.0f;
        int32_t v = (int32_t)(f >= 0.0f ? f + 0.5f : f - 0.5f) + ({q["zp_in"]});
        x_q[i] = (int8_t)(v < -128 ? -128 : (v > 127 ? 127 : v));
    }}
    cmsis_nn_fc_params fc1 = {{{-q["zp_in"]}, 0, {q["zp_h"]}, {{{q["zp_h"]}, 127}}}};
    cmsis_nn_per_tensor_quant_params qp1 = {{{q["m1"]}, {q["sh1"]}}};
    cmsis_nn_dims in1 = {{1, 1, 1, {n_in}}}, f1 = {{{n_in}, 1, 1, {n_h}}}, b1 = {{1, 1, 1, {n_h}}}, o1 = {{1, 1, 1, {n_h}}};
    if (__tvm_ffi_cmsis_fc(&fc1, &qp1, &in1, x_q, &f1, fc1_w, &b1, &o1, h_q)) return 1;
    cmsis_nn_fc_params fc2 = {{{-q["zp_h"]}, 0, {q["zp_y"]}, {{-128, 127}}}};
    cmsis_nn_per_tensor_quant_params qp2 = {{{q["m2"]}, {q["sh2"]}}};
    cmsis_nn_dims in2 = {{1, 1, 1, {n_h}}}, f2 = {{{n_h}, 1, 1, {n_out}}}, b2 = {{1, 1, 1, {n_out}}}, o2 = {{1, 1, 1, {n_out}}};
    if (__tvm_ffi_cmsis_fc(&fc2, &qp2, &in2, h_q, &f2, fc2_w, &b2, &o2, y_q)) return 1;
    for (int i = 0; i < {n_out}; ++i) out[i] = (float)(y_q[i] - ({q["zp_y"]})) * {q["s_y"]!r}f;
    return 0;
}}
"""
    )


def reference(q: dict, x: np.ndarray) -> np.ndarray:
    """The same int8 arithmetic in numpy (TFLite's rounding), to check the firmware."""

    def requant(acc, m, sh, zp, lo):
        acc = acc.astype(np.int64)
        left, right = max(sh, 0), max(-sh, 0)
        v = acc * (1 << left)
        v = (v * m + (1 << 30)) >> 31  # arm_nn_doubling_high_mult_no_sat
        if right:  # arm_nn_divide_by_power_of_two: midpoints away from zero
            mask = (1 << right) - 1
            rem, v = v & mask, v >> right
            v = v + (rem > (mask >> 1) + (v < 0))
        return np.clip(v + zp, lo, 127)

    f = x.astype(np.float32) * np.float32(255.0)
    xq = np.clip(np.trunc(f + np.where(f >= 0, 0.5, -0.5).astype(np.float32)) + q["zp_in"], -128, 127)
    xq = xq.astype(np.int64)
    a1 = (xq - q["zp_in"]) @ q["q_w1"].astype(np.int64).T
    h = requant(a1, q["m1"], q["sh1"], q["zp_h"], q["zp_h"])
    a2 = (h - q["zp_h"]) @ q["q_w2"].astype(np.int64).T
    y = requant(a2, q["m2"], q["sh2"], q["zp_y"], -128)
    return (y - q["zp_y"]).astype(np.float32) * np.float32(q["s_y"])


def run(source: Path, images: np.ndarray, labels: np.ndarray, log=lambda msg: None) -> dict:
    """Build the int8 MLP firmware from ``source`` for mps2-an386 and run ``images`` on QEMU
    counting instructions.  Returns the figures of the Cortex-M table."""
    from onnx import numpy_helper

    from tbn_tvm import zoo
    from tbn_tvm.datasets import load_mnist_test
    from tbn_tvm.targets.cortex_m.backend import cycle_figures, sized_stack
    from tbn_tvm.targets.cortex_m.firmware import build_firmware
    from tbn_tvm.targets.cortex_m.qemu import run_qemu

    model = zoo.authors_mnist_mlp()
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w1, w2 = w["fc1.weight"], w["fc2.weight"]
    calib = load_mnist_test()[0][:CALIBRATION_IMAGES]
    q = quantize(w1, w2, calib)
    with tempfile.TemporaryDirectory(prefix="tbn-bench-cmsis-") as tmp_name:
        tmp = Path(tmp_name)
        write_library(q, source, tmp / "lib")
        cflags = ["-Ilib/cmsis/Include", "-Wno-unused-parameter"]
        t0 = time.perf_counter()
        build_firmware(tmp / "lib", "mps2-an386", tmp / "probe.elf", extra_cflags=cflags)
        _, probe = run_qemu(tmp / "probe.elf", "mps2-an386", images[:1])
        stack = sized_stack(int(probe["stack_peak_bytes"] or 0))
        size = build_firmware(
            tmp / "lib", "mps2-an386", tmp / "fw.elf", extra_cflags=cflags, stack_bytes=stack
        )
        compile_s = time.perf_counter() - t0
        y, stats = run_qemu(
            tmp / "fw.elf", "mps2-an386", images, count_instructions=True, per_kernel=["cmsis_fc"]
        )
    ref = reference(q, images)
    pred = y.argmax(1)
    ins = stats["instructions"]
    weight_bytes = int(q["q_w1"].nbytes + q["q_w2"].nbytes)
    fig = {
        "status": "ok",
        "board": "mps2-an386",
        "qemu_machine": stats.get("machine"),
        "instructions_per_inference": ins["mean"],
        "instructions_min": ins["min"],
        "instructions_max": ins["max"],
        "instructions_in_fully_connected": ins.get("per_kernel", {}).get("cmsis_fc"),
        # the same plugin's cycle estimate as tbn-tvm's rows (SMLAD: 1 cycle, ARM DDI 0439B Table 3-1)
        "estimated_cycles_m4_per_inference": None,
        "estimated_cycles_m7_per_inference": None,
        "flash_bytes": size.flash,
        "ram_bytes": size.ram,
        "weight_bytes": weight_bytes,
        "stack_peak_bytes": stats.get("stack_peak_bytes"),
        "samples": int(len(images)),
        "accuracy": float((pred == labels).mean()),
        "outputs_equal_numpy_int8_reference": int((np.abs(y - ref) <= 1e-6 * np.abs(ref).max()).all(1).sum()),
        "predictions_equal_numpy_int8_reference": int((pred == ref.argmax(1)).sum()),
        "quantization": {
            "weights": "int8 symmetric per tensor, scale max|W|/127",
            "input": "int8, scale 1/255, zero point -128",
            "activations": f"int8 asymmetric per tensor, ranges from {CALIBRATION_IMAGES} MNIST test images",
            "fc1_scale_w": float(np.abs(w1).max() / 127),
            "fc2_scale_w": float(np.abs(w2).max() / 127),
        },
        "compile_s": round(compile_s, 2),
        "qemu_s": round(stats["wall_s"], 2),
    }
    cycles = cycle_figures(ins)
    for key in ("estimated_cycles_m4_per_inference", "estimated_cycles_m7_per_inference"):
        fig[key] = cycles.get(key)
    fc_calls = [c for c in ins.get("per_call", []) if c.get("kernel") == "cmsis_fc"]
    if fc_calls and all("kernel_estimated_cycles_m4" in c for c in fc_calls):
        fig["estimated_cycles_m4_in_fully_connected"] = sum(c["kernel_estimated_cycles_m4"] for c in fc_calls)
    est = fig["estimated_cycles_m4_per_inference"]
    log(
        f"cortex-m4 authors_mnist_mlp cmsis-nn-int8: {ins['mean']:,.0f} instructions per inference"
        + (f" (estimated {est:,} Cortex-M4 cycles)" if est is not None else "")
        + ", "
        f"flash {size.flash:,} B, RAM {size.ram:,} B, accuracy {fig['accuracy']:.2%} on {len(images):,} images"
    )
    return fig
