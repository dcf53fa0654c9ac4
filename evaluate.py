"""Compare reconstructions with the original images: fidelity, perception, FID/KID, CLIP, semantics, rate.

    python evaluate.py --prediction_path data/decoded --ground_truth_path data/original_images
    python evaluate.py --ground_truth_path data/original_images --output_dir results/rd \
        --method ours=data/decoded,data/semantic --method jpeg=data/baselines/jpeg_decoded,data/baselines/jpeg

Images are paired by relative path and stem (``a/b.jpg`` with ``a/b.png``) and compared at the
ground truth's size; a prediction of another size is resized with Lanczos, never stretched to
another aspect ratio. Writes metrics.csv (one row per image) and summary.json into --output_dir
and prints a table. With --method (repeatable; the same NAME several times gives several points
of one curve) every method gets its own folder, and rate-distortion plots and an image grid are
drawn. Metrics whose weights are not on this machine are reported as unavailable, naming the
file they need; the others still run. Unpaired and unreadable files are listed, and the exit
status is then 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from models.config import ConfigError, DEFAULT_CONFIG_PATH, load_config
from models.evaluation.job import (EvaluationInputs, MethodSpec, comparison_summary, evaluate_folder,
                               format_table, grid_rows, load_captions, load_sem_captions, parse_method,
                               rate_distortion_curves, run_folders, write_run)
from models.imageio import atomic_write_json
from models.evaluation.metrics import METRIC_NAMES, MetricSuite
from models.evaluation.plots import plot_image_grid, plot_rate_distortion, plot_rate_distortion_panels

TABLE_METRICS = ("bpp", "psnr", "ssim", "ms_ssim", "lpips", "dists", "clip_score", "sem_miou",
                 "sem_pixel_accuracy", "fid", "kid", "fid_patch", "kid_patch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--prediction_path", default=None, help="folder of reconstructed images")
    parser.add_argument("--ground_truth_path", required=True, help="folder of original images")
    parser.add_argument("--method", action="append", default=[], metavar="NAME=PRED_DIR[,BITSTREAM_DIR]",
                        help="a method to evaluate (repeatable, instead of --prediction_path)")
    parser.add_argument("--output_dir", default="evaluation",
                        help="where metrics.csv, summary.json and plots go")
    parser.add_argument("--bitstream_dir", default=None,
                        help="files whose sizes are the rate (semantic or compressed files), for bpp")
    parser.add_argument("--label_path", default=None,
                        help="the transmitted label maps (palette PNGs), for semantic consistency")
    parser.add_argument("--prompt_json_path", default=None,
                        help="captions {image path: caption} for the CLIP score; when not "
                             "given, prompts.json in --label_path if there is one")
    parser.add_argument("--metrics", nargs="+", choices=METRIC_NAMES, default=list(METRIC_NAMES),
                        metavar="NAME", help=f"metrics to compute, from: {' '.join(METRIC_NAMES)}")
    parser.add_argument("--config_path", default=str(DEFAULT_CONFIG_PATH), help="YAML config")
    parser.add_argument("--segmentation_ckpt", default=None,
                        help="DeepLabV3+ checkpoint for semantic consistency "
                             "(overrides segmentation.checkpoint)")
    parser.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="set any config value, e.g. --override evaluate.patch_size=0")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device for the metric networks")
    parser.add_argument("--grid_images", type=int, default=4,
                        help="images in the side-by-side grid (--method)")
    return parser.parse_args(argv)


def resolve_inputs(args: argparse.Namespace) -> tuple[list[MethodSpec], dict[str, str]]:
    """The runs to evaluate and the captions; bad flags raise ``ValueError``."""
    if bool(args.prediction_path) == bool(args.method):
        raise ValueError("give either --prediction_path or one or more --method NAME=DIR")
    for flag in ("ground_truth_path", "prediction_path", "bitstream_dir", "label_path"):
        value = getattr(args, flag)
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"--{flag} {value} is not a folder")
    if args.method and args.bitstream_dir:
        raise ValueError("with --method, give each method's bitstream folder as NAME=PRED_DIR,BITSTREAM_DIR")
    methods = ([parse_method(text) for text in args.method] if args.method else
               [MethodSpec("prediction", Path(args.prediction_path),
                           Path(args.bitstream_dir) if args.bitstream_dir else None)])
    prompts = args.prompt_json_path or (
        Path(args.label_path) / "prompts.json" if args.label_path else None)
    if args.prompt_json_path and not Path(prompts).is_file():
        raise ValueError(f"--prompt_json_path {prompts} is not a file")
    if prompts and Path(prompts).is_file():
        captions = load_captions(prompts)
    else:  # .sem files carry their captions
        captions = load_sem_captions(args.label_path) if args.label_path else {}
    return methods, captions


def print_report(folders: list[str], results: list, unavailable: dict[str, str]) -> None:
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


def draw_comparison(output_dir: Path, ground_truth_dir: Path, runs: list, config, grid_images: int) -> None:
    """Rate-distortion plots (one PNG per metric and one with every panel) and an image grid."""
    curves = rate_distortion_curves(runs)
    metrics = [m for m in TABLE_METRICS[1:] if any(v.get(m) is not None for points in curves.values()
                                                 for _, v in points)]
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


def _run_title(method: MethodSpec, result) -> str:
    bpp = result.means.get("bpp")
    return method.name if bpp is None or not math.isfinite(bpp) else f"{method.name}\n{bpp:.3f} bpp"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        methods, captions = resolve_inputs(args)
        overrides = ([f"segmentation.checkpoint={Path(args.segmentation_ckpt).resolve()}"]
                     if args.segmentation_ckpt else []) + args.override
        config = load_config(args.config_path, overrides)
    except (ValueError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    suite = MetricSuite(config, args.metrics, args.device, has_label_maps=args.label_path is not None,
                        has_captions=bool(captions))
    output_dir, truth_dir = Path(args.output_dir), Path(args.ground_truth_path)
    folders = run_folders(methods) if args.method else ["."]
    runs = []
    for method, folder in zip(methods, folders):
        inputs = EvaluationInputs(truth_dir, method.prediction_dir, method.bitstream_dir,
                                  Path(args.label_path) if args.label_path else None, captions)
        result = evaluate_folder(suite, config, inputs, description=folder if args.method else "evaluate")
        write_run(result, output_dir / folder)
        runs.append((method, result))
    if args.method:
        atomic_write_json(output_dir / "summary.json", comparison_summary(truth_dir, runs, folders))
        draw_comparison(output_dir, truth_dir, runs, config, args.grid_images)
    results = [result for _, result in runs]
    print_report(folders, results, suite.unavailable)
    print(f"-> {output_dir}")
    clean = all(not (r.errors or r.missing_predictions or r.unmatched_predictions or r.ambiguous)
                for r in results)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
