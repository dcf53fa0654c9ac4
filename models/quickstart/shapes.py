"""Synthetic "shapes" data: small images whose label map and caption determine the picture.

Each sample is a flat background with one to three non-overlapping shapes (circle, square,
triangle, diamond) in flat colours, drawn without anti-aliasing, so the label map is exact:
every pixel of class ``k`` has the colour of the shape drawn there, every background pixel the
background colour. The caption names each shape's colour (and size, when small or large) and
the background, e.g. "a red circle and a small blue square on a grey background", naming the
shapes from left to right. Label map
(where and which shape) plus caption (which colours) therefore fix every pixel, which is what
the learning test needs and what a quick demonstration model can learn in minutes.

Shape classes are stored under PASCAL VOC class ids 1..4 (aeroplane, bicycle, bird, boat);
the ids are only labels here, chosen so that the files are ordinary VOC label maps.

    python -m models.quickstart.shapes --data_root data/shapes --train 2000 --val 64 --size 64

writes the training layout that ``models.train.data`` reads (``original_images/{split}/``,
``segmented_images/{split}/`` with palette PNGs and ``prompts.json``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from models.imageio import atomic_save_image, atomic_write_json
from models.palettes import label_map_to_pil

SHAPE_CLASS_IDS: dict[str, int] = {"circle": 1, "square": 2, "triangle": 3, "diamond": 4}
SHAPE_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 215, 40),
    "orange": (240, 140, 30), "purple": (140, 50, 170), "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128), "white": (250, 250, 250), "black": (10, 10, 10),
    "beige": (225, 205, 165), "light blue": (160, 200, 235),
}
CLASS_COLORS = {"circle": "red", "square": "green", "triangle": "blue", "diamond": "yellow"}
CLASS_BACKGROUND = "grey"
COLOR_MODES = ("random", "by_class")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}  # each split draws from its own seed stream


@dataclass(frozen=True)
class Shape:
    """One drawn shape: its kind, colour name and bounding box (left, top, side length)."""

    kind: str
    color: str
    left: int
    top: int
    side: int


@dataclass(frozen=True)
class ShapesSample:
    """An image, its exact label map and its caption."""

    image: np.ndarray  # (H, W, 3) uint8
    label_map: np.ndarray  # (H, W) uint8: 0 background, SHAPE_CLASS_IDS elsewhere
    caption: str
    shapes: tuple[Shape, ...]
    background: str


def make_sample(seed: int | list[int], size: int = 64, max_shapes: int = 3,
                color_mode: str = "random") -> ShapesSample:
    """A random sample, fully determined by ``seed`` (an int or a list of ints).

    ``color_mode="random"``: shape and background colours vary (the caption names them);
    ``"by_class"``: each class has one colour (``CLASS_COLORS``) on a grey background, so the
    label map alone determines the image.
    """
    if color_mode not in COLOR_MODES:
        raise ValueError(f"unknown color_mode {color_mode!r}; use one of {COLOR_MODES}")
    rng = np.random.default_rng(seed)
    background = str(rng.choice(list(BACKGROUND_COLORS))) if color_mode == "random" else CLASS_BACKGROUND
    shapes = _place_shapes(rng, size, int(rng.integers(1, max_shapes + 1)), background)
    if color_mode == "by_class":
        shapes = [Shape(s.kind, CLASS_COLORS[s.kind], s.left, s.top, s.side) for s in shapes]
    image = Image.new("RGB", (size, size), BACKGROUND_COLORS[background])
    label_map = Image.new("L", (size, size), 0)
    for shape in shapes:
        _draw(ImageDraw.Draw(image), shape, SHAPE_COLORS[shape.color])
        _draw(ImageDraw.Draw(label_map), shape, SHAPE_CLASS_IDS[shape.kind])
    return ShapesSample(np.asarray(image), np.asarray(label_map), caption(shapes, background, size),
                        tuple(shapes), background)


def _place_shapes(rng: np.random.Generator, size: int, count: int, background: str) -> list[Shape]:
    """Up to ``count`` shapes whose bounding boxes do not overlap (rejection sampling)."""
    shapes: list[Shape] = []
    colors = [name for name in SHAPE_COLORS if name != background]  # always visible
    for _ in range(50 * count):
        if len(shapes) == count:
            break
        side = int(rng.integers(size // 5, size // 2 + 1))
        left, top = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        if any(_overlap((left, top, side), (s.left, s.top, s.side)) for s in shapes):
            continue
        kind = str(rng.choice(list(SHAPE_CLASS_IDS)))
        shapes.append(Shape(kind, str(rng.choice(colors)), left, top, side))
    return shapes


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether two square boxes (left, top, side) intersect or touch."""
    return not (a[0] + a[2] < b[0] or b[0] + b[2] < a[0] or a[1] + a[2] < b[1] or b[1] + b[2] < a[1])


def _draw(draw: ImageDraw.ImageDraw, shape: Shape, fill: int | tuple[int, int, int]) -> None:
    """Draw one shape (no anti-aliasing: image and label map agree pixel for pixel)."""
    x0, y0, side = shape.left, shape.top, shape.side
    x1, y1 = x0 + side - 1, y0 + side - 1
    if shape.kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape.kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape.kind == "triangle":
        draw.polygon([(x0 + side / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # diamond
        draw.polygon([(x0 + side / 2, y0), (x1, y0 + side / 2), (x0 + side / 2, y1),
                      (x0, y0 + side / 2)], fill=fill)


def size_word(side: int, image_size: int) -> str:
    """ "small", "" or "large" for a shape of bounding-box ``side`` in an image of ``image_size``."""
    if side < 0.3 * image_size:
        return "small"
    return "large" if side > 0.42 * image_size else ""


def caption(shapes: list[Shape], background: str, image_size: int) -> str:
    """One sentence naming every shape (colour, size, kind), left to right, and the background.

    Reading order (by the centre of each shape's box, left to right, then top to bottom) makes
    the caption a function of the picture, which a captioner can learn; drawing order is not.
    """
    parts = []
    for shape in sorted(shapes, key=lambda s: (2 * s.left + s.side, 2 * s.top + s.side)):
        words = " ".join(w for w in (size_word(shape.side, image_size), shape.color, shape.kind) if w)
        parts.append(f"{'an' if words[0] in 'aeiou' else 'a'} {words}")
    named = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{named} on a {background} background"


def write_shapes_dataset(data_root: str | Path, counts: dict[str, int], size: int = 64,
                         seed: int = 0, color_mode: str = "random") -> dict[str, int]:
    """Write ``counts[split]`` samples per split in the training layout; return the counts."""
    data_root = Path(data_root)
    for split, count in counts.items():
        if split not in SPLIT_IDS:
            raise ValueError(f"unknown split {split!r}; use {sorted(SPLIT_IDS)}")
        captions = {}
        for index in range(count):
            sample = make_sample([seed, SPLIT_IDS[split], index], size=size, color_mode=color_mode)
            name = f"shape_{index:05d}.png"
            atomic_save_image(Image.fromarray(sample.image), data_root / "original_images" / split / name)
            atomic_save_image(label_map_to_pil(sample.label_map),
                              data_root / "segmented_images" / split / name)
            captions[name] = sample.caption
        atomic_write_json(data_root / "segmented_images" / split / "prompts.json", captions)
    return dict(counts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_root", required=True, help="folder to write the layout into")
    parser.add_argument("--train", type=int, default=1000, help="training samples")
    parser.add_argument("--val", type=int, default=64, help="validation samples")
    parser.add_argument("--test", type=int, default=0, help="test samples")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole data set")
    parser.add_argument("--color_mode", choices=COLOR_MODES, default="random",
                        help="random colours named by the caption, or one colour per class")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = {split: getattr(args, split) for split in SPLIT_IDS if getattr(args, split) > 0}
    write_shapes_dataset(args.data_root, counts, size=args.size, seed=args.seed, color_mode=args.color_mode)
    print(f"wrote {counts} shapes samples of {args.size}x{args.size} under {args.data_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
