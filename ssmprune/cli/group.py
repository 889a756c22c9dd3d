"""The ``ssmprune`` click group: user errors as one line, a summary line per run."""

from __future__ import annotations

import shlex
import signal
import time

import click

from ssmprune import interrupt
from ssmprune.errors import SsmpruneError

USER_ERROR_EXIT = 2


def _tell(text: str) -> None:
    """``text`` on stderr, unless stderr is gone (a closed pipe: ``... 2>&1 | tee log``, the
    tee killed by the same Ctrl-C): an exit status is all that is left to give then, and
    a BrokenPipeError must not turn an interruption's 130 / 143, or a user error's 2, into 1."""
    try:
        click.echo(text, err=True)
    except OSError:
        pass


class SummaryGroup(click.Group):
    """Runs a command, turns user errors into one line, ends with a summary.

    SIGINT and SIGTERM (``ssmprune.interrupt``) end a command as
    ``error: interrupted (SIGINT)`` with the shell's status for that signal:
    130 for SIGINT, 143 for SIGTERM (128 + its number), so a supervisor tells
    a stop it asked for from a failure, and nothing the command was writing
    is left behind.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["ssmprune.argv"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        start = time.perf_counter()
        argv = ctx.meta.get("ssmprune.argv", [])
        command = " ".join(["ssmprune", *(shlex.quote(a) for a in argv)])
        status = "FAILED"

        def summary(status: str) -> None:
            _tell(f"{status} | Runtime: {time.perf_counter() - start:.1f}s | "
                  f"Command: {command}")

        def forced_exit(err: interrupt.Interrupted) -> None:
            _tell(f"error: interrupted ({err.name})")
            summary("FAILED")

        try:
            with interrupt.handled(on_forced_exit=forced_exit):
                result = super().invoke(ctx)
            status = "PASSED"
            return result
        except click.exceptions.Exit as done:
            # --help and --version end through Exit(0): nothing ran, no summary.
            status = "PASSED" if done.exit_code else None
            raise
        except SsmpruneError as err:
            _tell(f"error: {err}")
            ctx.exit(USER_ERROR_EXIT)
        except KeyboardInterrupt as err:
            # A plain KeyboardInterrupt: a SIGINT before our handler was installed.
            err = err if isinstance(err, interrupt.Interrupted) else interrupt.Interrupted(signal.SIGINT)
            _tell(f"error: interrupted ({err.name})")
            ctx.exit(err.exit_code)
        finally:
            if ctx.invoked_subcommand is not None and status is not None:
                summary(status)
