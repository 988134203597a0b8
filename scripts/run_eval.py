"""Entry point for `python scripts/run_eval.py RECIPE.yaml [overrides]`."""

import sys

from zephyr.cli import run_stage
from zephyr.stages.eval import main

if __name__ == "__main__":
    sys.exit(run_stage(main, sys.argv[1:]))
