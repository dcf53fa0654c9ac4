"""Label sets: what the values of a label map mean and how they are drawn (PASCAL VOC, ADE20K, ...).

A label map is an ``(H, W)`` ``uint8`` array of class ids, always read with its label set
(``LabelSet``): ``voc`` (0 background, 1-20 the VOC objects, 255 void), ``ade20k`` (the 150
SceneParse150 classes as the ADEChallengeData2016 annotations store them: 0 "other"/unlabelled,
v = class v of the benchmark, 1 = wall), ``uint8`` (any byte, no meaning attached) or a named
custom set with its class names (``custom_label_set``, carried in a ``label_set.json`` sidecar).
On disk a map is a palette PNG whose pixel values are the class ids, coloured with its set's
colours, so any image viewer shows the map while every tool reads back the exact ids.

Drawing a map for a ControlNet (``control_colors``) uses the colours that ControlNet was trained
with: its own set's, or, for VOC maps and the public ADE20K ControlNets, each VOC class in the
colour of the ADE20K class that matches it (``VOC_TO_ADE20K_NAME``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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

# The 150 SceneParse150 (ADE20K) classes in benchmark order and MMSegmentation's ADE20K palette:
# model class k (0 = wall) has colour k. lllyasviel's annotator (annotator/uniformer, which made
# the training maps of lllyasviel/sd-controlnet-seg) draws mmseg's ``show_result``: for label,
# colour in enumerate(get_palette("ade")): seg == label gets colour, with the model's labels
# 0..149, then converts to BGR and back to RGB; so wall is (120, 120, 120). The model card's
# snippet prepends (0, 0, 0) and indexes it with the same labels, which shifts every class by one.
# mmseg's palette gives road (6) and skyscraper (48) the same grey (140, 140, 140), so an ADE20K
# colour image cannot be inverted to ids without mistaking one for the other.
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

# Each VOC class drawn as the ADE20K class that the public segmentation ControlNets know best
# (decoding VOC maps with them, zero-shot). No ADE20K class means "background": VOC's background
# is whatever surrounds the 20 objects (sky, grass, water, a room), and drawing it as one class
# (e.g. "wall") asks for that class behind every aeroplane, boat and cow. It is drawn black, the
# colour of no ADE20K class, as void is, so the caption decides what fills it. VOC's six animals
# share ADE20K's one "animal" (the caption names which), trains become ADE20K's nearest vehicle
# ("bus"), motorbikes "minibike", TV monitors "television receiver", dining tables "table".
VOC_TO_ADE20K_NAME: dict[str, str | None] = {
    "background": None, "aeroplane": "airplane", "bicycle": "bicycle", "bird": "animal",
    "boat": "boat", "bottle": "bottle", "bus": "bus", "car": "car", "cat": "animal",
    "chair": "chair", "cow": "animal", "diningtable": "table", "dog": "animal",
    "horse": "animal", "motorbike": "minibike", "person": "person", "pottedplant": "plant",
    "sheep": "animal", "sofa": "sofa", "train": "bus", "tvmonitor": "television receiver",
}
NO_CLASS_COLOR = (0, 0, 0)  # ADE20K "other", and VOC background and void in ADE20K colours
PALETTES = ("voc", "ade20k")  # the colours a ControlNet can have been trained with


@dataclass(frozen=True, eq=False)
class LabelSet:
    """What the values of a label map mean and how they are drawn."""

    name: str
    class_names: tuple[str, ...]  # value v means class_names[v]
    colors: np.ndarray  # (256, 3) uint8: value -> colour (palette PNGs, palette control images)
    void: int | None = None  # a value outside the classes meaning "not labelled" (VOC: 255)
    unlabelled: int | None = None  # a class value meaning "no class" (ADE20K's 0, "other"): drawn, not scored

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check(self, label_map: np.ndarray) -> None:
        """Raise ``ValueError`` naming the values of ``label_map`` that are neither a class nor void."""
        present = np.flatnonzero(np.bincount(np.asarray(label_map, dtype=np.uint8).ravel(), minlength=256))
        bad = present[(present >= self.num_classes) & (present != (-1 if self.void is None else self.void))]
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
            void = f" (and {self.void} = void)" if self.void is not None else ""
            raise ValueError(f"class ids {shown} outside 0..{self.num_classes - 1}{void} of the {self.name} label set")

    def to_dict(self) -> dict:
        """The set as JSON-ready data (the ``label_set.json`` sidecar)."""
        return {"name": self.name, "classes": list(self.class_names), "colors": self.colors[:self.num_classes].tolist()}

    @property
    def ignored(self) -> tuple[int, ...]:
        """Values that are no class when maps are compared (void, unlabelled)."""
        return tuple(value for value in (self.void, self.unlabelled) if value is not None)


def _ade20k_colors() -> np.ndarray:
    """Annotation value v (1..150) in the colour of model class v - 1; 0 ("other") black."""
    colors = np.zeros((256, 3), dtype=np.uint8)
    colors[1:151] = ADE20K_PALETTE
    colors[0] = NO_CLASS_COLOR
    return colors


VOC = LabelSet("voc", VOC_CLASSES, VOC_PALETTE, void=VOID_LABEL)
ADE20K = LabelSet("ade20k", ("other",) + ADE20K_CLASSES, _ade20k_colors(), unlabelled=0)
UINT8 = LabelSet("uint8", tuple(str(value) for value in range(256)), voc_colormap())
LABEL_SETS: dict[str, LabelSet] = {label_set.name: label_set for label_set in (VOC, ADE20K, UINT8)}
LABEL_SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")  # a custom set's name, whole (fullmatch)


def get_label_set(name: str) -> LabelSet:
    """The built-in label set called ``name`` (custom sets come from their sidecar file)."""
    if name not in LABEL_SETS:
        raise ValueError(f"unknown label set {name!r}: built in are {', '.join(LABEL_SETS)}; a custom set "
                         f"needs its label_set.json")
    return LABEL_SETS[name]


def custom_label_set(name: str, class_names: list[str] | tuple[str, ...], colors: list | None = None) -> LabelSet:
    """A named set of 1 to 256 classes (no void: every value is a class); colours default to the
    VOC colour map's, which are distinct."""
    if not LABEL_SET_NAME.fullmatch(name) or name in LABEL_SETS:
        raise ValueError(f"a custom label set needs a name of 1-64 letters, digits and . _ + - other than "
                         f"{', '.join(LABEL_SETS)}; got {name!r}")
    if not 1 <= len(class_names) <= 256:
        raise ValueError(f"label set {name!r}: 1 to 256 classes, got {len(class_names)}")
    table = voc_colormap()
    if colors is not None:
        table[:len(colors)] = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    return LabelSet(name, tuple(str(c) for c in class_names), table)


def label_set_name(text: str) -> str:
    """``text`` (e.g. a model's folder name) made a valid custom set name: other characters become
    "-", at most 64, never a built-in name."""
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", text)[:64].lstrip("._+-") or "classes"
    return f"{name[:56]}-classes" if name in LABEL_SETS else name


def label_set_from_dict(data: dict) -> LabelSet:
    """The set a ``label_set.json`` describes (built-in names give the built-in set)."""
    if data.get("name") in LABEL_SETS:
        return LABEL_SETS[data["name"]]
    return custom_label_set(str(data.get("name")), data.get("classes") or [], data.get("colors"))


def _voc_in_ade20k_colors() -> np.ndarray:
    colors = np.zeros((256, 3), dtype=np.uint8)  # void and every unused value: no class
    for voc_id, voc_name in enumerate(VOC_CLASSES):
        ade_name = VOC_TO_ADE20K_NAME[voc_name]
        colors[voc_id] = NO_CLASS_COLOR if ade_name is None else ADE20K_PALETTE[ADE20K_CLASSES.index(ade_name)]
    return colors


VOC_IN_ADE20K_COLORS = _voc_in_ade20k_colors()


def control_colors(label_set: LabelSet, palette: str, trained_on: str | None = None) -> np.ndarray:
    """(256, 3) colours that draw ``label_set`` maps for a ControlNet trained on ``palette`` colours
    (and on ``trained_on`` maps, when its metadata says): VOC maps for an ADE20K ControlNet
    through ``VOC_TO_ADE20K_NAME``; other sets in their own colours, for a ControlNet trained on
    them. ``ValueError`` saying why for a map the ControlNet cannot know."""
    if palette not in PALETTES:
        raise ValueError(f"unknown palette {palette!r}; choose one of {PALETTES}")
    if label_set.name == "voc" and palette == "ade20k" and trained_on in (None, "voc", "ade20k"):
        return VOC_IN_ADE20K_COLORS
    known = trained_on or (palette if label_set.name in PALETTES or palette == "ade20k" else label_set.name)
    if label_set.name != known:
        raise ValueError(f"{label_set.name} label maps cannot be drawn for a ControlNet trained on {known} maps "
                         f"({palette} colours); use one trained on {label_set.name} maps"
                         + (" (for ADE20K: lllyasviel/sd-controlnet-seg)" if label_set.name == "ade20k" else ""))
    return label_set.colors


def colorize(label_map: np.ndarray, label_set: LabelSet | np.ndarray = VOC) -> np.ndarray:
    """Render an (H, W) label map as an (H, W, 3) uint8 colour image (a set's or a (256, 3) table)."""
    colors = label_set.colors if isinstance(label_set, LabelSet) else label_set
    return colors[np.asarray(label_map, dtype=np.uint8)]


def label_map_to_pil(label_map: np.ndarray, label_set: LabelSet = VOC) -> Image.Image:
    """A mode-"P" image whose pixel values are the class ids, coloured with ``label_set``'s colours."""
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"a label map is 2-D, got shape {label_map.shape}")
    image = Image.fromarray(label_map.astype(np.uint8), mode="P")
    image.putpalette(label_set.colors.reshape(-1).tolist())
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


def colors_to_label_map(rgb: np.ndarray, label_set: LabelSet = VOC) -> np.ndarray:
    """Invert ``colorize``: each pixel's colour to its class id; unknown colours raise."""
    colors = label_set.colors
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
            f"{len(unknown)} colour(s) are not in the {label_set.name} colours, e.g. "
            f"RGB({first >> 16}, {(first >> 8) & 255}, {first & 255})"
        )
    ids = np.array([table[int(u)] for u in unique], dtype=np.uint8)
    return ids[inverse].reshape(codes.shape)
