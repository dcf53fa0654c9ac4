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
DOWNSAMPLE_STRIP_ENTRIES = 1 << 18  # the encoder's vote takes strips of about this many pixels and label counts


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
    VOC's 255; None: nothing) unless a cell is all void; ties go to the smaller label."""
    height, width = label_map.shape
    if (grid_width, grid_height) == (width, height):
        return np.asarray(label_map, dtype=np.uint8)  # one pixel per cell: the grid is the map
    labels = distinct_labels(label_map)  # (K,) ascending
    cell_rows = (np.arange(height) * grid_height) // height
    cell_cols = (np.arange(width) * grid_width) // width
    grid_map = np.empty((grid_height, grid_width), dtype=np.uint8)
    strip = max(1, DOWNSAMPLE_STRIP_ENTRIES // (grid_width * len(labels)))  # cell rows per strip
    for top in range(0, grid_height, strip):
        bottom = min(grid_height, top + strip)
        votes = _strip_votes(label_map, labels, cell_rows, cell_cols, top, bottom)
        grid_map[top:bottom] = _majority(votes, labels, void_label)
    return grid_map


def distinct_labels(label_map: np.ndarray) -> np.ndarray:
    """The distinct labels of a uint8 map, ascending (counted in strips: no copy of the map)."""
    counts = np.zeros(256, dtype=np.int64)
    step = max(1, DOWNSAMPLE_STRIP_ENTRIES // label_map.shape[1])
    for top in range(0, label_map.shape[0], step):
        counts += np.bincount(label_map[top:top + step].ravel(), minlength=256)
    return np.flatnonzero(counts)


def _strip_votes(label_map: np.ndarray, labels: np.ndarray, cell_rows: np.ndarray,
                 cell_cols: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """(bottom - top, grid width, K) pixel counts of each label in grid rows ``top..bottom-1``."""
    grid_width, num_labels = int(cell_cols[-1]) + 1, len(labels)
    label_index = np.zeros(256, dtype=np.int64)
    label_index[labels] = np.arange(num_labels)
    votes = np.zeros((bottom - top) * grid_width * num_labels, dtype=np.int64)
    first, last = np.searchsorted(cell_rows, [top, bottom])  # the pixel rows of these cells
    step = max(1, DOWNSAMPLE_STRIP_ENTRIES // label_map.shape[1])
    for row in range(first, last, step):
        rows = slice(row, min(last, row + step))
        cells = (cell_rows[rows, None] - top) * grid_width + cell_cols[None, :]  # (r, W)
        keys = cells * num_labels + label_index[label_map[rows]]  # (r, W)
        votes += np.bincount(keys.ravel(), minlength=votes.size)
    return votes.reshape(bottom - top, grid_width, num_labels)


def _majority(votes: np.ndarray, labels: np.ndarray, void_label: int | None) -> np.ndarray:
    """The label with the most votes per cell (ties: the smaller label); void only in all-void cells."""
    is_void = labels == void_label  # all False when the set has no void
    votes[..., is_void] = 0
    grid_map = labels[np.argmax(votes, axis=2)].astype(np.uint8)  # (rows, grid width)
    if is_void.any():
        grid_map[votes.max(axis=2) == 0] = void_label
    return grid_map
