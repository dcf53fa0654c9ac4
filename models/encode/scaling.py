"""Segmenting at a bounded inference size: images go to the network at the scale it was trained at,
and its logits come back to the image's own size.

A segmentation network is trained on crops of a few hundred pixels (DeepLabV3+ on VOC: 513; the
ADE20K models: short side 512 or 640). Run on a 12-megapixel photo at full size it sees objects
at several times that scale and needs tens of gigabytes for a batch. So with an inference size
``S`` an image is resized (antialiased) to a short side of ``S`` pixels, its long side at most
``MAX_ASPECT`` times that, the network runs there, and the logits are resized back bilinearly
(``align_corners=False``) and turned into labels in strips of rows, so the full-size logits of
150 classes (7 GB for one 4000x3000 photo in float32) never exist at once.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MAX_ASPECT = 4  # the long side at inference is at most this many times the short side
STRIP_BYTES = 64 * 2**20  # upsampled logits held at once while labelling a strip of rows


def inference_shape(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(h, w) at which an image of ``height`` x ``width`` goes to the network (its own size if None)."""
    if short_side is None:
        return height, width
    scale = short_side / min(height, width)
    long_side = min(round(max(height, width) * scale), MAX_ASPECT * short_side)
    return (short_side, long_side) if height <= width else (long_side, short_side)


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A writable (h, w, 3) uint8 copy of ``image`` at ``shape`` = (h, w), antialiased (Pillow's bicubic)."""
    if image.shape[:2] == tuple(shape):
        return image.copy()
    return np.array(Image.fromarray(image).resize((shape[1], shape[0]), Image.Resampling.BICUBIC))


def labels_from_logits(logits: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(height, width) uint8 argmax of (C, h, w) logits resized bilinearly to that size, computed
    in strips of rows (``grid_sample`` at the output pixels' centres is ``F.interpolate``'s
    bilinear, ``align_corners=False``, with the borders clamped)."""
    channels = logits.shape[0]
    if logits.shape[1:] == (height, width):
        return logits.argmax(0).to(torch.uint8).cpu().numpy()
    rows = max(1, STRIP_BYTES // (4 * channels * width))
    xs = (torch.arange(width, device=logits.device, dtype=torch.float32) + 0.5) / width * 2 - 1  # (W,)
    labels = np.empty((height, width), dtype=np.uint8)
    source = logits[None].float()  # (1, C, h, w)
    for top in range(0, height, rows):
        ys = (torch.arange(top, min(top + rows, height), device=logits.device, dtype=torch.float32) + 0.5)
        ys = ys / height * 2 - 1  # (r,)
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]  # (1, r, W, 2) as (x, y)
        strip = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)
        labels[top:top + len(ys)] = strip[0].argmax(0).to(torch.uint8).cpu().numpy()  # (r, W)
    return labels


def group_by_shape(shapes: list[tuple[int, int]]) -> list[list[int]]:
    """Indices of equal (h, w) shapes, first appearance first: the images that share a batch."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(index)
    return list(groups.values())


def predict_bounded(images: list[np.ndarray], short_side: int | None,
                    run_batch: Callable[[list[np.ndarray]], torch.Tensor], offset: int = 0) -> list[np.ndarray]:
    """(H, W) uint8 label maps for (H, W, 3) uint8 RGB ``images``, each at its own size.

    Each image goes to the network at ``inference_shape(..., short_side)``; images of equal
    network size share a batch without padding, so a label map never depends on the others.
    ``run_batch`` takes equally sized images and returns their (B, C, h, w) logits; ``offset`` is
    added to the class index to give the map's value.
    """
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    shapes = [inference_shape(*image.shape[:2], short_side) for image in images]
    label_maps: list[np.ndarray | None] = [None] * len(images)
    for indices in group_by_shape(shapes):
        logits = run_batch([resize_image(images[i], shapes[indices[0]]) for i in indices])  # (B, C, h, w)
        for index, image_logits in zip(indices, logits):
            label_maps[index] = labels_from_logits(image_logits, *images[index].shape[:2]) + np.uint8(offset)
    return label_maps  # type: ignore[return-value]
