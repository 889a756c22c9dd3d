"""The ``ssmprune`` click group: user errors as one line, a summary line per run."""

from __future__ import annotations

import shlex
import time

import click

from ssmprune.errors import SsmpruneError

USER_ERROR_EXIT = 2


class SummaryGroup(click.Group):
    """Runs a command, turns user errors into one line, ends with a summary."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["ssmprune.argv"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        start = time.perf_counter()
        argv = ctx.meta.get("ssmprune.argv", [])
        command = " ".join(["ssmprune", *(shlex.quote(a) for a in argv)])
        status = "FAILED"
        try:
            result = super().invoke(ctx)
            status = "PASSED"
            return result
        except click.exceptions.Exit as done:
            # --help and --version end through Exit(0): nothing ran, no summary.
            status = "PASSED" if done.exit_code else None
            raise
        except SsmpruneError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(USER_ERROR_EXIT)
        finally:
            if ctx.invoked_subcommand is not None and status is not None:
                click.echo(f"{status} | Runtime: {time.perf_counter() - start:.1f}s | "
                           f"Command: {command}", err=True)
