"""tbnify covers what real models use and says what it did (issue 20, item 4; issue 24, item 3):
subclasses of nn.Linear/nn.Conv* that keep the parent's forward (timm's ``Linear``), the packed
in-projection and the out-projection of ``nn.MultiheadAttention`` (compact through export and
``inspect``), every weighted module it left alone with the reason, a one-line account and a
warning when nothing was tiled."""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import tbn_reference as ref  # noqa: E402
from torch import nn  # noqa: E402

from tbn_tvm.torch import TiledLinear, tbnify, tiling_plan  # noqa: E402
from tbn_tvm.torch.attention import TiledMultiheadAttention  # noqa: E402


class Linear(nn.Linear):
    """As ``timm.layers.Linear``: a subclass that keeps ``nn.Linear.forward``."""


class Conv2d(nn.Conv2d):
    """A subclass that keeps ``nn.Conv2d.forward``."""


class ScaledLinear(nn.Linear):
    """A subclass with its own forward: not tbnify's to replace."""

    def forward(self, x):
        return 2 * super().forward(x)


def _b_hat(layer) -> np.ndarray:
    """The layer's tiled weight, re-derived in numpy from its latent tensors."""
    w = layer.weight.detach().numpy()
    a = None if layer.alpha_weight is None else layer.alpha_weight.detach().numpy()
    return ref.tiled_weight(w, layer.p, a, layer.alpha).astype(np.float32)


# --------------------------------------------------------------------------- subclasses (20.4)
def test_subclasses_that_keep_the_forward_are_tiled():
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            conv=Conv2d(1, 8, 3),
            relu=nn.ReLU(),
            flat=nn.Flatten(),
            fc=Linear(8 * 6 * 6, 64),
            relu2=nn.ReLU(),
            head=Linear(64, 10),
        )
    )
    w_fc = model.fc.weight.detach().numpy().copy()
    tbnify(model, p=4, min_size=0, verbose=False)
    assert isinstance(model.fc, TiledLinear) and model.fc.p == 4
    assert (model.conv.p, model.head.p) == (1, 1)  # first and last: binary
    np.testing.assert_array_equal(model.fc.weight.detach().numpy(), w_fc)  # the weight is kept
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        h = torch.relu(model.conv(torch.from_numpy(x))).flatten(1).numpy()
        got = model.fc(torch.from_numpy(h)).numpy()
    want = ref.linear(h, _b_hat(model.fc), model.fc.bias.detach().numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_subclass_with_its_own_forward_is_left_alone_and_named():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), ScaledLinear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    rows = {r.name: r for r in tiling_plan(model, p=2, min_size=0, include_untouched=True)}
    assert (
        rows["2"].p is None and rows["2"].reason == "type not handled: ScaledLinear overrides Linear.forward"
    )
    tbnify(model, p=2, min_size=0, verbose=False)
    assert type(model[2]) is ScaledLinear


# ------------------------------------------------------------------ MultiheadAttention (20.4)
def _reference_mha(tiled: TiledMultiheadAttention) -> nn.MultiheadAttention:
    """torch's own attention with the weights re-derived in numpy from the tiled layers."""
    mha = nn.MultiheadAttention(tiled.embed_dim, tiled.num_heads, batch_first=tiled.batch_first)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.from_numpy(_b_hat(tiled.in_proj)))
        mha.in_proj_bias.copy_(tiled.in_proj.bias)
        mha.out_proj.weight.copy_(torch.from_numpy(_b_hat(tiled.out_proj)))
        mha.out_proj.bias.copy_(tiled.out_proj.bias)
    return mha.eval()


class Attention(nn.Module):
    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=batch_first)
        self.head = Linear(32, 10)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(a + h)


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_projections_are_tiled_and_compute_torchs_attention(batch_first):
    torch.manual_seed(0)
    model = Attention(batch_first)
    packed = model.attn.in_proj_weight.detach().numpy().copy()
    rows = {r.name: r for r in tiling_plan(model, p=4, min_size=0)}
    assert (rows["attn.in_proj"].weight_shape, rows["attn.in_proj"].p) == ((96, 32), 4)
    assert rows["attn.out_proj"].p == 4
    tbnify(model, p=4, min_size=0, verbose=False)
    attn = model.attn
    assert isinstance(attn, TiledMultiheadAttention)
    assert isinstance(attn.in_proj, TiledLinear) and tuple(attn.in_proj.weight.shape) == (96, 32)
    np.testing.assert_array_equal(attn.in_proj.weight.detach().numpy(), packed)  # copied
    model.eval()
    want_model = _reference_mha(attn)
    rng = np.random.default_rng(1)
    shape = (2, 5, 32) if batch_first else (5, 2, 32)
    q = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    kv = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    pad = torch.tensor([[False] * 4 + [True], [False] * 5])
    for args in ((q, q, q), (q, kv, kv)):
        with torch.no_grad():
            got, got_w = attn(*args, key_padding_mask=pad)
            want, want_w = want_model(*args, key_padding_mask=pad)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_w.numpy(), want_w.numpy(), rtol=1e-5, atol=1e-6)


def test_attention_trains_through_the_straight_through_estimator():
    torch.manual_seed(0)
    model = tbnify(Attention(), p=4, min_size=0, verbose=False).train()
    loss = model(torch.randn(3, 5, 16)).square().mean()
    loss.backward()
    for layer in (model.attn.in_proj, model.attn.out_proj):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
        assert layer.alpha_weight.grad is not None and layer.alpha_weight.grad.abs().sum() > 0


def test_attention_with_separate_key_value_sizes_is_left_alone():
    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(8, 8)
            self.mha = nn.MultiheadAttention(8, 2, kdim=6, vdim=6)
            self.out = nn.Linear(8, 8)

    model = Cross()
    rows = {r.name: r for r in tiling_plan(model, p=2, min_size=0, include_untouched=True)}
    assert rows["mha"].p is None and "kdim/vdim" in rows["mha"].reason
    assert "mha.out_proj" not in rows  # used by weight inside the attention, never on its own
    tbnify(model, p=2, min_size=0, verbose=False)
    assert type(model.mha) is nn.MultiheadAttention and type(model.mha.out_proj) is not TiledLinear


def test_transformer_layers_do_not_take_the_fast_path_with_latent_weights():
    """nn.TransformerEncoderLayer's eval-mode fast path reads ``linear1.weight`` etc. directly
    (the latent weights of tiled layers): tbnify turns it off, so no_grad equals grad mode and
    equals a dense encoder layer given the tiled weights."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.Linear(16, 32), nn.TransformerEncoder(layer, 1, enable_nested_tensor=False))
    model.append(nn.Linear(32, 10))
    tbnify(model, p=4, min_size=0, verbose=False).eval()
    enc = model[1].layers[0]
    dense = copy.deepcopy(enc)
    dense._forward_pre_hooks.clear()
    dense.self_attn = _reference_mha(enc.self_attn)
    for name in ("linear1", "linear2"):
        tiled = getattr(enc, name)
        plain = nn.Linear(tiled.in_features, tiled.out_features)
        with torch.no_grad():
            plain.weight.copy_(torch.from_numpy(_b_hat(tiled)))
            plain.bias.copy_(tiled.bias)
        setattr(dense, name, plain)
    dense.eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        fast = enc(x)
        want = dense(x)  # torch's fast path, on the right weights
    slow = enc(x).detach()
    np.testing.assert_allclose(fast.numpy(), slow.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


def test_attention_exports_compact_under_its_names(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    import tbn_tvm
    from tbn_tvm.torch import export_onnx

    torch.manual_seed(0)
    model = tbnify(Attention(), p=4, min_size=0, verbose=False).eval()
    result = export_onnx(model, torch.randn(1, 5, 16), tmp_path / "attn.onnx")  # checked by onnxruntime
    assert result.max_rel_diff is not None and result.max_rel_diff <= result.tolerance
    layers = {la["name"]: la for la in tbn_tvm.inspect(tmp_path / "attn.onnx").to_dict()["layers"]}
    assert set(layers) == {"inp", "attn.in_proj", "attn.out_proj", "head"}
    packed = layers["attn.in_proj"]
    assert (packed["format"], packed["p"], packed["weight_shape"]) == ("tiled", 4, [96, 32])
    assert (layers["attn.out_proj"]["format"], layers["attn.out_proj"]["p"]) == ("tiled", 4)
    assert (layers["head"]["format"], layers["inp"]["format"]) == ("binary", "binary")


# --------------------------------------------------------------------------- what it says (24.3)
def small_cnn() -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(8, 16, 3),
            relu2=nn.ReLU(),
            conv3=nn.Conv2d(16, 16, 3),
            relu3=nn.ReLU(),
            up=nn.ConvTranspose2d(16, 4, 2),
            flat=nn.Flatten(),
            fc=nn.Linear(4 * 44 * 44, 10),
        )
    )


def test_defaults_on_a_small_model_say_that_nothing_was_tiled(capsys):
    with pytest.warns(UserWarning, match=r"tiled nothing at p=4") as caught:
        tbnify(small_cnn(), p=4)
    text = str(caught[0].message)
    assert "min_size=64,000" in text and "the largest 2,304" in text and "min_size=0" in text
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and line.startswith("tbnify: 0 of 4 layers tiled at p=4")
    assert "conv1 (first layer)" in line and "fc (last layer)" in line
    assert "conv2, conv3 (under min_size 64,000)" in line
    assert "left alone: up (type not handled: ConvTranspose2d)" in line


def test_the_line_names_tiled_binary_and_left_alone_layers(capsys):
    model = small_cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # something was tiled: no warning
        tbnify(model, p=4, min_size=0)
    line = capsys.readouterr().err.strip()
    assert line.startswith("tbnify: 2 of 4 layers tiled at p=4;"), line
    tbnify(model, p=2, min_size=0, verbose=True)  # again: the tiled layers are left alone
    line = capsys.readouterr().err.strip()
    assert "already a TiledConv2d" in line and "already a TiledLinear" in line
    tbnify(small_cnn(), p=4, min_size=0, verbose=False)
    assert capsys.readouterr().err == ""


def test_binary_on_purpose_does_not_warn(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tbnify(small_cnn(), p=1)
    assert "0 of 4 layers tiled at p=1" in capsys.readouterr().err


def test_tbnify_docstring_shows_min_size():
    calls = [ex for ex in tbnify.__doc__.split(">>>") if "tbnify(" in ex]
    assert "min_size=" in calls[0]
