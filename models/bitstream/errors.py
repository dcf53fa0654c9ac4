"""``BitstreamError``: what every reader of the ``.sem`` format raises for a bad file.

It lives below the coders because the label-map and caption decoders raise it as well as the
file parser (``sem_file``), and imports in this package run upwards only.
"""

from __future__ import annotations


class BitstreamError(ValueError):
    """A ``.sem`` file is invalid (truncated, corrupted, hostile or from an unknown version)."""
