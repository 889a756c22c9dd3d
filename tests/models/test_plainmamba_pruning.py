"""Pruned PlainMamba (ToP) against hand-computed orders, gaps and a per-sample reference."""

import pytest
import torch
import torch.nn.functional as F

from ssmprune.errors import ConfigError
from ssmprune.models import create_model
from ssmprune.models.plainmamba import zigzag_orders
from ssmprune.models.registry import get_entry
from ssmprune.ops.selective_scan import selective_scan_ref
from ssmprune.pruning import PRESETS, PruneConfig
from ssmprune.pruning.plainmamba_tokens import restrict_scans
from ssmprune.pruning.record import RecordKept

# 64 px -> a 4 x 4 token grid; L1's layout (one stem conv, dw block after layer 0).
SMALL = dict(img_size=64, embed_dim=32, depth=4, num_classes=10)
START, RIGHT, LEFT, UP, DOWN = 0, 1, 2, 3, 4
PAPER_L3_REDUCTION = 0.416


def seeded(model, seed=0):
    """Move every parameter and BN statistic off its init, so each term shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return model.eval()


def small(prune=None, seed=0, **overrides):
    return seeded(create_model("plainmamba_l1", prune=prune, **{**SMALL, **overrides}), seed)


def pruned_like(model, prune):
    """A pruned model with ``model``'s weights (same parameters, same checkpoint)."""
    other = create_model("plainmamba_l1", prune=prune, **SMALL)
    other.load_state_dict(model.state_dict(), strict=True)
    return other.eval()


# --- an independent per-sample reference: Python lists and plain loops ---------

def hand_zigzag(h, w):
    """The four official scans as lists of raster positions, with move codes."""
    row, col = [], []
    for i in range(h):
        row += [i * w + j for j in (range(w) if i % 2 == 0 else reversed(range(w)))]
    for j in range(w):
        col += [i * w + j for i in (range(h) if j % 2 == 0 else reversed(range(h)))]
    orders = [row, row[::-1], col, col[::-1]]
    moves = {(0, 1): RIGHT, (0, -1): LEFT, (-1, 0): UP, (1, 0): DOWN}
    codes = [[START] + [moves[(b // w - a // w, b % w - a % w)] for a, b in zip(o, o[1:])]
             for o in orders]
    return orders, codes


def hand_restrict(order, codes, kept):
    """Kept raster positions in this scan's order, their full-order codes and gaps."""
    rank = {p: t for t, p in enumerate(order)}
    visit = sorted(kept, key=lambda p: rank[p])
    gaps, prev = [], -1
    for p in visit:
        gaps.append(rank[p] - prev - 1)
        prev = rank[p]
    return visit, [codes[rank[p]] for p in visit], gaps


def hand_layer(layer, x, kept, hw, aligned):
    """One layer on one sample. x: (m, c) tokens at raster positions ``kept``.

    Returns the layer output (m, c) and the mixer output before out_proj (m, e).
    """
    mx = layer.mamba
    h, w = hw
    e, n, r = mx.d_inner, mx.d_state, mx.dt_rank
    xn = F.layer_norm(x, x.shape[-1:], layer.norm.weight, layer.norm.bias, layer.norm.eps)
    xz = F.linear(xn, mx.in_proj.weight, mx.in_proj.bias)
    u, z = xz[:, :e], xz[:, e:]
    grid = torch.zeros(e, h * w)
    for j, p in enumerate(kept):
        grid[:, p] = u[j]
    pad = mx.conv2d.weight.shape[-1] // 2
    conv = F.conv2d(grid.view(1, e, h, w), mx.conv2d.weight, mx.conv2d.bias, padding=pad,
                    groups=e).view(e, h * w)
    uc = F.silu(torch.stack([conv[:, p] for p in kept], dim=1))  # (e, m)
    dbl = F.linear(uc.t(), mx.x_proj.weight)
    dt, Bm, Cm = dbl[:, :r], dbl[:, r:r + n], dbl[:, r + n:]
    # The double dt bias: W dt + 2 b, with 2 b as the op's delta_bias (default step).
    delta = F.linear(dt, mx.dt_proj.weight).t()
    bias2 = 2 * mx.dt_proj.bias
    A = -torch.exp(mx.A_log)
    orders, codes = hand_zigzag(h, w)
    y = torch.zeros(e, len(kept))
    for order, code in zip(orders, codes):
        visit, dirs, gaps = hand_restrict(order, code, kept)
        idx = [kept.index(p) for p in visit]
        # Only u goes into scan order; delta, B, C stay in (kept) raster order,
        # and the direction row of scan step t is added to B's t-th column.
        B_k = Bm.t() + mx.direction_Bs[dirs].t()
        gap = torch.tensor([gaps]) if aligned else None
        ys = selective_scan_ref(uc[:, idx][None], delta[None], A, B_k[None], Cm.t()[None],
                                mx.D, None, bias2, gap, True)[0]
        for t, j in enumerate(idx):
            y[:, j] += ys[:, t]
    mix = y.t() * F.silu(z)
    out = x + F.linear(mix, mx.out_proj.weight, mx.out_proj.bias)
    if layer.dw is not None:
        assert len(kept) == h * w, "the dw block only follows layer 0, before any pruning"
        out = layer.dw(out.t().reshape(1, -1, h, w)).reshape(-1, h * w).t()
    return out, mix


def hand_forward(model, image):
    """The pruned model on one image (c, s, s), sample by sample."""
    prune, cfg = model.prune, model.config
    x, hw = model.patch_embed(image[None])
    x = (x + model.pos_embed)[0]
    kept = list(range(cfg.num_tokens))
    aligned = False
    for i, layer in enumerate(model.layers):
        x, mix = hand_layer(layer, x, kept, hw, aligned)
        if i + 1 in prune.prune_after:
            score = {"clip": mix.clamp_min(0).sum(-1), "l1": mix.abs().sum(-1),
                     "l2": mix.square().sum(-1).sqrt()}[prune.importance].tolist()
            top = sorted(sorted(range(len(kept)), key=lambda j: -score[j])[:model.schedule[i + 1]])
            kept = [kept[j] for j in top]
            x = x[top]
            aligned = prune.alignment == "gap"
    x = F.layer_norm(x, x.shape[-1:], model.ln1.weight, model.ln1.bias, model.ln1.eps)
    return F.linear(x.mean(0), model.head.weight, model.head.bias)


# --- restricted scans pinned by hand --------------------------------------------

def test_restricted_scans_pinned_by_hand_on_3x3():
    #   0 1 2   full scans: row snake 0 1 2 5 4 3 6 7 8, its reverse,
    #   3 4 5               column snake 0 3 6 7 4 1 2 5 8, its reverse.
    #   6 7 8   Kept: 1 3 4 8 (kept indices 0 1 2 3).
    scan = zigzag_orders(3, 3)
    positions = torch.tensor([[1, 3, 4, 8]])
    got = restrict_scans(positions, scan.inverse, scan.directions, with_gaps=True)
    # Visits (raster positions): 1 4 3 8 | 8 3 4 1 | 3 4 1 8 | 8 1 4 3.
    assert got.orders[:, 0].tolist() == [[0, 2, 1, 3], [3, 1, 2, 0], [1, 2, 0, 3], [3, 0, 2, 1]]
    assert got.inverse[:, 0].tolist() == [[0, 2, 1, 3], [3, 1, 2, 0], [2, 0, 1, 3], [1, 3, 2, 0]]
    # Each kept token keeps the code of the move into it in the full order:
    # row snake 1<-0 right, 4<-5 left, 3<-4 left, 8<-7 right, and so on.
    assert got.directions[:, 0].tolist() == [
        [RIGHT, LEFT, LEFT, RIGHT], [START, UP, RIGHT, LEFT],
        [DOWN, UP, UP, DOWN], [START, LEFT, DOWN, UP]]
    # Full-order ranks 1 4 5 8 | 0 3 4 7 | 1 4 5 8 | 0 3 4 7.
    assert got.gaps[:, 0].tolist() == [[1, 2, 0, 2], [0, 2, 0, 2], [1, 2, 0, 2], [0, 2, 0, 2]]
    assert torch.equal(got.positions, positions)


def test_restricted_scans_match_the_hand_walk_per_sample():
    scan = zigzag_orders(3, 4)
    orders, codes = hand_zigzag(3, 4)
    kept = [[0, 2, 5, 6, 11], [1, 3, 4, 7, 8], [0, 1, 2, 3, 4]]
    got = restrict_scans(torch.tensor(kept), scan.inverse, scan.directions, with_gaps=True)
    for i, sample in enumerate(kept):
        for k, (order, code) in enumerate(zip(orders, codes)):
            visit, dirs, gaps = hand_restrict(order, code, sample)
            assert [sample[j] for j in got.orders[k, i].tolist()] == visit
            assert got.directions[k, i].tolist() == dirs
            assert got.gaps[k, i].tolist() == gaps
            assert got.orders[k, i][got.inverse[k, i]].tolist() == [0, 1, 2, 3, 4]
    assert restrict_scans(torch.tensor(kept), scan.inverse, scan.directions, False).gaps is None


# --- the pruned model ---------------------------------------------------------------

@pytest.mark.parametrize("alignment", ["gap", "none"])
def test_keep_ratio_one_equals_dense(alignment):
    dense = small()
    pruned = pruned_like(dense, PruneConfig(1.0, (1, 2), alignment=alignment))
    assert pruned.tokens_per_block() == dense.tokens_per_block() == [16] * 4
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), dense(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("alignment", ["gap", "none"])
@pytest.mark.parametrize("importance", ["clip", "l1", "l2"])
def test_pruned_forward_matches_hand_reference(importance, alignment):
    model = small(PruneConfig((0.5, 0.75), (1, 2), importance=importance, alignment=alignment),
                  seed=1)
    assert model.tokens_per_block() == [16, 8, 6, 6]
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = torch.stack([hand_forward(model, image) for image in x])
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)


def test_samples_are_pruned_independently():
    model = small(PruneConfig(0.5, (1, 3)))
    x = torch.randn(3, 3, 64, 64)
    x2 = x.clone()
    x2[1:] = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), RecordKept() as rec:
        out, out2 = model(x), model(x2)
    torch.testing.assert_close(out[0], out2[0], rtol=1e-6, atol=1e-6)
    first, second = rec.stages[0], rec.stages[2]
    assert torch.equal(first[0], second[0]) and not torch.equal(first[1:], second[1:])


def test_alignment_matters_only_when_tokens_are_pruned():
    x = torch.randn(2, 3, 64, 64)
    for ratio, differ in ((0.5, True), (1.0, False)):
        gap = small(PruneConfig(ratio, (1, 2)))
        none = pruned_like(gap, PruneConfig(ratio, (1, 2), alignment="none"))
        with torch.no_grad():
            delta = (gap(x) - none(x)).abs().max().item()
        assert (delta > 1e-3) if differ else delta == 0.0


def test_importance_kinds_keep_different_tokens():
    model = small(seed=3)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    kept = {}
    for kind in ("clip", "l1", "l2"):
        with torch.no_grad(), RecordKept() as rec:
            pruned_like(model, PruneConfig(0.5, (1,), importance=kind))(x)
        kept[kind] = rec.stages[0]
    assert not torch.equal(kept["clip"], kept["l1"])
    assert not torch.equal(kept["clip"], kept["l2"])
    assert all(torch.equal(p, p.sort(dim=1).values) for p in kept.values())


def test_flops_follow_the_schedule():
    dense = create_model("plainmamba_l1", **SMALL)
    pruned = create_model("plainmamba_l1", prune=PruneConfig(0.5, (1, 3)), **SMALL)
    assert pruned.tokens_per_block() == [16, 8, 8, 4]
    # A plain layer's cost is per token: one more layer costs 16 tokens' worth,
    # and pruning saves 8 + 8 + 12 tokens' worth (layer 0, with the dw block,
    # is never pruned).
    per_layer = create_model("plainmamba_l1", **{**SMALL, "depth": 5}).flops() - dense.flops()
    assert dense.flops() - pruned.flops() == per_layer * (8 + 8 + 12) // 16


def test_prune_after_past_the_last_layer_is_an_error():
    with pytest.raises(ConfigError, match="cannot prune after block 4"):
        small(PruneConfig(0.5, (4,)))


# --- presets -------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["l1", "l2", "l3"])
def test_paper_presets_prune_at_vim_s_relative_depths(size):
    model_name, config = PRESETS[f"plainmamba_{size}_paper"]
    assert model_name == f"plainmamba_{size}"
    depth = get_entry(model_name).config().depth
    assert config.prune_after == tuple(int(depth * f / 24 + 0.5) for f in (5, 10, 15))
    assert config.ratios == (0.64,) * 3 and config.importance == "clip"
    assert config.alignment == "gap"


def test_paper_preset_l3_reaches_the_papers_flops_reduction():
    dense = create_model("plainmamba_l3")
    pruned = create_model("plainmamba_l3", prune="plainmamba_l3_paper")
    assert pruned.tokens_per_block() == [196] * 8 + [126] * 7 + [81] * 8 + [52] * 13
    reduction = 1 - pruned.flops() / dense.flops()
    assert reduction == pytest.approx(PAPER_L3_REDUCTION, abs=0.01)
    assert sorted(pruned.state_dict()) == sorted(dense.state_dict())


def test_paper_preset_runs_on_a_small_l1():
    dense = seeded(create_model("plainmamba_l1", embed_dim=16, img_size=64))
    pruned = create_model("plainmamba_l1", prune="plainmamba_l1_paper", embed_dim=16,
                          img_size=64)
    pruned.load_state_dict(dense.state_dict())
    assert pruned.tokens_per_block() == [16] * 5 + [11] * 5 + [8] * 5 + [6] * 9
    with torch.no_grad():
        logits = pruned(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()


# --- export ------------------------------------------------------------------------

def test_pruned_model_exports_with_both_ops():
    model = small(PruneConfig(0.5, (1, 3)))
    x = torch.randn(2, 3, 64, 64)
    exported = torch.export.export(model, (x,), strict=False)
    targets = {n.target for n in exported.graph.nodes if n.op == "call_function"}
    assert torch.ops.ssmprune.selective_scan.default in targets
    assert torch.ops.ssmprune.token_gather.default in targets
    x2 = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x2), model(x2), rtol=1e-6, atol=1e-6)
