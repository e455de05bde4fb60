"""Data-parallel ``fit``: two gloo processes started by torchrun end with the weights of one process.

DDP averages the processes' gradients; ``fit`` gives each process its share of every global
batch and weights its loss by that share, so with a model without BatchNorm or dropout the two
processes follow exactly the one-process trajectory (up to float summation order).  The data
(301 samples, global batch 63: shares of 32 and 31) leaves a last batch of 49 and two shuffled epochs, so shuffling,
uneven shares and the one-cycle schedule are all exercised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tbn_tvm.torch import fit  # noqa: E402

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from tbn_tvm.torch import fit
    from tbn_tvm.torch.fitting import distributed_env

    sys.path.insert(0, sys.argv[2])
    from test_ddp import build, data

    out = sys.argv[1]
    rank, world = distributed_env()
    model = build()
    x, y = data()
    calls = []
    history = fit(model, (x, y), (x[:50], y[:50]), epochs=2, batch_size=63, lr=1e-2, seed=3,
                  progress=False, callbacks=[lambda e, logs, m: calls.append(e)],
                  checkpoint=os.path.join(out, "final.pt"))
    state = {k: v.tolist() for k, v in model.state_dict().items()}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"world": world, "state": state, "history": history.to_dict(), "calls": calls}, f)
    """
)


def build():
    """A small MLP without BatchNorm or dropout (identical initialisation in every process)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 32),
        torch.nn.Tanh(),
        torch.nn.Linear(32, 4),
    )


def data():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((301, 12)).astype(np.float32)
    y = (np.abs(x[:, :4]).argmax(1)).astype(np.int64)
    return x, y


def test_two_gloo_processes_equal_one_process(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # single node, a free port
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path),
        os.path.dirname(__file__),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["calls"] == [1, 2] and ranks[1]["calls"] == []  # callbacks on process 0 only
    assert (tmp_path / "final.pt").exists()

    # the same training in one process
    torch.set_num_threads(1)
    model = build()
    x, y = data()
    history = fit(model, (x, y), (x[:50], y[:50]), epochs=2, batch_size=63, lr=1e-2, seed=3, progress=False)
    single = model.state_dict()
    for rank in ranks:  # every process ends with the same weights, equal to one process's
        for name, value in single.items():
            np.testing.assert_allclose(np.array(rank["state"][name]), value.numpy(), rtol=1e-5, atol=1e-6)
        got = rank["history"]
        assert got["steps"] == 2 * 5 and got["world_size"] == 2
        for a, b in zip(got["epochs"], history.epochs, strict=True):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    saved = torch.load(tmp_path / "final.pt")
    for name, value in single.items():
        np.testing.assert_allclose(saved[name].numpy(), value.numpy(), rtol=1e-5, atol=1e-6)
