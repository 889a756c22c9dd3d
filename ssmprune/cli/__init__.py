"""The ``ssmprune`` command line: a package of thin click commands over the library.

One module per command family (``models``: info, visualize; ``run``; ``export``;
``parity``; ``calibrate``; ``engine``: build; ``doctor``; ``measure``: bench,
eval, sweep; ``ship``: bundle, triton-repo); options several of them share are
in ``options``; nothing below the CLI imports it. Heavy imports (torch and everything that pulls it in) happen inside
the commands so ``--help`` is instant. A user error (``SsmpruneError``) is
printed as one line with exit status 2; every run ends with a one-line summary
on stderr: ``PASSED | Runtime: 1.2s | Command: ...``.
"""

from __future__ import annotations

import click

from ssmprune.cli import calibrate, doctor, engine, export, measure, models, parity, run, ship
from ssmprune.cli.group import USER_ERROR_EXIT, SummaryGroup

__all__ = ["main", "SummaryGroup", "USER_ERROR_EXIT"]


@click.group(cls=SummaryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ssmprune")
def main() -> None:
    """Deploy token-pruned vision state space models (Vim, PlainMamba)."""


for _family in (models, run, export, parity, calibrate, engine, doctor, measure, ship):
    _family.register(main)
