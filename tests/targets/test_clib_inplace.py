"""Which kernel inputs the C back end lets an output overwrite (tbn_tvm.targets.clib.inplace),
on hand-written kernels whose answer is known: element-wise ones may, anything that reads an
input at another index than it writes, or reduces into its output, may not."""

from __future__ import annotations

import pytest

te = pytest.importorskip("tvm.te")


def _func(*tensors):
    return te.create_prim_func(list(tensors))


def test_elementwise_inputs_are_writable():
    from tbn_tvm.targets.clib.inplace import writable_inputs

    a = te.placeholder((2, 3, 5), name="a")
    b = te.placeholder((2, 3, 5), name="b")
    y = te.compute((2, 3, 5), lambda i, j, k: te.max(a[i, j, k] + b[i, j, k], 0.0), name="y")
    assert writable_inputs(_func(a, b, y)) == [0, 1]


def test_broadcast_operand_is_not_writable():
    from tbn_tvm.targets.clib.inplace import writable_inputs

    a = te.placeholder((1, 4, 3, 3), name="a")
    s = te.placeholder((1, 4, 1, 1), name="s")
    y = te.compute(a.shape, lambda n, c, h, w: a[n, c, h, w] * s[n, c, 0, 0], name="y")
    assert writable_inputs(_func(a, s, y)) == [0]


@pytest.mark.parametrize(
    "body",
    [
        lambda a: lambda i, j: a[j, i],  # transpose: reads another element than it writes
        lambda a: lambda i, j: a[i, j] + a[i, (j + 1) % 4],  # a neighbour (a stencil)
        lambda a: lambda i, j: a[3 - i, j],  # reversed rows
    ],
    ids=["transpose", "neighbour", "reversed"],
)
def test_inputs_read_at_other_indices_are_not_writable(body):
    from tbn_tvm.targets.clib.inplace import writable_inputs

    a = te.placeholder((4, 4), name="a")
    y = te.compute((4, 4), body(a), name="y")
    assert writable_inputs(_func(a, y)) == []


def test_reduction_into_the_output_and_other_shapes_are_not_writable():
    from tbn_tvm.targets.clib.inplace import writable_inputs

    a = te.placeholder((4, 4), name="a")
    k = te.reduce_axis((0, 4), name="k")
    y = te.compute((4, 4), lambda i, j: te.sum(a[i, k] * a[k, j], axis=k), name="y")
    assert writable_inputs(_func(a, y)) == []
    b = te.placeholder((4, 4), name="b")
    z = te.compute((4,), lambda i: b[i, i], name="z")  # other shape
    assert writable_inputs(_func(b, z)) == []
    c = te.placeholder((4, 4), "float16", name="c")
    w = te.compute((4, 4), lambda i, j: c[i, j].astype("float32"), name="w")  # other dtype
    assert writable_inputs(_func(c, w)) == []


def test_scheduled_conv_with_residual_epilogue():
    """A convolution fused with a residual add and ReLU (after the Cortex-M schedule): the
    residual may be overwritten, the convolution's input may not."""
    from tvm import topi

    from tbn_tvm.schedules.cortex_m import schedule_prim_mcu
    from tbn_tvm.targets.clib.inplace import writable_inputs

    x = te.placeholder((1, 4, 6, 6), name="x")
    w = te.placeholder((4, 4, 3, 3), name="w")
    r = te.placeholder((1, 4, 6, 6), name="r")
    conv = topi.nn.conv2d_nchw(x, w, 1, 1, 1)
    y = te.compute(conv.shape, lambda *i: te.max(conv(*i) + r(*i), 0.0), name="y")
    assert writable_inputs(schedule_prim_mcu(_func(x, w, r, y))) == [2]
