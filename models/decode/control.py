"""Control images: how a label map is shown to the ControlNet.

Training and decoding must render a label map the same way, so both go through this module.
Two renderings:

- ``palette`` (default): the label map drawn in the colours the ControlNet was trained with
  (``models.palettes.control_colors``: a VOC ControlNet's, or ADE20K's for the public segmentation
  ControlNets, which also draws VOC maps through the VOC-to-ADE20K class mapping), 3 channels;
- ``onehot``: one channel per class of the map's label set; values outside its classes (VOC's
  void 255) are all zeros.

Both give float tensors in [0, 1], the range diffusers' ControlNet pipelines feed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.config import CONDITIONING_MODES
from models.palettes import VOC, LabelSet, control_colors


def conditioning_channels(mode: str, num_classes: int = 21) -> int:
    """Number of control-image channels for a rendering mode."""
    if mode not in CONDITIONING_MODES:
        raise ValueError(f"unknown conditioning mode {mode!r}; choose one of {CONDITIONING_MODES}")
    return 3 if mode == "palette" else num_classes


def check_drawable(label_set: LabelSet, mode: str, palette: str, num_classes: int | None = None,
                   trained_on: str | None = None) -> None:
    """``ValueError`` saying why, unless maps of ``label_set`` can be shown to a ControlNet with
    ``mode`` control: in ``palette`` colours it knows (trained on ``trained_on`` maps, when known),
    or one-hot with one channel per class (``num_classes``, when the ControlNet exists)."""
    if mode == "palette":
        control_colors(label_set, palette, trained_on)
    elif num_classes is not None and label_set.num_classes != num_classes:
        raise ValueError(f"the {label_set.name} label set has {label_set.num_classes} classes, the ControlNet's "
                         f"one-hot control {num_classes}")
    elif trained_on is not None and label_set.name != trained_on:
        raise ValueError(f"{label_set.name} label maps cannot be shown to a ControlNet trained on {trained_on} maps")


def resize_label_map(label_map: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) uint8 label map (class ids are never blended)."""
    if label_map.shape == (height, width):
        return label_map
    return np.asarray(Image.fromarray(label_map).resize((width, height), Image.NEAREST))


def control_tensor(label_map: np.ndarray, label_set: LabelSet = VOC, palette: str = "voc",
                   mode: str = "palette") -> torch.Tensor:
    """(C, H, W) float32 control image in [0, 1] for an (H, W) uint8 label map of ``label_set``,
    for a ControlNet trained on ``palette`` colours (``palette`` mode) or one-hot classes."""
    conditioning_channels(mode, label_set.num_classes)
    label_map = np.asarray(label_map, dtype=np.uint8)
    if mode == "palette":
        colors = torch.from_numpy(control_colors(label_set, palette)[label_map])  # (H, W, 3) uint8
        return colors.permute(2, 0, 1).float() / 255.0
    ids = torch.from_numpy(label_map.astype(np.int64))  # (H, W)
    valid = ids < label_set.num_classes
    one_hot = F.one_hot(torch.where(valid, ids, 0), label_set.num_classes)  # (H, W, classes)
    return (one_hot * valid.unsqueeze(-1)).permute(2, 0, 1).float()
