"""The items of ``gpu_check.py``, each run in its own process by that script.

An item is a function ``(quick, work_dir) -> Outcome``; it raises ``Skipped`` when
something it needs is absent. Everything heavy (torch, Triton, the ssmprune modules
that pull them in, TensorRT) is imported inside the items: the machine that runs them
may have other versions than requirements.txt pins (a lent GPU's own Python), and no
ssmprune install (the repository is on PYTHONPATH).

Dimension names as in ``ssmprune.ops.selective_scan``: b batch, d d_inner, l tokens in
scan order, n d_state; a gather takes m tokens to k (+1 protected).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


#: Where the items run. Tests set "cpu" (with TRITON_INTERPRET=1 and small sizes) to run
#: the items' code without a GPU.
DEVICE = "cuda"


class Skipped(Exception):
    """The item cannot run here; its message is the reason."""


@dataclass
class Outcome:
    """What an item found: a one-line summary, its table rows, whether it passed."""

    summary: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    passed: bool = True


# Max relative error of a Triton scan against the fp32 reference on the same rounded
# inputs, per output dtype: the table SCAN_TOL of tests/ops/test_triton_kernels.py.
SCAN_TOL = {"fp32": 1e-5, "fp16": 2e-3, "bf16": 1e-2}

# Scan shapes at 224 px (ssmprune.models; `ssmprune info MODEL --prune PRESET`):
# Vim-S: d_inner 2 x 384, 197 tokens, 101 after vim_s_paper's last pruning point; its
# scans take z. PlainMamba-L1: d_inner 2 x 192, 196 tokens, 52 after
# plainmamba_l1_paper's last point; its four scan directions run as one scan of batch
# 4b, without z.
FAMILIES = {
    "vim_s": dict(d=768, n=16, l=197, l_pruned=101, per_image=1, z=True),
    "plainmamba_l1": dict(d=384, n=16, l=196, l_pruned=52, per_image=4, z=False),
}
# Gathers at the first pruning point: Vim-S keeps 156 patches of 196 plus the class
# token (index 98, re-inserted in the middle), hidden and residual of width 384;
# PlainMamba-L1 keeps 126 of 196 tokens of width 192, none protected.
GATHERS = {
    "vim_s": dict(m=197, k=156, protect=98, insert_at=78, width=384, tensors=2),
    "plainmamba_l1": dict(m=196, k=126, protect=-1, insert_at=0, width=192, tensors=1),
}


def one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


def _torch_dtypes():
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def max_rel(actual, expected) -> float:
    """max |actual - expected| / max |expected| (0 for an empty tensor)."""
    if expected.numel() == 0:
        return 0.0
    scale = expected.float().abs().max().clamp_min(1e-12)
    return ((actual.float() - expected.float()).abs().max() / scale).item()


def scan_inputs(b: int, d: int, l: int, n: int, dtype: str, *, z: bool = True, D: bool = True,
                bias: bool = True, gap: Optional[str] = "int64", softplus: bool = True,
                seed: int = 0) -> dict[str, Any]:
    """Seeded keyword arguments of ``selective_scan``: u, delta, z (b d l) and B, C (b n l)
    in ``dtype``; A, D, delta_bias fp32; gap (b l) int32/int64 counts, or None."""
    import torch

    g = torch.Generator(DEVICE).manual_seed(seed)
    dt = _torch_dtypes()[dtype]

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, device=DEVICE) * scale

    delta = r(b, d, l, scale=0.5)
    if not softplus:  # without softplus the steps must be positive, as in mamba_ssm
        delta = delta.abs()
    gaps = None
    if gap is not None:
        gaps = torch.randint(0, 4, (b, l), generator=g, device=DEVICE).to(getattr(torch, gap))
    return dict(
        u=r(b, d, l).to(dt), delta=delta.to(dt), A=-torch.exp(r(d, n, scale=0.5)),
        B=r(b, n, l).to(dt), C=r(b, n, l).to(dt), D=r(d) if D else None,
        z=r(b, d, l).to(dt) if z else None,
        delta_bias=(r(d, scale=0.5) if softplus else r(d, scale=0.5).abs()) if bias else None,
        gap=gaps, delta_softplus=softplus,
    )


def scan_cases(quick: bool) -> list[dict[str, Any]]:
    """Per family: dense and pruned lengths as the model calls the scan, in every dtype;
    on Vim-S pruned also int32 gaps, no optional inputs, and gaps without a delta bias."""
    cases = []
    images = 1 if quick else 2
    for family, f in FAMILIES.items():
        for label, l in (("dense", f["l"]), ("pruned", f["l_pruned"])):
            for dtype in SCAN_TOL:
                cases.append(dict(family=family, l=l, dtype=dtype, variant=f"{label} as called",
                                  b=images * f["per_image"], d=f["d"], n=f["n"],
                                  flags=dict(z=f["z"], gap="int64" if label == "pruned" else None)))
    vim = FAMILIES["vim_s"]
    extras = {"gap int32": dict(gap="int32"),
              "no z, D, bias, gap; no softplus": dict(z=False, D=False, bias=False, gap=None,
                                                      softplus=False),
              "gap without delta_bias": dict(bias=False)}
    for variant, flags in extras.items():
        for dtype in SCAN_TOL:
            cases.append(dict(family="vim_s", l=vim["l_pruned"], dtype=dtype, variant=variant,
                              b=images, d=vim["d"], n=vim["n"], flags=flags))
    return cases


def kernels(quick: bool, work_dir: Path) -> Outcome:
    """The Triton scan and gather against the reference ops on CUDA, both families' shapes."""
    import torch

    from ssmprune.ops.selective_scan import selective_scan_ref
    from ssmprune.ops.token_gather import token_gather_ref
    from ssmprune.ops.triton import selective_scan, token_gather

    rows, worst = [], {d: 0.0 for d in SCAN_TOL}
    for i, c in enumerate(scan_cases(quick)):
        row = dict(op="scan", family=c["family"], shape=f"b{c['b']} d{c['d']} l{c['l']} "
                   f"n{c['n']}", dtype=c["dtype"], variant=c["variant"],
                   tolerance=f"{SCAN_TOL[c['dtype']]:g}")
        try:  # one case's error is that case's row; the next case still runs
            kw = scan_inputs(c["b"], c["d"], c["l"], c["n"], c["dtype"], seed=i, **c["flags"])
            upcast = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
                      for k, v in kw.items()}
            err = max_rel(selective_scan(**kw), selective_scan_ref(**upcast))
        except Exception as exc:  # noqa: BLE001 - recorded in the row
            rows.append({**row, "max_rel": f"error: {one_line(exc)}", "passed": False})
            continue
        worst[c["dtype"]] = max(worst[c["dtype"]], err)
        rows.append({**row, "max_rel": f"{err:.2e}", "passed": err <= SCAN_TOL[c["dtype"]]})
    dtypes = _torch_dtypes()
    for family, gcase in GATHERS.items():
        for dtype in SCAN_TOL:
            b, m, width = (1 if quick else 4), gcase["m"], gcase["width"]
            args = (gcase["k"], gcase["protect"], gcase["insert_at"])
            what = (f"hidden {dtype} + residual fp32" if gcase["tensors"] == 2
                    else f"tokens {dtype}")
            row = dict(op="gather", family=family, shape=f"b{b} m{m} -> k{args[0]}"
                       f"{' +1' if args[1] >= 0 else ''}", dtype=dtype, variant=what,
                       tolerance="exact")
            try:
                g = torch.Generator(DEVICE).manual_seed(len(rows))
                scores = torch.randn(b, m, generator=g, device=DEVICE)
                scores[:, ::7] = scores[:, :1].clone()  # ties: the earlier token must win
                positions = torch.arange(m, device=DEVICE).expand(b, -1).contiguous()
                tensors = [torch.randn(b, m, width, generator=g, device=DEVICE).to(dtypes[dtype])]
                if gcase["tensors"] == 2:  # Vim's residual stream is fp32
                    tensors.append(torch.randn(b, m, width, generator=g, device=DEVICE))
                got = token_gather(scores, positions, tensors, *args)
                want = token_gather_ref(scores, positions, tensors, *args)
                same = all(a.dtype == w.dtype and torch.equal(a, w) for a, w in zip(got, want))
            except Exception as exc:  # noqa: BLE001 - recorded in the row
                rows.append({**row, "max_rel": f"error: {one_line(exc)}", "passed": False})
                continue
            rows.append({**row, "max_rel": "exact" if same else "differs", "passed": same})
    failed = [r for r in rows if not r["passed"]]
    summary = (f"{len(rows) - len(failed)}/{len(rows)} cases within tolerance; worst scan "
               "max_rel " + ", ".join(f"{d} {e:.1e}" for d, e in worst.items()))
    return Outcome(summary, rows, passed=not failed)


def device_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()``: CUDA events on the current stream (a wall clock
    off CUDA)."""
    import time

    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if DEVICE != "cuda":
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def scan_bytes(b: int, d: int, l: int, n: int, itemsize: int, *, z: bool = True,
               D: bool = True, bias: bool = True, gap_itemsize: int = 8) -> int:
    """Bytes one scan must move at the least: it reads u, delta (and z) (b d l) and B, C
    (b n l) in the activation dtype, A (d n), D and delta_bias (d) in fp32, gap (b l)
    (``gap_itemsize`` 0: none), and writes y (b d l)."""
    activations = b * d * l * itemsize * (3 + int(z))
    return (activations + 2 * b * n * l * itemsize + 4 * d * (n + int(D) + int(bias))
            + b * l * gap_itemsize)


def copy_bytes(numel: int, itemsize: int) -> int:
    """Bytes a device-to-device copy of ``numel`` elements moves: read once, written once."""
    return 2 * numel * itemsize


def device_copy_ms(numel: int, repeats: int) -> float:
    """Median milliseconds of copying ``numel`` fp32 elements from one device buffer to
    another (both freed on return)."""
    import torch

    src = torch.empty(numel, device=DEVICE)
    dst = torch.empty_like(src)
    return device_ms(lambda: dst.copy_(src), repeats)


BANDWIDTH_BATCH = 64
COPY_MIB = {False: 2048, True: 256}  # the copied buffer, full run and --quick


def bandwidth(quick: bool, work_dir: Path) -> Outcome:
    """The scan's achieved bandwidth at Vim-S sizes, batch 64, against a device copy."""
    import torch

    from ssmprune.ops.triton import selective_scan

    repeats = 5 if quick else 20
    mib = COPY_MIB[quick]
    copy_ms = device_copy_ms(mib * 2**20 // 4, repeats)
    copy_gbs = copy_bytes(mib * 2**20 // 4, 4) / copy_ms / 1e6
    b, f = BANDWIDTH_BATCH, FAMILIES["vim_s"]
    rows = [dict(kernel="device copy (torch copy_)", shape=f"{mib} MiB", dtype="fp32",
                 ms=f"{copy_ms:.3f}", GB_s=f"{copy_gbs:.0f}", of_copy="100%")]
    for dtype in SCAN_TOL:
        kw = scan_inputs(b, f["d"], f["l"], f["n"], dtype, z=True, gap="int64")
        out = selective_scan(**kw)
        if not torch.isfinite(out.float()).all():
            raise RuntimeError(f"the {dtype} scan at batch {b} gave non-finite values")
        ms = device_ms(lambda: selective_scan(**kw), repeats)
        moved = scan_bytes(b, f["d"], f["l"], f["n"], kw["u"].element_size())
        gbs = moved / ms / 1e6
        rows.append(dict(kernel="Triton selective scan", shape=f"b{b} d{f['d']} l{f['l']} "
                         f"n{f['n']}, z, gap", dtype=dtype, ms=f"{ms:.3f}", GB_s=f"{gbs:.0f}",
                         of_copy=f"{gbs / copy_gbs:.0%}"))
    summary = (f"copy {copy_gbs:.0f} GB/s; scan " + ", ".join(
        f"{r['dtype']} {r['of_copy']}" for r in rows[1:]) + " of it")
    return Outcome(summary, rows)


#: The forward item's model, pruning (preset or PruneConfig) and ``create_model`` overrides
#: (tests: a small one).
FORWARD_MODEL = ("vim_s", "vim_s_paper", {})
FORWARD_BATCHES = {False: (1, 32), True: (1, 8)}


def forward(quick: bool, work_dir: Path) -> Outcome:
    """Torch forward on CUDA, dense vim_s against pruned (vim_s_paper): latency and ratio;
    both also against the same model on the CPU (fp32, TF32 off)."""
    import time

    import torch

    from ssmprune.models import create_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name, preset, overrides = FORWARD_MODEL
    models = {}
    pruned_label = f"pruned {preset}" if isinstance(preset, str) else "pruned"
    for label, prune in (("dense", None), (pruned_label, preset)):
        torch.manual_seed(0)
        models[label] = create_model(name, prune=prune, **overrides).eval()
    shape = next(iter(models.values())).input_shape()
    rows = []
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = {label: m(x) for label, m in models.items()}
        for label, m in models.items():
            m.to(DEVICE)
            start = time.perf_counter()
            got = m(x.to(DEVICE))
            _sync()
            first = time.perf_counter() - start
            err = max_rel(got.cpu(), expected[label])
            rows.append(dict(model=f"{name} {label}", batch=2, measure="CUDA vs CPU max_rel",
                             value=f"{err:.2e}", note=f"tolerance 1e-4; first call "
                             f"{first:.1f}s (kernels compile)", passed=err <= 1e-4))
        for batch in FORWARD_BATCHES[quick]:
            xb = torch.randn(batch, *shape, device=DEVICE)
            ms = {label: device_ms(lambda m=m: m(xb), 5 if quick else 10)
                  for label, m in models.items()}
            for label, t in ms.items():
                rows.append(dict(model=f"{name} {label}", batch=batch, measure="latency ms",
                                 value=f"{t:.2f}", note=f"{batch / t * 1e3:.0f} images/s",
                                 passed=True))
            dense, pruned = ms.values()
            rows.append(dict(model="dense / pruned", batch=batch, measure="speed-up",
                             value=f"{dense / pruned:.2f}x", note="", passed=True))
    speedups = [r for r in rows if r["measure"] == "speed-up"]
    bad = [r for r in rows if not r["passed"]]
    summary = (f"pruned {name} {' / '.join(r['value'] for r in speedups)} the speed of dense "
               f"(batch {' / '.join(str(r['batch']) for r in speedups)}); CUDA vs CPU "
               f"{'within' if not bad else 'OUTSIDE'} 1e-4")
    return Outcome(summary, rows, passed=not bad)


# Small pruned models with trained weights shipped in ssmprune/assets (`make demo`).
TRT_MODELS = (("vim_digits", "vim_digits_top"), ("plainmamba_digits", "plainmamba_digits_top"))
TRT_BATCH = 8


def tensorrt(quick: bool, work_dir: Path) -> Outcome:
    """Per plugin form, in its own process: an engine with the plugins from a small pruned
    export, its parity against torch and its latency."""
    from ssmprune.doctor import plugin_forms
    from ssmprune.engine import trt
    from ssmprune.plugins.tensorrt import FORMS, has_aot

    flavour = trt.installed("tensorrt")
    if flavour is None:
        raise Skipped("full TensorRT (module tensorrt) is not importable")
    offered = [f for f in plugin_forms(flavour.name, flavour.version)
               if f != "aot" or has_aot(flavour.trt)]
    rows = []
    for model, preset in TRT_MODELS[:1] if quick else TRT_MODELS:
        row = dict(model=preset, form="", build_s="", max_rel="", top1="", latency_ms="")
        try:
            reference(model, preset, work_dir / preset)
        except Exception as exc:  # noqa: BLE001 - this model's row; the next model still runs
            rows.append({**row, "status": f"failed: export: {one_line(exc)}"})
            continue
        for form in FORMS:
            row["form"] = form
            if form not in offered:
                rows.append({**row, "status": f"skipped: {flavour.display} has no {form} form"})
                continue
            rows.append({**row, **engine_in_process(form, work_dir / preset)})
    summary = (f"{flavour.display}: " + "; ".join(f"{r['model']} {r['form']} {r['status']}"
                                                  for r in rows))
    return Outcome(summary, rows, passed=not any(r["status"].startswith("failed") for r in rows))


def reference(model: str, preset: str, export_dir: Path) -> None:
    """Export ``model`` pruned by ``preset`` to ``export_dir`` with a seeded input and its
    torch logits beside it (reference.pt)."""
    import torch

    from ssmprune.exporter import ExportOptions, export
    from ssmprune.exporter.export import model_from_manifest

    result = export(ExportOptions(model, prune=preset, batch=TRT_BATCH), export_dir)
    x = torch.randn(*result.manifest.input["shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model_from_manifest(result.manifest).eval()(x)
    torch.save({"x": x, "expected": expected}, export_dir / "reference.pt")


ENGINE_TIMEOUT_S = 150


def engine_in_process(form: str, export_dir: Path) -> dict[str, Any]:
    """``engine_form`` in a process of its own (TensorRT holds one plugin form per process);
    its fields, or a ``status`` saying why it failed."""
    from ssmprune.engine import trt
    from ssmprune.plugins.tensorrt import FORM_VAR

    env = {**os.environ, FORM_VAR: form, trt.ENV_VAR: "tensorrt"}
    found = export_dir / f"engine-{form}.json"
    cmd = [sys.executable, str(Path(__file__).with_name("gpu_check.py")), "--engine-form", form,
           "--export", str(export_dir), "--result", str(found)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=ENGINE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: timed out after {ENGINE_TIMEOUT_S}s"}
    if done.returncode != 0 or not found.exists():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": f"failed: exit {done.returncode}: {last}"}
    return json.loads(found.read_text())


def engine_form(form: str, export_dir: Path) -> dict[str, Any]:
    """Build ``export_dir`` with plugins of ``form`` (this process holds that form only),
    run the engine on the saved input, compare with the saved torch logits."""
    import time

    import torch

    from ssmprune.engine.build import BuildOptions
    from ssmprune.engine.runtime import EngineRunner
    from ssmprune.engine.save import build_to_file
    from ssmprune.exporter.stages import INPUT_NAME
    from ssmprune.parity.tolerances import tolerance_for

    saved = torch.load(export_dir / "reference.pt")
    start = time.perf_counter()
    built, engine_path, _ = build_to_file(export_dir, export_dir / f"model-{form}.engine",
                                          BuildOptions())
    build_s = time.perf_counter() - start
    with EngineRunner(engine_path) as runner:
        x = saved["x"].cuda()
        (out,) = runner.infer({INPUT_NAME: x}).values()
        ms = device_ms(lambda: runner.infer({INPUT_NAME: x}), 20)
    out, expected = out.float().cpu(), saved["expected"]
    err = max_rel(out, expected)
    top1 = (out.argmax(-1) == expected.argmax(-1)).float().mean().item()
    limit = tolerance_for("fp32", "logits").max_rel
    return dict(build_s=f"{build_s:.1f}", max_rel=f"{err:.2e}", top1=f"{top1:.0%}",
                latency_ms=f"{ms:.2f} (batch {TRT_BATCH})",
                plugins=", ".join(p.name for p in built.plugins),
                status="passed" if err <= limit else f"failed: max_rel {err:.2e} > {limit:g}")


ITEMS = {"kernels": kernels, "bandwidth": bandwidth, "forward": forward, "tensorrt": tensorrt}
