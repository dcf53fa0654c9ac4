"""Train the quickstart system, or check its quality end to end.

    python -m models.quickstart train --output_dir checkpoints/shapes   # every model, seeded, on CPU
    python -m models.quickstart evaluate [--model_dir checkpoints/shapes] # the end-to-end quality check

``train`` is ``models.quickstart.recipe.train_all``; ``evaluate`` is
``models.quickstart.quality.quality_report`` on held-out shapes images (a split never used in
training). ``configs/shapes.yaml`` points every script at ``checkpoints/shapes/``. Torch is
imported only after the arguments are parsed, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from models.cli import add_config_arguments
from models.config import ConfigError
from models.quickstart.model_folder import DEFAULT_MODEL_DIR, SHAPES_CONFIG, model_config
from models.quickstart.shapes import HELD_OUT_SPLIT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.quickstart", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train every small model on generated shapes",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--output_dir", default=str(DEFAULT_MODEL_DIR), help="the model folder to write")
    train.add_argument("--work_dir", default="runs/quickstart",
                       help="data set and train.py run folder (not shipped)")
    train.add_argument("--config_path", default=str(SHAPES_CONFIG),
                       help="architecture of the segmenter and the ControlNet's training settings")
    train.add_argument("--seed", type=int, default=0, help="seed of the data set and of every model")
    train.add_argument("--threads", type=int, default=1,
                       help="torch threads per process (the float results depend on it)")
    train.add_argument("--workers", type=int, default=2, help="processes for the independent models")
    train.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                       help="where every stage trains (a GPU: far faster, other bits than the CPU)")
    train.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                       help="change the recipe, e.g. text_to_image.steps=8000 (repeatable; default: the shipped one)")
    train.add_argument("--fresh", action="store_true",
                       help="train every stage again (default: skip stages already trained with the same settings)")
    evaluate = commands.add_parser("evaluate", help="end-to-end quality on held-out shapes images",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    evaluate.add_argument("--model_dir", default=None,
                          help="a model folder written by 'train' (default: the config's paths)")
    add_config_arguments(evaluate, default=SHAPES_CONFIG)
    evaluate.add_argument("--num_images", type=int, default=32, help="held-out images")
    evaluate.add_argument("--seed", type=int, default=0, help="data-set seed of the held-out split")
    evaluate.add_argument("--split", default=HELD_OUT_SPLIT, choices=("val", HELD_OUT_SPLIT),
                          help="shapes split: 'val' to choose settings, the held-out split to report")
    return parser.parse_args(argv)


def train_command(args: argparse.Namespace) -> int:
    """``train``: the recipe (shipped, with ``--recipe`` changes) through ``train_all``."""
    import torch

    from models.quickstart.recipe import Recipe, apply_recipe_overrides, train_all

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here; train with --device cpu")
    try:
        recipe = apply_recipe_overrides(Recipe(), args.recipe)
    except ConfigError as error:
        raise SystemExit(f"quickstart train: {error}") from None
    report = train_all(args.output_dir, args.work_dir, args.seed, args.threads, args.workers, recipe,
                       args.config_path, args.fresh, args.device)
    print(f"trained in {report['total_seconds'] / 60:.1f} min; models in {args.output_dir}")
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    """``evaluate``: the quality report, printed; 0 when it meets the thresholds."""
    from models.quickstart.quality import quality_report

    try:
        config = model_config(args.model_dir, args.config_path, args.override)
    except ConfigError as error:
        raise SystemExit(f"quickstart evaluate: {error}") from None
    report = quality_report(config, args.num_images, args.seed, args.split)
    for name, value in asdict(report).items():
        print(f"{name:>18}: {value:.4f}" if isinstance(value, float) else f"{name:>18}: {value}")
    print("meets the quickstart thresholds" if report.passes() else
          "BELOW the quickstart thresholds (segmenter >= 0.9, end to end >= 0.75, shuffled < 0.6 x end to end)")
    return 0 if report.passes() else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return train_command(args) if args.command == "train" else evaluate_command(args)


if __name__ == "__main__":
    sys.exit(main())
