"""What ``evaluate.py`` shows: the metrics table, one line per problem, rate-distortion plots and a grid."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from models.config import Config
from models.evaluation.job import MethodSpec, RunResult, grid_rows, rate_distortion_curves
from models.evaluation.plots import plot_image_grid, plot_rate_distortion, plot_rate_distortion_panels

TABLE_METRICS = ("bpp", "psnr", "ssim", "ms_ssim", "lpips", "dists", "clip_score", "clip_s", "sem_miou",
                 "sem_pixel_accuracy", "fid", "kid", "fid_patch", "kid_patch")
LISTED_PER_METRIC = 5  # missing images printed per metric; summary.json has them all


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
    """The metrics table (each value with the number of images or samples behind it; * marks a
    set too small for its metric), then what was unavailable, missing or unreadable."""
    shown = [m for m in TABLE_METRICS if any(r.metrics.get(m) is not None for r in results)]
    if len(results) == 1:
        result = results[0]
        print(format_table(["metric", "value", "over"], [[m, result.metrics[m], _over(result, m)] for m in shown]))
    else:
        print(format_table(["run", "images"] + shown, [[f, len(r.rows)] + [_cell_with_count(r, m) for m in shown]
                                                       for f, r in zip(folders, results)]))
    if any(r.small_sample for r in results):
        print("* fewer samples than the metric needs (summary.json: small_sample)")
    for name, reason in unavailable.items():
        print(f"unavailable: {name}: {reason}")
    for folder, result in zip(folders, results):
        _print_problems(f"{folder}: " if len(results) > 1 else "", result)


def _over(result: RunResult, metric: str) -> str:
    count = result.counts.get(metric)
    unit = "patches" if metric.endswith("_patch") else "images"
    return "" if count is None else f"{count} {unit}" + (" *" if metric in result.small_sample else "")


def _cell_with_count(result: RunResult, metric: str):
    """The value, with its count when it is not over every image of the run."""
    value, count = result.metrics.get(metric), result.counts.get(metric)
    if value is None:
        return None
    flag = " *" if metric in result.small_sample else ""
    if count is None or (count == len(result.rows) and not metric.endswith("_patch")):
        return _cell(value) + flag
    return f"{_cell(value)} ({count}){flag}"


def _print_problems(prefix: str, result: RunResult) -> None:
    for name, reason in result.small_sample.items():
        print(f"small sample: {prefix}{name}: {reason}")
    for name, note in result.notes.items():
        print(f"note: {prefix}{name}: {note}")
    for column, images in result.missing.items():
        for relpath, reason in list(images.items())[:LISTED_PER_METRIC]:
            print(f"missing: {prefix}{column}: {relpath}: {reason}")
        if len(images) > LISTED_PER_METRIC:
            print(f"missing: {prefix}{column}: ... and {len(images) - LISTED_PER_METRIC} more (summary.json)")
    for relpath, reason in result.left_out.items():
        print(f"not compared: {prefix}{relpath}: {reason}")
    for column, count in result.failures.items():
        print(f"error: {prefix}{column} failed on {count} pair(s) (reasons under missing)", file=sys.stderr)
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
          f"{len(result.unmatched_predictions)} without ground truth, {len(result.left_out)} not compared")


def print_bjontegaard(table: dict[str, dict[str, dict]], anchor: str | None) -> None:
    """BD-rate (percent of the anchor's rate at equal quality) per method and metric."""
    if anchor is None:
        return
    if not table:
        print(f"no BD-rate: the anchor {anchor} has no operating point with a rate (a bitstream folder) and "
              f"one of PSNR, MS-SSIM, LPIPS, DISTS, FID")
        return
    methods = list(next(iter(table.values())))
    rows = [[method] + [_bd_cell(table[metric].get(method, {})) for metric in table] for method in methods]
    print(f"\nBD-rate against {anchor} (% rate at equal quality; negative: fewer bits)")
    print(format_table(["method"] + list(table), rows))
    for metric, entries in table.items():
        for method, entry in entries.items():
            if "bd_rate_why" in entry:
                print(f"no BD-rate: {metric}: {method}: {entry['bd_rate_why']}")


def _bd_cell(entry: dict) -> str:
    return "-" if entry.get("bd_rate") is None else f"{entry['bd_rate']:+.1f}%"


def draw_comparison(output_dir: Path, ground_truth_dir: Path, runs: list[tuple[MethodSpec, RunResult]],
                    config: Config, grid_images: int, references: dict[str, list] | None = None) -> None:
    """Rate-distortion plots (one PNG per metric and one with every panel), with published
    ``references`` as markers, and an image grid."""
    curves = rate_distortion_curves(runs)
    metrics = [m for m in TABLE_METRICS if m != "bpp"
               and any(values.get(m) is not None for points in curves.values() for _, values in points)]
    if curves and metrics:
        plot_rate_distortion_panels(curves, metrics, output_dir / "rate_distortion.png", references)
        for metric in metrics:
            plot_rate_distortion(curves, metric, output_dir / f"rd_{metric}.png", references=references)
    else:
        print("no rate-distortion plot: no method has a bitstream folder (NAME=PRED_DIR,BITSTREAM_DIR)")
    rows, relpaths = grid_rows(ground_truth_dir, runs, config, grid_images)
    if rows:
        titles = ["ground truth"] + [_run_title(method, result) for method, result in runs]
        plot_image_grid(rows, titles, relpaths, output_dir / "comparison_grid.png")


def _run_title(method: MethodSpec, result: RunResult) -> str:
    bpp = result.means.get("bpp")
    return method.name if bpp is None or not math.isfinite(bpp) else f"{method.name}\n{bpp:.3f} bpp"
