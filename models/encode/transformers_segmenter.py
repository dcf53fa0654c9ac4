"""Label maps from any transformers semantic-segmentation model (SegFormer, UperNet, BEiT, DPT, ...).

``segmentation.family: transformers`` loads ``segmentation.model`` (a Hugging Face id or a
``save_pretrained`` folder) with ``AutoModelForSemanticSegmentation`` and ``AutoImageProcessor``:
the processor normalises, the model gives logits, and ``models.encode.scaling`` bounds the
inference size and brings the logits back to each image's size. The classes come from the
model's ``id2label``: a 150-class ADE20K scene parser (``openmmlab/upernet-convnext-small``, the
annotator of lllyasviel/sd-controlnet-seg, or ``nvidia/segformer-*-finetuned-ade-*``) writes
``ade20k`` maps (model class k as value k + 1, the ADEChallengeData2016 annotation convention,
0 = "other" never predicted; a 151-class one whose class 0 is "no class" keeps its indices); a
model of the 21 VOC classes writes ``voc`` maps; any other model writes a custom label set with
its class names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

from models.config import SegmentationConfig
from models.encode.scaling import predict_bounded
from models.palettes import ADE20K, ADE20K_CLASSES, VOC, VOC_CLASSES, LabelSet, custom_label_set, label_set_name

NAME_MATCH = 0.9  # share of id2label names equal to a built-in set's that marks a model of that set
DEFAULT_SHORT_SIDE = 512  # when neither the config nor the processor gives an inference size


class TransformersSegmenter(nn.Module):
    """A transformers segmentation model with ``predict``: RGB images in, label maps out."""

    def __init__(self, model: nn.Module, processor, label_set: LabelSet, offset: int, short_side: int,
                 name: str = "the model"):
        super().__init__()
        self.name = name  # what it was loaded from, for messages
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
        return cls(model.to(device), processor, label_set, offset, short_side, config.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """(H, W) uint8 label maps for (H, W, 3) uint8 RGB images, each at its own size."""
        return predict_bounded(images, self.inference_size, self.run_batch, self.offset)

    def run_batch(self, images: list[np.ndarray]) -> torch.Tensor:
        """(B, C, h', w') logits of equally sized images, normalised by the processor (which must
        keep their size: ``models.encode.scaling`` chose it)."""
        pixels = self.processor(images=images, do_resize=False, return_tensors="pt").pixel_values
        if tuple(pixels.shape[-2:]) != images[0].shape[:2]:
            raise ValueError(f"the image processor of {self.name} turned {images[0].shape[1]}x{images[0].shape[0]} "
                             f"input into {pixels.shape[-1]}x{pixels.shape[-2]} (its crop or pad settings: "
                             f"do_center_crop, do_pad); save the processor with them off")
        return self.model(pixel_values=pixels.to(self.device, self.model.dtype)).logits


def _matches(names: list[str], reference: tuple[str, ...]) -> bool:
    """Whether ``names`` are ``reference`` (all but a few renamed classes)."""
    return len(names) == len(reference) and np.mean([a == b for a, b in zip(names, reference)]) >= NAME_MATCH


def model_label_set(id2label: dict, model_name: str) -> tuple[LabelSet, int]:
    """The label set of a model's maps and the offset from its class index to a map value: the
    built-in set when its classes are VOC's or ADE20K's (150, or 151 with a first "no class"),
    else a custom set named after the model."""
    names = [str(id2label[index]).strip().lower() for index in sorted(id2label, key=int)]
    if _matches(names, ADE20K_CLASSES):
        return ADE20K, 1
    if _matches(names[1:], ADE20K_CLASSES):
        return ADE20K, 0
    if _matches(names, VOC_CLASSES):
        return VOC, 0
    if len(names) > 256:
        raise ValueError(f"{model_name}: {len(names)} classes; a label map holds at most 256")
    return custom_label_set(label_set_name(Path(model_name.rstrip("/")).name), names), 0


def processor_short_side(processor) -> int:
    """The short side the model was trained for, as its processor resizes (512 if it does not say)."""
    size = getattr(processor, "size", None) or {}
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    sides = [get("shortest_edge")] + ([min(get("height"), get("width"))] if get("height") and get("width") else [])
    return next((int(side) for side in sides if side), DEFAULT_SHORT_SIDE)
