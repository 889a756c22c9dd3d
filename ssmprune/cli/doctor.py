"""Click command over ``ssmprune.doctor``: ``doctor``.

``ssmprune.cli`` adds it with ``register(main)``. The probes (torch, TensorRT, ...) are
imported inside the command, so ``--help`` stays instant.
"""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (keys: README, "
              "'ssmprune doctor').")
def doctor(as_json):
    """What this machine can run: each component's version, whether it is usable, and what
    to install for each missing piece.

    A report: it exits 0 whatever is missing. It compiles nothing and builds no
    engine, so it is quick on a machine without a GPU.
    """
    from ssmprune.doctor import diagnose

    report = diagnose()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    import shutil

    from rich.console import Console
    from rich.table import Table

    table = Table(title="ssmprune doctor", title_justify="left")
    for column in ("component", "version", "usable", "detail"):
        table.add_column(column, overflow="fold")
    for r in report.rows:
        usable = "[green]yes[/green]" if r.usable else "[red]no[/red]"
        table.add_row(r.component, r.version or "-", usable, r.detail)
    # Not a terminal (a log, a pipe): 120 columns rather than rich's 80.
    Console(highlight=False, width=shutil.get_terminal_size((120, 24)).columns).print(table)
    fixes = [r for r in report.rows if r.fix]
    if fixes:
        click.echo("to install or change:")
        for r in fixes:
            click.echo(f"  {r.component}: {r.fix}")
    click.echo(f"missing here: {', '.join(report.missing) or 'nothing'} "
               f"({report.seconds:.1f}s)")

def register(main: click.Group) -> None:
    """Add the doctor command to the ``ssmprune`` group."""
    main.add_command(doctor)
