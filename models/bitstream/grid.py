"""Compact mode: the label map on a reduced grid, and the normative rule that upsamples it.

``grid_shape`` fixes the grid's size from the one number a file stores (cells on the long
side); ``downsample_label_map`` is the encoder's choice of each cell's label (a majority vote,
not part of the format); ``upsample_label_map`` is the decoder's rule, part of format versions 1 and 2
(``docs/bitstream.md``, "Compact mode and its upsampling rule"): a bilinear vote of the four
nearest grid cells in exact integers.
"""

from __future__ import annotations

import numpy as np

UPSAMPLE_STRIP_PIXELS = 1 << 20  # compact-mode upsampling works on strips of about this many pixels


def grid_shape(width: int, height: int, grid: int) -> tuple[int, int]:
    """(grid width, grid height): ``grid`` cells on the long side, the short side rounded."""
    if grid < 1:
        raise ValueError(f"grid must be at least 1, got {grid}")
    long_side, short_side = max(width, height), min(width, height)
    cells_long = min(grid, long_side)
    cells_short = max(1, min(short_side, (cells_long * short_side + long_side // 2) // long_side))
    return (cells_long, cells_short) if width >= height else (cells_short, cells_long)


def _sample_positions(size: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel centre: the grid cells before and after it and the weight of the latter.

    The centre of pixel i lies at (2i + 1) * cells / (2 * size) - 1/2 in grid cells; weights are
    integers out of 2 * size.
    """
    scaled = (2 * np.arange(size, dtype=np.int64) + 1) * cells - size  # position * 2 * size
    before = np.clip(scaled // (2 * size), 0, cells - 1)
    weight = np.where(scaled < 0, 0, scaled - before * 2 * size)
    after = np.minimum(before + 1, cells - 1)
    return before, after, np.minimum(weight, 2 * size)


def upsample_label_map(grid_map: np.ndarray, width: int, height: int) -> np.ndarray:
    """Full-size label map from a grid map: a bilinear vote of the four nearest cells.

    Each of the four cells around a pixel centre votes for its label with its bilinear weight
    (exact integers); the label with the largest total wins, ties going to the earliest cell in
    the order top-left, top-right, bottom-left, bottom-right. Pixels are independent, so rows are
    computed in strips of about a million pixels: memory stays bounded whatever the size.
    """
    grid_map = np.asarray(grid_map)
    rows_before, rows_after, row_weight = _sample_positions(height, grid_map.shape[0])
    cols_before, cols_after, col_weight = _sample_positions(width, grid_map.shape[1])
    output = np.empty((height, width), dtype=grid_map.dtype)
    strip = max(1, UPSAMPLE_STRIP_PIXELS // width)
    for top in range(0, height, strip):
        rows = slice(top, min(height, top + strip))
        output[rows] = _vote(grid_map, rows_before[rows], rows_after[rows], row_weight[rows],
                             cols_before, cols_after, col_weight, height, width)
    return output


def _vote(grid_map: np.ndarray, rows_before: np.ndarray, rows_after: np.ndarray,
          row_weight: np.ndarray, cols_before: np.ndarray, cols_after: np.ndarray,
          col_weight: np.ndarray, height: int, width: int) -> np.ndarray:
    """The upsampling vote for a strip of rows (see ``upsample_label_map``)."""
    wy1, wx1 = row_weight[:, None], col_weight[None, :]
    wy0, wx0 = 2 * height - wy1, 2 * width - wx1
    labels = np.stack([grid_map[rows_before][:, cols_before], grid_map[rows_before][:, cols_after],
                       grid_map[rows_after][:, cols_before], grid_map[rows_after][:, cols_after]])
    weights = np.stack(np.broadcast_arrays(wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1))
    votes = np.zeros(labels.shape, dtype=np.int64)  # (4, h, W): total weight of each corner's label
    for corner in range(4):
        votes += (labels == labels[corner][None]) * weights[corner][None]
    best = np.argmax(votes, axis=0)  # first maximum: the tie-break order above
    return np.take_along_axis(labels, best[None], axis=0)[0]


def downsample_label_map(label_map: np.ndarray, grid_width: int, grid_height: int,
                         void_label: int | None) -> np.ndarray:
    """The most frequent label of each grid cell, ignoring ``void_label`` (the label set's void, e.g.
    VOC's 255; None: nothing) unless a cell is all void."""
    height, width = label_map.shape
    cell_rows = (np.arange(height) * grid_height) // height
    cell_cols = (np.arange(width) * grid_width) // width
    cells = (cell_rows[:, None] * grid_width + cell_cols[None, :]).ravel()
    values = label_map.ravel().astype(np.int64)
    weights = np.ones(values.shape) if void_label is None else (values != void_label) * 1.0
    counts = np.bincount(cells * 256 + values, weights=weights + 1e-6,
                         minlength=grid_width * grid_height * 256)
    return np.argmax(counts.reshape(grid_height, grid_width, 256), axis=2).astype(np.uint8)
