"""The user-input error every recipe module raises. Kept apart (no imports) so that any module can raise it
without importing zephyr.recipe, which would make an import cycle (recipe -> compat -> recipe)."""

from __future__ import annotations


class RecipeError(ValueError):
    """A recipe or override that cannot be used; the message names the file/key and what was expected."""
