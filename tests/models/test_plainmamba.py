"""Tests of ssmprune/models/plainmamba.py against hand-derived and independent references."""

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmprune.errors import CheckpointError, ConfigError, InputShapeError
from ssmprune.models import load_checkpoint, plainmamba
from ssmprune.models.plainmamba import (
    PlainMamba,
    PlainMamba2D,
    PlainMambaConfig,
    PlainMambaLayer,
    zigzag_orders,
)
from ssmprune.models.registry import get_entry, model_names
from ssmprune.ops.selective_scan import selective_scan_ref

# Paper / official README figures: (total with 1000-class head, backbone alone, GFLOPs).
PAPER_SIZES = {
    "plainmamba_l1": (7_551_656, 7_358_656, 3.0),
    "plainmamba_l2": (26_145_832, 25_760_832, 8.1),
    "plainmamba_l3": (50_956_456, 50_507_456, 14.4),
}

# Walked by hand on the grids, following get_permute_order in the official
# plain_mamba_layer.py. Codes: 0 start, 1 right, 2 left, 3 up, 4 down.
#   2x3 grid:  0 1 2      3x2 grid:  0 1
#              3 4 5                 2 3
#                                    4 5
HAND_ZIGZAG = {
    (2, 3): {
        "orders": [[0, 1, 2, 5, 4, 3], [3, 4, 5, 2, 1, 0],
                   [0, 3, 4, 1, 2, 5], [5, 2, 1, 4, 3, 0]],
        "directions": [[0, 1, 1, 4, 2, 2], [0, 1, 1, 3, 2, 2],
                       [0, 4, 1, 3, 1, 4], [0, 3, 2, 4, 2, 3]],
    },
    (3, 2): {
        "orders": [[0, 1, 3, 2, 4, 5], [5, 4, 2, 3, 1, 0],
                   [0, 2, 4, 5, 3, 1], [1, 3, 5, 4, 2, 0]],
        "directions": [[0, 1, 4, 2, 4, 1], [0, 2, 3, 1, 3, 2],
                       [0, 4, 4, 1, 3, 3], [0, 4, 4, 2, 3, 3]],
    },
}

SMALL = dict(img_size=64, num_classes=10, embed_dim=32, depth=2, stem_convs=1,
             dw_after_first_layer=True)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _perturb(module: torch.nn.Module) -> None:
    """Move every parameter and BN statistic off its init so each term shows."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn_like(p))
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)


def reference_mixer(m: PlainMamba2D, x, hw, orders, directions, permute_all=False):
    """Straightforward PlainMamba2D forward, one scan direction at a time.

    Written from the official code with the sequential oracle; each direction's
    output is scattered back to raster positions through its order (no inverse
    table). ``permute_all`` also permutes delta, B and C into scan order: the
    "natural" variant the official code does not implement.
    """
    b, l, _ = x.shape
    h, w = hw
    e, n, r = m.d_inner, m.d_state, m.dt_rank
    xz = F.linear(x, m.in_proj.weight, m.in_proj.bias)
    xi, z = xz[..., :e], xz[..., e:]
    grid = xi.permute(0, 2, 1).reshape(b, e, h, w)
    pad = m.conv2d.weight.shape[-1] // 2
    xc = F.conv2d(grid, m.conv2d.weight, m.conv2d.bias, padding=pad, groups=e)
    xc = F.silu(xc).reshape(b, e, l)
    dbl = F.linear(xc.permute(0, 2, 1), m.x_proj.weight)
    dt_low, Bm, Cm = dbl[..., :r], dbl[..., r:r + n], dbl[..., r + n:]
    # The official code applies dt_proj with its bias and passes the bias again.
    delta = F.linear(dt_low, m.dt_proj.weight, m.dt_proj.bias).permute(0, 2, 1)
    Bm, Cm = Bm.permute(0, 2, 1), Cm.permute(0, 2, 1)
    A = -torch.exp(m.A_log)
    y = torch.zeros(b, e, l)
    for order, codes in zip(orders, directions):
        order, codes = torch.tensor(order), torch.tensor(codes)
        u = xc[:, :, order]
        dB = m.direction_Bs[codes].t()[None]
        if permute_all:
            d_k, B_k, C_k = delta[:, :, order], Bm[:, :, order] + dB, Cm[:, :, order]
        else:
            d_k, B_k, C_k = delta, Bm + dB, Cm
        y_scan = selective_scan_ref(u, d_k, A, B_k, C_k, m.D, None, m.dt_proj.bias, None, True)
        y_dir = torch.empty_like(y_scan)
        y_dir[:, :, order] = y_scan
        y = y + y_dir
    return F.linear(y.permute(0, 2, 1) * F.silu(z), m.out_proj.weight, m.out_proj.bias)


def _small_model(**overrides) -> PlainMamba:
    model = PlainMamba(PlainMambaConfig(**{**SMALL, **overrides}))
    _perturb(model)
    return model.eval()


def test_registered_models():
    assert {"plainmamba_l1", "plainmamba_l2", "plainmamba_l3"} <= set(model_names())
    l1, l3 = get_entry("plainmamba_l1").config(), get_entry("plainmamba_l3").config()
    assert (l1.stem_convs, l1.dw_after_first_layer) == (1, True)
    assert (l3.embed_dim, l3.depth, l3.stem_convs, l3.dw_after_first_layer) == (448, 36, 2, False)
    assert get_entry("plainmamba_l1").description


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_parameter_counts(name):
    total, backbone, _ = PAPER_SIZES[name]
    model = PlainMamba(get_entry(name).config())
    n_total = sum(p.numel() for p in model.parameters())
    n_head = sum(p.numel() for p in model.head.parameters())
    assert (n_total, n_total - n_head) == (total, backbone)


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_gflops_match_paper(name):
    gflops = PlainMamba(get_entry(name).config()).flops() / 1e9
    assert gflops == pytest.approx(PAPER_SIZES[name][2], rel=0.02)


def test_flops_match_a_hook_count_of_the_forward():
    # Independent count: MACs of every conv and linear seen in a real forward
    # pass, plus the official get_ssm_flops term for the scans.
    model = _small_model()
    macs = []

    def count(mod, inputs, out):
        if isinstance(mod, torch.nn.Conv2d):
            macs.append(out.numel() * mod.weight[0].numel())
        elif isinstance(mod, torch.nn.Linear):
            macs.append(inputs[0].numel() * mod.out_features)

    for mod in model.modules():
        mod.register_forward_hook(count)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    cfg = model.config
    e, n, l = cfg.d_inner, cfg.d_state, cfg.num_tokens
    ssm = (9 * e * n * l * 4 + e * l * 4) * cfg.depth
    # dt_proj runs as F.linear on its weight (its bias goes into the scan), so
    # no hook sees it: count it by hand.
    dt_proj = l * cfg.dt_rank * e * cfg.depth
    assert model.flops() == sum(macs) + ssm + dt_proj


def test_flops_scan_term_follows_official_counter():
    # Only the scan cost and x_proj depend on d_state; official get_ssm_flops:
    # 9 * e * n * l * 4 per layer for the scans.
    cfg = PlainMambaConfig(**SMALL)
    a = PlainMamba(cfg).flops()
    b = PlainMamba(PlainMambaConfig(**{**SMALL, "d_state": 17})).flops()
    e, l, depth = cfg.d_inner, cfg.num_tokens, cfg.depth
    assert b - a == depth * l * (9 * e * 4 + 2 * e)


@pytest.mark.parametrize("hw", sorted(HAND_ZIGZAG))
def test_zigzag_orders_pinned_by_hand(hw):
    scan = zigzag_orders(*hw)
    assert scan.orders.tolist() == HAND_ZIGZAG[hw]["orders"]
    assert scan.directions.tolist() == HAND_ZIGZAG[hw]["directions"]
    for order, inverse in zip(HAND_ZIGZAG[hw]["orders"], scan.inverse.tolist()):
        assert [inverse[p] for p in order] == list(range(len(order)))


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 7), w=st.integers(1, 7))
def test_zigzag_orders_are_snakes(h, w):
    scan = zigzag_orders(h, w)
    orders = scan.orders.tolist()
    assert orders[1] == orders[0][::-1] and orders[3] == orders[2][::-1]
    assert orders[0][0] == 0 and orders[2][0] == 0
    assert orders[0][:w] == list(range(w)) and orders[2][:h] == [i * w for i in range(h)]
    moves = {(0, 1): 1, (0, -1): 2, (-1, 0): 3, (1, 0): 4}
    for order, codes, inverse in zip(orders, scan.directions.tolist(), scan.inverse.tolist()):
        assert sorted(order) == list(range(h * w))
        assert [inverse[p] for p in order] == list(range(h * w))
        assert codes[0] == 0
        for prev, cur, code in zip(order, order[1:], codes[1:]):
            step = (cur // w - prev // w, cur % w - prev % w)
            assert moves[step] == code


@pytest.mark.parametrize("hw", sorted(HAND_ZIGZAG))
def test_mixer_matches_per_direction_reference(hw):
    mixer = PlainMamba2D(16, d_state=8, expand=2, conv_size=7, default_hw_shape=(4, 4))
    _perturb(mixer)
    x = torch.randn(2, hw[0] * hw[1], 16)
    with torch.no_grad():
        got = mixer(x, hw)
        want = reference_mixer(mixer, x, hw, **HAND_ZIGZAG[hw])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw", sorted(HAND_ZIGZAG))
def test_permuting_delta_B_C_would_change_the_output(hw):
    mixer = PlainMamba2D(16, d_state=8, expand=2, conv_size=7, default_hw_shape=(4, 4))
    _perturb(mixer)
    with torch.no_grad():
        # Without the D skip and the output bias, the output is the scans alone.
        mixer.D.zero_()
        mixer.out_proj.bias.zero_()
    x = torch.randn(2, hw[0] * hw[1], 16)
    with torch.no_grad():
        got = mixer(x, hw)
        natural = reference_mixer(mixer, x, hw, **HAND_ZIGZAG[hw], permute_all=True)
    assert (got - natural).abs().max() > 0.1 * got.abs().max()


def test_scan_gets_the_doubled_dt_bias_as_delta_bias(monkeypatch):
    # Quirk 2: delta = softplus(W dt + 2 b). The op gets W dt and delta_bias = 2 b,
    # so its default step for pruned tokens, softplus(delta_bias), is softplus(2 b).
    mixer = PlainMamba2D(16, d_state=8, expand=2, conv_size=7, default_hw_shape=(4, 4))
    _perturb(mixer)
    with torch.no_grad():
        mixer.x_proj.weight[:mixer.dt_rank].zero_()  # dt = 0, so W dt = 0
    calls = []
    real = plainmamba.selective_scan

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(plainmamba, "selective_scan", spy)
    with torch.no_grad():
        mixer(torch.randn(2, 16, 16), (4, 4))
    (u, delta, A, B, C, D, z, delta_bias, gap, softplus), = calls
    assert torch.equal(delta_bias, 2 * mixer.dt_proj.bias)
    assert delta.shape == (4 * 2, 32, 16) and not delta.any()
    assert gap is None and softplus


def test_mixer_on_default_grid_uses_the_same_orders():
    mixer = PlainMamba2D(16, d_state=8, expand=2, conv_size=7, default_hw_shape=(2, 3))
    _perturb(mixer)
    x = torch.randn(1, 6, 16)
    with torch.no_grad():
        want = reference_mixer(mixer, x, (2, 3), **HAND_ZIGZAG[(2, 3)])
        torch.testing.assert_close(mixer(x, (2, 3)), want, atol=1e-5, rtol=1e-5)


def test_layer_with_dw_on_non_square_grid():
    cfg = PlainMambaConfig(**SMALL)
    layer = PlainMambaLayer(cfg, with_dwconv=True)
    _perturb(layer)
    layer.eval()
    hw, c = (3, 2), cfg.embed_dim
    x = torch.randn(2, 6, c)
    with torch.no_grad():
        normed = F.layer_norm(x, (c,), layer.norm.weight, layer.norm.bias, eps=1e-5)
        res = x + reference_mixer(layer.mamba, normed, hw, **HAND_ZIGZAG[hw])
        conv, bn = layer.dw[0], layer.dw[1]
        grid = res.permute(0, 2, 1).reshape(2, c, *hw)
        grid = F.conv2d(grid, conv.weight, padding=1, groups=c)
        grid = F.batch_norm(grid, bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps)
        want = F.gelu(grid).reshape(2, c, 6).permute(0, 2, 1)
        torch.testing.assert_close(layer(x, hw), want, atol=1e-5, rtol=1e-5)


def test_forward_shape_and_pooling():
    model = _small_model()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        tokens, hw = model.patch_embed(x)
        tokens = tokens + model.pos_embed
        for layer in model.layers:
            tokens = layer(tokens, hw)
        pooled = F.layer_norm(tokens, (32,), model.ln1.weight, model.ln1.bias, eps=1e-6).mean(1)
    assert logits.shape == (2, 10) and logits.dtype == torch.float32
    assert hw == (4, 4)
    torch.testing.assert_close(logits, F.linear(pooled, model.head.weight, model.head.bias))


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (2, 1, 64, 64), (2, 3, 64, 48), (3, 64, 64)])
def test_wrong_input_shape_raises(shape):
    model = _small_model()
    pattern = re.escape("(batch, 3, 64, 64)") + ".*" + re.escape(str(shape))
    with pytest.raises(InputShapeError, match=pattern):
        model(torch.randn(shape))


@pytest.mark.parametrize("override", [
    dict(img_size=100), dict(img_size=0), dict(embed_dim=0), dict(depth=-1),
    dict(conv_size=4), dict(stem_convs=-1), dict(mean=(0.5,)), dict(norm_eps=0.0),
])
def test_impossible_config_raises(override):
    with pytest.raises(ConfigError, match="plainmamba"):
        get_entry("plainmamba_l1").config(**override)


def test_sizes_and_token_counts():
    model = PlainMamba(get_entry("plainmamba_l3").config())
    assert model.input_shape() == (3, 224, 224)
    assert model.tokens_per_block() == [196] * 36
    assert model.pos_embed.shape == (1, 196, 448)


def test_official_key_layout():
    model = PlainMamba(PlainMambaConfig(**{**SMALL, "depth": 1}))
    official = PlainMamba.to_official_state_dict(model.state_dict())
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    mamba = ["in_proj.weight", "in_proj.bias", "conv2d.weight", "conv2d.bias", "x_proj.weight",
             "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight", "out_proj.bias",
             "direction_Bs"]
    expected = (
        ["backbone.patch_embed.stem.0.weight", "backbone.patch_embed.convs.0.weight",
         "backbone.patch_embed.projection.weight", "backbone.patch_embed.projection.bias",
         "backbone.pos_embed", "backbone.layers.0.norm.weight", "backbone.layers.0.norm.bias",
         "backbone.layers.0.dw.0.weight", "backbone.ln1.weight", "backbone.ln1.bias",
         "head.fc.weight", "head.fc.bias"]
        + [f"backbone.patch_embed.stem.1.{k}" for k in bn]
        + [f"backbone.patch_embed.convs.1.{k}" for k in bn]
        + [f"backbone.layers.0.dw.1.{k}" for k in bn]
        + [f"backbone.layers.0.mamba.{k}" for k in mamba]
    )
    assert sorted(official) == sorted(expected)
    assert official["backbone.layers.0.mamba.direction_Bs"].shape == (5, 16)
    assert official["backbone.layers.0.mamba.x_proj.weight"].shape == (2 + 2 * 16, 64)


def test_state_dict_round_trip_through_official_layout():
    source = _small_model()
    official = PlainMamba.to_official_state_dict(source.state_dict())
    target = PlainMamba(source.config)
    target.load_state_dict(PlainMamba.from_official_state_dict(official), strict=True)
    target.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(x), target(x))


def test_from_official_reads_mmcv_checkpoint_and_drops_ema_buffers(tmp_path):
    model = PlainMamba(PlainMambaConfig(**{**SMALL, "depth": 1}))
    official = PlainMamba.to_official_state_dict(model.state_dict())
    checkpoint = {"meta": {}, "state_dict": {**official, "ema_head_fc_weight": torch.zeros(1)}}
    assert PlainMamba.from_official_state_dict(checkpoint).keys() == model.state_dict().keys()
    path = tmp_path / "extra.pth"
    torch.save({"state_dict": {**official, "neck.foo": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="1 unexpected: neck.foo"):
        load_checkpoint(model, path)
