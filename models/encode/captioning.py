"""BLIP captions (Li et al. 2022, arXiv:2201.12086) through transformers.

Deterministic by construction: beam search (or greedy decoding), never sampling, so the same
image and settings always give the same caption.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import BlipForConditionalGeneration, BlipProcessor

from models.config import CaptioningConfig


class BlipCaptioner:
    """One-line captions for batches of RGB images."""

    def __init__(self, model: BlipForConditionalGeneration, processor: BlipProcessor,
                 config: CaptioningConfig):
        self.model = model.eval()
        self.processor = processor
        self.config = config

    @classmethod
    def from_config(cls, config: CaptioningConfig, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> "BlipCaptioner":
        """Load BLIP from a Hugging Face id or a local ``save_pretrained`` folder."""
        try:
            processor = BlipProcessor.from_pretrained(config.model)
            model = BlipForConditionalGeneration.from_pretrained(config.model, dtype=dtype)
        except (OSError, ValueError) as error:  # a hub id that is neither a folder nor cached
            raise OSError(
                f"cannot load the BLIP captioner from {config.model!r}: "
                f"{str(error).splitlines()[0]}. Give captioning.model a local folder or a "
                f"Hugging Face id (with network access)"
            ) from None
        return cls(model.to(device), processor, config)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def caption(self, images: list[Image.Image | np.ndarray]) -> list[str]:
        """One caption per image; images may have different sizes."""
        if not images:
            return []
        images = [Image.fromarray(i) if isinstance(i, np.ndarray) else i for i in images]
        prompts = [self.config.prefix] * len(images) if self.config.prefix else None
        inputs = self.processor(images=images, text=prompts, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        generated = self.model.generate(
            **inputs,
            num_beams=self.config.num_beams,
            do_sample=False,
            max_new_tokens=self.config.max_length,
            repetition_penalty=self.config.repetition_penalty,
        )
        captions = self.processor.batch_decode(generated, skip_special_tokens=True)
        return [" ".join(caption.split()) for caption in captions]
