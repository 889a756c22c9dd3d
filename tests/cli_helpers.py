"""Running the CLI in-process and checking its one-line errors (shared by the CLI tests)."""

from click.testing import CliRunner

from ssmprune.cli import main


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
