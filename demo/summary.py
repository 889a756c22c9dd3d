"""The closing table of ``make demo``: what the demo produced, where, and its key figure.

    python demo/summary.py [OUT]   (default: out)

Exports and engines are read through ssmprune's checked readers (manifest schema,
sha256), so the table shows what a user of the files would get.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ssmprune.calibration.quantize import REPORT_FILE
from ssmprune.engine.manifest import read_manifest, verify_engine_file
from ssmprune.exporter.manifest import MANIFEST_FILE, read_export


def _size(path: Path) -> str:
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() \
        else path.stat().st_size
    return f"{total / 1e6:.1f} MB"


def _export_row(folder: Path) -> tuple[str, str, str]:
    _, m = read_export(folder)
    pruned = f"pruned ({m.prune_preset or 'custom'})" if m.prune else "dense"
    batch = f"batch 1 to {m.max_batch}" if m.dynamic else f"batch {m.batch}"
    what = f"{m.model} {pruned}, {m.precision}, {batch}"
    report = folder / REPORT_FILE
    figure = ""
    if report.is_file():
        r = json.loads(report.read_text())
        v = r["verdict"]["logits"]
        low, high = v["top1_interval95"]
        figure = (f"top-1 agreement {v['top1']:.1%} on {v['samples']} {r['judged_on']} "
                  f"(95% {low:.1%}-{high:.1%}) [{'ok' if v['passed'] else 'MISSED'}]")
    return "export (ONNX + manifest)", what, figure


def _engine_row(path: Path) -> tuple[str, str, str]:
    m = read_manifest(path)
    verify_engine_file(path, m)
    targets = ", ".join(m.gpu.get("targets") or []) or "its GPU"
    what = f"{m.tensorrt['flavour']} {m.tensorrt['version']}, {m.precision}, for {targets}"
    return "TensorRT engine", what, f"built in {m.build_seconds:.1f}s"


def _sweep_row(path: Path) -> tuple[str, str, str]:
    points = json.loads(path.read_text()).get("points", [])
    return "sweep table", f"{len(points)} points", "sweep.md, sweep.png beside it"


def rows(out: Path) -> list[tuple[str, str, str, str, str]]:
    """(kind, path, what, size, key figure) of everything the demo wrote under ``out``."""
    found = []
    for manifest in sorted(out.rglob(MANIFEST_FILE)):
        kind, what, figure = _export_row(manifest.parent)
        found.append((kind, str(manifest.parent), what, _size(manifest.parent), figure))
    for engine in sorted(out.rglob("*.engine")):
        kind, what, figure = _engine_row(engine)
        found.append((kind, str(engine), what, _size(engine), figure))
    for sweep in sorted(out.rglob("sweep.json")):
        kind, what, figure = _sweep_row(sweep)
        found.append((kind, str(sweep), what, _size(sweep), figure))
    for png in sorted(out.rglob("*.png")):
        found.append(("plot", str(png), "", _size(png), ""))
    return found


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "out")
    table = Table(title=f"What `make demo` produced (under {out}/)")
    for column in ("artifact", "path", "what", "size", "key figure"):
        table.add_column(column, overflow="fold")
    for row in rows(out):
        table.add_row(*row)
    # Wide enough for paths and figures when stdout is not a terminal (make's output).
    console = Console()
    Console(width=max(console.width, 140)).print(table)


if __name__ == "__main__":
    main()
