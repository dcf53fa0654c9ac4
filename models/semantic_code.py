"""The value that travels between every stage: what is stored about one image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SemanticCode:
    """A label map (class ids at the original image's size), its label set and a caption."""

    label_map: np.ndarray  # (H, W) uint8 class ids
    caption: str
    seed: int | None = None  # decoding seed, when one is stored with the code
    label_set: str = "voc"  # what the ids mean (models.palettes.LabelSet name)

    def __post_init__(self) -> None:
        self.label_map = np.asarray(self.label_map)
        if self.label_map.ndim != 2 or self.label_map.dtype != np.uint8:
            raise ValueError(
                f"label_map must be a 2-D uint8 array, got {self.label_map.shape} {self.label_map.dtype}"
            )

    @property
    def height(self) -> int:
        return int(self.label_map.shape[0])

    @property
    def width(self) -> int:
        return int(self.label_map.shape[1])
