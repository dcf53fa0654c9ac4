"""Command-line flags shared by the scripts and module CLIs, without importing torch.

A flag that sets a config value is declared with ``config_flag``, which takes the value's type
and choices from the config field itself (``models.config``), so a flag can never accept what
the config refuses. ``config_from_args`` then builds the config once: the YAML file, the config
flags that were given (typed values, never spliced into YAML text, so a path keeps its ``#``,
spaces and quotes), then the ``--override`` strings.

Nothing here imports torch, diffusers or transformers: ``--help`` of every script is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Literal

from models.config import DEFAULT_CONFIG_PATH, Config, config_field, config_type, load_config

CONFIG_DEST = "config."  # a config flag's dest is this prefix plus its "section.key"


def add_config_arguments(parser: argparse.ArgumentParser, default: str | Path | None = DEFAULT_CONFIG_PATH) -> None:
    """``--config_path`` and ``--override SECTION.KEY=VALUE`` (repeatable)."""
    parser.add_argument("--config_path", default=None if default is None else str(default), help="YAML config")
    parser.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="set any config value, e.g. --override decode.seed=3 (repeatable)")


def config_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, key: str, help: str,
                const: Any = None) -> None:
    """A flag that sets the config value ``key`` ("section.key") when given; absent, the config
    file's value stands. Booleans become ``--flag`` / ``--no-flag``, ``const`` makes a switch that
    sets that value; other types and choices are the field's."""
    field, kind = config_field(key), config_type(key)
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    common = {"dest": CONFIG_DEST + key, "default": argparse.SUPPRESS,
              "help": f"{help} (sets {key}; default {default!r} unless configured)"}
    if const is not None:
        parser.add_argument(flag, action="store_const", const=const, **common)
        return
    if kind is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
        return
    choices = [choice for choice in field.metadata.get("choices") or () if choice is not None]
    shown = {"choices": choices} if choices else {"metavar": flag.lstrip("-").upper()}
    parser.add_argument(flag, type=kind, **shown, **common)


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """{"section.key": value} for every config flag given on the command line."""
    return {dest[len(CONFIG_DEST):]: value for dest, value in vars(args).items() if dest.startswith(CONFIG_DEST)}


def config_from_args(args: argparse.Namespace) -> Config:
    """The config file of ``--config_path``, then the config flags given, then ``--override``."""
    return load_config(args.config_path, args.override, config_values(args))


def add_device_arguments(parser: argparse.ArgumentParser, gpu_flag: Literal["--gpus", "--gpu_ids"] = "--gpus") -> None:
    """The device flags of every script (``gpu_flag``: the original README's spelling);
    ``models.runtime.resolve_devices`` turns them into a ``DeviceSpec``."""
    group = parser.add_argument_group("devices")
    if gpu_flag == "--gpus":
        group.add_argument("--gpus", type=int, nargs="+", default=None,
                           help="GPU indices to use, e.g. --gpus 0 1 (one process per GPU)")
    else:
        group.add_argument("--gpu_ids", type=str, default=None,
                           help='comma-separated GPU indices, e.g. --gpu_ids "0,1"')
    group.add_argument("--device", default=None,
                       help="a single device: cpu, cuda or cuda:N (default: a GPU if present)")
    group.add_argument("--accelerator", choices=("auto", "cpu", "gpu", "cuda"), default="auto",
                       help="Lightning accelerator; with --devices N runs N processes")
    group.add_argument("--devices", type=int, default=None,
                       help="number of devices (processes) to use, e.g. --accelerator cpu --devices 2")
    group.add_argument("--num_nodes", type=int, default=1, help="number of machines (multi-node DDP)")


def add_rate_arguments(parser: argparse.ArgumentParser) -> None:
    """``--grid G``, ``--target_bytes N`` or ``--target_bpp B`` (at most one): how ``.sem`` maps are coded
    (``models.bitstream.rate_control``)."""
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--grid", type=int, default=None,
                      help=".sem compact mode: the map on a grid of G cells on the long side (default: lossless)")
    rate.add_argument("--target_bytes", type=int, default=None,
                      help=".sem byte budget per file, header and caption included: lossless if it fits, else "
                           "the finest grid that fits (the grid G whose file fits while G + 1's does not)")
    rate.add_argument("--target_bpp", type=float, default=None,
                      help="the same budget in bits per pixel of each image (rounded down to whole bytes)")


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that runs the encoder (process_input.py, models.train.prepare_data)."""
    add_config_arguments(parser)
    config_flag(parser, "--segmentation_ckpt", "segmentation.checkpoint", "DeepLabV3+ checkpoint")
    config_flag(parser, "--batch_size", "encode.batch_size", "images per forward pass and device")
    config_flag(parser, "--num_workers", "encode.num_workers", "data-loader processes")
    config_flag(parser, "--max_pixels", "encode.max_pixels", "refuse larger images")
    config_flag(parser, "--allow_pickle", "segmentation.allow_pickle",
                "load a legacy segmentation checkpoint that needs pickle (trusted files only)")
    add_device_arguments(parser, gpu_flag="--gpus")
