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

Sample ``index`` of a split is a pure function of ``[seed, split, index]`` (``split_sample``):
training uses ``train`` and ``val``, the quality check and the demo ``test`` (``HELD_OUT_SPLIT``).

    python -m models.quickstart.shapes --data_root data/shapes --train 2000 --val 64 --size 64

writes the training layout that ``models.train.data`` reads (``original_images/{split}/``,
``segmented_images/{split}/`` with palette PNGs and ``prompts.json``); ``read_split`` reads a split
back into memory for the quickstart's training loops.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from models.imageio import atomic_save_image, read_label_map, read_rgb
from models.layout import PROMPTS_FILE, SPLITS, label_map_relpath, read_prompts, split_folders, write_prompts
from models.palettes import label_map_to_pil

IMAGE_SIZE = 64  # side of the quickstart system's images
HELD_OUT_SPLIT = "test"  # the split that training never sees

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
# Each split draws from its own seed stream, its place in models.layout.SPLITS (train 0, val 1,
# test 2): reordering SPLITS would change every sample.
SPLIT_IDS = {split: stream for stream, split in enumerate(SPLITS)}


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


def make_sample(seed: int | list[int], size: int = IMAGE_SIZE, max_shapes: int = 3,
                color_mode: str = "random", width: int | None = None) -> ShapesSample:
    """A random sample, fully determined by ``seed`` (an int or a list of ints).

    ``color_mode="random"``: shape and background colours vary (the caption names them);
    ``"by_class"``: each class has one colour (``CLASS_COLORS``) on a grey background, so the
    label map alone determines the image. ``width``: a wider canvas (``size`` stays its height
    and sets the shapes' sizes, as in the square images).
    """
    if color_mode not in COLOR_MODES:
        raise ValueError(f"unknown color_mode {color_mode!r}; use one of {COLOR_MODES}")
    width = width or size
    rng = np.random.default_rng(seed)
    background = str(rng.choice(list(BACKGROUND_COLORS))) if color_mode == "random" else CLASS_BACKGROUND
    shapes = _place_shapes(rng, size, int(rng.integers(1, max_shapes + 1)), background, width)
    if color_mode == "by_class":
        shapes = [Shape(s.kind, CLASS_COLORS[s.kind], s.left, s.top, s.side) for s in shapes]
    image = Image.new("RGB", (width, size), BACKGROUND_COLORS[background])
    label_map = Image.new("L", (width, size), 0)
    for shape in shapes:
        _draw(ImageDraw.Draw(image), shape, SHAPE_COLORS[shape.color])
        _draw(ImageDraw.Draw(label_map), shape, SHAPE_CLASS_IDS[shape.kind])
    return ShapesSample(np.asarray(image), np.asarray(label_map), caption(shapes, background, size),
                        tuple(shapes), background)


def _place_shapes(rng: np.random.Generator, size: int, count: int, background: str,
                  width: int | None = None) -> list[Shape]:
    """Up to ``count`` shapes whose bounding boxes do not overlap (rejection sampling) on a
    ``width`` x ``size`` canvas (square by default)."""
    shapes: list[Shape] = []
    colors = [name for name in SHAPE_COLORS if name != background]  # always visible
    for _ in range(50 * count):
        if len(shapes) == count:
            break
        side = int(rng.integers(size // 5, size // 2 + 1))
        if width in (None, size):  # the square images' exact random stream
            left, top = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        else:
            left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, size - side + 1))
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


def split_sample(split: str, index: int, seed: int = 0, size: int = IMAGE_SIZE,
                 color_mode: str = "random") -> ShapesSample:
    """Sample ``index`` of ``split`` in the data set of ``seed``."""
    return make_sample([seed, SPLIT_IDS[split], index], size=size, color_mode=color_mode)


def held_out_samples(count: int, seed: int = 0, split: str = HELD_OUT_SPLIT) -> list[ShapesSample]:
    """The first ``count`` samples of ``split``: by default the split that training never uses;
    ``val`` (train.py's validation images) is for choosing settings."""
    return [split_sample(split, index, seed) for index in range(count)]


def image_name(index: int) -> str:
    """The file name of sample ``index`` (of any split)."""
    return f"shape_{index:05d}.png"


def write_samples(samples: Iterable[ShapesSample], image_dir: Path, label_map_dir: Path) -> dict[str, str]:
    """Each sample's image into ``image_dir`` and its label map (palette PNG) into ``label_map_dir``,
    named by position; returns the captions by image name."""
    captions = {}
    for index, sample in enumerate(samples):
        name = image_name(index)
        atomic_save_image(Image.fromarray(sample.image), image_dir / name)
        atomic_save_image(label_map_to_pil(sample.label_map), label_map_dir / label_map_relpath(name))
        captions[name] = sample.caption
    return captions


def write_shapes_dataset(data_root: str | Path, counts: dict[str, int], size: int = IMAGE_SIZE,
                         seed: int = 0, color_mode: str = "random") -> None:
    """Write ``counts[split]`` samples per split in the training layout."""
    unknown = sorted(set(counts) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split {unknown[0]!r}; use {list(SPLITS)}")
    for split, count in counts.items():
        image_dir, label_map_dir = split_folders(data_root, split)
        samples = (split_sample(split, index, seed, size, color_mode) for index in range(count))
        write_prompts(label_map_dir / PROMPTS_FILE, write_samples(samples, image_dir, label_map_dir))


@dataclass
class ShapesSplit:
    """One split of the shapes data, in memory."""

    names: list[str]
    images: np.ndarray  # (N, H, W, 3) uint8
    label_maps: np.ndarray  # (N, H, W) uint8
    captions: list[str]


def read_split(data_root: str | Path, split: str) -> ShapesSplit:
    """The split as ``models.quickstart.shapes`` wrote it (training layout), sorted by name."""
    image_dir, label_map_dir = split_folders(data_root, split)
    captions = read_prompts(label_map_dir / PROMPTS_FILE)
    names = sorted(captions)
    images = [np.asarray(read_rgb(image_dir / name)) for name in names]
    label_maps = [read_label_map(label_map_dir / label_map_relpath(name)) for name in names]
    return ShapesSplit(names, np.stack(images), np.stack(label_maps), [captions[n] for n in names])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.quickstart.shapes",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_root", required=True, help="folder to write the layout into")
    parser.add_argument("--train", type=int, default=1000, help="training samples")
    parser.add_argument("--val", type=int, default=64, help="validation samples")
    parser.add_argument("--test", type=int, default=0, help="test samples")
    parser.add_argument("--size", type=int, default=IMAGE_SIZE, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the whole data set")
    parser.add_argument("--color_mode", choices=COLOR_MODES, default="random",
                        help="random colours named by the caption, or one colour per class")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = {split: getattr(args, split) for split in SPLITS if getattr(args, split) > 0}
    write_shapes_dataset(args.data_root, counts, size=args.size, seed=args.seed, color_mode=args.color_mode)
    print(f"wrote {counts} shapes samples of {args.size}x{args.size} under {args.data_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
