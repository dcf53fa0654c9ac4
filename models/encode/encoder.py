"""The semantic encoder: images to semantic codes (label map + caption)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from models.config import Config
from models.encode.captioning import BlipCaptioner
from models.encode.segmentation import load_segmenter
from models.runtime import network_dtype
from models.semantic_code import SemanticCode



class SemanticEncoder:
    """Label maps (DeepLabV3+ or a transformers model: ``segmenter.label_set`` says what they mean)
    and BLIP captions for a batch of images."""

    def __init__(self, segmenter: torch.nn.Module, captioner: BlipCaptioner):
        self.segmenter = segmenter
        self.captioner = captioner

    @classmethod
    def from_config(cls, config: Config, device: str | torch.device = "cpu") -> "SemanticEncoder":
        """Load both networks as configured; half precision only on a GPU."""
        device = torch.device(device)
        dtype = network_dtype(config.encode.precision, device)
        segmenter = load_segmenter(config.segmentation, device=device, dtype=dtype)
        captioner = BlipCaptioner.from_config(config.captioning, device=device, dtype=dtype)
        return cls(segmenter, captioner)

    def to(self, device: str | torch.device) -> "SemanticEncoder":
        self.segmenter.to(device)
        self.captioner.model.to(device)
        return self

    def encode(self, images: list[Image.Image | np.ndarray]) -> list[SemanticCode]:
        """One semantic code per RGB image, the label map at the image's own size."""
        arrays = [np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image,
                             dtype=np.uint8) for image in images]
        label_maps = self.segmenter.predict(arrays)
        captions = self.captioner.caption(arrays)
        label_set = self.segmenter.label_set.name
        return [SemanticCode(label_map=m, caption=c, label_set=label_set) for m, c in zip(label_maps, captions)]
