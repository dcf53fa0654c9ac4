"""What ``evaluate.py`` shows: the metrics table, one line per problem, rate-distortion plots and a grid."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from models.config import Config
from models.evaluation.job import MethodSpec, RunResult, grid_rows, rate_distortion_curves
from models.evaluation.plots import plot_image_grid, plot_rate_distortion, plot_rate_distortion_panels

TABLE_METRICS = ("bpp", "psnr", "ssim", "ms_ssim", "lpips", "dists", "clip_score", "sem_miou",
                 "sem_pixel_accuracy", "fid", "kid", "fid_patch", "kid_patch")


def format_table(header: list[str], rows: list[list]) -> str:
    """A plain-text table with aligned columns."""
    cells = [header] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def print_report(folders: list[str], results: list[RunResult], unavailable: dict[str, str]) -> None:
    """The metrics table, then what was unavailable, missing or unreadable."""
    shown = [m for m in TABLE_METRICS if any(r.metrics.get(m) is not None for r in results)]
    if len(results) == 1:
        print(format_table(["metric", "value"], [[m, results[0].metrics[m]] for m in shown]))
    else:
        print(format_table(["run"] + shown, [[f] + [r.metrics.get(m) for m in shown]
                                             for f, r in zip(folders, results)]))
    for name, reason in unavailable.items():
        print(f"unavailable: {name}: {reason}")
    for folder, result in zip(folders, results):
        prefix = f"{folder}: " if len(results) > 1 else ""
        for name, note in result.notes.items():
            print(f"note: {prefix}{name}: {note}")
        for path, reason in result.errors.items():
            print(f"error: {prefix}{path}: {reason}", file=sys.stderr)
        for relpath in result.missing_predictions:
            print(f"missing prediction: {prefix}{relpath}", file=sys.stderr)
        for relpath in result.unmatched_predictions:
            print(f"no ground truth: {prefix}{relpath}", file=sys.stderr)
        for where, names in result.ambiguous.items():
            print(f"ambiguous: {prefix}{where}: {', '.join(names)} share a name", file=sys.stderr)
        print(f"{prefix}evaluated {len(result.rows)} pairs, {len(result.errors)} unreadable, "
              f"{len(result.missing_predictions)} without prediction, "
              f"{len(result.unmatched_predictions)} without ground truth")


def draw_comparison(output_dir: Path, ground_truth_dir: Path, runs: list[tuple[MethodSpec, RunResult]],
                    config: Config, grid_images: int) -> None:
    """Rate-distortion plots (one PNG per metric and one with every panel) and an image grid."""
    curves = rate_distortion_curves(runs)
    metrics = [m for m in TABLE_METRICS if m != "bpp"
               and any(values.get(m) is not None for points in curves.values() for _, values in points)]
    if curves and metrics:
        plot_rate_distortion_panels(curves, metrics, output_dir / "rate_distortion.png")
        for metric in metrics:
            plot_rate_distortion(curves, metric, output_dir / f"rd_{metric}.png")
    else:
        print("no rate-distortion plot: no method has a bitstream folder (NAME=PRED_DIR,BITSTREAM_DIR)")
    rows, relpaths = grid_rows(ground_truth_dir, runs, config, grid_images)
    if rows:
        titles = ["ground truth"] + [_run_title(method, result) for method, result in runs]
        plot_image_grid(rows, titles, relpaths, output_dir / "comparison_grid.png")


def _run_title(method: MethodSpec, result: RunResult) -> str:
    bpp = result.means.get("bpp")
    return method.name if bpp is None or not math.isfinite(bpp) else f"{method.name}\n{bpp:.3f} bpp"
