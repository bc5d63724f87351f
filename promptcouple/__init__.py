"""promptcouple: coupled hard+soft prompts and generic attribute anchors for CLIP-style video models."""

__version__ = "0.1.0"
