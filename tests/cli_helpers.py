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


def flip_a_weight_bit(path: Path) -> None:
    """Flip the lowest bit of the largest initializer's first byte in the ONNX at ``path``:
    the file still loads and computes nearly the same logits, but its sha256 changes."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    raw = max((i.raw_data for i in model.graph.initializer), key=len)
    data = bytearray(path.read_bytes())
    at = data.find(raw)
    assert at >= 0 and raw
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def tampered_copy(export_dir: Path, dest: Path, edit=None, manifest_bytes=None,
                  flip: bool = True) -> Path:
    """A copy of an export (model.onnx and manifest.json) in ``dest``, tampered with.

    flip: a weight bit of model.onnx flipped (``flip_a_weight_bit``), so the file no
        longer matches its manifest's sha256 but still runs;
    edit: a function changing the manifest's JSON object in place (drop its ``files``
        entry, edit ``format``, ...);
    manifest_bytes: these bytes written as manifest.json instead.
    """
    import json

    dest.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, MANIFEST_FILE):
        (dest / name).write_bytes((export_dir / name).read_bytes())
    if flip:
        flip_a_weight_bit(dest / MODEL_FILE)
    if edit is not None:
        data = json.loads((dest / MANIFEST_FILE).read_text())
        edit(data)
        (dest / MANIFEST_FILE).write_text(json.dumps(data))
    if manifest_bytes is not None:
        (dest / MANIFEST_FILE).write_bytes(manifest_bytes)
    return dest
