"""zephyr: the Zephyr alignment recipe (dSFT -> AIF -> dDPO) end to end, from one YAML recipe."""

__version__ = "0.1.0"
