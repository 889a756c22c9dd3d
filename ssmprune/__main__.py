"""``python -m ssmprune``: the same command line as ``ssmprune``."""

from ssmprune.cli import main

if __name__ == "__main__":
    main()
