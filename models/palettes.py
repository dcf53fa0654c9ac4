"""Class names and colour palettes (PASCAL VOC, ADE20K), and label map <-> colour image.

A label map is an ``(H, W)`` ``uint8`` array of class ids. On disk it is a palette PNG whose
pixel values are the class ids, so any image viewer shows the VOC colours while every tool
reads back the exact ids.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)
NUM_VOC_CLASSES = len(VOC_CLASSES)  # 21
VOID_LABEL = 255  # VOC's "void / object boundary" label in ground-truth masks


def voc_colormap(num_entries: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: bit i of the class id goes to bit 7 - i//3 of one channel."""
    colormap = np.zeros((num_entries, 3), dtype=np.uint8)
    for class_id in range(num_entries):
        value, red, green, blue = class_id, 0, 0, 0
        for shift in range(7, -1, -1):
            red |= ((value >> 0) & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        colormap[class_id] = (red, green, blue)
    return colormap


VOC_PALETTE: np.ndarray = voc_colormap()  # (256, 3) uint8; row 255 is the void colour

# The 150 SceneParse150 (ADE20K) classes and the palette that MMSegmentation and the public
# segmentation ControlNet (lllyasviel/sd-controlnet-seg) use; ADE20K class k has colour k.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator",
    "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door",
    "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt",
    "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan",
    "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
ADE20K_PALETTE: np.ndarray = np.array([
    [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3],
    [120, 120, 80], [140, 140, 140], [204, 5, 255], [230, 230, 230], [4, 250, 7],
    [224, 5, 255], [235, 255, 7], [150, 5, 61], [120, 120, 70], [8, 255, 51],
    [255, 6, 82], [143, 255, 140], [204, 255, 4], [255, 51, 7], [204, 70, 3],
    [0, 102, 200], [61, 230, 250], [255, 6, 51], [11, 102, 255], [255, 7, 71],
    [255, 9, 224], [9, 7, 230], [220, 220, 220], [255, 9, 92], [112, 9, 255],
    [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10],
    [7, 255, 255], [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7],
    [255, 122, 8], [0, 255, 20], [255, 8, 41], [255, 5, 153], [6, 51, 255],
    [235, 12, 255], [160, 150, 20], [0, 163, 255], [140, 140, 140], [250, 10, 15],
    [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0], [153, 255, 0],
    [0, 0, 255], [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255],
    [11, 200, 200], [255, 82, 0], [0, 255, 245], [0, 61, 255], [0, 255, 112],
    [0, 255, 133], [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0],
    [0, 143, 255], [51, 255, 0], [0, 82, 255], [0, 255, 41], [0, 255, 173],
    [10, 0, 255], [173, 255, 0], [0, 255, 153], [255, 92, 0], [255, 0, 255],
    [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20], [255, 184, 184],
    [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194],
    [0, 255, 82], [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255],
    [0, 122, 255], [0, 255, 163], [255, 153, 0], [0, 255, 10], [255, 112, 0],
    [143, 255, 0], [82, 0, 255], [163, 255, 0], [255, 235, 0], [8, 184, 170],
    [133, 0, 255], [0, 255, 92], [184, 0, 255], [255, 0, 31], [0, 184, 255],
    [0, 214, 255], [255, 0, 112], [92, 255, 0], [0, 224, 255], [112, 224, 255],
    [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0], [255, 0, 163],
    [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235],
    [245, 0, 255], [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0],
    [0, 204, 255], [20, 0, 255], [255, 255, 0], [0, 153, 255], [0, 41, 255],
    [0, 255, 204], [41, 0, 255], [41, 255, 0], [173, 0, 255], [0, 245, 255],
    [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255], [184, 255, 0],
    [0, 133, 255], [255, 214, 0], [25, 194, 194], [102, 255, 0], [92, 0, 255],
], dtype=np.uint8)  # (150, 3)

# Each VOC class drawn as the ADE20K class that the public segmentation ControlNet knows best.
# VOC's background has no ADE20K counterpart; "wall" (mid grey, the first and most frequent
# ADE20K class) is the most neutral choice: it asks for a plain surface, not sky or grass.
VOC_TO_ADE20K_NAME: dict[str, str] = {
    "background": "wall", "aeroplane": "airplane", "bicycle": "bicycle", "bird": "animal",
    "boat": "boat", "bottle": "bottle", "bus": "bus", "car": "car", "cat": "animal",
    "chair": "chair", "cow": "animal", "diningtable": "table", "dog": "animal",
    "horse": "animal", "motorbike": "minibike", "person": "person", "pottedplant": "plant",
    "sheep": "animal", "sofa": "sofa", "train": "bus", "tvmonitor": "monitor",
}


def voc_to_ade20k_palette() -> np.ndarray:
    """A 256-entry palette that draws VOC class ids in their matching ADE20K colours."""
    palette = VOC_PALETTE.copy()
    for voc_id, voc_name in enumerate(VOC_CLASSES):
        ade_id = ADE20K_CLASSES.index(VOC_TO_ADE20K_NAME[voc_name])
        palette[voc_id] = ADE20K_PALETTE[ade_id]
    return palette


PALETTES: dict[str, np.ndarray] = {"voc": VOC_PALETTE, "ade20k": voc_to_ade20k_palette()}


def get_palette(name: str) -> np.ndarray:
    """The (256, 3) uint8 palette called ``name`` ("voc" or "ade20k")."""
    if name not in PALETTES:
        raise ValueError(f"unknown palette {name!r}; choose one of {sorted(PALETTES)}")
    return PALETTES[name]


def colorize(label_map: np.ndarray, palette: str | np.ndarray = "voc") -> np.ndarray:
    """Render an (H, W) label map as an (H, W, 3) uint8 colour image."""
    colors = get_palette(palette) if isinstance(palette, str) else palette
    return colors[np.asarray(label_map, dtype=np.uint8)]


def label_map_to_pil(label_map: np.ndarray, palette: str = "voc") -> Image.Image:
    """A mode-"P" image whose pixel values are the class ids, coloured with ``palette``."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"a label map is 2-D, got shape {label_map.shape}")
    image = Image.fromarray(label_map.astype(np.uint8), mode="P")
    image.putpalette(get_palette(palette).reshape(-1).tolist())
    return image


def label_map_from_pil(image: Image.Image) -> np.ndarray:
    """Class ids from a label-map image: palette indices, or gray levels for an "L" image."""
    if image.mode in ("P", "L"):
        return np.array(image, dtype=np.uint8)
    if image.mode in ("I", "I;16", "I;16B"):
        values = np.array(image)
        if values.min() < 0 or values.max() > 255:
            raise ValueError(f"label values outside 0..255 in a {image.mode} image")
        return values.astype(np.uint8)
    raise ValueError(
        f"a label map must be a palette or gray PNG (pixel value = class id), got mode "
        f"{image.mode!r}; colour images are ambiguous, convert them with colors_to_label_map"
    )


def colors_to_label_map(rgb: np.ndarray, palette: str = "voc") -> np.ndarray:
    """Invert ``colorize``: each pixel's colour to its class id; unknown colours raise."""
    colors = get_palette(palette)
    rgb = np.asarray(rgb, dtype=np.uint8)
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    table = {}
    for class_id in range(len(colors) - 1, -1, -1):  # lowest id wins for repeated colours
        r, g, b = (int(c) for c in colors[class_id])
        table[(r << 16) | (g << 8) | b] = class_id
    unique, inverse = np.unique(codes, return_inverse=True)
    unknown = [int(u) for u in unique if int(u) not in table]
    if unknown:
        first = unknown[0]
        raise ValueError(
            f"{len(unknown)} colour(s) are not in the {palette} palette, e.g. "
            f"RGB({first >> 16}, {(first >> 8) & 255}, {first & 255})"
        )
    ids = np.array([table[int(u)] for u in unique], dtype=np.uint8)
    return ids[inverse].reshape(codes.shape)
