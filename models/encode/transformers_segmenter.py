"""Label maps from any transformers semantic-segmentation model (SegFormer, UperNet, BEiT, DPT, ...).

``segmentation.family: transformers`` loads ``segmentation.model`` (a Hugging Face id or a
``save_pretrained`` folder) with ``AutoModelForSemanticSegmentation`` and ``AutoImageProcessor``:
the processor normalises, the model gives logits, and ``models.encode.scaling`` bounds the
inference size and brings the logits back to each image's size. The classes come from the
model's ``id2label``: a 150-class ADE20K scene parser (``openmmlab/upernet-convnext-small``, the
annotator of lllyasviel/sd-controlnet-seg, or ``nvidia/segformer-*-finetuned-ade-*``) writes
``ade20k`` maps (model class k as value k + 1, the ADEChallengeData2016 annotation convention,
0 = "other" never predicted); any other model writes a custom label set with its class names.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

from models.config import SegmentationConfig
from models.encode.scaling import group_by_shape, inference_shape, labels_from_logits, resize_image
from models.palettes import ADE20K, ADE20K_CLASSES, LabelSet, custom_label_set

ADE20K_MATCH = 0.9  # share of id2label names equal to ADE20K's that marks a 150-class ADE20K model
DEFAULT_SHORT_SIDE = 512  # when neither the config nor the processor gives an inference size


class TransformersSegmenter(nn.Module):
    """A transformers segmentation model with ``predict``: RGB images in, label maps out."""

    def __init__(self, model: nn.Module, processor, label_set: LabelSet, offset: int, short_side: int):
        super().__init__()
        self.model = model.eval()
        self.processor = processor
        self.label_set = label_set
        self.offset = offset  # added to the model's class index to give the map's value
        self.inference_size = short_side

    @classmethod
    def from_config(cls, config: SegmentationConfig, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> "TransformersSegmenter":
        """Load ``config.model``; ``OSError`` with one line when it cannot be loaded."""
        if not config.model:
            raise OSError("segmentation.family is 'transformers' but segmentation.model is not set "
                          "(a Hugging Face id such as openmmlab/upernet-convnext-small, or a folder)")
        try:
            processor = AutoImageProcessor.from_pretrained(config.model)
            model = AutoModelForSemanticSegmentation.from_pretrained(config.model, dtype=dtype)
        except (OSError, ValueError) as error:
            raise OSError(f"cannot load the segmentation model {config.model!r}: "
                          f"{str(error).splitlines()[0]}") from None
        label_set, offset = model_label_set(model.config.id2label, config.model)
        short_side = config.inference_size or processor_short_side(processor)
        return cls(model.to(device), processor, label_set, offset, short_side)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """(H, W) uint8 label maps for (H, W, 3) uint8 RGB images, each at its own size."""
        shapes = [inference_shape(*image.shape[:2], self.inference_size) for image in images]
        label_maps: list[np.ndarray | None] = [None] * len(images)
        for indices in group_by_shape(shapes):
            resized = [resize_image(images[i], shapes[indices[0]]) for i in indices]
            pixels = self.processor(images=resized, do_resize=False, return_tensors="pt").pixel_values
            logits = self.model(pixel_values=pixels.to(self.device, self.model.dtype)).logits  # (B, C, h', w')
            for index, image_logits in zip(indices, logits):
                labels = labels_from_logits(image_logits, *images[index].shape[:2])
                label_maps[index] = labels + np.uint8(self.offset)
        return label_maps  # type: ignore[return-value]


def model_label_set(id2label: dict, model_name: str) -> tuple[LabelSet, int]:
    """The label set of a model's maps and the offset from its class index to a map value."""
    names = [str(id2label[index]).strip().lower() for index in sorted(id2label, key=int)]
    if len(names) == len(ADE20K_CLASSES) and np.mean([a == b for a, b in zip(names, ADE20K_CLASSES)]) >= ADE20K_MATCH:
        return ADE20K, 1
    if len(names) > 256:
        raise ValueError(f"{model_name}: {len(names)} classes; a label map holds at most 256")
    name = re.sub(r"[^A-Za-z0-9._+-]", "-", Path(model_name.rstrip("/")).name)[:64].lstrip("._+-") or "model"
    return custom_label_set(name, names), 0


def processor_short_side(processor) -> int:
    """The short side the model was trained for, as its processor resizes (512 if it does not say)."""
    size = getattr(processor, "size", None) or {}
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    sides = [get("shortest_edge")] + ([min(get("height"), get("width"))] if get("height") and get("width") else [])
    return next((int(side) for side in sides if side), DEFAULT_SHORT_SIDE)
