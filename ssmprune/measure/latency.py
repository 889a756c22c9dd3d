"""Latency of several targets, measured side by side: ``ssmprune bench``.

For each runtime and batch, every target that runs there gets one fixed input
(seeded normal noise of its shape), ``warmup`` untimed runs, then timed rounds in
which each target runs once, in turn (round-robin, as ``benchmarks/timing.py``
does): the noise of a shared machine falls on all of them alike, so their ratios
hold better than the absolute times. Rounds stop after ``iterations``, or once
``seconds`` have passed (at least ``MIN_ROUNDS``).

Per (target, runtime, batch): p50 / p90 / p99 / mean of the per-run latencies
(numpy's linear percentiles, ms), throughput ``batch * 1000 / mean_ms``
(images/s), and peak memory: the process's peak resident set during one more
run (Linux ``/proc/self/status`` VmHWM, reset through ``/proc/self/clear_refs``
first): the whole process, so every target loaded and the libraries count, not
this target alone (its own size is the target's ``file_mib``); null where it
cannot be read, and for engines, whose memory is on the GPU. ``ratio`` is a target's p50 over
the first target's p50 in the same runtime and batch (``ratio_to`` names it),
``speedup`` its inverse.

Dimension glossary: b batch, c in_chans, s img_size.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import numpy as np

from ssmprune import limits
from ssmprune.measure.targets import RUNTIMES, ModelOptions, Runner, Target, batch_skip

MIN_ROUNDS = 3
Progress = Callable[[str], None]  # one line per runtime and batch, before its runs


@dataclass
class BenchSettings:
    """How to time. runtimes: None = each target's own runtime."""

    batches: tuple[int, ...] = (1, 8)
    runtimes: Optional[tuple[str, ...]] = None
    warmup: int = 2
    iterations: Optional[int] = 10
    seconds: Optional[float] = None
    threads: Optional[int] = None

    def describe(self) -> dict[str, Any]:
        return {"batches": list(self.batches),
                "runtimes": list(self.runtimes) if self.runtimes else None,
                "warmup": self.warmup, "iterations": self.iterations, "seconds": self.seconds,
                "threads": self.threads}


@dataclass
class BenchResult:
    """What ``bench`` measured: the JSON of ``ssmprune bench --json``."""

    machine: dict[str, Any]
    settings: dict[str, Any]
    targets: list[dict[str, Any]]
    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"machine": self.machine, "settings": self.settings, "targets": self.targets,
                "results": self.results, "skipped": self.skipped}


def machine() -> dict[str, Any]:
    """The CPU, whether it has AVX-512, core count, library versions, the time (UTC)."""
    import onnxruntime
    import torch

    cpu, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu == (platform.processor()
                                                             or platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    return {"cpu": cpu, "avx512": " avx512f" in flags, "cores": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "onnxruntime": onnxruntime.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def resolve_bench_targets(specs: list[str], options: ModelOptions = ModelOptions()
                          ) -> tuple[list[Target], list[dict[str, Any]]]:
    """The targets, and a skip record for each engine this machine cannot run (no GPU,
    no TensorRT): a skip, not a failure. Any other bad target is an error."""
    from ssmprune.engine.errors import NoGpuError, TensorRTUnavailableError
    from ssmprune.measure.targets import check_model_options, resolve_target

    check_model_options(specs, options)
    targets, skipped = [], []
    for spec in specs:
        try:
            targets.append(resolve_target(spec, options))
        except (NoGpuError, TensorRTUnavailableError) as err:
            skipped.append({"target": spec, "runtime": "trt", "batch": None, "reason": str(err)})
    return targets, skipped


def percentiles(times_ms: list[float], batch: int) -> dict[str, float]:
    """p50 / p90 / p99 / mean (ms) and images/s of one case's timed runs."""
    t = np.asarray(times_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(t, [50, 90, 99])
    mean = float(t.mean())
    return {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4),
            "p99_ms": round(float(p99), 4), "mean_ms": round(mean, 4),
            "images_per_s": round(batch * 1000.0 / mean, 3) if mean > 0 else None}


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"no {key} in /proc/self/status")


def peak_rss(fn: Callable[[], Any]) -> Optional[float]:
    """The process's peak resident set (MiB) while ``fn()`` runs: Linux's VmHWM, reset to
    the current resident set through /proc/self/clear_refs first; None where it cannot
    be read (not Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        fn()
        return None
    fn()
    try:
        return round(_status_kib("VmHWM") / 1024, 1)
    except OSError:
        return None


@dataclass
class _Case:
    target: Target
    runner: Runner
    x: np.ndarray
    times: list[float] = field(default_factory=list)

    def run(self):
        return self.runner(self.x)


def _inputs(target: Target, batch: int) -> np.ndarray:
    limits.check_input_bytes("inputs (--batch)", batch, target.config["in_chans"],
                             target.config["img_size"])
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch, *target.sample_shape), dtype=np.float32)


def time_round_robin(cases: list[_Case], warmup: int, iterations: Optional[int],
                     seconds: Optional[float]) -> None:
    """Warm every case up, then timed rounds of one run per case, in turn (``case.times``, ms):
    ``iterations`` rounds, or rounds for ``seconds`` (at least MIN_ROUNDS)."""
    if iterations is None and seconds is None:
        raise ValueError("time_round_robin needs iterations or seconds")
    for case in cases:
        for _ in range(warmup):
            case.run()
    start, rounds = time.perf_counter(), 0
    while True:
        for case in cases:
            t0 = time.perf_counter()
            case.run()
            case.times.append((time.perf_counter() - t0) * 1e3)
        rounds += 1
        if iterations is not None and rounds >= iterations:
            return
        if seconds is not None and time.perf_counter() - start >= seconds and \
                rounds >= MIN_ROUNDS:
            return


def bench(targets: list[Target], settings: BenchSettings, skipped=(),
          progress: Optional[Progress] = None) -> BenchResult:
    """Time ``targets`` per runtime and batch (module docstring); skips are recorded, one line
    each: a runtime a target does not run in, a batch its static batch excludes."""
    result = BenchResult(machine(), settings.describe(), [t.describe() for t in targets],
                         skipped=list(skipped))
    runtimes = settings.runtimes or tuple(r for r in RUNTIMES
                                          if any(t.runtimes[0] == r for t in targets))
    for runtime in runtimes:
        members = []
        for t in targets:
            if runtime in t.runtimes and (settings.runtimes or t.runtimes[0] == runtime):
                members.append(t)
            elif settings.runtimes:
                result.skipped.append({"target": t.name, "runtime": runtime, "batch": None,
                                       "reason": f"{t.name} ({t.kind}) does not run in "
                                                 f"{runtime}; it runs in "
                                                 f"{', '.join(t.runtimes)}"})
        if not members:
            continue
        runners = {}
        try:
            for t in members:
                runners[id(t)] = t.open(runtime, settings.threads)
            for batch in settings.batches:
                cases = []
                for t in members:
                    reason = batch_skip(t, batch)
                    if reason is not None:
                        result.skipped.append({"target": t.name, "runtime": runtime,
                                               "batch": batch, "reason": reason})
                        continue
                    cases.append(_Case(t, runners[id(t)], _inputs(t, batch)))
                if not cases:
                    continue
                if progress is not None:
                    rounds = (f"{settings.iterations} rounds" if settings.iterations
                              else f"{settings.seconds:g} s")
                    progress(f"timing {runtime} batch {batch}: {len(cases)} target(s), "
                             f"{settings.warmup} warm-up runs, {rounds}")
                time_round_robin(cases, settings.warmup, settings.iterations, settings.seconds)
                base, base_name = None, None
                for case in cases:
                    stats = percentiles(case.times, batch)
                    if base is None:
                        base, base_name = stats["p50_ms"], case.target.name
                    memory = None if runtime == "trt" else peak_rss(case.run)
                    result.results.append({
                        "target": case.target.name, "runtime": runtime, "batch": batch,
                        "where": case.runner.where, "iterations": len(case.times), **stats,
                        "peak_rss_mib": memory,
                        "ratio": round(stats["p50_ms"] / base, 4), "ratio_to": base_name,
                        "speedup": round(base / stats["p50_ms"], 4)})
        finally:
            for runner in runners.values():
                runner.close()
    return result
