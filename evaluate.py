"""Compare reconstructions with the original images: fidelity, perception, FID/KID, CLIP, semantics, rate.

    python evaluate.py --prediction_path data/decoded --ground_truth_path data/original_images
    python evaluate.py --ground_truth_path data/original_images --output_dir results/rd \
        --method ours=data/decoded,data/semantic --method jpeg=data/baselines/jpeg_decoded,data/baselines/jpeg

Images are paired by relative path and stem (``a/b.jpg`` with ``a/b.png``) and compared at the
ground truth's size; a prediction of another size is resized with Lanczos, never stretched to
another aspect ratio. Writes metrics.csv (one row per image) and summary.json into --output_dir
and prints a table; an image a metric cannot score is listed with the reason, never fatal. With
--method (repeatable; the same NAME several times gives several points of one curve) every
method gets its own folder, all are compared on the images every one of them has, BD-rates
against --anchor are printed, and rate-distortion plots (with published points of other codecs,
--reference_points DATASET) and an image grid are drawn. Metrics whose weights are not on this
machine are reported as unavailable, naming the file they need; the others still run. Unpaired
and unreadable files are listed, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from models.cli import add_config_arguments, config_flag, config_from_args
from models.config import Config, ConfigError
from models.evaluation import METRIC_NAMES
from models.imageio import OutputError
from models.jobcontrol import (JobInterrupted, MiB, OutputBusy, StopSignals, error_line, exit_status_of, guarded_output,
                               interrupted_line)
from models.layout import PROMPTS_FILE, CaptionIndex, read_prompts

if TYPE_CHECKING:  # torch: imported when the evaluation starts, not for --help
    from models.evaluation.job import MethodSpec


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
                             f"given, {PROMPTS_FILE} in --label_path if there is one")
    parser.add_argument("--metrics", nargs="+", choices=METRIC_NAMES, default=list(METRIC_NAMES),
                        metavar="NAME", help=f"metrics to compute, from: {' '.join(METRIC_NAMES)}")
    add_config_arguments(parser)
    config_flag(parser, "--segmentation_ckpt", "segmentation.checkpoint",
                "DeepLabV3+ checkpoint for semantic consistency (a transformers segmenter: "
                "segmentation.family/model in --config_path)")
    parser.add_argument("--device", default=None, help="device for the metric networks (default: cuda if present)")
    parser.add_argument("--grid_images", type=int, default=4,
                        help="images in the side-by-side grid (--method)")
    parser.add_argument("--anchor", default=None,
                        help="the method BD-rates are computed against (--method; default: the first)")
    parser.add_argument("--reference_points", default=None, metavar="DATASET",
                        help="draw the published points of DATASET (e.g. kodak, clic2020, div2k) on the "
                             "rate-distortion plots (--method)")
    parser.add_argument("--reference_points_file", default=None,
                        help="a CSV of published points (default: models/evaluation/published_points.csv)")
    return parser.parse_args(argv)


def resolve_inputs(args: argparse.Namespace) -> tuple[list[MethodSpec], CaptionIndex]:
    """The runs to evaluate and the captions; bad flags raise ``ValueError``."""
    from models.evaluation.job import MethodSpec, load_sem_captions, parse_method

    if bool(args.prediction_path) == bool(args.method):
        raise ValueError("give either --prediction_path or one or more --method NAME=DIR")
    for flag in ("ground_truth_path", "prediction_path", "bitstream_dir", "label_path"):
        value = getattr(args, flag)
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"--{flag} {value} is not a folder")
    if args.method and args.bitstream_dir:
        raise ValueError("with --method, give each method's bitstream folder as NAME=PRED_DIR,BITSTREAM_DIR")
    if not args.method and (args.anchor or args.reference_points):
        raise ValueError("--anchor and --reference_points compare methods: give them with --method")
    methods = ([parse_method(text) for text in args.method] if args.method else
               [MethodSpec("prediction", Path(args.prediction_path),
                           Path(args.bitstream_dir) if args.bitstream_dir else None)])
    prompts = args.prompt_json_path or (Path(args.label_path) / PROMPTS_FILE if args.label_path else None)
    if args.prompt_json_path and not Path(prompts).is_file():
        raise ValueError(f"--prompt_json_path {prompts} is not a file")
    if prompts and Path(prompts).is_file():
        captions = CaptionIndex(read_prompts(prompts))
    else:  # .sem files carry their captions
        captions = load_sem_captions(args.label_path) if args.label_path else CaptionIndex({})
    return methods, captions


def resolve_comparison(args: argparse.Namespace, methods: list[MethodSpec]) -> tuple[str | None, list]:
    """The BD-rate anchor and the published points of ``--reference_points``; bad flags raise
    ``ValueError``."""
    from models.evaluation.reference_points import PUBLISHED_POINTS, read_reference_points, reference_curves

    names = [method.name for method in methods]
    if args.anchor is not None and args.anchor not in names:
        raise ValueError(f"--anchor {args.anchor!r} is none of the methods: {', '.join(dict.fromkeys(names))}")
    anchor = args.anchor or (names[0] if args.method else None)
    if not args.reference_points:
        return anchor, []
    points = read_reference_points(args.reference_points_file or PUBLISHED_POINTS)
    reference_curves(points, args.reference_points)  # ValueError naming the datasets there are
    return anchor, [point for point in points if point.dataset == args.reference_points.lower()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with StopSignals(immediate=True):  # results are written at the end: nothing to finish first
        try:
            return evaluate(args)
        except JobInterrupted as error:
            print(interrupted_line(error, "nothing was written (results are written at the end)",
                                   "run the same command again"), file=sys.stderr)
            return exit_status_of(error)
        except (OutputError, OutputBusy) as error:
            print(error_line(error, "run the same command again"), file=sys.stderr)
            return exit_status_of(error)


def evaluate(args: argparse.Namespace) -> int:
    """Check the inputs and the output folder, score, write and report; the exit status."""
    try:
        methods, captions = resolve_inputs(args)
        anchor, references = resolve_comparison(args, methods)
        config = config_from_args(args)
    except (ValueError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with guarded_output(args.output_dir, MiB):
        return score_and_report(args, methods, captions, anchor, references, config)


def score_and_report(args: argparse.Namespace, methods: list[MethodSpec], captions: CaptionIndex,
                     anchor: str | None, references: list, config: Config) -> int:
    """Score every method's folder, write the results, print the tables; the exit status."""
    import torch  # torch and the metric networks: after --help

    from models.evaluation.job import (EvaluationInputs, bjontegaard_table, comparison_summary, evaluate_folder,
                                       keep_shared_rows, rate_distortion_curves, run_folders, unshared_images,
                                       write_run)
    from models.evaluation.metrics import MetricSuite
    from models.evaluation.reference_points import reference_curves
    from models.evaluation.report import draw_comparison, print_bjontegaard, print_report
    from models.imageio import atomic_write_json

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    suite = MetricSuite(config, args.metrics, device, has_label_maps=args.label_path is not None,
                        has_captions=bool(captions))
    output_dir, truth_dir = Path(args.output_dir), Path(args.ground_truth_path)
    folders = run_folders(methods) if args.method else ["."]
    left_out = unshared_images(truth_dir, methods, folders) if args.method else [{}]
    runs = []
    for method, folder, unshared in zip(methods, folders, left_out):
        inputs = EvaluationInputs(truth_dir, method.prediction_dir, method.bitstream_dir,
                                  Path(args.label_path) if args.label_path else None, captions)
        runs.append((method, evaluate_folder(suite, config, inputs, description=folder if args.method else "evaluate",
                                             left_out=unshared)))
    results = [result for _, result in runs]
    if args.method:
        keep_shared_rows(results, folders)
    for folder, result in zip(folders, results):
        write_run(result, output_dir / folder)
    bd = {}
    if args.method:
        bd = bjontegaard_table(rate_distortion_curves(runs), anchor)
        atomic_write_json(output_dir / "summary.json", comparison_summary(
            truth_dir, runs, folders, anchor, bd, [point.to_dict() for point in references]))
        draw_comparison(output_dir, truth_dir, runs, config, args.grid_images,
                        reference_curves(references, args.reference_points) if references else None)
    print_report(folders, results, suite.unavailable)
    print_bjontegaard(bd, anchor)
    print(f"-> {output_dir}")
    clean = all(not (r.errors or r.missing_predictions or r.unmatched_predictions or r.ambiguous or r.failures)
                for r in results)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
