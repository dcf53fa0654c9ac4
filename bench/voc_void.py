"""What VOC's void band does to training label maps: object area and boundary, void as background
against void given the nearest label (``prepare_data.py --void background`` / ``nearest``).

    python bench/voc_void.py [--masks tests/data/voc-samples/masks]

VOC draws a band of void (255) about 5 pixels wide along every object's outline. With void as
background the objects a ControlNet learns from are shrunk by that band; DeepLabV3+, whose maps
decoding meets, puts the edge inside it. Per mask: the void share of the image, the objects'
area (every class but background) under both fillings, and the mean distance from a void pixel to
the nearest labelled pixel (half the band's width).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.evaluation.report import format_table  # noqa: E402
from models.palettes import VOID_LABEL  # noqa: E402
from models.train.prepare_data import fill_void  # noqa: E402


def measure(mask: np.ndarray) -> list:
    """[void share, object pixels (background fill), object pixels (nearest fill), ratio, half band]."""
    void = mask == VOID_LABEL
    background_fill = fill_void(mask, VOID_LABEL, nearest=False)
    nearest_fill = fill_void(mask, VOID_LABEL, nearest=True)
    objects_background, objects_nearest = int((background_fill > 0).sum()), int((nearest_fill > 0).sum())
    half_band = float(ndimage.distance_transform_edt(void)[void].mean()) if void.any() else 0.0
    return [void.mean(), objects_background, objects_nearest, objects_nearest / max(objects_background, 1), half_band]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--masks", default="tests/data/voc-samples/masks", help="VOC ground-truth masks (PNG)")
    args = parser.parse_args(argv)
    paths = sorted(Path(args.masks).glob("*.png"))
    rows = [[path.stem, *measure(np.array(Image.open(path)))] for path in paths]
    totals = np.array([row[1:] for row in rows], dtype=np.float64)
    void_share = float(np.mean(totals[:, 0]))
    objects_background, objects_nearest = totals[:, 1].sum(), totals[:, 2].sum()
    rows.append(["all", void_share, int(objects_background), int(objects_nearest),
                 objects_nearest / objects_background, float(np.mean(totals[:, 4]))])
    print(format_table(["mask", "void share", "object px (void=background)", "object px (void=nearest)",
                        "ratio", "mean void depth (px)"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
