"""Entry point for `python scripts/run_aif.py RECIPE.yaml [overrides] [--shard i/n] [--rebinarize]`."""

import sys

from zephyr.cli import run_stage
from zephyr.stages.aif import main

if __name__ == "__main__":
    sys.exit(run_stage(main, sys.argv[1:]))
