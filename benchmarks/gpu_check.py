"""One prepared GPU check: what only a GPU can show, in one run of at most 8 minutes.

    PYTHONPATH=. python3 benchmarks/gpu_check.py -o out/gpu-check [--items a,b] [--quick]
    make gpu-check [OUT=dir] [PYTHON_RUN=python3]

Items (``gpu_check_items.py``):
    kernels    the Triton scan and gather against the reference ops on CUDA, fp32/fp16/bf16,
               Vim-S and PlainMamba-L1 shapes (dense, pruned, gap int64/int32, optional inputs)
    bandwidth  the scan's achieved bandwidth at Vim-S sizes, batch 64, as a fraction of a
               device-to-device copy measured in the same run
    forward    torch forward on CUDA, dense vim_s against pruned (vim_s_paper): latency, ratio
    tensorrt   per plugin form (v3, aot; one process each): a small pruned export built with
               plugins, parity against torch, latency

Writes DIR/gpu-check.json, DIR/gpu-check.md (Markdown tables) and DIR/gpu-check.log (each
item's output), rewritten after every item. Each item runs in its own process with a time
limit, so an exception, a crash or a hang is that item's "failed: <reason>" and the others
still run. Without a GPU every item is "skipped: <reason>" and the exit status is 0; it is 1
only when an item failed.

Made for a lent machine that is not ours: its own python3 (other torch and Triton versions
than requirements.txt pins, maybe no polygraphy or TensorRT) and no ssmprune install. So
only the standard library is imported here, the repository goes on sys.path, and each item
imports what it needs; the versions it ran with are recorded (``ssmprune doctor``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import gpu_check_items  # noqa: E402  (stdlib only at import)

#: All items together stay inside this, so the run ends within 8 minutes with start-up.
BUDGET_S = 440
#: Each item's own limit in seconds (full run, --quick).
TIMEOUTS = {"kernels": (180, 120), "bandwidth": (90, 60), "forward": (150, 90),
            "tensorrt": (300, 240)}
#: What each item needs before a process is started for it.
NEEDS = {"kernels": ("cuda", "triton"), "bandwidth": ("cuda", "triton"), "forward": ("cuda",),
         "tensorrt": ("cuda", "tensorrt")}
MIN_ITEM_S = 20


def environment() -> dict[str, Any]:
    """The versions this run used (python, torch, triton, GPU, driver, TensorRT), from
    ``ssmprune doctor``; with its full report under ``doctor``."""
    import platform

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        from ssmprune.doctor import diagnose

        report = diagnose().to_dict()
    except Exception as err:  # noqa: BLE001 - the check still runs; the record says why
        env["doctor_error"] = f"{type(err).__name__}: {err}"
        return env
    c = report["components"]
    env.update(
        torch=c["torch"]["version"], torch_cuda=c["torch"]["facts"].get("cuda_build"),
        cuda_available=bool(c["torch"]["facts"].get("cuda_available")),
        triton=c["triton"]["version"], gpu=c["gpu"]["facts"].get("name"),
        gpu_arch=c["gpu"]["facts"].get("arch"), driver_cuda=c["nvidia_driver"]["facts"].get("cuda"),
        driver_max_ptx=c["nvidia_driver"]["facts"].get("max_ptx"),
        tensorrt=c["tensorrt"]["version"], doctor=report)
    return env


def skip_reason(needs: tuple[str, ...], env: dict[str, Any]) -> Optional[str]:
    """Why an item that ``needs`` these cannot run here, or None."""
    import importlib.util

    for need in needs:
        if need == "cuda" and not env.get("cuda_available"):
            torch = env.get("torch")
            if not torch:
                return "torch is not importable"
            if not env.get("torch_cuda"):
                return f"no CUDA GPU: torch {torch} is a CPU build"
            return f"no CUDA GPU: torch {torch} sees none"
        if need == "triton" and not env.get("triton"):
            return "Triton is not installed"
        if need == "tensorrt" and importlib.util.find_spec("tensorrt") is None:
            return ("full TensorRT (module tensorrt) is not installed; TensorRT-RTX cannot "
                    "build plugin layers")
    return None


def run_child(name: str, quick: bool, work_dir: Path, result: Path) -> None:
    """Inside the item's process: run it, write its record to ``result``."""
    try:
        outcome = gpu_check_items.ITEMS[name](quick, work_dir)
        record = {"status": "passed" if outcome.passed else "failed", "summary": outcome.summary,
                  "rows": outcome.rows}
        if not outcome.passed:
            record["reason"] = outcome.summary
    except gpu_check_items.Skipped as why:
        record = {"status": "skipped", "reason": str(why)}
    except Exception as err:  # noqa: BLE001 - recorded: the item failed, the run goes on
        record = {"status": "failed", "reason": gpu_check_items.one_line(err),
                  "traceback": traceback.format_exc()}
    result.write_text(json.dumps(record, default=str))


def run_item(name: str, quick: bool, out_dir: Path, timeout: float, log) -> dict[str, Any]:
    """Run one item in its own process, at most ``timeout`` seconds; its record."""
    with tempfile.TemporaryDirectory(prefix=f"gpu-check-{name}-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--result",
               str(result), "--work", tmp] + (["--quick"] if quick else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
        env.pop("TRITON_INTERPRET", None)  # the compiled kernels are what is checked
        log.write(f"\n===== {name}: {' '.join(cmd)}\n")
        log.flush()
        # A session of its own, so a timeout ends the item's processes and theirs (the
        # tensorrt item starts one per plugin form), and nothing else.
        child = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        try:
            status = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return {"status": "failed", "reason": f"timed out after {timeout:.0f}s"}
        if result.exists():
            return json.loads(result.read_text())
        return {"status": "failed", "reason": f"its process ended with status {status} and "
                "no record (a crash: see gpu-check.log)"}


def markdown_table(rows: list[dict[str, Any]], columns: Optional[list[str]] = None) -> str:
    """Rows of dicts as a Markdown table; columns default to every key, in first-seen order.
    A missing value is blank; ``|`` in a cell is escaped."""
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))

    def cell(value: Any) -> str:
        if isinstance(value, bool):
            value = "yes" if value else "NO"
        return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def status_text(item: dict[str, Any]) -> str:
    """``passed: summary`` / ``failed: reason`` / ``skipped: reason``."""
    return f"{item['status']}: {item.get('reason') or item.get('summary', '')}"


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    env = report["environment"]
    md = [f"# GPU check\n\n{report['started']}, {report['seconds']:.0f}s, "
          f"{'quick' if report['quick'] else 'full'} run: "
          f"{'PASSED' if report['passed'] else 'FAILED'}\n",
          "## Environment\n",
          markdown_table([{"python": env.get("python"), "torch": env.get("torch"),
                           "torch CUDA": env.get("torch_cuda"), "triton": env.get("triton"),
                           "GPU": env.get("gpu") or "none", "arch": env.get("gpu_arch"),
                           "driver CUDA": env.get("driver_cuda"),
                           "driver max PTX": env.get("driver_max_ptx"),
                           "TensorRT": env.get("tensorrt")}]),
          "## Items\n",
          markdown_table([{"item": i["name"], "status": i["status"],
                           "result": i.get("reason") or i.get("summary", ""),
                           "seconds": f"{i.get('seconds', 0):.1f}"} for i in report["items"]])]
    for item in report["items"]:
        if item.get("rows"):
            md += [f"## {item['name']}\n", markdown_table(item["rows"])]
    (out_dir / "gpu-check.md").write_text("\n".join(md))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=Path("out/gpu-check"),
                        help="directory for gpu-check.json, .md and .log (default: %(default)s)")
    parser.add_argument("--items", default=",".join(gpu_check_items.ITEMS),
                        help="comma-separated items to run (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    # Internal: one item's process, and one plugin form's process of the tensorrt item.
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine-form", help=argparse.SUPPRESS)
    parser.add_argument("--export", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine_form:
        found = gpu_check_items.engine_form(args.engine_form, args.export)
        args.result.write_text(json.dumps(found))
        return 0
    if args.child:
        run_child(args.child, args.quick, args.work, args.result)
        return 0
    names = [n.strip() for n in args.items.split(",") if n.strip()]
    unknown = [n for n in names if n not in gpu_check_items.ITEMS]
    if unknown or not names:
        parser.error(f"unknown item(s) {', '.join(unknown) or '(none given)'}: "
                     f"choose from {', '.join(gpu_check_items.ITEMS)}")
    return run(names, args.quick, args.output)


def run(names: list[str], quick: bool, out_dir: Path) -> int:
    """Run the items ``names``, writing the report after each; 1 if one failed, else 0."""
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "started": datetime.datetime.now().isoformat(timespec="seconds"), "seconds": 0.0,
        "quick": quick, "command": [sys.executable, *sys.argv], "passed": True,
        "environment": environment(), "items": []}
    with open(out_dir / "gpu-check.log", "w") as log:
        for name in names:
            item_start = time.perf_counter()
            left = BUDGET_S - (item_start - start)
            reason = skip_reason(NEEDS[name], report["environment"])
            if reason is None and left < MIN_ITEM_S:
                reason = f"no time left in the {BUDGET_S}s budget"
            if reason is not None:
                item = {"status": "skipped", "reason": reason}
            else:
                limit = min(TIMEOUTS[name][quick], left)
                item = run_item(name, quick, out_dir, limit, log)
            item = {"name": name, **item, "seconds": round(time.perf_counter() - item_start, 1)}
            report["items"].append(item)
            report["passed"] = all(i["status"] != "failed" for i in report["items"])
            report["seconds"] = round(time.perf_counter() - start, 1)
            write_report(report, out_dir)
            print(f"{name:<10} {status_text(item)} ({item['seconds']:.1f}s)", flush=True)
    print(f"{'PASSED' if report['passed'] else 'FAILED'} | Runtime: {report['seconds']:.1f}s | "
          f"wrote {out_dir / 'gpu-check.json'} and {out_dir / 'gpu-check.md'}", flush=True)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
