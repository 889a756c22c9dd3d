"""ToP on scikit-learn digits: train a small Vim and PlainMamba, prune, evaluate.

The experiment of benchmarks/RESULTS.md, "ToP on scikit-learn digits". Real
data that ships with scikit-learn (``ssmprune.data.digits``: 1,797 8 x 8
scans, a fixed stratified 80 / 20 split with seed 0), CPU only, fixed seeds.

Steps (each a subcommand; ``all`` runs them in order):

  train     train vim_digits and plainmamba_digits from scratch (AdamW, cosine
            schedule with a one-epoch warm-up, label smoothing 0.1, random
            shifts of up to half a scan pixel) and write
            ssmprune/assets/<model>.safetensors (official keys, fp16).
  evaluate  load the saved weights and evaluate on the held-out split: dense,
            then alignment none / gap x importance clip / l1 / l2 x keep ratio
            0.9 / 0.8 / 0.7 / 0.6 at blocks 2, 3, 5 (no fine-tuning).
  finetune  fine-tune the best pruned setting at keep ratio 0.6 briefly, and
            its other-alignment twin; the best setting is picked on the
            TRAINING split so the held-out split stays untouched by choices.
  analyze   why gap does or does not beat none: per-layer default steps
            delta0 = softplus(dt bias), the decay a gap applies, the actual
            steps of the tokens pruning removes, how far pruned features
            move from dense ones, and paired (McNemar) tests of gap vs none.
  report    the markdown table (stdout) and the accuracy-vs-FLOPs plot.
  seeds     (not part of ``all``: it retrains) train with --extra-seeds into
            out/digits_seeds/ and evaluate the same grid: seed-to-seed spread.

Every step reads and updates benchmarks/digits_results.json, so
``evaluate`` / ``analyze`` / ``report`` rerun without training.

  .venv/bin/python experiments/digits.py all
  .venv/bin/python experiments/digits.py evaluate analyze report
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULTS_JSON = ROOT / "benchmarks" / "digits_results.json"
PLOT_PNG = ROOT / "benchmarks" / "digits_accuracy_vs_flops.png"
ASSETS = ROOT / "ssmprune" / "assets"

MODELS = ("vim_digits", "plainmamba_digits")
KEEP_RATIOS = (0.9, 0.8, 0.7, 0.6)
ALIGNMENTS = ("none", "gap")
IMPORTANCES = ("clip", "l1", "l2")
FINETUNE_RATIO = 0.6

# Training recipe per model: epochs, peak learning rate. Batch 64, AdamW
# (betas 0.9 / 0.999, weight decay 0.05 on matrices), label smoothing 0.1.
RECIPE = {
    "vim_digits": dict(epochs=15, lr=2e-3),
    "plainmamba_digits": dict(epochs=12, lr=2e-3),
}
BATCH = 64
WEIGHT_DECAY = 0.05
LABEL_SMOOTHING = 0.1
FINETUNE = dict(epochs=5, lr=3e-4)
STEPS = ("train", "evaluate", "finetune", "analyze", "report")


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- data


def shifted(grey, max_shift: int, gen):
    """Random integer shifts of up to ``max_shift`` px, zero (background) fill.

    grey: (b, 1, s, s) in [0, 1] -> the same shape.
    """
    import torch
    import torch.nn.functional as F

    if max_shift == 0:
        return grey
    b, _, s, _ = grey.shape
    padded = F.pad(grey, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=gen)
    return torch.stack([padded[i, :, dy:dy + s, dx:dx + s]
                        for i, (dy, dx) in enumerate(offsets.tolist())])


def vim_official_dt_init(model, gen) -> None:
    """Mamba's dt_proj init, as the official Vim code does (mamba_simple.py).

    ``VisionMamba`` itself keeps nn.Linear's default init, whose dt biases
    (uniform +-1/sqrt(dt_rank)) give steps of 0.5 to 1; the official init
    draws steps log-uniformly in [1e-3, 0.1], the long memory a trained Vim
    starts from. PlainMamba2D already initialises like its official code.
    """
    import torch

    with torch.no_grad():
        for layer in model.layers:
            for sfx in ("", "_b"):
                dt_proj = getattr(layer.mixer, "dt_proj" + sfx)
                d, r = dt_proj.weight.shape
                std = r ** -0.5
                dt_proj.weight.copy_(torch.rand(d, r, generator=gen) * 2 * std - std)
                dt = torch.exp(torch.rand(d, generator=gen) * (math.log(0.1) - math.log(1e-3))
                               + math.log(1e-3)).clamp(min=1e-4)
                dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def param_groups(model):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        matrix = p.dim() >= 2 and "pos_embed" not in name and "cls_token" not in name
        (decay if matrix and not name.endswith("A_log") else no_decay).append(p)
    return [{"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0}]


def fit(model, epochs: int, lr: float, seed: int, warmup_epochs: int, tag: str) -> dict:
    """Train ``model`` on the training split; returns a summary dict."""
    import torch
    import torch.nn.functional as F

    from ssmprune.data.digits import load_split, normalize, upsample

    cfg = model.config
    split = load_split("train")
    grey = upsample(split.scans, cfg.img_size)
    labels = torch.from_numpy(split.labels)
    gen = torch.Generator().manual_seed(seed)
    max_shift = cfg.img_size // 16  # half a scan pixel
    opt = torch.optim.AdamW(param_groups(model), lr=lr, betas=(0.9, 0.999))
    steps_per_epoch = math.ceil(len(labels) / BATCH)
    total, warm = epochs * steps_per_epoch, warmup_epochs * steps_per_epoch

    def lr_at(step):
        if step < warm:
            return lr * (step + 1) / warm
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    start, step, history = time.perf_counter(), 0, []
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(labels), generator=gen)
        loss_sum, correct, t0 = 0.0, 0, time.perf_counter()
        for i in range(0, len(labels), BATCH):
            idx = perm[i:i + BATCH]
            x = normalize(shifted(grey[idx], max_shift, gen), cfg.mean, cfg.std, cfg.in_chans)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            logits = model(x)
            loss = F.cross_entropy(logits, labels[idx], label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(-1) == labels[idx]).sum())
        history.append(dict(epoch=epoch + 1, loss=loss_sum / len(labels),
                            train_acc=correct / len(labels)))
        log(f"  {tag} epoch {epoch + 1:2d}/{epochs}  loss {loss_sum / len(labels):.4f}  "
            f"train acc (augmented) {correct / len(labels):.4f}  "
            f"{time.perf_counter() - t0:5.1f}s")
    model.eval()
    return dict(epochs=epochs, lr=lr, batch=BATCH, warmup_epochs=warmup_epochs,
                seconds=round(time.perf_counter() - start, 1), history=history)


# --------------------------------------------------------------------------- steps


def weights_path(name: str, weights_dir: Path) -> Path:
    return weights_dir / f"{name}.safetensors"


def load_model(name: str, weights_dir: Path, prune=None):
    from ssmprune.models import create_model, load_checkpoint

    return load_checkpoint(create_model(name, prune=prune), weights_path(name, weights_dir))


def save_fp16(model, path: Path) -> None:
    """Save in the official layout with fp16 tensors (half the size; loads into fp32)."""
    import copy

    from ssmprune.models import save_checkpoint

    save_checkpoint(copy.deepcopy(model).half(), path)


def step_train(args, results: dict) -> None:
    import torch

    from ssmprune.data.digits import accuracy, held_out_for_model, split_for_model
    from ssmprune.models import create_model

    for name in args.models:
        recipe = RECIPE[name]
        epochs = args.epochs or recipe["epochs"]
        log(f"train {name}: {epochs} epochs, lr {recipe['lr']}, seed {args.seed}")
        torch.manual_seed(args.seed)
        model = create_model(name)
        gen = torch.Generator().manual_seed(args.seed)
        if model.family == "vim":
            vim_official_dt_init(model, gen)
        summary = fit(model, epochs, recipe["lr"], args.seed, warmup_epochs=1, tag=name)
        path = weights_path(name, args.weights_dir)
        save_fp16(model, path)
        model = load_model(name, args.weights_dir)  # report what was shipped (fp16-rounded)
        summary.update(
            seed=args.seed,
            params=sum(p.numel() for p in model.parameters()),
            file=str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
            file_bytes=path.stat().st_size,
            train_acc=accuracy(model, *split_for_model(model.config, "train")),
            held_out_acc=accuracy(model, *held_out_for_model(model.config)),
        )
        log(f"  {name}: {summary['seconds']}s, train acc {summary['train_acc']:.4f}, "
            f"held-out acc {summary['held_out_acc']:.4f}, {path} "
            f"({summary['file_bytes'] / 1e6:.2f} MB)")
        results.setdefault("training", {})[name] = summary


def prune_configs():
    """(alignment, importance, keep ratio, PruneConfig) of the grid."""
    from ssmprune.models.digits import PRUNE_AFTER
    from ssmprune.pruning.config import PruneConfig

    for alignment in ALIGNMENTS:
        for importance in IMPORTANCES:
            for ratio in KEEP_RATIOS:
                yield alignment, importance, ratio, PruneConfig(
                    ratio, PRUNE_AFTER, importance=importance, alignment=alignment)


def evaluate_one(model, images, labels) -> dict:
    import torch

    with torch.inference_mode():
        pred = model(images).argmax(-1)
    correct = (pred == labels)
    return dict(accuracy=correct.float().mean().item(),
                correct="".join("1" if c else "0" for c in correct.tolist()),
                flops=model.flops(), tokens=model.tokens_per_block())


def step_evaluate(args, results: dict) -> None:
    from ssmprune.data.digits import held_out_for_model, split_for_model

    rows = []
    for name in args.models:
        dense = load_model(name, args.weights_dir)
        images, labels = held_out_for_model(dense.config)
        t0 = time.perf_counter()
        row = dict(model=name, method="dense", alignment=None, importance=None,
                   keep_ratio=1.0, prune_after=[], **evaluate_one(dense, images, labels))
        rows.append(row)
        log(f"{name} dense: {row['accuracy']:.4f} at {row['flops'] / 1e6:.2f} MFLOPs")
        for alignment, importance, ratio, cfg in prune_configs():
            model = load_model(name, args.weights_dir, prune=cfg)
            row = dict(model=name, method=f"{alignment}/{importance}", alignment=alignment,
                       importance=importance, keep_ratio=ratio,
                       prune_after=list(cfg.prune_after), **evaluate_one(model, images, labels))
            rows.append(row)
            log(f"  {name} {alignment:4s} {importance:4s} r={ratio}: {row['accuracy']:.4f} "
                f"at {row['flops'] / 1e6:.2f} MFLOPs")
        # The fine-tune choice is made on the training split (held-out stays untouched).
        train_images, train_labels = split_for_model(dense.config, "train")
        choice = []
        for alignment, importance, ratio, cfg in prune_configs():
            if ratio != FINETUNE_RATIO:
                continue
            model = load_model(name, args.weights_dir, prune=cfg)
            acc = evaluate_one(model, train_images, train_labels)["accuracy"]
            choice.append(dict(alignment=alignment, importance=importance, train_acc=acc))
        results.setdefault("selection", {})[name] = choice
        log(f"  {name}: grid evaluated in {time.perf_counter() - t0:.1f}s")
    kept = [r for r in results.get("grid", []) if r["model"] not in args.models]
    results["grid"] = kept + rows


def step_finetune(args, results: dict) -> None:
    import torch

    from ssmprune.data.digits import accuracy, held_out_for_model
    from ssmprune.models.digits import PRUNE_AFTER
    from ssmprune.pruning.config import PruneConfig

    out = results.setdefault("finetune", {})
    for name in args.models:
        choice = results.get("selection", {}).get(name)
        if not choice:
            raise SystemExit(f"finetune: run `evaluate` for {name} first")
        best = max(choice, key=lambda c: (c["train_acc"], c["alignment"] == "gap",
                                          c["importance"] == "clip"))
        runs = []
        # The chosen setting, then the same importance with the other alignment:
        # the paper's alignment ablation is after fine-tuning.
        for alignment in (best["alignment"], *[a for a in ALIGNMENTS if a != best["alignment"]]):
            cfg = PruneConfig(FINETUNE_RATIO, PRUNE_AFTER, importance=best["importance"],
                              alignment=alignment)
            model = load_model(name, args.weights_dir, prune=cfg)
            images, labels = held_out_for_model(model.config)
            before = accuracy(model, images, labels)
            torch.manual_seed(args.seed)
            summary = fit(model, FINETUNE["epochs"], FINETUNE["lr"], args.seed,
                          warmup_epochs=0, tag=f"{name} {alignment}/{best['importance']}")
            after = evaluate_one(model, images, labels)
            runs.append(dict(alignment=alignment, importance=best["importance"],
                             keep_ratio=FINETUNE_RATIO, prune_after=list(PRUNE_AFTER),
                             chosen=alignment == best["alignment"], before=before,
                             after=after["accuracy"], correct=after["correct"],
                             flops=after["flops"], tokens=after["tokens"],
                             epochs=summary["epochs"], lr=summary["lr"],
                             seconds=summary["seconds"]))
            log(f"  {name} {alignment}/{best['importance']} r={FINETUNE_RATIO}: "
                f"{before:.4f} -> {after['accuracy']:.4f} after {summary['epochs']} epochs "
                f"({summary['seconds']}s)")
        out[name] = runs


def step_seeds(args, results: dict) -> None:
    """Train with other seeds (into --seed-dir), evaluate the grid and the
    controls: the seed-to-seed spread of gap - none. Not part of `all`. A seed
    whose weights and training record exist is not retrained (--retrain forces)."""
    import copy

    from ssmprune.data.digits import held_out_for_model

    out = results.setdefault("seed_runs", {})
    for seed in args.extra_seeds:
        for name in args.models:
            sub = copy.copy(args)
            sub.seed, sub.weights_dir, sub.models = seed, args.seed_dir / f"seed{seed}", [name]
            previous = out.get(str(seed), {}).get(name)
            if previous and weights_path(name, sub.weights_dir).is_file() and not args.retrain:
                training = previous["training"]
            else:
                scratch: dict = {}
                step_train(sub, scratch)
                training = scratch["training"][name]
            dense = load_model(name, sub.weights_dir)
            images, labels = held_out_for_model(dense.config)
            rows = [dict(method="dense", keep_ratio=1.0,
                         accuracy=evaluate_one(dense, images, labels)["accuracy"])]
            for alignment, importance, ratio, cfg in prune_configs():
                model = load_model(name, sub.weights_dir, prune=cfg)
                rows.append(dict(method=f"{alignment}/{importance}", keep_ratio=ratio,
                                 accuracy=evaluate_one(model, images, labels)["accuracy"]))
            out.setdefault(str(seed), {})[name] = dict(
                training=training, grid=rows,
                controls=controls(name, images, labels, sub.weights_dir))
            log(seed_summary(seed, name, rows))


def seed_summary(seed, name: str, rows: list[dict]) -> str:
    acc = {(r["method"], r["keep_ratio"]): r["accuracy"] for r in rows}
    parts = [f"seed {seed} {name}: dense {100 * acc[('dense', 1.0)]:.1f}"]
    for importance in IMPORTANCES:
        diffs = [acc[(f"gap/{importance}", r)] - acc[(f"none/{importance}", r)]
                 for r in KEEP_RATIOS]
        parts.append(f"{importance} gap-none " + " ".join(f"{100 * d:+.1f}" for d in diffs))
    return "; ".join(parts)


def mcnemar(a: str, b: str) -> dict:
    """Paired comparison of two per-sample correctness strings (exact McNemar)."""
    a_only = sum(x == "1" and y == "0" for x, y in zip(a, b))
    b_only = sum(x == "0" and y == "1" for x, y in zip(a, b))
    n = a_only + b_only
    tail = sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1)) / 2 ** n if n else 1.0
    return dict(a_only=a_only, b_only=b_only, p_value=min(1.0, 2 * tail))


def step_analyze(args, results: dict) -> None:
    from ssmprune.data.digits import held_out_for_model

    grid = results.get("grid", [])
    out = results.setdefault("analysis", {})
    for name in args.models:
        rows = {(r["alignment"], r["importance"], r["keep_ratio"]): r
                for r in grid if r["model"] == name}
        if not rows:
            raise SystemExit(f"analyze: run `evaluate` for {name} first")
        paired = []
        for importance in IMPORTANCES:
            for ratio in KEEP_RATIOS:
                gap, none = rows[("gap", importance, ratio)], rows[("none", importance, ratio)]
                test = mcnemar(gap["correct"], none["correct"])
                paired.append(dict(importance=importance, keep_ratio=ratio,
                                   gap=gap["accuracy"], none=none["accuracy"],
                                   gap_only=test["a_only"], none_only=test["b_only"],
                                   p_value=test["p_value"]))
        dense = load_model(name, args.weights_dir)
        images, labels = held_out_for_model(dense.config)
        out[name] = dict(
            paired_gap_vs_none=paired,
            steps=step_statistics(dense, images),
            deviation=feature_deviation(name, dense, images, args.weights_dir),
            controls=controls(name, images, labels, args.weights_dir),
        )
        log(analysis_summary(name, out[name]))


# --------------------------------------------------------------------------- analysis


def default_and_actual_steps(model, images):
    """Per layer: delta0 = softplus(bias) (e,), A (e, n), actual steps (b, l, e).

    The actual steps are those of the dense model on ``images``, recomputed
    from each layer's normalised input (a forward hook on the layer's norm)
    exactly as the layer computes them: Vim's forward branch, PlainMamba's
    shared dt (whose bias counts twice, quirk 2 of plainmamba.py).
    """
    import torch
    import torch.nn.functional as F

    inputs = []
    hooks = [layer.norm.register_forward_hook(lambda m, i, o: inputs.append(o))
             for layer in model.layers]
    with torch.inference_mode():
        model(images)
    for h in hooks:
        h.remove()
    out = []
    with torch.inference_mode():
        for layer, normed in zip(model.layers, inputs):
            if model.family == "vim":
                mixer = layer.mixer
                x = mixer.in_proj(normed).transpose(1, 2).chunk(2, dim=1)[0]
                m = x.shape[-1]
                x = F.silu(mixer.conv1d(x)[..., :m]).transpose(1, 2)
                dt = mixer.x_proj(x)[..., :mixer.dt_rank]
                bias = mixer.dt_proj.bias
                steps = F.softplus(F.linear(dt, mixer.dt_proj.weight) + bias)
                A = -torch.exp(mixer.A_log)
            else:
                from ssmprune.pruning.plainmamba_tokens import grid_to_tokens, tokens_to_grid

                mamba = layer.mamba
                u = mamba.in_proj(normed).chunk(2, dim=-1)[0]
                grid = mamba.conv2d(tokens_to_grid(u, None, model.config.grid))
                u = F.silu(grid_to_tokens(grid, None))
                dt = mamba.x_proj(u)[..., :mamba.dt_rank]
                bias = 2 * mamba.dt_proj.bias
                steps = F.softplus(F.linear(dt, mamba.dt_proj.weight) + bias)
                A = -torch.exp(mamba.A_log)
            out.append((F.softplus(bias), A, steps))
    return out


def first_point_pruned(model, images, ratio: float):
    """(b, l) bool: the tokens the first pruning point (clip) removes, per image."""
    import torch

    from ssmprune.models.digits import PRUNE_AFTER
    from ssmprune.ops.token_gather import kept_indices
    from ssmprune.pruning.config import kept_tokens
    from ssmprune.pruning.importance import token_importance

    layer = model.layers[PRUNE_AFTER[0] - 1]
    captured = []
    if model.family == "vim":
        hook = layer.register_forward_hook(lambda m, i, o: captured.append(o[2]))
    else:
        original = layer.mixed

        def mixed(*a, **k):
            out = original(*a, **k)
            captured.append(out[1])
            return out

        layer.mixed = mixed
    with torch.inference_mode():
        model(images)
    if model.family == "vim":
        hook.remove()
    else:
        del layer.mixed
    scores = token_importance(captured[0], "clip")
    l = scores.shape[1]
    has_cls = model.family == "vim"
    if has_cls:
        cls = model.cls_position
        k = kept_tokens(l, ratio, True) - 1
        idx = kept_indices(scores, k, cls, k // 2)
    else:
        idx = kept_indices(scores, kept_tokens(l, ratio, False), -1, 0)
    pruned = torch.ones_like(scores, dtype=torch.bool)
    pruned.scatter_(1, idx, False)
    return pruned


def step_statistics(model, images) -> list[dict]:
    """Per layer: default step, the decay a gap applies, and the actual steps.

    ``retain1``: median over channels and states of exp(delta0 * A), the
    factor one pruned position multiplies the state by under ``gap``;
    ``retain_gap3``: the same for a gap of 3 (about the mean gap after the
    third point at keep ratio 0.6). ``actual_over_default``: mean actual
    step of the tokens the first pruning point removes (clip, ratio 0.6)
    divided by delta0, median over channels: how much faster the dense model
    really forgot across those tokens than ``gap`` assumes (1 = exact).
    """
    import torch

    pruned = first_point_pruned(model, images, FINETUNE_RATIO)
    stats = []
    for i, (delta0, A, steps) in enumerate(default_and_actual_steps(model, images)):
        retain1 = torch.exp(delta0[:, None] * A)
        retain3 = torch.exp(3 * delta0[:, None] * A)
        actual_pruned = steps[pruned].mean(0)    # (e,)
        actual_kept = steps[~pruned].mean(0)
        stats.append(dict(
            layer=i + 1,
            delta0_median=delta0.median().item(),
            delta0_mean=delta0.mean().item(),
            actual_step_mean=steps.mean().item(),
            actual_step_pruned_mean=actual_pruned.mean().item(),
            actual_step_kept_mean=actual_kept.mean().item(),
            actual_over_default_pruned=(actual_pruned / delta0).median().item(),
            actual_over_default_kept=(actual_kept / delta0).median().item(),
            retain1_median=retain1.median().item(),
            retain_gap3_median=retain3.median().item(),
            retain_actual_token_median=torch.exp(steps.mean((0, 1))[:, None] * A)
            .median().item(),
        ))
    return stats


def head_inputs(model, images):
    """(b, c) features the head reads, and the logits (b, classes)."""
    import torch

    captured = []
    hook = model.head.register_forward_pre_hook(lambda m, i: captured.append(i[0]))
    with torch.inference_mode():
        logits = model(images)
    hook.remove()
    return captured[0], logits


def feature_deviation(name, dense, images, weights_dir) -> list[dict]:
    """How far pruning moves the head's input from the dense one, gap vs none.

    For clip importance at every keep ratio: the mean over images of
    ||f_pruned - f_dense|| / ||f_dense|| and the mean KL(dense || pruned) of
    the class probabilities. Alignment that keeps hidden states stable
    should make both smaller.
    """
    from ssmprune.models.digits import PRUNE_AFTER
    from ssmprune.pruning.config import PruneConfig

    f_dense, logits_dense = head_inputs(dense, images)
    p_dense = logits_dense.log_softmax(-1)
    rows = []
    for ratio in KEEP_RATIOS:
        row = dict(keep_ratio=ratio)
        for alignment in ALIGNMENTS:
            model = load_model(name, weights_dir,
                               prune=PruneConfig(ratio, PRUNE_AFTER, "clip", alignment))
            f, logits = head_inputs(model, images)
            rel = ((f - f_dense).norm(dim=-1) / f_dense.norm(dim=-1)).mean().item()
            kl = (p_dense.exp() * (p_dense - logits.log_softmax(-1))).sum(-1).mean().item()
            row[f"{alignment}_rel_feature_error"] = rel
            row[f"{alignment}_kl"] = kl
        rows.append(row)
    return rows


@contextlib.contextmanager
def random_importance(model, seed: int = 0):
    """Score tokens with seeded uniform noise instead of the configured metric.

    A control: how much better than chance does the importance metric pick
    tokens? Patches the module-level ``token_importance`` that the model's
    forward calls, and only for the duration of the block.
    """
    import torch
    from unittest import mock

    gen = torch.Generator().manual_seed(seed)
    module = sys.modules[type(model).__module__]
    with mock.patch.object(module, "token_importance",
                           lambda y, kind: torch.rand(y.shape[:2], generator=gen)):
        yield


def vim_spatial_cls_logits(model, x):
    """A pruned Vim forward that keeps the class token at its spatial place.

    Diagnostic only, batch-1 free: the released schedule (and VisionMamba)
    re-inserts the class token in the middle of the kept tokens (k/2 patches,
    class token, k/2 patches), so when a pruning point keeps more patches
    from one half of the image than from the other, the class token moves
    relative to the image and each scan direction reaches it having seen a
    different part of the image than in training. Here the kept tokens,
    class token included, stay in their original order, and the gaps are
    counted over original token positions (the class token gets its own gap).
    Same scores, same token counts, same blocks as ``model.prune``.
    """
    import torch

    from ssmprune.ops.token_gather import gather_tokens
    from ssmprune.pruning.gaps import gaps_from_ranks

    module = sys.modules[type(model).__module__]
    prune = model.prune
    hidden, residual, gaps = model.embed(x), None, None
    b, m = hidden.shape[:2]
    cls_origin = model.cls_position
    positions = torch.arange(m).expand(b, -1)
    for i, layer in enumerate(model.layers):
        hidden, residual, y = layer(hidden, residual, gaps)
        if i + 1 not in prune.prune_after:
            continue
        scores = module.token_importance(y, prune.importance).float()
        scores = scores.masked_fill(positions == cls_origin, float("inf"))
        keep = torch.sort(scores, dim=1, descending=True, stable=True).indices
        idx = torch.sort(keep[:, :model.schedule[i + 1]], dim=1).values
        positions = positions.gather(1, idx)
        hidden, residual = gather_tokens(hidden, idx), gather_tokens(residual, idx)
        if prune.alignment == "gap":
            gaps = (gaps_from_ranks(positions), gaps_from_ranks((m - 1 - positions).flip(1)))
    residual = residual + hidden.float()
    hidden = model.norm_f(residual.to(model.norm_f.weight.dtype))
    cls_index = (positions == cls_origin).long().argmax(1)
    return model.head(hidden[torch.arange(b), cls_index])


def controls(name, images, labels, weights_dir) -> list[dict]:
    """Accuracy of controls at every keep ratio and alignment (blocks 2, 3, 5).

    ``random``: importance replaced by seeded noise. Vim only:
    ``spatial_cls_clip`` / ``spatial_cls_random``: the class token kept at
    its spatial place (``vim_spatial_cls_logits``) with clip / random scores.
    """
    import torch

    from ssmprune.data.digits import accuracy
    from ssmprune.models.digits import PRUNE_AFTER
    from ssmprune.pruning.config import PruneConfig

    rows = []
    for ratio in KEEP_RATIOS:
        for alignment in ALIGNMENTS:
            model = load_model(name, weights_dir,
                               prune=PruneConfig(ratio, PRUNE_AFTER, "clip", alignment))
            with random_importance(model):
                row = dict(keep_ratio=ratio, alignment=alignment,
                           random=accuracy(model, images, labels))
            if model.family == "vim":
                with torch.inference_mode():
                    hits = vim_spatial_cls_logits(model, images).argmax(-1) == labels
                    row["spatial_cls_clip"] = hits.float().mean().item()
                    with random_importance(model):
                        hits = vim_spatial_cls_logits(model, images).argmax(-1) == labels
                    row["spatial_cls_random"] = hits.float().mean().item()
            rows.append(row)
    return rows


def analysis_summary(name: str, analysis: dict) -> str:
    lines = [f"{name}: gap vs none, paired on the 360 held-out digits"]
    for p in analysis["paired_gap_vs_none"]:
        lines.append(f"  {p['importance']:4s} r={p['keep_ratio']}: gap {100 * p['gap']:.1f} "
                     f"none {100 * p['none']:.1f}  (gap-only right {p['gap_only']}, "
                     f"none-only right {p['none_only']}, McNemar p={p['p_value']:.3f})")
    lines.append("  layer  delta0(med)  retain/pruned pos  retain/gap 3  "
                 "actual/delta0 pruned  kept")
    for s in analysis["steps"]:
        lines.append(f"  {s['layer']:5d}  {s['delta0_median']:11.4f}  "
                     f"{s['retain1_median']:17.4f}  {s['retain_gap3_median']:12.4f}  "
                     f"{s['actual_over_default_pruned']:20.2f}  "
                     f"{s['actual_over_default_kept']:.2f}")
    lines.append("  clip: relative feature error / KL vs dense")
    for d in analysis["deviation"]:
        lines.append(f"  r={d['keep_ratio']}: none {d['none_rel_feature_error']:.3f} / "
                     f"{d['none_kl']:.3f}   gap {d['gap_rel_feature_error']:.3f} / "
                     f"{d['gap_kl']:.3f}")
    lines.append("  controls (clip unless named): random importance; Vim: class token "
                 "kept at its spatial place")
    for c in analysis["controls"]:
        extra = "".join(f"  {k} {100 * v:.1f}" for k, v in c.items()
                        if k.startswith("spatial"))
        lines.append(f"  r={c['keep_ratio']} {c['alignment']:4s}: random {100 * c['random']:.1f}"
                     + extra)
    return "\n".join(lines)


# --------------------------------------------------------------------------- report


def markdown_table(results: dict) -> str:
    grid = results.get("grid", [])
    head = ("| model | keep ratio | tokens per block | MFLOPs | "
            + " | ".join(f"{a}/{i}" for a in ALIGNMENTS for i in IMPORTANCES) + " |")
    lines = [head, "|" + "---|" * (4 + len(ALIGNMENTS) * len(IMPORTANCES))]
    for name in MODELS:
        rows = [r for r in grid if r["model"] == name]
        if not rows:
            continue
        dense = next(r for r in rows if r["method"] == "dense")
        lines.append(f"| {name} | 1.0 (dense) | {dense['tokens'][0]} | "
                     f"{dense['flops'] / 1e6:.2f} | "
                     + " | ".join([f"{100 * dense['accuracy']:.1f}"] * 6) + " |")
        for ratio in KEEP_RATIOS:
            cells = {(r["alignment"], r["importance"]): r for r in rows
                     if r["keep_ratio"] == ratio and r["method"] != "dense"}
            any_row = next(iter(cells.values()))
            tokens = "-".join(str(t) for t in dict.fromkeys(any_row["tokens"]))
            best = max(c["accuracy"] for c in cells.values())
            accs = []
            for a in ALIGNMENTS:
                for i in IMPORTANCES:
                    acc = cells[(a, i)]["accuracy"]
                    text = f"{100 * acc:.1f}"
                    accs.append(f"**{text}**" if acc == best else text)
            lines.append(f"| {name} | {ratio} | {tokens} | {any_row['flops'] / 1e6:.2f} | "
                         + " | ".join(accs) + " |")
    return "\n".join(lines)


def controls_table(results: dict) -> str:
    """Clip against the controls of ``controls``, per model and keep ratio."""
    grid = results.get("grid", [])
    cols = [("clip", "none"), ("clip", "gap"), ("random", "none"), ("random", "gap"),
            ("spatial_cls_clip", "none"), ("spatial_cls_clip", "gap"),
            ("spatial_cls_random", "none"), ("spatial_cls_random", "gap")]
    lines = ["| model | keep ratio | " + " | ".join(f"{k.replace('_', ' ')} / {a}"
                                                  for k, a in cols) + " |",
             "|" + "---|" * (2 + len(cols))]
    for name in MODELS:
        analysis = results.get("analysis", {}).get(name)
        if not analysis:
            continue
        for ratio in KEEP_RATIOS:
            cells = []
            for key, alignment in cols:
                if key == "clip":
                    acc = next(r["accuracy"] for r in grid if r["model"] == name
                               and r["keep_ratio"] == ratio and r["method"] == f"{alignment}/clip")
                else:
                    acc = next(c for c in analysis["controls"] if c["keep_ratio"] == ratio
                               and c["alignment"] == alignment).get(key)
                cells.append("-" if acc is None else f"{100 * acc:.1f}")
            lines.append(f"| {name} | {ratio} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_table(results: dict) -> str:
    """Per training seed: dense accuracy, clip accuracy per ratio, gap - none."""
    per_seed = {}
    for row in results.get("grid", []):
        per_seed.setdefault(("0", row["model"]), []).append(row)
    for seed, models in results.get("seed_runs", {}).items():
        for name, run in models.items():
            per_seed[(seed, name)] = run["grid"]
    head = ("| model | training seed | dense | clip (none) at 0.9 / 0.8 / 0.7 / 0.6 | "
            "gap - none, clip | gap - none, l1 | gap - none, l2 |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for name in MODELS:
        for (seed, model), rows in sorted(per_seed.items()):
            if model != name:
                continue
            acc = {(r["method"], r["keep_ratio"]): r["accuracy"] for r in rows}
            clip = " / ".join(f"{100 * acc[('none/clip', r)]:.1f}" for r in KEEP_RATIOS)
            diffs = [" ".join(f"{100 * (acc[(f'gap/{i}', r)] - acc[(f'none/{i}', r)]):+.1f}"
                              for r in KEEP_RATIOS) for i in IMPORTANCES]
            lines.append(f"| {name} | {seed} | {100 * acc[('dense', 1.0)]:.1f} | {clip} | "
                         + " | ".join(diffs) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = results.get("grid", [])
    names = [n for n in MODELS if any(r["model"] == n for r in grid)]
    fig, axes = plt.subplots(1, len(names), figsize=(6.2 * len(names), 5.4), squeeze=False)
    colours = {"clip": "tab:blue", "l1": "tab:orange", "l2": "tab:green"}
    styles = {"gap": "-", "none": "--"}
    markers = {"gap": "o", "none": "s"}
    for ax, name in zip(axes[0], names):
        rows = [r for r in grid if r["model"] == name]
        dense = next(r for r in rows if r["method"] == "dense")
        for a in ALIGNMENTS:
            for i in IMPORTANCES:
                pts = sorted((r["flops"] / 1e6, 100 * r["accuracy"]) for r in rows
                             if r["alignment"] == a and r["importance"] == i)
                ax.plot(*zip(*pts), styles[a], marker=markers[a], color=colours[i],
                        label=f"{a} / {i}", markersize=4, linewidth=1.4)
        analysis = results.get("analysis", {}).get(name, {})
        flops = {r["keep_ratio"]: r["flops"] / 1e6 for r in rows if r["method"] != "dense"}
        controls_ = [c for c in analysis.get("controls", []) if c["alignment"] == "gap"]
        if controls_:
            ax.plot([flops[c["keep_ratio"]] for c in controls_],
                    [100 * c["random"] for c in controls_], ":", marker=".", color="grey",
                    label="gap / random scores (control)", linewidth=1.2)
        if any("spatial_cls_clip" in c for c in controls_):
            ax.plot([flops[c["keep_ratio"]] for c in controls_],
                    [100 * c["spatial_cls_clip"] for c in controls_], ":", marker="^",
                    color="black", label="gap / clip, class token kept in place (diagnostic)",
                    linewidth=1.2, markersize=4)
        ax.plot(dense["flops"] / 1e6, 100 * dense["accuracy"], "*", color="black",
                markersize=13, label="dense", linestyle="none")
        for run in results.get("finetune", {}).get(name, []):
            ax.plot(run["flops"] / 1e6, 100 * run["after"], marker="P", linestyle="none",
                    color="tab:red" if run["alignment"] == "gap" else "tab:purple",
                    markersize=10,
                    label=f"{run['alignment']} / {run['importance']} + "
                          f"{run['epochs']}-epoch fine-tune")
        ax.set_title(f"{name}: keep ratio 0.9-0.6 at blocks "
                     f"{', '.join(map(str, rows[-1]['prune_after']))} of 8")
        ax.set_xlabel("MFLOPs per image (Vim paper convention)" if "vim" in name
                      else "MFLOPs per image (PlainMamba paper convention)")
        ax.set_ylabel("held-out accuracy (%), 360 digits")
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=8,
               frameon=False)
    fig.suptitle("ToP on scikit-learn digits, no fine-tuning unless marked "
                 "(solid: gap alignment, dashed: none)", fontsize=10)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def step_report(args, results: dict) -> None:
    plot(results, args.plot)
    log(markdown_table(results))
    log("")
    log(controls_table(results))
    log("")
    log(seeds_table(results))
    for name, runs in results.get("finetune", {}).items():
        for run in runs:
            log(f"fine-tune {name} {run['alignment']}/{run['importance']} r={run['keep_ratio']}"
                f"{' (chosen)' if run['chosen'] else ''}: {100 * run['before']:.1f} -> "
                f"{100 * run['after']:.1f} % at {run['flops'] / 1e6:.2f} MFLOPs, "
                f"{run['epochs']} epochs lr {run['lr']}, {run['seconds']}s")
    log(f"plot: {args.plot}")


# --------------------------------------------------------------------------- main


def machine() -> dict:
    import torch

    return dict(platform=platform.platform(), processor=platform.processor() or "unknown",
                cpus=os.cpu_count(), torch_threads=torch.get_num_threads(),
                torch=torch.__version__, python=platform.python_version())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="experiments/digits.py",
        description=__doc__.split("\n\n")[0],
        epilog="Steps run in the order given; `all` = " + " ".join(STEPS) + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", nargs="+", choices=(*STEPS, "all", "seeds"),
                        help="what to run: " + ", ".join(STEPS) + ", all, or seeds "
                             "(retrain with --extra-seeds; not part of all)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed (default 0: the shipped weights)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the per-model training epochs")
    parser.add_argument("--weights-dir", type=Path, default=ASSETS,
                        help="where weights are written and read (default ssmprune/assets)")
    parser.add_argument("--results", type=Path, default=RESULTS_JSON,
                        help="results JSON (read, updated, written)")
    parser.add_argument("--plot", type=Path, default=PLOT_PNG, help="plot PNG path")
    parser.add_argument("--extra-seeds", type=int, nargs="+", default=[1, 2],
                        help="training seeds of the `seeds` step (default 1 2)")
    parser.add_argument("--retrain", action="store_true",
                        help="`seeds`: retrain even where the seed's weights exist")
    parser.add_argument("--seed-dir", type=Path, default=ROOT / "out" / "digits_seeds",
                        help="where the `seeds` step writes its weights (git-ignored out/)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    steps = list(STEPS) if "all" in args.steps else args.steps

    import torch

    torch.set_num_threads(args.threads)
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    start = time.perf_counter()
    runners = dict(train=step_train, evaluate=step_evaluate, finetune=step_finetune,
                   analyze=step_analyze, report=step_report, seeds=step_seeds)
    timings = results.setdefault("meta", {}).setdefault("step_seconds", {})
    for step in steps:
        t0 = time.perf_counter()
        runners[step](args, results)
        timings[step] = round(time.perf_counter() - t0, 1)
        command = "python experiments/digits.py " + " ".join(argv or sys.argv[1:])
        results["meta"].setdefault("step_commands", {})[step] = command
        results["meta"].update(
            date=datetime.date.today().isoformat(), machine=machine(),
            weights_dir=str(args.weights_dir), split="sklearn digits, stratified 80/20, seed 0",
            held_out_size=360, train_size=1437)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    log(f"PASSED | Runtime: {time.perf_counter() - start:.1f}s | "
        f"Command: experiments/digits.py {' '.join(argv or sys.argv[1:])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
