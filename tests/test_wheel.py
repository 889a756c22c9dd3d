"""The wheel as users get it: built from a copy of the source, installed into a fresh
virtual environment with pip (no requirements.txt), and run from there.

The fresh environment gets torch first, at the version running these tests (pip would
otherwise pick a multi-GB CUDA build), then the wheel, whose other dependencies pip
resolves from the package index: so a missing dependency, a file the wheel lacks
(the C sources, the digits weights) or a path that works only in a source checkout
fails here. The commands run outside the source tree, so nothing is imported from it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "ssmprune"
# Not part of a source tree handed to the build: environments, caches, build outputs.
NOT_SOURCE = (".venv", ".git", "__pycache__", "*.pyc", "*.so", "build", "dist", "*.egg-info",
              "out", ".pytest_cache", ".hypothesis")
STEP_TIMEOUT = 600  # seconds for one build, install or command


def _run(args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command; on a non-zero exit fail with its command line and output."""
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=STEP_TIMEOUT)
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}\n"
        f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel ``python -m build`` makes (sdist first, the wheel from it) of a copy of
    the source tree, so the build writes nothing into the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    _run([sys.executable, "-m", "build", "--outdir", root / "dist", source], cwd=root)
    wheels = list((root / "dist").glob("ssmprune-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _package_files() -> set[str]:
    """Every file of the source package, as wheel paths (ssmprune/...)."""
    files = set()
    for path in PACKAGE.rglob("*"):
        rel = path.relative_to(REPO)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix not in {".pyc", ".so"}:
            files.add(rel.as_posix())
    return files


def test_wheel_carries_every_package_file(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    missing = sorted(_package_files() - names)
    assert not missing, f"{wheel.name} lacks {missing}: add them to [tool.setuptools.package-data]"
    # What the code loads through its own path at run time.
    for required in ("ssmprune/ops/csrc/selective_scan.c", "ssmprune/ops/csrc/selective_scan_bwd.c",
                     "ssmprune/assets/vim_digits.safetensors",
                     "ssmprune/assets/plainmamba_digits.safetensors", "ssmprune/__main__.py"):
        assert required in names


def _fresh_env(cache: Path) -> dict:
    """This process's environment without what would point at the checkout or its venv, and
    with Python's bytecode cache on, as a user's Python has it (pip installs with
    --no-compile here: what the commands import is compiled once, when first imported)."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP",
                        "PYTHONDONTWRITEBYTECODE"}}
    env["SSMPRUNE_CACHE"] = str(cache)  # the CPU scan kernel is compiled anew from the wheel
    return env


def _summary(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow(minutes=3)
def test_installed_wheel_exports_checks_parity_and_runs(wheel, tmp_path):
    torch_version = metadata.version("torch").split("+")[0]
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    env = _fresh_env(tmp_path / "cache")
    bin_dir = venv / "bin"
    python, ssmprune = bin_dir / "python", bin_dir / "ssmprune"

    start = time.perf_counter()
    _run([sys.executable, "-m", "venv", venv], cwd=work, env=env)
    # --no-compile: no .pyc of every installed file up front (half of each install's time);
    # Python compiles what the commands import when they first import it (_fresh_env).
    pip_install = [python, "-m", "pip", "install", "--quiet", "--no-compile"]
    _run([*pip_install, f"torch=={torch_version}"], cwd=work, env=env)
    _run([*pip_install, wheel], cwd=work, env=env)
    install_seconds = time.perf_counter() - start

    where = _run([python, "-c", "import ssmprune; print(ssmprune.__file__)"], cwd=work, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    helped = _run([python, "-m", "ssmprune", "--help"], cwd=work, env=env)
    for command in ("export", "parity", "run", "calibrate", "build"):
        assert command in helped.stdout

    export_dir = work / "vim_digits"
    exported = _run([ssmprune, "export", "vim_digits", "-o", export_dir], cwd=work, env=env)
    assert _summary(exported).startswith("PASSED | Runtime:"), exported.stderr
    manifest = json.loads((export_dir / "manifest.json").read_text())
    # The shipped weights, read from the installed package.
    assert Path(manifest["weights"]["checkpoint"]).is_relative_to(venv), manifest["weights"]

    checked = _run([ssmprune, "parity", export_dir], cwd=work, env=env)
    assert _summary(checked).startswith("PASSED | Runtime:"), checked.stderr
    assert "onnxrt" in checked.stdout

    ran = _run([ssmprune, "run", "vim_digits"], cwd=work, env=env)
    assert _summary(ran).startswith("PASSED | Runtime:"), ran.stderr
    assert "embedded weights vim_digits.safetensors" in ran.stdout, ran.stdout
    # The C sources came along and compiled: the scan ran the fused CPU kernel.
    assert list((tmp_path / "cache" / "ssmprune").glob("selective_scan_*.so")), (
        f"no CPU scan kernel was built (install took {install_seconds:.0f}s)\n{ran.stderr}")
