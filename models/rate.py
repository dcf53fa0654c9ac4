"""Rate: the one definition of bits per pixel that every report uses, and the one definition of
a byte budget and of the search for the finest setting that fits it (the baselines' quality,
the ``.sem`` file's grid)."""

from __future__ import annotations

import math
from typing import Callable

# Settings above the lowest tried before a search gives up (see ``first_fitting``). On the 14 VOC
# photos at every 4th scale, a codec quality smaller than all lower ones came at most 3 steps above
# the lowest (AVIF's 3; JPEG's 2 or 3; JPEG XL's 1 or 2) except two 1-byte dips of JPEG XL on
# images about 15 pixels high.
LOW_END_SCAN = 3


def bits_per_pixel(num_bytes: int, width: int, height: int) -> float:
    """File size in bits divided by the original image's pixel count."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return num_bytes * 8 / (width * height)


def budget_bytes(width: int, height: int, target_bytes: int | None = None,
                 target_bpp: float | None = None) -> int | None:
    """The byte budget of one image: ``target_bytes``, or ``target_bpp`` bits per pixel of a
    ``width`` x ``height`` image rounded down to whole bytes; None when neither is given."""
    if target_bytes is not None and target_bpp is not None:
        raise ValueError("give a budget in bytes or in bits per pixel, not both")
    if target_bytes is not None:
        if isinstance(target_bytes, bool) or int(target_bytes) != target_bytes or target_bytes < 1:
            raise ValueError(f"a byte budget must be a whole number of at least 1, got {target_bytes}")
        return int(target_bytes)
    if target_bpp is None:
        return None
    if not (isinstance(target_bpp, (int, float)) and math.isfinite(target_bpp) and target_bpp > 0):
        raise ValueError(f"a budget in bits per pixel must be a positive number, got {target_bpp}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    return math.floor(target_bpp * width * height / 8 + 1e-9)  # 1e-9: 0.1 * 80 / 8 is 0.99999...


def first_fitting(fits: Callable[[int], bool], low: int, high: int, scan: int = LOW_END_SCAN) -> int | None:
    """The first ``x`` in ``low..min(low + scan, high)`` with ``fits(x)``; None if none does."""
    return next((x for x in range(low, min(low + scan, high) + 1) if fits(x)), None)


def last_fitting(fits: Callable[[int], bool], low: int, high: int, scan: int = LOW_END_SCAN) -> int | None:
    """An ``x`` in ``low..high`` with ``fits(x)`` and not ``fits(x + 1)`` (or ``x == high``), by bisection.

    The bisection starts from ``first_fitting(fits, low, high, scan)`` and keeps "``low`` fits,
    ``high`` does not" as its invariant, so its answer keeps that promise whatever ``fits`` does;
    where ``fits`` is true up to some ``x`` and false above, the answer is that ``x``. None when
    none of the lowest ``scan + 1`` fits.
    """
    start = first_fitting(fits, low, high, scan)
    if start is None:
        return None
    if fits(high):
        return high
    low = start
    while high - low > 1:  # invariant: low fits, high does not
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low
