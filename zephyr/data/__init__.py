"""Data: load sources, mix them, convert known schemas, validate rows, decontaminate."""

from zephyr.data.pipeline import prepare_datasets

__all__ = ["prepare_datasets"]
