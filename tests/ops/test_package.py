"""Importing the ops package registers both ops; the CLI module still does not import torch.

Each check runs in a fresh interpreter, where no other test has imported anything.
"""

import importlib.util
import subprocess
import sys

import pytest

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="the Triton kernels need the triton package")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


# ops.triton imports the ops package back: either import order registers both ops.
@pytest.mark.parametrize("module", ["ssmprune.ops",
                                    pytest.param("ssmprune.ops.triton", marks=needs_triton)])
def test_importing_registers_both_ops(module):
    result = _python(f"import torch, {module}\n"
                     "print(torch.ops.ssmprune.selective_scan.default, "
                     "torch.ops.ssmprune.token_gather.default)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ssmprune.selective_scan.default",
                                     "ssmprune.token_gather.default"]


def test_cli_module_does_not_import_torch():
    result = _python("import sys, ssmprune.cli, ssmprune.__main__\n"
                     "print('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
