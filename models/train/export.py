"""Export a training checkpoint as a ControlNet folder (what train.py writes to RUN/controlnet/).

    python -m models.train.export RUN/checkpoints/step-0001000.ckpt OUT

The folder is a ``save_pretrained`` ControlNet (its EMA weights when the run kept an EMA copy)
with ``semantic_compression.json`` and, when the UNet decoder half was trained,
``unet_trainable.safetensors``: the format of ``models.decode.checkpoint_format``, which
``process_decoding.py --checkpoint_path OUT`` reads.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.train.export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", help="a .ckpt written by train.py")
    parser.add_argument("output_dir", help="folder to write (replaced if it exists)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from models.decode.checkpoint_format import export_checkpoint  # torch, diffusers: after --help

    try:
        output_dir = export_checkpoint(args.checkpoint, args.output_dir)
    except (OSError, ValueError) as error:  # the messages name the file
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"exported ControlNet to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
