"""The one exception type of the checkpoint loaders; its messages are single lines meant for users."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A weights file that cannot be read or does not fit the chosen config (one-line message)."""
