"""Pruned Vim against hand-computed gathers and gaps."""

import torch

from ssmprune.models import create_model
from ssmprune.pruning import PruneConfig
from ssmprune.pruning.gaps import vim_gaps

TINY = dict(img_size=32, patch_size=8, stride=8, embed_dim=16, depth=3, num_classes=5)


def seeded(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.1 if "A" in name.split(".")[-1] else 0.3
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def test_vim_gaps_by_hand():
    # 16 patches, class token originally at position 8; kept patches 0 3 4 7 9 10 14 15.
    positions = torch.tensor([[0, 3, 4, 7, 8, 10, 11, 15, 16]])
    fwd, bwd = vim_gaps(positions, cls_index=4, cls_origin=8, num_patches=16)
    assert fwd.tolist() == [[0, 2, 0, 2, 0, 1, 0, 3, 0]]
    # Backward order: patches 15 14 10 9 | cls | 7 4 3 0 -> reversed indices 0 1 5 6 8 11 12 15.
    assert bwd.tolist() == [[0, 0, 3, 0, 0, 1, 2, 0, 2]]


def test_ratio_one_equals_dense():
    torch.manual_seed(0)
    dense = seeded(create_model("vim_t", **TINY))
    pruned = create_model("vim_t", **TINY, prune=PruneConfig(1.0, (1, 2)))
    pruned.load_state_dict(dense.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), dense(x), rtol=0, atol=0)


def hand_reference(model, x, keep, importance="clip", aligned=True):
    """Prune after block 1 by hand: Python sorting, list indexing, loop-counted gaps."""
    hidden = model.embed(x)
    cls = model.cls_position
    h1, res1, y = model.layers[0](hidden, None)
    scores = {"clip": y.clamp_min(0).sum(-1), "l1": y.abs().sum(-1),
              "l2": y.square().sum(-1).sqrt()}[importance]
    rows_h, rows_r, gaps_f, gaps_b = [], [], [], []
    for i in range(x.shape[0]):
        patches = [j for j in range(hidden.shape[1]) if j != cls]
        top = sorted(sorted(patches, key=lambda j: -scores[i, j].item())[:keep])
        order = top[: keep // 2] + [cls] + top[keep // 2:]
        rows_h.append(h1[i, order])
        rows_r.append(res1[i, order])
        q = [j - (j > cls) for j in top]  # patch indices, class token skipped
        f, prev = [], -1
        for v in q:
            f.append(v - prev - 1)
            prev = v
        b, prev = [], -1
        for v in reversed(q):
            r = model.config.num_patches - 1 - v
            b.append(r - prev - 1)
            prev = r
        gaps_f.append(f[: keep // 2] + [0] + f[keep // 2:])
        gaps_b.append(b[: keep // 2] + [0] + b[keep // 2:])
    hidden, residual = torch.stack(rows_h), torch.stack(rows_r)
    gaps = (torch.tensor(gaps_f), torch.tensor(gaps_b)) if aligned else None
    for layer in model.layers[1:]:
        hidden, residual, _ = layer(hidden, residual, gaps)
    residual = residual + hidden
    out = model.norm_f(residual)[:, keep // 2]
    return model.head(out)


def test_pruned_forward_matches_hand_reference():
    torch.manual_seed(1)
    for alignment in ("gap", "none"):
        for importance in ("clip", "l1", "l2"):
            model = seeded(create_model("vim_t", **TINY, prune=PruneConfig(
                0.5, (1,), importance=importance, alignment=alignment)))
            assert model.tokens_per_block() == [17, 9, 9]
            x = torch.randn(4, 3, 32, 32)
            with torch.no_grad():
                want = hand_reference(model, x, 8, importance, alignment == "gap")
                torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)


def test_alignment_changes_the_output():
    torch.manual_seed(2)
    gap = seeded(create_model("vim_t", **TINY, prune=PruneConfig(0.5, (1,))))
    none = create_model("vim_t", **TINY, prune=PruneConfig(0.5, (1,), alignment="none"))
    none.load_state_dict(gap.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (gap(x) - none(x)).abs().max() > 1e-3


def test_samples_are_pruned_independently():
    torch.manual_seed(3)
    model = seeded(create_model("vim_t", **TINY, prune=PruneConfig(0.5, (1, 2))))
    x = torch.randn(3, 3, 32, 32)
    x2 = x.clone()
    x2[1:] = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], model(x2)[0], rtol=1e-6, atol=1e-6)
