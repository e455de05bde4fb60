"""The right outputs of a robustness case: onnxruntime's, computed in a bounded child."""

from __future__ import annotations

import os
import sys

import numpy as np


def onnxruntime_outputs(model: str, feeds_npz: str, names: list[str], out_npz: str) -> None:
    """Write onnxruntime's outputs for ``model`` to ``out_npz`` (``o0``, ``o1``, ...); exit
    status 3 when onnxruntime refuses the model or its inputs."""
    import onnxruntime as rt

    with np.load(feeds_npz) as f:
        feeds = {name: f[f"i{i}"] for i, name in enumerate(names)}
    opts = rt.SessionOptions()
    opts.log_severity_level = 4
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    try:
        sess = rt.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        outs = sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001 - onnxruntime's refusal is the answer
        print(f"onnxruntime: {' '.join(str(e).split())[:300]}", file=sys.stderr, flush=True)
        os._exit(3)
    np.savez(out_npz, **{f"o{i}": np.asarray(o) for i, o in enumerate(outs)})
