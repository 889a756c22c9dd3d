"""``python -m ssmprune.cli``."""

from ssmprune.cli import main

main()
