"""The command line of the ``.sem`` format: encode a label map, decode a file, print its fields.

    python -m models.bitstream encode MAP.png OUT.sem [--caption TEXT] [--seed N] [--label_set NAME]
                                  [--grid G | --target_bytes N | --target_bpp B]
    python -m models.bitstream decode IN.sem MAP.png
    python -m models.bitstream info IN.sem

A map's label set is the one its folder declares (``label_set.json``, ``models.layout``; VOC where
none does) unless ``--label_set`` names one; decoding draws the map in its set's colours. A file
that cannot be read, decoded or written is one line on stderr, ``error: FILE: reason``, and exit
status 1. With ``--target_bytes`` or ``--target_bpp`` the file is the finest that fits the budget
(``models.bitstream.rate_control``); one over budget even at the coarsest grid is still written,
with a line on stderr saying by how much, and exit status 3.
"""

from __future__ import annotations

import argparse
import json
import sys

from models.bitstream.errors import BitstreamError
from models.bitstream.rate_control import OVER_BUDGET_STATUS, write_sem_within
from models.bitstream.sem_file import MAX_PIXELS, inspect_code, read_sem, read_sem_bytes, write_sem
from models.cli import add_rate_arguments
from models.imageio import ImageReadError, atomic_save_image, read_label_map
from models.layout import find_label_set
from models.palettes import UINT8, LabelSet, label_map_to_pil
from models.rate import bits_per_pixel, budget_bytes
from models.semantic_code import SemanticCode


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command and its arguments."""
    parser = argparse.ArgumentParser(prog="python -m models.bitstream",
                                     description="Encode, decode and inspect .sem files.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    encode = commands.add_parser("encode", help="label map PNG (+ caption) -> .sem",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    encode.add_argument("label_map", help="palette or gray PNG whose pixel values are class ids")
    encode.add_argument("output", help="the .sem file to write")
    encode.add_argument("--caption", default="", help="caption text")
    encode.add_argument("--seed", type=int, default=None, help="decoding seed to store")
    add_rate_arguments(encode)
    encode.add_argument("--label_set", default=None,
                        help="label set of the map: voc, ade20k, uint8 or a custom set's name (its "
                             "label_set.json in the map's folder or above); None: the folder's set, "
                             "VOC where no label_set.json says otherwise")
    decode = commands.add_parser("decode", help=".sem -> label map PNG; prints the caption",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    decode.add_argument("input", help="the .sem file")
    decode.add_argument("label_map", help="the palette PNG to write (full size)")
    info = commands.add_parser("info", help="print a .sem file's fields as JSON",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    info.add_argument("input", help="the .sem file")
    return parser.parse_args(argv)


def encode_command(args: argparse.Namespace) -> int:
    """Label map PNG (+ caption, seed) -> ``.sem`` file; prints its size and rate."""
    # The format cannot hold more pixels than MAX_PIXELS: refuse larger maps before decoding them.
    label_map = read_label_map(args.label_map, max_pixels=MAX_PIXELS)
    label_set = find_label_set(args.label_map, args.label_set)
    try:
        label_set.check(label_map)
    except ValueError as error:
        raise ValueError(f"{args.label_map}: {error}; if the map is of another set, pass --label_set (e.g. "
                         f"ade20k) or put its label_set.json beside it") from None
    code = SemanticCode(label_map, args.caption, args.seed, label_set=label_set.name)
    budget = budget_bytes(code.width, code.height, args.target_bytes, args.target_bpp)
    if budget is not None:
        fitted = write_sem_within(args.output, code, budget)
        print(f"{args.output}: {fitted.describe()}")
        if not fitted.fits:
            print(f"over budget: {args.output}: {fitted.describe()}", file=sys.stderr)
            return OVER_BUDGET_STATUS
        return 0
    size = write_sem(args.output, code, grid=args.grid)
    print(f"{args.output}: {size} bytes, "
          f"{bits_per_pixel(size, code.width, code.height):.5f} bits per pixel")
    return 0


def decode_command(args: argparse.Namespace) -> None:
    """``.sem`` file -> full-size palette PNG; prints the caption."""
    code = read_sem(args.input)
    label_set = _label_set_to_draw(code.label_set, args.input)
    atomic_save_image(label_map_to_pil(code.label_map, label_set), args.label_map)
    print(code.caption)


def _label_set_to_draw(name: str, sem_path: str) -> LabelSet:
    """The label set a decoded map is drawn with: built in, or the nearest ``label_set.json`` of
    that name; the uint8 colours (with a warning) when no sidecar defines a named set."""
    try:
        return find_label_set(sem_path, name)
    except ValueError as error:
        print(f"warning: {error}; drawing the map in the uint8 colours", file=sys.stderr)
        return UINT8


def info_command(args: argparse.Namespace) -> None:
    """Prints the fields of a ``.sem`` file as one line of JSON, without decoding the map."""
    data = read_sem_bytes(args.input)
    try:
        fields = inspect_code(data).to_dict()
    except BitstreamError as error:
        raise BitstreamError(f"{args.input}: {error}") from None
    print(json.dumps(fields, ensure_ascii=False))


COMMANDS = {"encode": encode_command, "decode": decode_command, "info": info_command}


def main(argv: list[str] | None = None) -> int:
    """Run one command; a failure prints one line naming the file and returns 1."""
    args = parse_args(argv)
    try:
        status = COMMANDS[args.command](args)
    except (BitstreamError, ImageReadError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
