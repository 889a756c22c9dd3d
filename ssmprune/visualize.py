"""The picture pruning papers show: the image with pruned patches dimmed per stage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from ssmprune.errors import ConfigError
from ssmprune.outputs import atomic_file
from ssmprune.pruning.record import RecordKept

DIM = 0.2
MIN_PANEL = 224
LABEL_HEIGHT = 18


def kept_masks(model: nn.Module, x: Tensor) -> list[np.ndarray]:
    """x: (1, C, H, W) -> one (rows, cols) bool mask of kept patches per pruning stage."""
    if model.prune is None:
        raise ConfigError("visualize needs a pruned model: give --prune or "
                          "--keep-ratio/--prune-after")
    with torch.inference_mode(), RecordKept() as rec:
        model(x)
    rows, cols = model.grid_shape()
    masks = []
    for positions in rec.stages:
        idx = model.grid_index(positions[0])
        mask = np.zeros(rows * cols, dtype=bool)
        mask[idx[idx >= 0].numpy()] = True
        masks.append(mask.reshape(rows, cols))
    return masks


def render(image: Image.Image, masks: list[np.ndarray], labels: list[str]) -> Image.Image:
    """The image, then one panel per mask with the pruned cells dimmed, side by side."""
    scale = max(1, -(-MIN_PANEL // image.width))
    base = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    arr = np.asarray(base, dtype=np.float32)
    panels = [base]
    for mask in masks:
        rows, cols = mask.shape
        ys = np.arange(arr.shape[0]) * rows // arr.shape[0]
        xs = np.arange(arr.shape[1]) * cols // arr.shape[1]
        keep = mask[ys[:, None], xs[None, :]]
        dimmed = np.where(keep[..., None], arr, arr * DIM)
        panels.append(Image.fromarray(dimmed.astype(np.uint8)))
    w, h = base.size
    sheet = Image.new("RGB", (w * len(panels), h + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (panel, label) in enumerate(zip(panels, labels)):
        sheet.paste(panel, (i * w, LABEL_HEIGHT))
        draw.text((i * w + 4, 3), label, fill="black")
    return sheet


def save_png(img: Image.Image, path: str | os.PathLike) -> Path:
    """Write a PNG whole or not at all (``outputs.atomic_file``)."""
    with atomic_file(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def stage_labels(model: nn.Module, masks: list[np.ndarray]) -> list[str]:
    """'input, N tokens' then 'after block B: kept/total' per stage."""
    counts = model.tokens_per_block()
    labels = [f"input: {counts[0]} tokens"]
    for block, mask in zip(model.prune.prune_after, masks):
        labels.append(f"after block {block}: {int(mask.sum())}/{mask.size} patches")
    return labels
