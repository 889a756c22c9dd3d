"""The C kernel's build: flags per architecture, an aarch64 cross build, the one-line fallback.

Its numerics are tested with the other implementations (test_selective_scan.py,
test_nonfinite.py).
"""

import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ssmprune.ops import cpu_kernel

CROSS_CC = "aarch64-linux-gnu-gcc"  # Debian's gcc-aarch64-linux-gnu; .ci/run installs it
EM_AARCH64 = 183  # ELF e_machine of AArch64
# What a cross build tunes for instead of -mcpu=native (which only a native compiler knows):
# the baseline ARMv8 CPU, and the Jetson AGX Orin's cores.
AARCH64_CPUS = ("generic", "cortex-a78ae")
# Options that change what the kernel computes for non-finite values (issue 12).
RESULT_CHANGING = ("-ffast-math", "-ffinite-math-only", "-fassociative-math", "-Ofast")


@pytest.mark.parametrize("machine", ["x86_64", "AMD64", "aarch64", "arm64", "riscv64"])
def test_flags_keep_nonfinite_semantics(machine):
    flags = cpu_kernel.cflags(machine)
    assert not set(flags) & set(RESULT_CHANGING)
    assert {"-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"} <= set(flags)


def test_flags_per_architecture():
    assert {"-march=native", "-mprefer-vector-width=512"} <= set(cpu_kernel.cflags("x86_64"))
    arm = cpu_kernel.cflags("aarch64")
    assert "-mcpu=native" in arm
    assert not [f for f in arm if f.startswith(("-march", "-mprefer"))]  # x86 options
    assert "-mcpu=cortex-a78ae" in cpu_kernel.cflags("aarch64", cpu="cortex-a78ae")
    assert not [f for f in cpu_kernel.cflags("riscv64") if f.startswith("-m")]


def elf_machine(path: Path) -> int:
    """e_machine of a little-endian ELF file (offset 18, two bytes)."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and header[5] == 1, "not a little-endian ELF file"
    return int.from_bytes(header[18:20], "little")


@pytest.fixture(scope="module")
def cross_compiler() -> str:
    path = shutil.which(CROSS_CC)
    if path is None:
        message = (f"{CROSS_CC} not found: apt-get install gcc-aarch64-linux-gnu "
                   "libc6-dev-arm64-cross (.ci/run does)")
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs it: a missing cross compiler is a CI bug
        pytest.skip(message)
    return path


@pytest.mark.parametrize("cpu", AARCH64_CPUS)
def test_kernel_cross_compiles_for_aarch64(cross_compiler, cpu, tmp_path):
    """The library as ``load`` builds it on a Jetson (same sources, same build call, the
    aarch64 flags with a named CPU for -mcpu=native), linked: an aarch64 shared object
    exporting both entry points."""
    target = tmp_path / "selective_scan.so"
    cpu_kernel.build(target, cross_compiler, cpu_kernel.cflags("aarch64", cpu=cpu))
    assert elf_machine(target) == EM_AARCH64
    nm = shutil.which("aarch64-linux-gnu-nm") or "nm"
    symbols = subprocess.run([nm, "-D", "--defined-only", target], check=True,
                             capture_output=True, text=True).stdout
    assert "ssmprune_selective_scan_f32" in symbols
    assert "ssmprune_selective_scan_bwd_f32" in symbols


def test_x86_flags_do_not_build_for_aarch64(cross_compiler, tmp_path):
    """The review's finding, kept as a check that the cross build above means something:
    the x86 flags stop an aarch64 GCC (where load() would fall back to the slow form)."""
    with pytest.raises(subprocess.CalledProcessError) as err:
        cpu_kernel.build(tmp_path / "x.so", cross_compiler,
                         cpu_kernel.cflags("x86_64", cpu="x86-64"))
    assert "-mprefer-vector-width" in err.value.stderr


@pytest.fixture
def fresh_load(monkeypatch, tmp_path):
    """``load`` with its process cache emptied and an empty kernel cache directory;
    emptied again afterwards, so later tests load the real kernel."""
    monkeypatch.setenv("SSMPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SSMPRUNE_DISABLE_CPU_KERNEL", raising=False)
    cpu_kernel.load.cache_clear()
    yield cpu_kernel.load
    cpu_kernel.load.cache_clear()


def failing_compiler(directory: Path) -> Path:
    """A compiler that fails as GCC does: several lines on stderr, exit status 1."""
    path = directory / "failing-cc"
    path.write_text(textwrap.dedent("""\
        #!/bin/sh
        echo "In file included from selective_scan.c:1:" >&2
        echo "cc1: error: bad value 'native' for '-mcpu='" >&2
        echo "compilation terminated." >&2
        exit 1
    """))
    path.chmod(0o755)
    return path


def fallback_records(caplog):
    return [r for r in caplog.records if r.name == cpu_kernel.__name__]


def test_failed_build_is_one_warning_line_once(fresh_load, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CC", str(failing_compiler(tmp_path)))
    with caplog.at_level(logging.WARNING, logger=cpu_kernel.__name__):
        assert fresh_load() is None
        assert fresh_load() is None
    [record] = fallback_records(caplog)
    message = record.getMessage()
    assert record.levelno == logging.WARNING and "\n" not in message
    assert "cc1: error: bad value 'native' for '-mcpu='" in message  # why
    assert "slower pure-PyTorch form" in message  # what happens instead


def test_no_compiler_is_one_warning_line(fresh_load, monkeypatch, caplog):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(cpu_kernel.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING, logger=cpu_kernel.__name__):
        assert fresh_load() is None
    [record] = fallback_records(caplog)
    assert "no C compiler" in record.getMessage() and "\n" not in record.getMessage()


def test_disabled_kernel_falls_back_silently(fresh_load, monkeypatch, caplog):
    monkeypatch.setenv("SSMPRUNE_DISABLE_CPU_KERNEL", "1")
    with caplog.at_level(logging.WARNING, logger=cpu_kernel.__name__):
        assert fresh_load() is None
    assert not fallback_records(caplog)


def test_user_sees_exactly_one_line_and_the_scan_still_runs(tmp_path):
    """What a user's process prints: a fresh interpreter whose kernel build fails runs
    the scan op twice (each call asks for the kernel) and gets one stderr line."""
    script = textwrap.dedent("""\
        import torch
        from ssmprune.ops.selective_scan import selective_scan, selective_scan_ref
        args = (torch.randn(1, 3, 5), torch.rand(1, 3, 5), -torch.rand(3, 2),
                torch.randn(1, 2, 5), torch.randn(1, 2, 5))
        for _ in range(2):
            torch.testing.assert_close(selective_scan(*args), selective_scan_ref(*args))
        print("ran")
    """)
    env = {**os.environ, "CC": str(failing_compiler(tmp_path)),
           "SSMPRUNE_CACHE": str(tmp_path / "cache")}
    env.pop("SSMPRUNE_DISABLE_CPU_KERNEL", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ran"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ssmprune: the fused CPU scan kernel is not used (")


def test_library_path_is_per_compiler_and_in_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SSMPRUNE_CACHE", str(tmp_path))
    gcc, cc = cpu_kernel.library_path("gcc"), cpu_kernel.library_path("cc")
    assert gcc != cc and gcc.parent == cc.parent == cpu_kernel.cache_dir()
    assert gcc.name.startswith("selective_scan_") and gcc.suffix == ".so"
