"""Rate control: the finest ``.sem`` file of a semantic code within a byte budget.

The budget counts the whole file: header, label list, seed, caption, map and CRC. A code is
stored losslessly when that fits; otherwise in compact mode on the grid ``G`` that
``models.rate.last_fitting`` finds by bisection over ``1..max(width, height)``, with the promise
the baselines' quality search keeps (``models/baselines/codecs.py``): **the file at ``G`` fits
and the file at ``G + 1`` does not.** File size is not monotone in the grid (the coder adapts,
and a coarser grid can leave a label out of the list), so where sizes do grow with the grid ``G``
is the finest grid that fits, and elsewhere it is a local one, still with the promise.

The search needs no low-end scan: grid 1 (one cell, one label, no map bytes) is the smallest
compact file of a code, so if no grid fits, grid 1 does not either; and the top of the scale,
``G = max(width, height)``, codes the very map of lossless mode with one more header field, so
it never fits when lossless mode does not and is not coded. A code that does not fit even at
grid 1 (a long caption in a small budget) is kept at its smallest file, grid 1 (lossless for a
one-label map, whose lossless file is a byte shorter), and ``Fitted.fits`` is False.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from models.bitstream.sem_file import encode_code
from models.imageio import atomic_write_bytes
from models.jobcontrol import ExitStatus
from models.rate import bits_per_pixel, last_fitting
from models.semantic_code import SemanticCode

# Exit status of the command lines when every file was written but some exceed their budget
# (1 stays "something failed").
OVER_BUDGET_STATUS = ExitStatus.OVER_BUDGET


@dataclass(frozen=True)
class Fitted:
    """The file rate control chose for one code and one budget."""

    data: bytes  # the whole .sem file
    grid: int | None  # cells on the long side (compact mode); None: lossless
    max_bytes: int  # the budget
    width: int
    height: int

    @property
    def num_bytes(self) -> int:
        return len(self.data)

    @property
    def fits(self) -> bool:
        return self.num_bytes <= self.max_bytes

    @property
    def overshoot(self) -> int:
        """Bytes over the budget (0 when it fits)."""
        return max(0, self.num_bytes - self.max_bytes)

    @property
    def bits_per_pixel(self) -> float:
        return bits_per_pixel(self.num_bytes, self.width, self.height)

    @property
    def mode(self) -> str:
        """"lossless" or "grid G"."""
        return "lossless" if self.grid is None else f"grid {self.grid}"

    def describe(self) -> str:
        """One line: the size, the mode and, over budget, by how much."""
        text = f"{self.num_bytes} bytes ({self.mode}), {self.bits_per_pixel:.5f} bits per pixel"
        if not self.fits:
            text += (f"; over the {self.max_bytes}-byte budget by {self.overshoot} bytes even at the coarsest "
                     f"grid (the caption and header alone need more), kept at {self.mode}")
        return text


class RateSearch:
    """The files of one code at any grid, each coded once, and the finest one within a budget."""

    def __init__(self, code: SemanticCode) -> None:
        self.code = code
        self.top = max(code.width, code.height)  # the finest grid: lossless mode's map
        self._files: dict[int | None, bytes] = {}

    def file(self, grid: int | None) -> bytes:
        """The ``.sem`` file at ``grid`` (None: lossless), as ``encode_code`` writes it."""
        if grid not in self._files:
            self._files[grid] = encode_code(self.code, grid=grid)
        return self._files[grid]

    def size(self, grid: int | None) -> int:
        return len(self.file(grid))

    def fit(self, max_bytes: int) -> Fitted:
        """Lossless when it fits in ``max_bytes``; else the grid ``G`` whose file fits while
        ``G + 1``'s does not; else the smallest file (grid 1, or lossless for a one-label map)."""
        if isinstance(max_bytes, bool) or int(max_bytes) != max_bytes or max_bytes < 1:
            raise ValueError(f"a byte budget must be a whole number of at least 1, got {max_bytes}")
        if self.size(None) <= max_bytes:
            return self._fitted(None, max_bytes)
        grid = last_fitting(lambda g: g < self.top and self.size(g) <= max_bytes, 1, self.top, scan=0)
        if grid is None:  # nothing fits: the smallest file
            grid = None if self.size(None) < self.size(1) else 1
        return self._fitted(grid, max_bytes)

    def _fitted(self, grid: int | None, max_bytes: int) -> Fitted:
        return Fitted(self.file(grid), grid, int(max_bytes), self.code.width, self.code.height)


def encode_within(code: SemanticCode, max_bytes: int) -> Fitted:
    """The finest ``.sem`` file of ``code`` within ``max_bytes`` (see the module docstring)."""
    return RateSearch(code).fit(max_bytes)


def write_sem_within(path: str | os.PathLike, code: SemanticCode, max_bytes: int) -> Fitted:
    """Write the finest ``.sem`` file of ``code`` within ``max_bytes`` to ``path`` (atomically),
    also when even the coarsest grid is over budget (check ``Fitted.fits``)."""
    fitted = encode_within(code, max_bytes)
    atomic_write_bytes(path, fitted.data)
    return fitted
