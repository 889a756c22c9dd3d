"""Vision Mamba (hustvl/Vim, models_mamba.py) in pure PyTorch.

Only the configuration of the released checkpoints is modelled: bimamba v2,
middle class token, absolute position embedding, RMSNorm with the residual
added *before* the norm (mamba_ssm's fused add+norm), residual stream in fp32,
``if_divide_out=True`` and the class token read out after ``norm_f``. Module
names match the official ones, so an official state dict loads as it is.

Dimension glossary: b batch, m tokens (patches + class token), c embed_dim,
d d_inner = expand * c, n d_state, r dt_rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssmprune.errors import ConfigError, InputShapeError
from ssmprune.models.registry import register_family, register_model
from ssmprune.ops.selective_scan import selective_scan
from ssmprune.ops.token_gather import token_gather
from ssmprune.pruning.config import PruneConfig
from ssmprune.pruning.gaps import vim_gaps
from ssmprune.pruning.importance import token_importance

Gaps = Optional[tuple[Tensor, Tensor]]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VimConfig:
    img_size: int = 224
    patch_size: int = 16
    stride: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192
    depth: int = 24
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    norm_eps: float = 1e-5
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def grid(self) -> int:
        return (self.img_size - self.patch_size) // self.stride + 1

    @property
    def num_patches(self) -> int:
        return self.grid ** 2

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.embed_dim / 16)

    def validate(self) -> None:
        for name in ("img_size", "patch_size", "stride", "in_chans", "num_classes",
                     "embed_dim", "depth", "d_state", "expand", "d_conv"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"vim: {name} must be positive, got {getattr(self, name)}")
        if self.img_size < self.patch_size:
            raise ConfigError(
                f"vim: img_size {self.img_size} is smaller than the patch size {self.patch_size}")
        if (self.img_size - self.patch_size) % self.stride:
            raise ConfigError(
                f"vim: img_size {self.img_size} does not tile with patch {self.patch_size} "
                f"and stride {self.stride}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ConfigError(f"vim: mean/std need {self.in_chans} values each")


class PatchEmbed(nn.Module):
    """Conv patchify: (b, in_chans, H, W) -> (b, grid*grid, c)."""

    def __init__(self, cfg: VimConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class BiMambaV2(nn.Module):
    """Vim's bidirectional mixer: shared in_proj, a forward and a backward branch.

    The backward branch runs on ``xz.flip(-1)`` (x and z both flipped), and the
    two outputs are averaged (``if_divide_out``) before ``out_proj``.
    """

    def __init__(self, cfg: VimConfig):
        super().__init__()
        c, d, n, r = cfg.embed_dim, cfg.d_inner, cfg.d_state, cfg.dt_rank
        self.d_inner, self.d_state, self.dt_rank = d, n, r
        self.in_proj = nn.Linear(c, 2 * d, bias=False)
        self.out_proj = nn.Linear(d, c, bias=False)
        for suffix in ("", "_b"):
            self.add_module("conv1d" + suffix, nn.Conv1d(
                d, d, cfg.d_conv, groups=d, padding=cfg.d_conv - 1, bias=True))
            self.add_module("x_proj" + suffix, nn.Linear(d, r + 2 * n, bias=False))
            self.add_module("dt_proj" + suffix, nn.Linear(r, d, bias=True))
        # S4D-real init, as the official code: A = -(1..n) per channel.
        a_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1)
        self.A_log = nn.Parameter(a_log.clone())
        self.A_b_log = nn.Parameter(a_log.clone())
        self.D = nn.Parameter(torch.ones(d))
        self.D_b = nn.Parameter(torch.ones(d))

    def branch(self, x: Tensor, z: Tensor, backward: bool, gap: Tensor | None = None) -> Tensor:
        """One scan direction. x, z: (b d m) in that direction's order; returns (b d m)."""
        sfx = "_b" if backward else ""
        conv: nn.Conv1d = getattr(self, "conv1d" + sfx)
        x_proj: nn.Linear = getattr(self, "x_proj" + sfx)
        dt_proj: nn.Linear = getattr(self, "dt_proj" + sfx)
        A = -torch.exp(getattr(self, "A_b_log" if backward else "A_log").float())
        D = getattr(self, "D" + sfx)
        m = x.shape[-1]
        x = F.silu(conv(x)[..., :m])  # causal: keep the first m outputs
        x_dbl = x_proj(x.transpose(1, 2))  # (b m r+2n)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)  # bias goes in the scan
        return selective_scan(
            x, delta, A, B.transpose(1, 2), C.transpose(1, 2), D=D.float(), z=z,
            delta_bias=dt_proj.bias.float(), gap=gap, delta_softplus=True,
        )

    def mix(self, hidden: Tensor, gaps: Gaps = None) -> Tensor:
        """The scan outputs before out_proj, aligned to token positions.

        hidden: (b m c) -> (b m d), the average of the forward output and the
        flipped-back backward output. ``gaps``: (forward, backward) (b m) int64
        alignment gaps, the backward ones in flipped order, or None.
        """
        gap_f, gap_b = gaps if gaps is not None else (None, None)
        xz = self.in_proj(hidden).transpose(1, 2)  # (b 2d m)
        x, z = xz.chunk(2, dim=1)
        y = self.branch(x, z, backward=False, gap=gap_f)
        y_b = self.branch(x.flip(-1), z.flip(-1), backward=True, gap=gap_b)
        return ((y + y_b.flip(-1)) / 2).transpose(1, 2)

    def forward(self, hidden: Tensor, gaps: Gaps = None) -> Tensor:
        """hidden: (b m c) fp32 -> (b m c)."""
        return self.out_proj(self.mix(hidden, gaps))


class Block(nn.Module):
    """mamba_ssm Block with fused add+RMSNorm: residual += h; h = mixer(norm(residual))."""

    def __init__(self, cfg: VimConfig):
        super().__init__()
        self.norm = nn.RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mixer = BiMambaV2(cfg)

    def forward(self, hidden: Tensor, residual: Tensor | None,
                gaps: Gaps = None) -> tuple[Tensor, Tensor, Tensor]:
        """hidden, residual: (b m c); residual is fp32 (None for the first block).

        Returns (mixer output (b m c), residual (b m c) fp32, the mixer's
        pre-out_proj output (b m d) that pruning scores).
        """
        residual = hidden.float() if residual is None else residual + hidden.float()
        y = self.mixer.mix(self.norm(residual.to(self.norm.weight.dtype)), gaps)
        return self.mixer.out_proj(y), residual, y


class VisionMamba(nn.Module):
    """Vim classifier: (b, in_chans, img_size, img_size) fp32 -> logits (b, num_classes)."""

    family = "vim"
    checkpoint_key = "model"  # official files are torch.save({"model": ...})

    def __init__(self, cfg: VimConfig, prune: PruneConfig | None = None):
        super().__init__()
        self.config = cfg
        self.prune = prune
        self.schedule = (prune.token_schedule(cfg.num_patches + 1, cfg.depth, has_cls=True)
                         if prune else [cfg.num_patches + 1] * cfg.depth)
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.embed_dim))
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm_f = nn.RMSNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @property
    def cls_position(self) -> int:
        """Index of the class token: inserted in the middle of the patches."""
        return self.config.num_patches // 2

    def input_shape(self) -> tuple[int, int, int]:
        cfg = self.config
        return (cfg.in_chans, cfg.img_size, cfg.img_size)

    def check_input(self, x: Tensor) -> None:
        expected = self.input_shape()
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise InputShapeError(
                f"vim expects input (batch, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}")

    def embed(self, x: Tensor) -> Tensor:
        """Patches, middle class token and position embedding: (b m c)."""
        x = self.patch_embed(x)
        pos = self.cls_position
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((x[:, :pos], cls, x[:, pos:]), dim=1)
        return x + self.pos_embed

    def forward_features(self, x: Tensor) -> Tensor:
        """(b, in_chans, H, W) -> the class token after norm_f, (b c).

        When pruned, after each pruning block the tokens are scored from that
        block's mixer output, the top ones kept with ``token_gather`` (hidden
        states and fp32 residual together, class token in the middle), and
        the following scans get the alignment gaps of the kept positions.
        """
        self.check_input(x)
        hidden, residual = self.embed(x), None
        cls_index, gaps = self.cls_position, None
        positions = torch.arange(hidden.shape[1], device=x.device).expand(x.shape[0], -1)
        points = set(self.prune.prune_after) if self.prune else set()
        for i, layer in enumerate(self.layers):
            hidden, residual, y = layer(hidden, residual, gaps)
            if i + 1 not in points:
                continue
            scores = token_importance(y, self.prune.importance)
            patches = self.schedule[i + 1] - 1
            positions, hidden, residual = token_gather(
                scores, positions, [hidden, residual], patches, cls_index, patches // 2)
            cls_index = patches // 2
            if self.prune.alignment == "gap":
                gaps = vim_gaps(positions, cls_index, self.cls_position, self.config.num_patches)
        residual = residual + hidden.float()
        hidden = self.norm_f(residual.to(self.norm_f.weight.dtype))
        return hidden[:, cls_index]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))

    def grid_shape(self) -> tuple[int, int]:
        """Patch grid (rows, columns)."""
        return (self.config.grid, self.config.grid)

    def grid_index(self, positions: Tensor) -> Tensor:
        """Original token positions (b k) -> raster patch indices, -1 for the class token."""
        cls = self.cls_position
        return torch.where(positions == cls, -1, positions - (positions > cls).long())

    def tokens_per_block(self) -> list[int]:
        """Tokens entering each block (fewer after each pruning point)."""
        return list(self.schedule)

    def flops(self) -> int:
        """FLOPs in the Vim paper's convention (PAPER.md, "FLOPs convention").

        Multiply-accumulates count as one. Per block and token: in_proj, one
        causal conv, one x_proj, one dt_proj, ``9*d*n + 2*d`` for the scan and
        out_proj, i.e. one scan direction only; plus patch embedding and head.
        """
        cfg = self.config
        c, d, n, r = cfg.embed_dim, cfg.d_inner, cfg.d_state, cfg.dt_rank
        per_token = (c * 2 * d + d * cfg.d_conv + d * (r + 2 * n) + r * d
                     + 9 * d * n + 2 * d + d * c)
        total = sum(m * per_token for m in self.tokens_per_block())
        patch = cfg.num_patches * cfg.in_chans * cfg.patch_size ** 2 * c
        return total + patch + c * cfg.num_classes

    @staticmethod
    def from_official_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Vim's official keys are this module's keys."""
        return dict(state)

    @staticmethod
    def to_official_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
        return dict(state)


VIM = register_family("vim", VimConfig, VisionMamba)
register_model("vim_t", VIM, "Vim-Tiny, patch 16, 224 px", embed_dim=192)
register_model("vim_s", VIM, "Vim-Small, patch 16, 224 px", embed_dim=384)
register_model("vim_b", VIM, "Vim-Base, patch 16, 224 px", embed_dim=768)
register_model("vim_t_stride8", VIM, "Vim-Tiny+, patch 16 stride 8, 224 px",
               embed_dim=192, stride=8)
register_model("vim_s_stride8", VIM, "Vim-Small+, patch 16 stride 8, 224 px",
               embed_dim=384, stride=8)
