"""`python -m revati.predictors ...`: the predictors CLI (see cli.py)."""

import sys

from revati.predictors.cli import main

raise SystemExit(main(sys.argv[1:]))
