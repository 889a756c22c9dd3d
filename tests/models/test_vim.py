"""Tests of ssmprune/models/vim.py against an independent functional reference.

The reference below is written from PAPER.md ("Vim (hustvl/Vim,
models_mamba.py)") with plain functional torch ops and the sequential scan
oracle; it reads nothing from the model but its state dict. Each architecture
detail it follows is pinned twice: the model matches the reference, and the
reference with that one detail changed gives a clearly different output.
"""

import re

import pytest
import torch
import torch.nn.functional as F

from numerics import max_rel_error
from ssmprune.errors import ConfigError, InputShapeError, SsmpruneError, UnknownModelError
from ssmprune.models import create_model, model_names
from ssmprune.models.vim import BiMambaV2, Block, VimConfig, VisionMamba
from ssmprune.ops.selective_scan import selective_scan_ref

# Vim paper / official release: parameters with the 1000-class head, GFLOPs.
PAPER_SIZES = {
    "vim_t": (7_148_008, 1.449),
    "vim_s": (25_796_584, 5.077),
    "vim_b": (97_598_440, 18.87),
}

SMALL = dict(img_size=32, patch_size=8, stride=8, embed_dim=32, depth=2, num_classes=10)

# (img_size, patch_size, stride) -> token grids with an odd and an even patch
# count, and one with overlapping patches.
GRIDS = {
    "3x3": dict(img_size=24, patch_size=8, stride=8),
    "4x4": dict(img_size=32, patch_size=8, stride=8),
    "3x3_overlap": dict(img_size=16, patch_size=8, stride=4),
}

MATCH_TOL = 1e-4  # max abs difference relative to the output scale
DIFFERENT = 0.05  # a changed detail must move the output by more than this


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomise(model: torch.nn.Module, scale: float = 0.2) -> torch.nn.Module:
    """Move every parameter off its init (class token and pos_embed included).

    A seeded normal of modest scale is added to the init, so A_log stays near
    log(1..n) and every norm weight near 1.
    """
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model


def small_vim(**overrides) -> VisionMamba:
    torch.manual_seed(1)
    return _randomise(create_model("vim_t", **{**SMALL, **overrides})).eval()


# ---------------------------------------------------------------------------
# Independent reference forward
# ---------------------------------------------------------------------------

def rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def reference_branch(sd, prefix, suffix, x, z):
    """One scan direction of the bimamba v2 mixer; x, z: (b d l) in scan order."""
    a_log = sd[prefix + ("A_b_log" if suffix else "A_log")]
    conv_w, conv_b = sd[f"{prefix}conv1d{suffix}.weight"], sd[f"{prefix}conv1d{suffix}.bias"]
    dt_w, dt_b = sd[f"{prefix}dt_proj{suffix}.weight"], sd[f"{prefix}dt_proj{suffix}.bias"]
    d, l = x.shape[1], x.shape[2]
    k, n, r = conv_w.shape[-1], a_log.shape[1], dt_w.shape[1]
    # Causal depthwise conv: pad d_conv - 1 on both sides, keep the first l outputs.
    x = F.silu(F.conv1d(x, conv_w, conv_b, padding=k - 1, groups=d)[..., :l])
    x_dbl = F.linear(x.transpose(1, 2), sd[f"{prefix}x_proj{suffix}.weight"])  # (b l r+2n)
    dt, B, C = x_dbl[..., :r], x_dbl[..., r:r + n], x_dbl[..., r + n:]
    delta = torch.matmul(dt_w, dt.transpose(1, 2))  # (d r) @ (b r l) -> (b d l)
    return selective_scan_ref(
        x, delta, -torch.exp(a_log), B.transpose(1, 2).contiguous(),
        C.transpose(1, 2).contiguous(), D=sd[prefix + "D" + suffix], z=z,
        delta_bias=dt_b, delta_softplus=True,
    )


def reference_mixer(sd, prefix, h, *, flip_z=True, divide_out=True):
    """Bimamba v2 mixer on h: (b m c) -> (b m c)."""
    xz = F.linear(h, sd[prefix + "in_proj.weight"]).transpose(1, 2)  # (b 2d m)
    d = xz.shape[1] // 2
    x, z = xz[:, :d], xz[:, d:]
    y = reference_branch(sd, prefix, "", x, z)
    y_b = reference_branch(sd, prefix, "_b", x.flip(-1), z.flip(-1) if flip_z else z)
    y = y + y_b.flip(-1)
    if divide_out:
        y = y / 2
    return F.linear(y.transpose(1, 2), sd[prefix + "out_proj.weight"])


def reference_vim(sd, images, *, patch_size, stride, eps=1e-5, cls_middle=True,
                  readout="cls", add_then_norm=True, flip_z=True, divide_out=True):
    """Vim forward from its state dict; images (b 3 H W) -> logits (b classes).

    The keyword flags switch one architecture detail each away from the
    official model (all defaults are the official behaviour):
      cls_middle=False   class token at index 0 (inserted and read there);
      readout="mean"     mean of all tokens after norm_f instead of the class token;
      add_then_norm=False  norm-then-add: each block normalises and mixes its
                         incoming hidden state, and the residual sum is kept
                         apart (``h = mixer(norm(h)); residual += h_in``), instead
                         of ``residual += h; h = mixer(norm(residual))``;
      flip_z=False       the backward branch gates with z in forward order;
      divide_out=False   out_proj(y + y_b.flip) without the division by 2.
    """
    depth = len([k for k in sd if re.fullmatch(r"layers\.\d+\.norm\.weight", k)])
    tokens = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                      stride=stride)
    assert sd["patch_embed.proj.weight"].shape[-1] == patch_size
    tokens = tokens.flatten(2).transpose(1, 2)  # (b M c)
    b, M, _ = tokens.shape
    pos = M // 2 if cls_middle else 0
    cls = sd["cls_token"].expand(b, 1, -1)
    h = torch.cat([tokens[:, :pos], cls, tokens[:, pos:]], dim=1) + sd["pos_embed"]
    residual = None
    for i in range(depth):
        p = f"layers.{i}."
        if add_then_norm:
            residual = h.float() if residual is None else residual + h.float()
            h = reference_mixer(sd, p + "mixer.", rms_norm(residual, sd[p + "norm.weight"], eps),
                                flip_z=flip_z, divide_out=divide_out)
        else:
            h_in = h
            h = reference_mixer(sd, p + "mixer.", rms_norm(h_in, sd[p + "norm.weight"], eps),
                                flip_z=flip_z, divide_out=divide_out)
            residual = h_in.float() if residual is None else residual + h_in.float()
    residual = residual + h
    normed = rms_norm(residual, sd["norm_f.weight"], eps)
    feature = normed[:, pos] if readout == "cls" else normed.mean(1)
    return F.linear(feature, sd["head.weight"], sd["head.bias"])


def _run_both(grid: str, batch: int = 2, **variant):
    model = small_vim(**GRIDS[grid])
    cfg = model.config
    x = torch.randn(batch, 3, cfg.img_size, cfg.img_size)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        got = model(x)
        want = reference_vim(sd, x, patch_size=cfg.patch_size, stride=cfg.stride, **variant)
    return got, want


# ---------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_parameter_count_matches_release(name):
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PAPER_SIZES[name][0]


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_gflops_match_paper(name):
    gflops = create_model(name).flops() / 1e9
    assert gflops == pytest.approx(PAPER_SIZES[name][1], rel=0.01)


def test_full_size_layout():
    model = create_model("vim_s")
    cfg = model.config
    assert (cfg.embed_dim, cfg.depth, cfg.d_state, cfg.expand, cfg.d_conv) == (384, 24, 16, 2, 4)
    assert cfg.dt_rank == 24 and cfg.num_patches == 196
    assert model.pos_embed.shape == (1, 197, 384)
    assert model.cls_position == 98
    assert model.tokens_per_block() == [197] * 24
    assert create_model("vim_t_stride8").config.num_patches == 729


# ---------------------------------------------------------------------------
# Forward against the reference
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_forward_matches_reference(grid):
    got, want = _run_both(grid)
    assert want.abs().max() > 0.1  # a non-trivial output
    assert max_rel_error(got, want) < MATCH_TOL


VARIANTS = {
    "cls_token_first": dict(cls_middle=False),
    "mean_readout": dict(readout="mean"),
    "norm_then_add": dict(add_then_norm=False),
    "z_not_flipped": dict(flip_z=False),
    "no_divide_out": dict(divide_out=False),
}


@pytest.mark.parametrize("grid", ["3x3", "4x4"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_detail_changes_the_output(variant, grid):
    got, changed = _run_both(grid, **VARIANTS[variant])
    assert max_rel_error(got, changed) > DIFFERENT


def test_mixer_and_block_match_reference():
    cfg = VimConfig(**SMALL)
    block = _randomise(Block(cfg)).eval()
    sd = {k: v.detach().clone() for k, v in block.state_dict().items()}
    hidden, residual = torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    with torch.no_grad():
        want_mixer = reference_mixer(sd, "mixer.", hidden)
        assert max_rel_error(block.mixer(hidden), want_mixer) < MATCH_TOL
        # Block returns (mixer output, residual, ...): later outputs are pruning's.
        h, r = block(hidden, residual)[:2]
        torch.testing.assert_close(r, residual + hidden)
        want = reference_mixer(sd, "mixer.", rms_norm(residual + hidden, sd["norm.weight"]))
        assert max_rel_error(h, want) < MATCH_TOL
        h0, r0 = block(hidden, None)[:2]  # first block: the residual is the input
        torch.testing.assert_close(r0, hidden)
        want0 = reference_mixer(sd, "mixer.", rms_norm(hidden, sd["norm.weight"]))
        assert max_rel_error(h0, want0) < MATCH_TOL
    assert isinstance(block.mixer, BiMambaV2)


# ---------------------------------------------------------------------------
# Behaviour
# ---------------------------------------------------------------------------

def test_output_shape_and_dtype():
    model = small_vim()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert model.cls_position == 8 and model.pos_embed.shape == (1, 17, 32)


def test_samples_are_independent():
    model = small_vim()
    x = torch.randn(3, 3, 32, 32)
    x_changed = x.clone()
    x_changed[1] = torch.randn(3, 32, 32)
    with torch.no_grad():
        base, changed = model(x), model(x_changed)
        alone = torch.cat([model(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(changed[[0, 2]], base[[0, 2]], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(changed[1], base[1])
    torch.testing.assert_close(alone, base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 24, 24), (2, 1, 32, 32), (2, 3, 32, 24), (3, 32, 32)])
def test_wrong_input_shape_raises(shape):
    model = small_vim()
    with pytest.raises(InputShapeError, match=re.escape("(batch, 3, 32, 32)")):
        model(torch.randn(shape))


@pytest.mark.parametrize("override", [
    dict(img_size=30),              # (30 - 8) is not a multiple of the stride
    dict(img_size=36, stride=16),
    dict(img_size=4),               # smaller than one patch
    dict(embed_dim=0),
    dict(depth=0),
    dict(d_state=-1),
    dict(stride=0),
    dict(patch_size=0),
    dict(num_classes=0),
    dict(mean=(0.5,)),
    dict(embed_dims=32),            # unknown override name
])
def test_impossible_config_raises(override):
    with pytest.raises(ConfigError) as info:
        create_model("vim_t", **{**SMALL, **override})
    assert isinstance(info.value, SsmpruneError)
    assert "\n" not in str(info.value)


def test_unknown_override_names_itself():
    with pytest.raises(ConfigError, match="embed_dims"):
        create_model("vim_t", embed_dims=32)


def test_unknown_model_lists_the_names():
    with pytest.raises(UnknownModelError) as info:
        create_model("vim_xl")
    message = str(info.value)
    assert "vim_xl" in message
    for name in model_names():
        assert name in message
    assert {"vim_t", "vim_s", "vim_b"} <= set(model_names())
