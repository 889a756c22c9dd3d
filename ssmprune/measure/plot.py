"""Plots of ``bench`` (bars) and ``sweep`` (accuracy vs latency and vs GFLOPs), matplotlib
(the ``[plot]`` extra; in requirements.txt), drawn off-screen (Agg) into a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARKERS = {"fp32": "o", "fp16": "s", "int8": "^", "fp8": "D"}
MISSING = "matplotlib is not installed (pip install 'ssmprune[plot]')"


def available() -> bool:
    """Whether matplotlib can be imported (the ``[plot]`` extra)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bench_plot(result: dict[str, Any], path: Path) -> None:
    """Bars of p50 latency per (runtime, batch) group, one bar per target, whiskers to p90;
    each bar labelled with its ratio to the group's first target."""
    plt = _pyplot()
    rows = result["results"]
    groups = list(dict.fromkeys((r["runtime"], r["batch"]) for r in rows))
    names = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(3.2 + 2.6 * len(groups), 4.2),
                             squeeze=False)
    width = 0.8 / max(1, len(names))
    for ax, (runtime, batch) in zip(axes[0], groups):
        for i, name in enumerate(names):
            row = next((r for r in rows if (r["runtime"], r["batch"], r["target"])
                        == (runtime, batch, name)), None)
            if row is None:
                continue
            bar = ax.bar(i * width, row["p50_ms"], width * 0.9, label=name,
                         color=f"C{i}", yerr=[[0], [row["p90_ms"] - row["p50_ms"]]], capsize=3)
            ax.bar_label(bar, labels=[f"{row['ratio']:.2f}x"], padding=2, fontsize=8)
        ax.set_title(f"{runtime}, batch {batch}", fontsize=10)
        ax.set_xticks([])
        ax.set_ylabel("latency p50 (ms), whisker p90")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    # Each panel holds the targets its runtime ran: the legend gathers them all.
    legend = {}
    for ax in axes[0]:
        legend.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.legend(list(legend.values()), list(legend), loc="lower center",
               ncol=min(4, len(legend)), fontsize=8, frameon=False)
    machine = result.get("machine", {})
    fig.suptitle(f"ssmprune bench: {machine.get('cpu', '')} ({machine.get('date', '')}); "
                 "labels: p50 / first target's", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def sweep_plot(points: list[dict[str, Any]], title: str, path: Path) -> None:
    """Two panels: top-1 accuracy vs p50 latency and vs GFLOPs; one curve per precision,
    each point labelled with its keep ratio, the dense point (keep ratio 1.0) starred, a
    quantized point that misses calibrate's verdict ringed in red."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    precisions = list(dict.fromkeys(p["precision"] for p in points))
    for i, precision in enumerate(precisions):
        pts = sorted((p for p in points if p["precision"] == precision),
                     key=lambda p: -p["keep_ratio"])
        for ax, key in zip(axes, ("p50_ms", "gflops")):
            xs = [p[key] for p in pts]
            ys = [100 * p["top1"] for p in pts]
            ax.plot(xs, ys, marker=MARKERS.get(precision, "o"), color=f"C{i}", label=precision)
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(str(p['keep_ratio']), (x, y), textcoords="offset points",
                            xytext=(4, 4), fontsize=8, color=f"C{i}")
                verdict = p.get("calibration_verdict")
                if verdict and not verdict["passed"]:
                    ax.scatter([x], [y], marker="o", s=180, facecolors="none",
                               edgecolors="red", zorder=6, label="misses calibrate's verdict")
                if p["keep_ratio"] == 1.0:
                    ax.scatter([x], [y], marker="*", s=260, color=f"C{i}", edgecolor="black",
                               zorder=5, label=f"dense ({precision})")
    axes[0].set_xlabel("latency p50 (ms per batch)")
    axes[1].set_xlabel("GFLOPs per image")
    for ax in axes:
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))  # one entry per label
        ax.legend(unique.values(), unique.keys(), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
