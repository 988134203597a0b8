"""zephyr: the Zephyr alignment recipe (dSFT -> AIF -> dDPO) end to end, from one YAML recipe."""

import logging

__version__ = "0.1.0"

# bitsandbytes warns at import (which peft triggers on every command) that an optional CPU 4-bit kernel is
# missing, although the fallback it then uses works: noise to every user, most of whom use no 4-bit at all.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
