"""PlainMamba (Yang et al., BMVC 2024): a plain, non-hierarchical vision Mamba.

Rebuilt from the official code (github ChenhongyiYang/PlainMamba,
``mmcls/plain_mamba_dev/models/``) with the official module names, so an
official checkpoint loads after renaming its keys with
``PlainMamba.from_official_state_dict``. The CUDA ``selective_scan_fn`` of
mamba_ssm is replaced by our op ``ssmprune::selective_scan``.

With a ``PruneConfig`` the model prunes tokens as ToP does (PAPER.md): each
sample keeps its own tokens, and later layers run on those only, with the
zig-zag scans restricted to them (``ssmprune.pruning.plainmamba_tokens``).
Presets for the paper's FLOPs budget are registered at the bottom.

Dimension glossary:
    b     batch
    h, w  token grid, img_size / 16 each (14 x 14 at 224 px)
    l     tokens, h * w, in raster (row-major) order unless said otherwise
    m     tokens a layer sees: l, or the kept ones (raster order) after pruning
    c     embed_dim, the model width (d_model)
    e     d_inner = expand * c (E in the paper)
    n     d_state (N in the paper)
    r     dt_rank = ceil(c / 16)
    k     scan directions, always 4

Quirks of the official code, kept because the released checkpoints were
trained with them:
    1. Only the input ``u`` of each directional scan is permuted into scan
       order; delta, B and C stay in raster order, and the direction rows of
       ``direction_Bs`` are added to B by scan position
       (plain_mamba_layer.py lines 301-315).
    2. The dt_proj bias is added twice: once by ``dt_proj(dt)`` and again as
       the scan's ``delta_bias`` (plain_mamba_layer.py lines 292 and 312), so
       delta = softplus(W dt + 2 b). Here the scan gets ``W dt`` and
       ``delta_bias = 2 b``: the same sum, and the alignment's default step
       ``softplus(delta_bias) = softplus(2 b)`` is then the step of a token
       with zero input, as it is for a model without the quirk.
    3. Two LayerNorm epsilons: 1e-5 inside the layers (plain nn.LayerNorm,
       plain_mamba_layer.py line 341), 1e-6 for the final ``ln1``
       (mmcls ``norm_cfg``, plain_mamba.py line 97).
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
from ssmprune.pruning.config import PruneConfig, register_preset
from ssmprune.pruning.importance import token_importance
from ssmprune.pruning.plainmamba_tokens import (
    TokenScans,
    dense_scans,
    grid_to_tokens,
    restrict_scans,
    tokens_to_grid,
)

STEM_WIDTH = 64
STEM_STRIDE = 2
PROJECTION_STRIDE = 8
PATCH_STRIDE = STEM_STRIDE * PROJECTION_STRIDE
NUM_DIRECTIONS = 4

# Rows of ``direction_Bs``: the move that led into a token along its scan.
START, RIGHT, LEFT, UP, DOWN = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class PlainMambaConfig:
    """Hyper-parameters of one PlainMamba model; defaults are PlainMamba-L1.

    ``mean`` and ``std`` are the ImageNet normalisation of the official mmcls
    config (``img_norm_cfg`` in imagenet_bs64_swin_224_lmdb.py, divided by
    255), for RGB inputs scaled to [0, 1].
    """

    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 192
    depth: int = 24
    d_state: int = 16
    expand: int = 2
    conv_size: int = 7
    stem_convs: int = 1
    dw_after_first_layer: bool = True
    norm_eps: float = 1e-5
    final_norm_eps: float = 1e-6
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)

    @property
    def d_inner(self) -> int:
        return self.expand * self.embed_dim

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.embed_dim / 16)

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid (h, w) after the stride-16 patch embedding."""
        side = self.img_size // PATCH_STRIDE
        return side, side

    @property
    def num_tokens(self) -> int:
        h, w = self.grid
        return h * w

    def validate(self) -> None:
        """Raise ``ConfigError`` with one line for the first impossible value."""
        positive = ("img_size", "in_chans", "num_classes", "embed_dim", "depth",
                    "d_state", "expand", "conv_size", "norm_eps", "final_norm_eps")
        for name in positive:
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"plainmamba: {name} must be positive, got {value}")
        if self.img_size % PATCH_STRIDE:
            raise ConfigError(
                f"plainmamba: img_size must be a multiple of the total stride "
                f"{PATCH_STRIDE}, got {self.img_size}"
            )
        if self.conv_size % 2 == 0:
            raise ConfigError(f"plainmamba: conv_size must be odd, got {self.conv_size}")
        if self.stem_convs < 0:
            raise ConfigError(f"plainmamba: stem_convs must be >= 0, got {self.stem_convs}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ConfigError(
                f"plainmamba: mean and std need {self.in_chans} values (in_chans), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(not s > 0 for s in self.std):
            raise ConfigError(f"plainmamba: std must be positive, got {self.std}")


@dataclass(frozen=True)
class ZigzagOrders:
    """The four scan orders of a token grid, as (k, l) int64 tensors.

    ``orders[k, t]`` is the raster index of the t-th token of scan k;
    ``inverse[k, p]`` is the scan position of raster token p, so
    ``orders[k, inverse[k]] == arange(l)``; ``directions[k, t]`` is the
    ``direction_Bs`` row of the move into the t-th token of scan k (START for
    the first). Scans: 0 row snake from the top-left corner, 1 its reverse,
    2 column snake from the top-left corner, 3 its reverse.
    """

    orders: Tensor
    inverse: Tensor
    directions: Tensor


def _move_codes(order: Tensor, w: int) -> Tensor:
    """Direction code of each step of ``order`` (l,), from grid coordinates."""
    rows, cols = order // w, order % w
    dr, dc = rows.diff(), cols.diff()
    codes = torch.full_like(dr, -1)
    codes[dc == 1] = RIGHT
    codes[dc == -1] = LEFT
    codes[dr == -1] = UP
    codes[dr == 1] = DOWN
    return torch.cat([order.new_tensor([START]), codes])


def zigzag_orders(h: int, w: int, device: Optional[torch.device] = None) -> ZigzagOrders:
    """The official four zig-zag scans of an h x w grid (any h, w >= 1)."""
    rows = torch.arange(h, device=device)[:, None]
    cols = torch.arange(w, device=device)[None, :]
    # Odd rows run right to left; odd columns run bottom to top.
    row_snake = (rows * w + torch.where(rows % 2 == 1, w - 1 - cols, cols)).flatten()
    col_snake = (torch.where(cols % 2 == 1, h - 1 - rows, rows) * w + cols).t().flatten()
    orders = torch.stack([row_snake, row_snake.flip(0), col_snake, col_snake.flip(0)])
    inverse = torch.empty_like(orders)
    positions = torch.arange(h * w, device=device).expand_as(orders)
    inverse.scatter_(1, orders, positions)
    directions = torch.stack([_move_codes(o, w) for o in orders])
    return ZigzagOrders(orders, inverse, directions)


class ConvPatchEmbed(nn.Module):
    """Convolutional stem: (b, in_chans, H, W) -> tokens (b, l, c) and (h, w).

    conv7x7/2 + BN + ReLU, ``num_convs`` x (conv3x3 + BN + ReLU) at width 64,
    then an 8x8/8 projection with bias; total stride 16. The official module
    pads the projection input to a multiple of 8 ("corner" AdaptivePadding);
    ``PlainMambaConfig.validate`` only admits sizes where that pads nothing.
    """

    def __init__(self, in_chans: int, embed_dim: int, num_convs: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, STEM_WIDTH, 7, stride=STEM_STRIDE, padding=3, bias=False),
            nn.BatchNorm2d(STEM_WIDTH),
            nn.ReLU(inplace=True),
        )
        if num_convs > 0:
            convs = []
            for _ in range(num_convs):
                convs += [
                    nn.Conv2d(STEM_WIDTH, STEM_WIDTH, 3, padding=1, bias=False),
                    nn.BatchNorm2d(STEM_WIDTH),
                    nn.ReLU(inplace=True),
                ]
            self.convs = nn.Sequential(*convs)
        else:
            self.convs = None
        self.projection = nn.Conv2d(
            STEM_WIDTH, embed_dim, PROJECTION_STRIDE, stride=PROJECTION_STRIDE
        )

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = self.stem(x)
        if self.convs is not None:
            x = self.convs(x)
        x = self.projection(x)
        hw_shape = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), hw_shape


class PlainMamba2D(nn.Module):
    """The PlainMamba mixer: a 2D depthwise conv, then four zig-zag scans.

    Parameters keep the official names and shapes: ``in_proj`` (c -> 2e, bias),
    ``conv2d`` (depthwise, ``conv_size`` square, bias), ``x_proj`` (e -> r + 2n),
    ``dt_proj`` (r -> e, bias), ``A_log`` (e, n), ``D`` (e), ``out_proj``
    (e -> c, bias), ``direction_Bs`` (5, n).
    """

    def __init__(self, d_model: int, d_state: int, expand: int, conv_size: int,
                 default_hw_shape: tuple[int, int]):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.default_hw_shape = tuple(default_hw_shape)
        e, n, r = self.d_inner, d_state, self.dt_rank

        self.in_proj = nn.Linear(d_model, 2 * e)
        self.conv2d = nn.Conv2d(e, e, conv_size, padding=conv_size // 2, groups=e)
        self.x_proj = nn.Linear(e, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, e)
        s4d_real = torch.arange(1, n + 1, dtype=torch.float32).repeat(e, 1)
        self.A_log = nn.Parameter(torch.log(s4d_real))
        self.D = nn.Parameter(torch.ones(e))
        self.out_proj = nn.Linear(e, d_model)
        self.direction_Bs = nn.Parameter(torch.empty(NUM_DIRECTIONS + 1, n))
        self._init_like_official()

        scan = zigzag_orders(*self.default_hw_shape)
        # Not persistent: derived from the grid, absent from official checkpoints.
        self.register_buffer("scan_orders", scan.orders, persistent=False)
        self.register_buffer("scan_inverse", scan.inverse, persistent=False)
        self.register_buffer("scan_directions", scan.directions, persistent=False)

    def _init_like_official(self) -> None:
        """Random init of the official mixer: mamba's dt init, small direction_Bs."""
        with torch.no_grad():
            std = self.dt_rank ** -0.5
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            dt = torch.exp(
                torch.rand(self.d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
            ).clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            nn.init.trunc_normal_(self.direction_Bs, std=0.02)

    def zigzag(self, hw_shape: tuple[int, int]) -> ZigzagOrders:
        """The scan orders of ``hw_shape``, from the buffers for the default grid."""
        if tuple(hw_shape) == self.default_hw_shape:
            return ZigzagOrders(self.scan_orders, self.scan_inverse, self.scan_directions)
        return zigzag_orders(*hw_shape, device=self.A_log.device)

    def forward(self, x: Tensor, hw_shape: tuple[int, int],
                scans: Optional[TokenScans] = None) -> Tensor:
        """x: (b, m, c) fp32 tokens of ``hw_shape``; returns (b, m, c).

        Without ``scans`` the tokens are the whole grid (m = h * w) in raster
        order; with them, the kept tokens that ``scans`` describes.
        """
        return self.out_proj(self.gated_scan(x, hw_shape, scans))

    def gated_scan(self, x: Tensor, hw_shape: tuple[int, int],
                   scans: Optional[TokenScans] = None) -> Tensor:
        """The mixer output before ``out_proj``: sum_k(y_k) * silu(z), (b, m, e).

        This is the tensor the importance score ``S_m`` is computed on. Pruned
        positions are zeros for the depthwise conv (it sees the whole grid).
        """
        b = x.shape[0]
        n, r = self.d_state, self.dt_rank
        if scans is None:
            scan = self.zigzag(hw_shape)
            scans = dense_scans(scan.orders, scan.inverse, scan.directions, b)
        u, z = self.in_proj(x).chunk(2, dim=-1)
        grid = self.conv2d(tokens_to_grid(u, scans.positions, hw_shape))
        u = F.silu(grid_to_tokens(grid, scans.positions))  # (b, m, e)
        dt, B, C = self.x_proj(u).split([r, n, n], dim=-1)
        # Quirk 2: the step is softplus(W dt + 2 b). The op gets W dt and
        # delta_bias = 2 b (same sum), so its default step for pruned positions,
        # softplus(delta_bias) = softplus(2 b), is the step of a zero-input token.
        delta = F.linear(dt, self.dt_proj.weight)
        y = self._directional_scans(u.transpose(1, 2), delta.transpose(1, 2),
                                    B.transpose(1, 2), C.transpose(1, 2), scans)
        return y.transpose(1, 2) * F.silu(z)

    def _directional_scans(self, u: Tensor, delta: Tensor, B: Tensor, C: Tensor,
                           scans: TokenScans) -> Tensor:
        """Sum of the four directional scans, back in (kept) raster order.

        u, delta: (b, e, m) raster; B, C: (b, n, m) raster. Returns (b, e, m).
        The four directions run as one scan call over a (k * b) batch.
        """
        k, b, m = scans.orders.shape
        e = u.shape[1]
        # Quirk 1: u is permuted into each scan order, delta/B/C are not, and
        # the direction rows are added by scan position (among the kept tokens).
        u_k = _take_tokens(u, scans.orders)
        dir_B = self.direction_Bs[scans.directions].transpose(2, 3)  # (k, b, n, m)
        y = selective_scan(
            u_k.reshape(k * b, e, m),
            delta.repeat(k, 1, 1),
            -torch.exp(self.A_log),
            (B + dir_B).reshape(k * b, -1, m),
            C.repeat(k, 1, 1),
            self.D,
            None,
            2 * self.dt_proj.bias,  # quirk 2, see gated_scan
            None if scans.gaps is None else scans.gaps.reshape(k * b, m),
            True,
        ).view(k, b, e, m)
        return _take_tokens(y, scans.inverse).sum(0)


def _take_tokens(x: Tensor, index: Tensor) -> Tensor:
    """out[j, i, :, t] = x[j, i, :, index[j, i, t]] (x without its leading j axis broadcasts).

    x: (b, e, m) or (k, b, e, m); index: (k, b, m) int64. Returns (k, b, e, m).
    Rows of a flattened (tokens, e) view are picked with one flat index of
    k*b*m entries: the dense model's static scan orders then export as that
    small index, where a gather with the index expanded over e exports as a
    folded int64 constant e times larger than the weights it serves.
    """
    k, b, m = index.shape
    rows = x.transpose(-1, -2).reshape(-1, x.shape[-2])  # (.. * m, e)
    batches = x.shape[0] if x.dim() == 3 else k * b
    offsets = torch.arange(batches, device=x.device).view(-1, b, 1) * m  # (1 or k, b, 1)
    return rows[index + offsets].transpose(-1, -2)


class PlainMambaLayer(nn.Module):
    """``x + mamba(norm(x))``, then, where ``with_dwconv``, dw3x3 + BN + GELU.

    The depthwise block replaces the layer output (it is not a residual).
    """

    def __init__(self, config: PlainMambaConfig, with_dwconv: bool):
        super().__init__()
        c = config.embed_dim
        self.norm = nn.LayerNorm(c, eps=config.norm_eps)
        if with_dwconv:
            self.dw = nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
                nn.BatchNorm2d(c),
                nn.GELU(),
            )
        else:
            self.dw = None
        self.mamba = PlainMamba2D(c, config.d_state, config.expand, config.conv_size,
                                  config.grid)

    def forward(self, x: Tensor, hw_shape: tuple[int, int],
                scans: Optional[TokenScans] = None) -> Tensor:
        """x: (b, m, c) fp32 tokens of ``hw_shape`` (see ``PlainMamba2D.forward``)."""
        return self.mixed(x, hw_shape, scans)[0]

    def mixed(self, x: Tensor, hw_shape: tuple[int, int],
              scans: Optional[TokenScans] = None) -> tuple[Tensor, Tensor]:
        """The layer output (b, m, c) and the mixer's pre-out_proj output (b, m, e)
        that pruning scores.

        The dw block, like the mixer's conv, sees the tokens on the whole grid
        with zeros at pruned positions. It only follows layer 0, before any
        pruning point (the first is after layer 1), so it always sees all tokens.
        """
        y = self.mamba.gated_scan(self.norm(x), hw_shape, scans)
        x = x + self.mamba.out_proj(y)
        if self.dw is not None:
            positions = None if scans is None else scans.positions
            x = grid_to_tokens(self.dw(tokens_to_grid(x, positions, hw_shape)), positions)
        return x, y


class PlainMamba(nn.Module):
    """PlainMamba image classifier: (b, in_chans, s, s) fp32 -> logits (b, classes)."""

    family = "plainmamba"
    checkpoint_key = "state_dict"  # official files are mmcv checkpoints

    def __init__(self, config: PlainMambaConfig, prune: PruneConfig | None = None):
        super().__init__()
        config.validate()
        self.config = config
        self.prune = prune
        # Static token counts per layer: K = ceil(N * r) at each pruning point.
        self.schedule = (prune.token_schedule(config.num_tokens, config.depth, has_cls=False)
                         if prune else [config.num_tokens] * config.depth)
        c = config.embed_dim
        self.patch_embed = ConvPatchEmbed(config.in_chans, c, config.stem_convs)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, c))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.layers = nn.ModuleList(
            PlainMambaLayer(config, with_dwconv=(i == 0 and config.dw_after_first_layer))
            for i in range(config.depth)
        )
        self.ln1 = nn.LayerNorm(c, eps=config.final_norm_eps)
        self.head = nn.Linear(c, config.num_classes)

    def input_shape(self) -> tuple[int, int, int]:
        """(in_chans, img_size, img_size): one input image without the batch axis."""
        cfg = self.config
        return cfg.in_chans, cfg.img_size, cfg.img_size

    def tokens_per_block(self) -> list[int]:
        """Tokens entering each layer (h * w, fewer after each pruning point)."""
        return list(self.schedule)

    def grid_shape(self) -> tuple[int, int]:
        """Token grid (rows, columns)."""
        return self.config.grid

    def grid_index(self, positions: Tensor) -> Tensor:
        """Kept token positions (b, m) -> raster grid indices: the same, as
        PlainMamba has no class token."""
        return positions

    def forward(self, x: Tensor) -> Tensor:
        """x: (b, in_chans, img_size, img_size) fp32 -> logits (b, num_classes) fp32.

        When pruned, after each pruning layer the tokens are scored from that
        layer's mixer output before ``out_proj``, each sample keeps its top
        ones in raster order (``token_gather``), and the following layers scan
        only those (``restrict_scans``: restricted zig-zag orders, direction
        codes and, with ``alignment="gap"``, gaps). The readout averages the
        kept tokens. Raises ``InputShapeError`` for any other input shape.
        """
        expected = self.input_shape()
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise InputShapeError(
                f"plainmamba: expected input of shape (batch, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}"
            )
        x, hw_shape = self.patch_embed(x)
        x = x + self.pos_embed
        points = set(self.prune.prune_after) if self.prune else set()
        positions = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        scans = None
        for i, layer in enumerate(self.layers):
            x, y = layer.mixed(x, hw_shape, scans)
            if i + 1 not in points:
                continue
            scores = token_importance(y, self.prune.importance)
            positions, x = token_gather(scores, positions, [x], self.schedule[i + 1])
            full = self.layers[i + 1].mamba.zigzag(hw_shape)
            scans = restrict_scans(positions, full.inverse, full.directions,
                                   with_gaps=self.prune.alignment == "gap")
        # The official neck (CustomAveragePooling) averages the ln1 output over tokens.
        return self.head(self.ln1(x).mean(dim=1))

    def flops(self) -> int:
        """Forward FLOPs of one image, in the convention of the PlainMamba paper.

        Multiply-accumulates of every convolution and linear layer count as one
        (weights only: biases, norms, activations, pooling and element-wise
        adds are not counted), plus the selective scans as the official
        ``tools/analysis_tools/get_flops.py`` (``get_ssm_flops``) counts them:
        ``9*e*n*l + e*l`` per direction and layer, all four directions. The
        paper's 3.0 / 8.1 / 14.4 G are mmcv's ``get_model_complexity_info``
        (which misses the scan, a function call) plus ``get_ssm_flops``;
        mmcv also counts BN, LayerNorm, ReLU and conv-bias element-wise terms,
        under 0.5 % of the total, which this count leaves out.

        Each layer counts the tokens it keeps (``tokens_per_block``), the
        depthwise conv2d included: a kept token's output needs its conv taps
        only, although the reference computes the conv on the whole grid.
        """
        cfg = self.config
        c, e, n, r = cfg.embed_dim, cfg.d_inner, cfg.d_state, cfg.dt_rank
        stem_side = cfg.img_size // STEM_STRIDE
        stem_per_pixel = cfg.in_chans * 7 * 7 + cfg.stem_convs * STEM_WIDTH * 3 * 3
        total = stem_side ** 2 * STEM_WIDTH * stem_per_pixel
        total += cfg.num_tokens * PROJECTION_STRIDE ** 2 * STEM_WIDTH * c
        for i, tokens in enumerate(self.tokens_per_block()):
            per_token = (
                c * 2 * e                              # in_proj
                + cfg.conv_size ** 2 * e               # depthwise conv2d
                + e * (r + 2 * n)                      # x_proj
                + r * e                                # dt_proj
                + NUM_DIRECTIONS * (9 * e * n + e)     # the four scans
                + e * c                                # out_proj
            )
            total += tokens * per_token
            if self.layers[i].dw is not None:
                total += tokens * 3 * 3 * c
        return total + c * cfg.num_classes

    @staticmethod
    def from_official_state_dict(sd: dict) -> dict:
        """Official mmcls keys -> ours: strip ``backbone.``, ``head.fc.`` -> ``head.``.

        ``sd`` is the classifier's state dict or a whole mmcv checkpoint (a dict
        with ``state_dict``). ``ema_*`` entries, buffers of the official
        EMACheckpointHook, are dropped: that hook swaps the EMA weights into the
        parameters before a checkpoint is saved, so the parameters are the
        weights to evaluate. Any other key is kept as it is, so the loader
        reports it as unexpected.
        """
        if isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        out = {}
        for key, value in sd.items():
            if key.startswith("backbone."):
                out[key[len("backbone."):]] = value
            elif key.startswith("head.fc."):
                out["head." + key[len("head.fc."):]] = value
            elif not key.startswith("ema_"):
                out[key] = value
        return out

    @staticmethod
    def to_official_state_dict(sd: dict) -> dict:
        """Our keys -> official mmcls keys; the inverse of ``from_official_state_dict``."""
        out = {}
        for key, value in sd.items():
            if key.startswith("head."):
                out["head.fc." + key[len("head."):]] = value
            else:
                out["backbone." + key] = value
        return out


FAMILY = register_family("plainmamba", PlainMambaConfig, PlainMamba)
register_model(
    "plainmamba_l1", FAMILY,
    "PlainMamba-L1: width 192, 24 layers, 1 stem conv, dw conv after layer 0; "
    "7.36 M backbone params, 3.0 GFLOPs, 77.9 % ImageNet top-1",
    embed_dim=192, depth=24, stem_convs=1, dw_after_first_layer=True,
)
register_model(
    "plainmamba_l2", FAMILY,
    "PlainMamba-L2: width 384, 24 layers, 2 stem convs; "
    "25.76 M backbone params, 8.1 GFLOPs, 81.6 % ImageNet top-1",
    embed_dim=384, depth=24, stem_convs=2, dw_after_first_layer=False,
)
register_model(
    "plainmamba_l3", FAMILY,
    "PlainMamba-L3: width 448, 36 layers, 2 stem convs; "
    "50.51 M backbone params, 14.4 GFLOPs, 82.3 % ImageNet top-1",
    embed_dim=448, depth=36, stem_convs=2, dw_after_first_layer=False,
)

# ToP presets. The paper publishes no PlainMamba schedule, only L3's FLOPs
# reduction, 41.6 % (PAPER.md). Blocks: the relative depths of vim_s_paper
# (after 5/24, 10/24 and 15/24 of the depth, rounded half up): 5, 10, 15 for
# the 24 layers of L1 and L2, 8, 15, 23 for the 36 of L3 (7.5 -> 8, 22.5 -> 23).
# Ratio: the keep ratio on a 0.01 grid whose plainmamba_l3 reduction
# 1 - pruned.flops() / dense.flops() is nearest 41.6 %: r = 0.64 gives
# 196 -> 126 -> 81 -> 52 tokens, 8.37 of 14.43 GFLOPs, 42.0 % fewer
# (r = 0.65: 41.0 %; r = 0.63: 42.7 %). L1 and L2 use the same r, which gives
# them 35.7 % (1.94 of 3.01 G) and 39.3 % (4.90 of 8.07 G) fewer FLOPs: the
# patch embedding, which pruning does not touch, is 24 % of L1's FLOPs and
# 17 % of L2's but 10 % of L3's.
PAPER_KEEP_RATIO = 0.64
register_preset("plainmamba_l1_paper", "plainmamba_l1", PruneConfig(PAPER_KEEP_RATIO, (5, 10, 15)))
register_preset("plainmamba_l2_paper", "plainmamba_l2", PruneConfig(PAPER_KEEP_RATIO, (5, 10, 15)))
register_preset("plainmamba_l3_paper", "plainmamba_l3", PruneConfig(PAPER_KEEP_RATIO, (8, 15, 23)))
