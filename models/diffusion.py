"""Loading the Stable Diffusion 1.5 components that training and decoding share.

``sd_model_path`` is a diffusers folder or a Hugging Face id (loaded with diffusers' and
transformers' ``from_pretrained``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextModel, CLIPTokenizer


@dataclass
class SDComponents:
    """The parts of an SD1.5 checkpoint that a ControlNet is trained on and decodes with."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    unet: UNet2DConditionModel
    scheduler: SchedulerMixin  # the noise schedule the UNet was trained with (DDPM form)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for SD1.5's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def load_sd_components(sd_model_path: str, dtype: torch.dtype = torch.float32) -> SDComponents:
    """Load VAE, text encoder, tokenizer, UNet and the training scheduler from a folder or hub id."""
    try:
        return SDComponents(
            vae=AutoencoderKL.from_pretrained(sd_model_path, subfolder="vae", torch_dtype=dtype),
            text_encoder=CLIPTextModel.from_pretrained(sd_model_path, subfolder="text_encoder", dtype=dtype),
            tokenizer=CLIPTokenizer.from_pretrained(sd_model_path, subfolder="tokenizer"),
            unet=UNet2DConditionModel.from_pretrained(sd_model_path, subfolder="unet", torch_dtype=dtype),
            scheduler=DDPMScheduler.from_pretrained(sd_model_path, subfolder="scheduler"),
        )
    except (OSError, ValueError) as error:
        raise OSError(
            f"cannot load Stable Diffusion components from {sd_model_path!r}: "
            f"{str(error).splitlines()[0]}. Give a diffusers folder or a Hugging Face id "
            f"(with network access)"
        ) from None
