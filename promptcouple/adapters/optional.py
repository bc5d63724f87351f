"""Families whose adapters need an optional library; each registers only its adapter class,
importing the library lazily inside ``claims``."""

from __future__ import annotations


def register_all(register) -> None:
    """Register the adapters of optional families (Hugging Face, open_clip custom towers, ...)."""
    # Filled in as families are added; each module must import without its library installed.
    return None
