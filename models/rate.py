"""Rate: the one definition of bits per pixel that every report uses."""

from __future__ import annotations


def bits_per_pixel(num_bytes: int, width: int, height: int) -> float:
    """File size in bits divided by the original image's pixel count."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return num_bytes * 8 / (width * height)
