"""SubBitConv2d (SNN) against the numpy reference: mapping, STE, codebook sampling and refinement,
subbitify's rules, size accounting, export and a short training run on digits."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import subbit_reference as ref  # noqa: E402  (tests/torch is on sys.path through rootdir conftest)
from torch import nn  # noqa: E402

from tbn_tvm.torch import SubBitConv2d, TiledLayer, export_onnx, fit, subbitify, summary  # noqa: E402
from tbn_tvm.torch.layers import TilingError  # noqa: E402
from tbn_tvm.torch.subbit import sign_kernel_codes  # noqa: E402


def distinct_codebook(m: int, kk: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    codes = rng.choice(1 << kk, size=m, replace=False)
    return torch.tensor([[1.0 if (c >> j) & 1 else -1.0 for j in range(kk)] for c in codes])


def layer_with(codebook: torch.Tensor, o=12, i=6, match="latent", seed=0) -> SubBitConv2d:
    torch.manual_seed(seed)
    tau = int(math.log2(len(codebook)))
    conv = SubBitConv2d(i, o, 3, padding=1, bias=False, tau=tau, match=match, refine_every=0)
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight) * 0.7)
        conv.codebook.copy_(codebook)
    return conv


@pytest.mark.parametrize("match", ["latent", "sign"])
def test_weight_is_alpha_times_the_nearest_codeword(match):
    conv = layer_with(distinct_codebook(16, 9, 1), match=match)
    w = conv.weight.detach().numpy()
    book = conv.codebook.numpy()
    idx = ref.nearest_codeword(w.reshape(-1, 9), book, match)
    assert np.array_equal(conv.kernel_indices().reshape(-1).numpy(), idx)
    for mode in (True, False):  # training (STE) and eval give the same forward value
        conv.train(mode)
        np.testing.assert_allclose(
            conv.subbit_weight().detach().numpy(), ref.snn_weight(w, book, match), rtol=1e-6
        )
    x = torch.randn(2, 6, 5, 5)
    expected = torch.nn.functional.conv2d(
        x, torch.from_numpy(ref.snn_weight(w, book, match)).float(), padding=1
    )
    torch.testing.assert_close(conv.eval()(x), expected, rtol=1e-5, atol=1e-5)


def test_sign_matching_is_hamming_and_ties_go_to_the_first_codeword():
    book = torch.tensor([[1.0, 1.0, -1.0, -1.0], [-1.0, 1.0, 1.0, -1.0], [1.0, 1.0, 1.0, 1.0], [-1.0] * 4])
    conv = SubBitConv2d(1, 3, (2, 2), bias=False, tau=2, match="sign", refine_every=0)
    with torch.no_grad():
        conv.codebook.copy_(book)
        # kernel 0 is at Hamming distance 1 from codewords 0, 1 and 2: the first wins
        conv.weight.copy_(
            torch.tensor([[0.5, 0.5, 0.1, -0.3], [-0.9, -0.1, -0.2, -0.4], [0.2, 0.3, 0.4, 0.5]]).reshape(
                3, 1, 2, 2
            )
        )
    assert conv.kernel_indices().reshape(-1).tolist() == [0, 3, 2]
    assert ref.nearest_codeword(
        conv.weight.detach().numpy().reshape(3, 4), book.numpy(), "sign"
    ).tolist() == [0, 3, 2]


def test_latent_matching_weighs_by_magnitude():
    # sign pattern (+,+,+,−) is at Hamming distance 1 from both codewords; the latent L2 picks the
    # codeword that disagrees on the smallest element
    book = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, -1.0, -1.0], [-1.0] * 4, [-1.0, 1.0, -1.0, 1.0]])
    w = torch.tensor([0.9, 0.8, 0.05, -0.7]).reshape(1, 1, 2, 2)
    for match, expected in (("latent", 1), ("sign", 0)):
        conv = SubBitConv2d(1, 1, (2, 2), bias=False, tau=2, match=match, refine_every=0)
        with torch.no_grad():
            conv.codebook.copy_(book)
            conv.weight.copy_(w)
        assert conv.kernel_indices().item() == expected
        assert ref.nearest_codeword(w.numpy().reshape(1, 4), book.numpy(), match).item() == expected


def test_ste_gradient_is_alpha_times_upstream_inside_the_clip():
    conv = layer_with(distinct_codebook(8, 9, 2)).train()
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = 1.7  # outside the clip: no gradient
    up = torch.randn(conv.weight.shape)
    w_hat = conv.subbit_weight()
    (w_hat * up).sum().backward()
    expected = ref.snn_grad(conv.weight.detach().numpy(), up.numpy())
    np.testing.assert_allclose(conv.weight.grad.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert conv.weight.grad[0, 0, 0, 0] == 0


def test_eval_and_export_have_no_ste_path():
    conv = layer_with(distinct_codebook(8, 9, 3)).eval()
    assert not conv.subbit_weight().requires_grad  # α is detached and B has no gradient
    assert conv.train().subbit_weight().requires_grad


def test_initial_codebook_is_sampled_from_the_layers_own_sign_kernels():
    torch.manual_seed(4)
    conv = SubBitConv2d(16, 32, 3, bias=False, tau=5)
    book = conv.codebook
    assert book.shape == (32, 9) and set(book.unique().tolist()) == {-1.0, 1.0}
    codes = sign_kernel_codes(book).tolist()
    assert len(set(codes)) == 32
    layer_codes = set(sign_kernel_codes(conv.weight.detach().reshape(-1, 9)).tolist())
    assert set(codes) <= layer_codes  # 512 kernels, far more than 32 distinct patterns
    # a layer with fewer distinct kernels than 2^τ: all of them, then random distinct patterns
    small = SubBitConv2d(1, 4, 3, bias=False, tau=4)
    small_codes = set(sign_kernel_codes(small.codebook).tolist())
    assert len(small_codes) == 16
    assert set(sign_kernel_codes(small.weight.detach().reshape(-1, 9)).tolist()) <= small_codes
    # reproducible from torch's seed
    torch.manual_seed(4)
    again = SubBitConv2d(16, 32, 3, bias=False, tau=5)
    assert torch.equal(again.codebook, book)


@pytest.mark.parametrize("match", ["latent", "sign"])
def test_refinement_follows_the_rule(match):
    torch.manual_seed(5)
    conv = SubBitConv2d(8, 16, 3, bias=False, tau=4, match=match, refine_every=0)
    with torch.no_grad():
        # make some codewords empty: codewords nobody is near
        conv.codebook[3] = torch.tensor([1.0, -1.0] * 4 + [1.0])
    w = conv.weight.detach().numpy().copy()
    old = conv.codebook.numpy().copy()
    expected, replace = ref.refine_rule(w, old, match)
    stats = conv.refine_codebook()
    new = conv.codebook.numpy()
    assert stats["replaced"] == int(replace.sum())
    np.testing.assert_array_equal(new[~replace], expected[~replace])  # the sign-of-mean rule
    codes = sign_kernel_codes(conv.codebook).tolist()
    assert len(set(codes)) == 16  # no duplicates after refinement
    layer_codes = set(sign_kernel_codes(conv.weight.detach().reshape(-1, 9)).tolist())
    kept = {c for c, r in zip(codes, replace, strict=True) if not r}
    for c, r in zip(codes, replace, strict=True):
        if r:  # replacements are the layer's own sign kernels not already codewords
            assert c in layer_codes and c not in kept


def test_refinement_replaces_duplicates():
    torch.manual_seed(6)
    conv = SubBitConv2d(4, 8, 3, bias=False, tau=3, refine_every=0)
    with torch.no_grad():  # every kernel the same sign pattern: all clusters re-estimate to it
        conv.weight.copy_(torch.rand_like(conv.weight) + 0.1)
        conv.codebook.copy_(distinct_codebook(8, 9, 7))
    _, replace = ref.refine_rule(conv.weight.detach().numpy(), conv.codebook.numpy(), "latent")
    stats = conv.refine_codebook()
    assert stats["replaced"] == int(replace.sum()) == 7  # one cluster keeps the pattern
    assert len(set(sign_kernel_codes(conv.codebook).tolist())) == 8
    assert sign_kernel_codes(torch.ones(1, 9)).item() in set(sign_kernel_codes(conv.codebook).tolist())


def test_refinement_runs_every_refine_every_training_steps():
    torch.manual_seed(8)
    conv = SubBitConv2d(4, 8, 3, bias=False, tau=3, refine_every=3)
    calls = []
    original = conv.refine_codebook
    conv.refine_codebook = lambda: calls.append(int(conv.step)) or original()  # type: ignore[method-assign]
    x = torch.randn(1, 4, 5, 5)
    for _ in range(7):
        conv.train()(x).sum().backward()
    with torch.no_grad():
        conv(x)  # no gradient: not a training step
    conv.eval()(x)
    assert calls == [3, 6] and int(conv.step) == 7


def test_state_dict_round_trip_and_seeded_refinement():
    torch.manual_seed(9)
    a = SubBitConv2d(4, 8, 3, tau=3, refine_every=2)
    b = SubBitConv2d(4, 8, 3, tau=3, refine_every=2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.codebook, b.codebook) and int(a.seed) == int(b.seed)
    x = torch.randn(2, 4, 6, 6)
    for _ in range(4):
        for m in (a, b):
            m.train()(x).sum().backward()
            with torch.no_grad():
                m.weight -= 0.05 * m.weight.grad
            m.weight.grad = None
    assert torch.equal(a.codebook, b.codebook) and torch.equal(a.weight, b.weight)


def test_errors():
    with pytest.raises(TilingError, match="tau"):
        SubBitConv2d(4, 8, 3, tau=10)
    with pytest.raises(TilingError, match="tau"):
        SubBitConv2d(4, 8, 1, tau=2)
    with pytest.raises(TilingError, match="match"):
        SubBitConv2d(4, 8, 3, match="cosine")  # type: ignore[arg-type]
    with pytest.raises(TilingError, match="container"):
        subbitify(nn.Conv2d(4, 8, 3))


def test_subbitify_rules():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),  # first: kept
        nn.Conv2d(8, 16, 3),  # converted
        nn.Conv2d(16, 16, 1),  # 1x1: kept by default
        nn.Conv2d(16, 16, 3, groups=16),  # depthwise: kept by default
        nn.Conv2d(16, 16, 3, groups=4),  # grouped: never
        MyConv(16, 16, 3),  # subclass: left alone
        nn.Conv2d(16, 16, 5),  # 5x5: not in kernel_sizes
        nn.Conv2d(16, 16, 3),  # excluded by glob
    )
    dense_w = model[1].weight.detach().clone()
    subbitify(model, tau=4, exclude=["7"])
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Conv2d", "SubBitConv2d", "Conv2d", "Conv2d", "Conv2d", "MyConv", "Conv2d", "Conv2d"]
    assert torch.equal(model[1].weight, dense_w) and model[1].tau == 4  # weights copied
    model2 = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 8, 1))
    with pytest.warns(UserWarning, match="capped"):
        subbitify(model2, tau=5, depthwise=True, kernel_sizes=[(3, 3), (1, 1)], skip_first=False)
    assert [getattr(m, "tau", None) for m in model2] == [5, 5, 1]


def test_summary_counts_index_codebook_and_scale_bits():
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 16, 3, bias=False), nn.BatchNorm2d(16))
    subbitify(model, tau=5)
    row = [r for r in summary(model).rows if r.format == "snn"][0]
    kernels = 16 * 8
    assert row.weight_bits == 5 * kernels + 9 * 32 + 32 * 16 and row.detail == "τ=5" and row.param == "τ=5"
    assert row.bits_per_weight == pytest.approx((5 * kernels + 9 * 32 + 32 * 16) / (kernels * 9))
    assert row.other_values == 0  # the latent weight and the codebook buffer are not "other"
    assert "τ=5" in str(summary(model))


def ort_run(path, x):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def distinct_sign_kernels(weight: np.ndarray) -> int:
    kernels = (weight.reshape(weight.shape[0] * weight.shape[1], -1) > 0).astype(np.uint8)
    return len(np.unique(kernels, axis=0))


def test_short_training_on_digits_then_export(tmp_path):
    """A few hundred steps on digits: the loss goes down; the export has at most 2^τ sign kernels
    per sub-bit layer, one |w| per output channel, and runs in onnxruntime like torch."""
    from tbn_tvm.datasets import load_digits_split
    from tbn_tvm.torch.models import digits_cnn

    data = load_digits_split()
    torch.manual_seed(0)
    model = subbitify(digits_cnn(), tau=5)
    subbitify(model, tau=5, skip_first=False, exclude=["conv2"])  # the first conv too
    assert sum(isinstance(m, SubBitConv2d) for m in model.modules()) == 2
    history = fit(
        model,
        (data.x_train, data.y_train),
        (data.x_test, data.y_test),
        epochs=10,
        batch_size=64,
        progress=False,
    )
    assert history.steps == 230
    assert history.loss[-1] < 0.5 * history.loss[0] and history.val_accuracy[-1] > 0.8
    assert int(model.conv2.step) == 230  # refined every 25 steps along the way
    example = torch.from_numpy(data.x_test[:1])
    path = tmp_path / "snn.onnx"  # compact form: codebook, indices and scales; BatchNorm separate
    result = export_onnx(model, example, path)
    assert result.ops.get("Gather") == 2 and "BatchNormalization" in result.ops  # checked vs torch
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    for name in ("conv1", "conv2"):
        layer = getattr(model, name)
        book, idx, scales = inits[f"{name}.codebook"], inits[f"{name}.indices"], inits[f"{name}.scales"]
        assert book.shape == (32, 9) and len(np.unique(book, axis=0)) == 32
        w = (book[idx].reshape(len(scales), -1) * scales).reshape(layer.weight.shape)
        np.testing.assert_array_equal(w, layer.subbit_weight().detach().numpy())
        assert distinct_sign_kernels(w) <= 32
    dense = tmp_path / "snn-dense.onnx"  # plain Conv constants, BatchNorm folded in
    assert "Gather" not in export_onnx(model, example, dense, form="dense").ops
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(dense)).graph.initializer}
    convs = [v for v in inits.values() if v.ndim == 4]
    assert len(convs) == 2
    for w in convs:
        mags = np.abs(w.reshape(w.shape[0], -1))
        assert np.all(mags == mags[:, :1])  # one magnitude per output channel (BN's scale folded in)
        assert distinct_sign_kernels(w) <= 64  # the codewords, some rows flipped by a negative γ
    x = data.x_test[:16]
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(x)).numpy()
    for f in (path, dense):
        for j in range(0, 16, 4):
            np.testing.assert_allclose(ort_run(f, x[j : j + 1]), expected[j : j + 1], rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, TiledLayer) for m in model.modules())


def test_the_snn_resnet_example_reproduces_its_reference():
    """examples/snn5-resnet-mnist.onnx (docs/training.md §11.6): ≤ 2^5 codewords per sub-bit
    layer and onnxruntime reproduces the saved torch logits."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "examples"
    model, reference = root / "snn5-resnet-mnist.onnx", root / "snn5-resnet-mnist.reference.npz"
    if not model.exists():
        pytest.skip("example not present")
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(model)).graph.initializer}
    books = [k for k in inits if k.endswith(".codebook")]
    assert len(books) == 6
    for name in books:
        assert len(np.unique(inits[name], axis=0)) <= 32
    ref_data = np.load(reference)
    for x, logits in zip(ref_data["x"][:8], ref_data["logits"][:8], strict=True):
        np.testing.assert_allclose(ort_run(model, x), logits, rtol=1e-5, atol=1e-5)
