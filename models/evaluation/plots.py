"""Rate-distortion curves and side-by-side image grids (matplotlib, written as PNG)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from models.imageio import atomic_path  # noqa: E402

METRIC_LABELS = {
    "psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "ms_ssim": "MS-SSIM ↑", "lpips": "LPIPS ↓",
    "dists": "DISTS ↓", "clip_score": "CLIP score ↑", "sem_miou": "semantic mIoU ↑",
    "sem_pixel_accuracy": "semantic pixel accuracy ↑", "fid": "FID ↓", "kid": "KID ↓",
    "fid_patch": "FID on patches ↓", "kid_patch": "KID on patches ↓",
    "sem_miou_dataset": "semantic mIoU (set) ↑", "clip_s": "CLIP-S ↑",
}

REFERENCE_MARKERS = ("s", "^", "D", "v", "P", "X", "*")  # published points, one per method

# One operating point: (bits per pixel, {metric: value}).
Point = tuple[float, dict[str, float | None]]


def plot_rate_distortion(curves: dict[str, list[Point]], metric: str, path: str | Path | None = None,
                         axis=None, references: dict[str, list[Point]] | None = None) -> None:
    """``metric`` against bpp, one line per method (points sorted by rate), and the published
    ``references`` as unconnected markers; the rate axis is logarithmic when it spans more than
    a factor of 20."""
    own_figure = axis is None
    if own_figure:
        figure, axis = plt.subplots(figsize=(5, 3.6), dpi=100)
    rates_drawn = []
    for method, points in curves.items():
        usable = _usable(points, metric)
        if usable:
            rates, values = zip(*usable)
            axis.plot(rates, values, marker="o", markersize=4, label=method)
            rates_drawn += rates
    for index, (method, points) in enumerate((references or {}).items()):
        usable = _usable(points, metric)
        if usable:
            rates, values = zip(*usable)
            axis.plot(rates, values, linestyle="none", marker=REFERENCE_MARKERS[index % len(REFERENCE_MARKERS)],
                      markersize=6, markerfacecolor="none", color="0.35", label=f"{method} (published)")
            rates_drawn += rates
    if rates_drawn and max(rates_drawn) > 20 * min(rates_drawn):
        axis.set_xscale("log")
    axis.set_xlabel("bits per pixel")
    axis.set_ylabel(METRIC_LABELS.get(metric, metric))
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7 if references else 8)
    if own_figure:
        figure.tight_layout()
        _save(figure, path)


def _usable(points: list[Point], metric: str) -> list[tuple[float, float]]:
    return sorted((bpp, values[metric]) for bpp, values in points
                  if values.get(metric) is not None and math.isfinite(bpp) and bpp > 0)


def plot_rate_distortion_panels(curves: dict[str, list[Point]], metrics: list[str], path: str | Path,
                                references: dict[str, list[Point]] | None = None) -> None:
    """One panel per metric in a single figure."""
    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), dpi=100, squeeze=False)
    for axis, metric in zip(axes.flat, metrics):
        plot_rate_distortion(curves, metric, axis=axis, references=references)
    for axis in list(axes.flat)[len(metrics):]:
        axis.set_visible(False)
    figure.tight_layout()
    _save(figure, path)


def plot_image_grid(rows: list[list[np.ndarray]], column_titles: list[str], row_titles: list[str],
                    path: str | Path, cell_height: int = 160) -> None:
    """A grid of images: one row per image, one column per source (ground truth first)."""
    widths = [image.shape[1] * cell_height / image.shape[0] for row in rows for image in row]
    cell_width = max(widths) if widths else cell_height
    figure_size = (len(column_titles) * cell_width / 100, len(rows) * cell_height / 100 + 0.4)
    figure, axes = plt.subplots(len(rows), len(column_titles), squeeze=False, dpi=100, figsize=figure_size)
    for row_index, row in enumerate(rows):
        for column_index, image in enumerate(row):
            axis = axes[row_index][column_index]
            axis.imshow(image)
            axis.set_xticks([])
            axis.set_yticks([])
            if row_index == 0:
                axis.set_title(column_titles[column_index], fontsize=8)
            if column_index == 0:
                axis.set_ylabel(row_titles[row_index], fontsize=7)
    figure.tight_layout(pad=0.3)
    _save(figure, path)


def _save(figure, path: str | Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
