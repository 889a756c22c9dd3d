"""Labelled sets for ``eval`` and ``sweep``: an ImageFolder, the digits split, an .npz.

    ImageFolder     PATH/<class>/**/<image>: one folder per class, the common
                    convention. Class index = position of the folder's name in
                    the sorted folder names, or in ``--labels`` (class names in
                    order, one per line) when given. Images are found by
                    ``ssmprune.images.image_files`` and preprocessed as every
                    command does (``ssmprune.images.preprocess``), a chunk at a
                    time, so a large set is never held at once.
    digits:PART     ``digits:held_out`` (360) or ``digits:train`` (1,437), through
                    ``calibration.data.DigitsData`` (ten classes, 0..9)
    FILE.npz        the preprocessed inputs (n, c, s, s) under the model's input name
                    (``images``) or ``x``, and ``labels`` (n,), through
                    ``calibration.data.NpzData``

Checked before anything runs, each a one-line error: no image, an image file
outside any class folder only, a class folder missing from ``--labels``, a
``--labels`` file of another length than the model's classes, a folder count
that cannot map onto the model's classes, labels outside 0..k-1.

Dimension glossary: n inputs, c in_chans, s img_size, k classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ssmprune.errors import BadInputFileError, ConfigError, InputShapeError
from ssmprune.measure.bounds import MAX_LABELS

DIGITS_CLASSES = 10
X_KEY = "x"  # an .npz's inputs when not under the model's input name


@dataclass
class LabelledSet:
    """Labels and a way to get the inputs for a model's preprocessing config.

    labels: (n,) int64 in 0..k-1. class_names: names by index, when known.
    load: (config, start, stop) -> inputs (stop - start, c, s, s) float32.
    """

    source: str
    labels: np.ndarray
    load: Callable[[dict, int, int], np.ndarray]
    class_names: Optional[list[str]] = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(len(self.labels))

    def inputs(self, config: dict, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        return self.load(config, start, len(self) if stop is None else stop)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "samples": len(self),
                "classes": None if self.class_names is None else len(self.class_names),
                "notes": list(self.notes)}


def read_labels(path: str | Path) -> list[str]:
    """Class names, one per line, in class-index order (blank lines at the end ignored)."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_LABELS * 256:
            raise BadInputFileError(f"labels file {path} is {path.stat().st_size:,} bytes: not a "
                                    f"list of class names (at most {MAX_LABELS:,} lines)")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInputFileError(f"labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputFileError(f"labels file {path} cannot be read as UTF-8 text ({err})") \
            from None
    names = [line.strip() for line in text.rstrip("\n").split("\n")]
    if not names or names == [""]:
        raise BadInputFileError(f"labels file {path} is empty (one class name per line)")
    if len(names) > MAX_LABELS:
        raise BadInputFileError(f"labels file {path} has {len(names):,} lines; at most "
                                f"{MAX_LABELS:,}")
    blank = [i + 1 for i, n in enumerate(names) if not n]
    if blank:
        raise BadInputFileError(f"labels file {path}: line {blank[0]} is blank (one class name "
                                "per line, in class-index order)")
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise BadInputFileError(f"labels file {path}: {n!r} is on lines {seen[n] + 1} and "
                                    f"{i + 1}")
        seen[n] = i
    return names


def _check_label_count(names: list[str], num_classes: int, where: str) -> None:
    if len(names) != num_classes:
        raise ConfigError(f"{where} names {len(names)} classes but the model has {num_classes}: "
                          "labels for another model?")


def image_folder(path: str | Path, num_classes: int, labels_file: Optional[str] = None,
                 resize: bool = True) -> LabelledSet:
    """An ImageFolder (module docstring) for a model of ``num_classes`` classes."""
    from ssmprune.images import IMAGE_SUFFIXES, image_files

    root = Path(path)
    files = image_files(root)  # a missing folder or an unlistable subfolder: one line
    if not files:
        raise BadInputFileError(f"{root} holds no images (looked for {', '.join(IMAGE_SUFFIXES)}"
                                " in its class folders)")
    by_class: dict[str, list[Path]] = {}
    loose = []
    for f in files:
        parts = f.relative_to(root).parts
        if len(parts) == 1:
            loose.append(f)
        else:
            by_class.setdefault(parts[0], []).append(f)
    if not by_class:
        raise BadInputFileError(f"{root} holds {len(loose)} image(s) but no class folders: an "
                                "ImageFolder has one subfolder per class (PATH/CLASS/IMAGE)")
    folders = sorted(by_class)
    if labels_file is not None:
        names = read_labels(labels_file)
        _check_label_count(names, num_classes, f"labels file {labels_file}")
        index = {n: i for i, n in enumerate(names)}
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise ConfigError(f"{root}: class folder(s) {', '.join(unknown[:5])}"
                              f"{' ...' if len(unknown) > 5 else ''} are not in labels file "
                              f"{labels_file}")
    else:
        if len(folders) != num_classes:
            raise ConfigError(f"{root} has {len(folders)} class folders but the model has "
                              f"{num_classes} classes: the folders' sorted order cannot be its "
                              "class order; give --labels (the model's class names, one per "
                              "line)")
        names = folders
        index = {n: i for i, n in enumerate(names)}
    ordered = [(f, index[c]) for c in folders for f in by_class[c]]
    paths = [f for f, _ in ordered]
    labels = np.array([i for _, i in ordered], dtype=np.int64)
    notes = []
    if loose:
        notes.append(f"{len(loose)} image(s) directly in {root}, outside any class folder, "
                     "ignored")

    def load(config: dict, start: int, stop: int) -> np.ndarray:
        import torch

        from ssmprune.images import load_image, preprocess

        if config["in_chans"] != 3:
            raise InputShapeError(f"{root} holds RGB images but the model takes "
                                  f"{config['in_chans']} channels")
        out = []
        for p in paths[start:stop]:
            try:
                out.append(preprocess(load_image(p), config["img_size"], config["mean"],
                                      config["std"], resize))
            except InputShapeError as err:
                raise InputShapeError(f"{p}: {err}") from None
        return torch.stack(out).numpy()

    return LabelledSet(f"folder:{root}", labels, load, names, notes)


def digits_set(part: str, num_classes: int) -> LabelledSet:
    """One part of the digits split (``calibration.data.DigitsData``)."""
    from ssmprune.calibration.data import DIGITS_PARTS, DigitsData
    from ssmprune.data.digits import load_split

    if part not in DIGITS_PARTS:
        raise ConfigError(f"--data digits:{part}: the parts are "
                          f"{', '.join('digits:' + p for p in DIGITS_PARTS)}")
    if num_classes != DIGITS_CLASSES:
        raise ConfigError(f"digits has {DIGITS_CLASSES} classes but the model has {num_classes}")
    labels = load_split(part).labels.astype(np.int64)
    cache: dict[str, np.ndarray] = {}

    def load(config: dict, start: int, stop: int) -> np.ndarray:
        key = repr(sorted(config.items()))
        if key not in cache:
            cache[key] = DigitsData(config, part).load().x
        return cache[key][start:stop]

    return LabelledSet(f"digits:{part}", labels, load, [str(i) for i in range(DIGITS_CLASSES)])


def npz_set(path: str | Path, input_name: str, sample_shape: tuple, num_classes: int
            ) -> LabelledSet:
    """An .npz of preprocessed inputs and ``labels`` (``calibration.data.NpzData``)."""
    from ssmprune.calibration.data import LABELS_KEY, NpzData

    key = input_name
    try:
        with np.load(path, allow_pickle=False) as npz:
            if input_name not in npz.files and X_KEY in npz.files:
                key = X_KEY
    except (OSError, ValueError, EOFError):
        pass  # NpzData says what is wrong with the file
    samples = NpzData(path).load(key, sample_shape)
    if samples.labels is None:
        raise BadInputFileError(f"{path} has no {LABELS_KEY!r} array: eval needs labels")
    labels = samples.labels
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ConfigError(f"{path}: labels run from {labels.min()} to {labels.max()} but the "
                          f"model has {num_classes} classes (0..{num_classes - 1})")
    x = samples.x

    def load(config: dict, start: int, stop: int) -> np.ndarray:
        shape = (config["in_chans"], config["img_size"], config["img_size"])
        if tuple(x.shape[1:]) != shape:
            raise InputShapeError(f"{path} holds {tuple(x.shape[1:])} inputs; a model taking "
                                  f"{shape} cannot run on them")
        return x[start:stop]

    return LabelledSet(f"npz:{path}", labels, load)


def labelled_from_spec(spec: str, num_classes: int, input_name: str, sample_shape: tuple,
                       labels_file: Optional[str] = None, resize: bool = True) -> LabelledSet:
    """The set ``--data`` names: ``digits:held_out`` / ``digits:train``, an ImageFolder, an
    .npz. ``labels_file`` (``--labels``) names the classes in order."""
    if spec == "digits" or spec.startswith("digits:"):
        data = digits_set(spec.partition(":")[2] or "held_out", num_classes)
    elif Path(spec).is_dir():
        return image_folder(spec, num_classes, labels_file, resize)
    elif Path(spec).suffix == ".npz":
        data = npz_set(spec, input_name, sample_shape, num_classes)
    elif not Path(spec).exists():
        raise BadInputFileError(f"--data {spec} does not exist (give an ImageFolder, an .npz "
                                "file or digits:held_out / digits:train)")
    else:
        raise BadInputFileError(f"--data {spec} is neither an ImageFolder nor an .npz file")
    if labels_file is not None:
        names = read_labels(labels_file)
        _check_label_count(names, num_classes, f"labels file {labels_file}")
        data.class_names = names
    return data
