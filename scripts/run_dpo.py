"""Entry point for `accelerate launch scripts/run_dpo.py RECIPE.yaml [overrides]`."""

import sys

from zephyr.cli import run_stage
from zephyr.stages.dpo import main

if __name__ == "__main__":
    sys.exit(run_stage(main, sys.argv[1:]))
