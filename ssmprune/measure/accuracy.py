"""Top-1 / top-5 accuracy of a target on a labelled set: ``ssmprune eval``.

The target runs in its own runtime (PyTorch for a model, ONNX Runtime for an
export, TensorRT for an engine) on the set's inputs preprocessed by its config,
a chunk at a time: a model in forwards of ``batch``, a dynamic-batch file in
forwards of ``batch`` clamped to its range, a static file at its static batch
(the last forward padded by repeating its last input, the padding dropped). Top-1 is ``argmax(logits) == label``; top-5 is the label among the
five largest logits (``min(5, k)`` for fewer classes). With a reference target,
``agreement`` is the share of inputs whose top-1 the two targets share.

Dimension glossary: n inputs, b batch, k classes.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ssmprune.errors import ConfigError
from ssmprune.measure.labelled import LabelledSet
from ssmprune.measure.targets import Target, logits_in_batches

TOP_K = 5
CHUNK = 256  # inputs preprocessed and held at once


def target_logits(target: Target, data: LabelledSet, batch: int = 64,
                  threads: Optional[int] = None) -> tuple[np.ndarray, str]:
    """Logits (n, k) float32 of ``target`` on every input of ``data``, and what ran it."""
    runner = target.open(target.runtimes[0], threads)
    fixed = target.static_batch
    step = fixed or (batch if target.batch_range is None else
                     max(target.batch_range[0], min(batch, target.batch_range[1])))
    try:
        outs = []
        for start in range(0, len(data), CHUNK):
            x = data.inputs(target.config, start, min(len(data), start + CHUNK))
            outs.append(logits_in_batches(runner, x, step, fixed is not None))
    finally:
        runner.close()
    return np.concatenate(outs).astype(np.float32), runner.where


def top_k_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(n,) bool: the label is among the k largest logits (k = 1: the first argmax)."""
    if k == 1:
        return logits.argmax(-1) == labels
    k = min(k, logits.shape[-1])
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    return (top == labels[:, None]).any(-1)


def accuracy_record(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """top1 / top5 in [0, 1] and their counts."""
    n = len(labels)
    c1, c5 = (int(top_k_correct(logits, labels, k).sum()) for k in (1, TOP_K))
    return {"samples": n, "correct_top1": c1, "correct_top5": c5,
            "top1": c1 / n, "top5": c5 / n}


def evaluate(target: Target, data: LabelledSet, reference: Optional[Target] = None,
             batch: int = 64, threads: Optional[int] = None) -> dict[str, Any]:
    """The ``eval --json`` record: the target, the set, top-1 / top-5, agreement."""
    if len(data) == 0:
        raise ConfigError(f"{data.source} holds no labelled inputs")
    if reference is not None and reference.num_classes != target.num_classes:
        raise ConfigError(f"{target.name} has {target.num_classes} classes, the reference "
                          f"{reference.name} {reference.num_classes}: they cannot agree")
    logits, where = target_logits(target, data, batch, threads)
    record = {"target": target.describe(), "runtime": target.runtimes[0],
              "where": where, "data": data.describe(),
              **accuracy_record(logits, data.labels)}
    if reference is not None:
        ref, ref_where = target_logits(reference, data, batch, threads)
        ref_acc = accuracy_record(ref, data.labels)
        same = int((logits.argmax(-1) == ref.argmax(-1)).sum())
        record["reference"] = {"target": reference.describe(), "runtime": reference.runtimes[0],
                               "where": ref_where,
                               **{k: ref_acc[k] for k in ("correct_top1", "correct_top5",
                                                          "top1", "top5")}}
        record["agreement"] = same / len(data)
        record["agreeing"] = same
    return record
