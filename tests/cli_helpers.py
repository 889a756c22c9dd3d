"""Running the CLI in-process and checking its one-line errors (shared by the CLI tests)."""

from pathlib import Path

from click.testing import CliRunner

from ssmprune.cli import main
from ssmprune.exporter.manifest import MANIFEST_FILE, MODEL_FILE


def invoke(*args):
    """Run ``ssmprune ARGS``; returns (result, stdout, stderr)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result, result.stdout, result.stderr


def assert_one_line_error(result, stderr, *fragments):
    """Exit 2, no traceback, exactly one ``error:`` line holding every fragment."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert stderr.splitlines()[-1].startswith("FAILED | Runtime:")


def tampered_copy(export_dir: Path, dest: Path) -> Path:
    """A copy of an export whose model.onnx no longer matches its manifest's sha256."""
    for name in (MODEL_FILE, MANIFEST_FILE):
        (dest / name).write_bytes((export_dir / name).read_bytes())
    with open(dest / MODEL_FILE, "ab") as f:
        f.write(b"\0")
    return dest
