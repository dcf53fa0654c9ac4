"""Compress images with classic codecs (JPEG, WebP, PNG, AVIF, JPEG XL) at a target size.

    python compress_images.py --input-dir data/original_images --output-dir data/baselines --target-size 2

For every image and codec this writes the highest-quality file that fits the budget (found by
bisection over the codec's quality scale) to OUT/<codec>/, its decoded PNG at the input's size
to OUT/<codec>_decoded/ (same relative path and stem as the input) and a row of
OUT/results.csv (image, codec, quality, bytes, bpp, scale, fits). The budget is --target-size
kilobytes (1 KB = 1024 bytes), --target-bpp bits per pixel, or, image by image, the size of the
file with the same relative path and stem in --match-sizes-from (e.g. our semantic files). An
image that cannot fit is kept with fits=false and reported. Re-running skips finished work.

SIGTERM or Ctrl-C stops the run once the images in flight are done (a second one at once); the
results written so far are kept and running the same command again resumes. One run at a time
writes into an output folder (OUT/.run.lock). Exit statuses: 0 done, 1 some inputs failed (one
line each, e.g. a file that changed while the run went on), 2 bad flags, 4 the output folder
cannot be written (read-only, full disk, no permission), 5 another run holds the folder, 130 / 143
stopped by Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.baselines.codecs import CODECS
from models.baselines.job import Target, check_settings, plan_compress, report, run_compress
from models.imageio import DEFAULT_MAX_PIXELS, OutputError, check_output_not_inside_input
from models.jobcontrol import (ExitStatus, JobInterrupted, MiB, OutputBusy, StopSignals, error_line, exit_status_of,
                               guarded_output, interrupted_line)

MIN_FREE_PER_WORKER = 8 * MiB  # free space asked for before starting: one image in flight per worker


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--input-dir", required=True, help="images to compress (searched recursively)")
    parser.add_argument("--output-dir", required=True, help="where compressed files and results.csv go")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-size", type=float, default=None,
                        help="budget per image in KB (1 KB = 1024 bytes)")
    target.add_argument("--target-bpp", type=float, default=None,
                        help="budget per image in bits per pixel of the input")
    target.add_argument("--match-sizes-from", default=None, metavar="DIR",
                        help="budget per image: the size of the file with the same relative path "
                             "and stem in DIR (any extension)")
    parser.add_argument("--match-suffix", default=None,
                        help="with --match-sizes-from, only files ending in this (default: the .sem "
                             "files if the folder has any, else every file)")
    parser.add_argument("--codecs", nargs="+", choices=list(CODECS), default=list(CODECS),
                        help="codecs to run")
    parser.add_argument("--allow-downscale", action="store_true",
                        help="shrink the image when even a codec's lowest quality does not fit "
                             "(PNG always does)")
    parser.add_argument("--workers", type=int, default=1, help="images compressed in parallel processes")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse larger images before decoding them")
    parser.add_argument("--overwrite", action="store_true", help="redo images already done")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> Target:
    """The budget the flags ask for; contradictory or impossible flags raise ``ValueError``."""
    if not Path(args.input_dir).is_dir():
        raise ValueError(f"--input-dir {args.input_dir} is not a folder")
    check_output_not_inside_input(args.input_dir, args.output_dir)
    for flag, value in (("--target-size", args.target_size), ("--target-bpp", args.target_bpp)):
        if value is not None and not value > 0:
            raise ValueError(f"{flag} must be positive, got {value}")
    if args.match_sizes_from is not None and not Path(args.match_sizes_from).is_dir():
        raise ValueError(f"--match-sizes-from {args.match_sizes_from} is not a folder")
    if args.match_suffix is not None and args.match_sizes_from is None:
        raise ValueError("--match-suffix only applies with --match-sizes-from")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    match_dir = str(Path(args.match_sizes_from).resolve()) if args.match_sizes_from else None
    return Target(args.target_size, args.target_bpp, match_dir, args.match_suffix)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with StopSignals() as stop:
        try:
            return compress(args, stop)
        except (JobInterrupted, OutputError, OutputBusy) as error:
            if isinstance(error, JobInterrupted):
                kept = getattr(error, "kept", None)
                done = "no image compressed yet" if kept is None else f"{kept} results written this run, kept"
                print(interrupted_line(error, done), file=sys.stderr)
            else:
                print(error_line(error), file=sys.stderr)
            return exit_status_of(error)


def compress(args: argparse.Namespace, stop: StopSignals) -> int:
    """Check the flags, lock the output folder, plan, compress and report; the exit status."""
    output_dir = Path(args.output_dir)
    try:
        target = validate(args)
    except ValueError as error:
        print(error_line(error), file=sys.stderr)
        return ExitStatus.USAGE
    with guarded_output(output_dir, args.workers * MIN_FREE_PER_WORKER):
        try:
            settings = {"target": target.describe(), "allow_downscale": args.allow_downscale}
            check_settings(output_dir, settings, args.overwrite)
        except ValueError as error:
            print(error_line(error), file=sys.stderr)
            return ExitStatus.USAGE
        plan = plan_compress(Path(args.input_dir), output_dir, list(dict.fromkeys(args.codecs)), args.overwrite)
        stop.check()  # a signal while the folder was listed
        result = run_compress(plan, output_dir, target, args.allow_downscale, args.workers, args.max_pixels,
                              stop=stop)
        return report(plan, result, output_dir)


if __name__ == "__main__":
    sys.exit(main())
