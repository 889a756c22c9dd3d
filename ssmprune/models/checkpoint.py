"""Loading and saving checkpoints in the official layouts.

Accepted files: the official ``.pth`` (Vim: ``{'model': ...}`` or
``{'model_ema': ...}``; PlainMamba: an mmcv checkpoint ``{'state_dict': ...,
'meta': ...}`` with ``backbone.`` prefixes and ``head.fc.*``), a bare state
dict, and ``.safetensors``. Pickles are read with ``weights_only=True``, so
nothing in them is executed. Each model class maps official keys to its own
with ``from_official_state_dict`` / ``to_official_state_dict``.

Anything else is one ``CheckpointError`` line naming the file: an empty file,
a text file, a Git LFS pointer or an HTML page under a checkpoint's name, a
zip that is no torch checkpoint, damaged or truncated bytes (torch's
unpickler meets those with whatever its parser trips on: KeyError,
IndexError, struct.error...). So is a floating-point tensor holding NaN or
inf: no weight or buffer of these models is meaningful non-finite, and one
turns every output it reaches into NaN or inf, through the export and the
engine, so there is no option to let it through.
"""

from __future__ import annotations

import argparse
import os
import pickle
import struct
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ssmprune.errors import BadInputFileError, CheckpointError
from ssmprune.outputs import atomic_file

WRAPPER_KEYS = ("model", "model_ema", "state_dict", "module")

# Vim's training checkpoints hold the argparse ``args`` next to the weights;
# unpickling a Namespace only sets attributes, no code of the file runs.
_SAFE_GLOBALS = [argparse.Namespace]
MAX_LISTED = 8
# What torch's unpickler (and zip reader) raise on damaged bytes besides
# UnpicklingError: each was seen from a corrupt or foreign file.
_DAMAGED = (EOFError, RuntimeError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            IndexError, TypeError, AttributeError, struct.error, OverflowError)
_HEAD_BYTES = 64


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _never_a_checkpoint(head: bytes) -> str:
    """What a file is that no checkpoint format starts like ('' if it could be one)."""
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the weights (fetch them: git lfs pull)"
    if head.lstrip()[:14].lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a failed download?)"
    return ""


def _kind(head: bytes) -> str:
    """What a file that failed to load looks like from its first bytes ('' if unknown).
    Text is told only after a failure: a protocol-0 pickle is text too."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""  # binary, or cut inside a character
    if all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"a text file starting {text[:32]!r}"
    return ""


def _read(path: Path) -> dict:
    if not os.path.isfile(path):  # os.path: False for a name too long, where Path raises
        raise BadInputFileError(f"checkpoint {path} does not exist or is not a file")
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    if not head:
        raise CheckpointError(f"{path}: an empty file, not a checkpoint")
    never = _never_a_checkpoint(head)
    if never:
        raise CheckpointError(f"{path}: not a checkpoint: {never}")
    kind = _kind(head)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            what = f": {kind}" if kind else f" ({_first_line(err)})"
            raise CheckpointError(f"{path}: not a readable safetensors file{what}") from None
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        # torch's message leads with advice to disable weights_only; the line
        # naming the refused object is the useful one.
        refused = next((line for line in lines if "GLOBAL" in line
                        or ("Unsupported" in line and "operand" not in line)), None)
        if refused is None and kind:  # e.g. "Unsupported operand 118" on a text file
            raise CheckpointError(f"{path}: not a PyTorch checkpoint: {kind}") from None
        reason = refused or (lines[0] if lines else "unpickling failed")
        raise CheckpointError(
            f"{path}: refused or unreadable pickle (only tensors and plain containers "
            f"are loaded, nothing is executed): {reason}") from None
    except _DAMAGED as err:
        if kind:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint: {kind}") from None
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint "
                              f"({type(err).__name__}: {_first_line(err)})") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a checkpoint file, unwrapped from its container, official keys."""
    path = Path(path)
    obj = _read(path)
    for _ in range(2):  # e.g. {'state_dict': {'module': ...}}
        if isinstance(obj, dict):
            for key in WRAPPER_KEYS:
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: no state dict found in the checkpoint")
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    _check_finite(path, state)
    return state


def _check_finite(path: Path, state: dict[str, Tensor]) -> None:
    """Refuse the first floating-point tensor (in the file's order) with NaN or inf."""
    for key, t in state.items():
        if not (t.is_floating_point() or t.is_complex()):
            continue
        if t.is_floating_point() and t.element_size() == 1:
            t = t.float()  # fp8: isfinite is not implemented for it everywhere
        finite = torch.isfinite(t)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(t).sum())
        inf = int((~finite).sum()) - nan
        found = ", ".join(f"{n:,} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n)
        raise CheckpointError(
            f"{path}: tensor {key} {tuple(t.shape)} holds {found} of {t.numel():,} values; "
            "non-finite weights are refused (they turn every output they reach into NaN or inf)")


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    more = len(keys) - MAX_LISTED
    return shown + (f" (+{more} more)" if more > 0 else "")


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an official (or bare, or safetensors) checkpoint into ``model``.

    Raises CheckpointError naming missing, unexpected and wrongly shaped keys
    when the file belongs to another model. Returns the model.
    """
    state = model.from_official_state_dict(read_state_dict(path))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state) if state[k].shape != own[k].shape
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_listing(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} wrongly shaped (file vs model): {_listing(shapes)}")
    if problems:
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(
            f"{path} does not fit {name}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def save_checkpoint(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the model's weights in its official layout, atomically.

    ``.safetensors`` gets the official keys flat; anything else gets the
    official ``torch.save`` container (``model.checkpoint_key``).
    """
    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in
             model.to_official_state_dict(model.state_dict()).items()}
    with atomic_file(path) as tmp:
        if path.suffix == ".safetensors":
            save_file(state, str(tmp))
        else:
            torch.save({model.checkpoint_key: state}, tmp)
    return path
