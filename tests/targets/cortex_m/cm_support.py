"""Helpers for the Cortex-M tests: the stand-in model library and the fixture directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def write_dense_lib(directory: Path, weight: np.ndarray, bias: np.ndarray) -> Path:
    """A stand-in model library: y = relu(W x + b), weights const in flash, a static arena in RAM."""
    n_out, n_in = weight.shape
    directory.mkdir(parents=True, exist_ok=True)

    def floats(a: np.ndarray) -> str:
        return ", ".join(f"{float(v).hex()}f" for v in np.asarray(a, np.float32).ravel())

    (directory / "model.h").write_text(
        "#ifndef MODEL_H\n#define MODEL_H\n"
        f"#define TBN_MODEL_INPUT_SIZE {n_in}\n#define TBN_MODEL_OUTPUT_SIZE {n_out}\n"
        f"#define TBN_MODEL_ARENA_BYTES {4 * n_out}\n"
        "int tbn_model_run(const float *in, float *out);\n#endif\n"
    )
    (directory / "model.c").write_text(
        '#include "model.h"\n'
        f"static const float toy_weight[{n_out}][{n_in}] = {{{floats(weight)}}};\n"
        f"static const float toy_bias[{n_out}] = {{{floats(bias)}}};\n"
        f"static float toy_arena[{n_out}];\n"
        "int tbn_model_run(const float *in, float *out)\n{\n"
        f"    for (int o = 0; o < {n_out}; o++) {{\n"
        "        float acc = toy_bias[o];\n"
        f"        for (int i = 0; i < {n_in}; i++) acc += toy_weight[o][i] * in[i];\n"
        "        toy_arena[o] = acc;\n    }\n"
        f"    for (int o = 0; o < {n_out}; o++) out[o] = toy_arena[o] > 0.0f ? toy_arena[o] : 0.0f;\n"
        "    return 0;\n}\n"
    )
    return directory


class Toy:
    """The stand-in dense model: its weights, library directory and numpy reference."""

    def __init__(self, root: Path) -> None:
        rng = np.random.default_rng(7)
        self.weight = rng.standard_normal((10, 64)).astype(np.float32)
        self.bias = rng.standard_normal(10).astype(np.float32)
        self.lib = write_dense_lib(root / "toy_lib", self.weight, self.bias)

    def reference(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x.astype(np.float64) @ self.weight.T.astype(np.float64) + self.bias, 0.0)
