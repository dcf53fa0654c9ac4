"""Decoding semantic codes (label map + caption) into images with Stable Diffusion 1.5 and a ControlNet.

The sampling loop is the one of diffusers' ``StableDiffusionControlNetPipeline`` (Zhang et al.
2023, "Adding Conditional Control to Text-to-Image Diffusion Models"), driven directly on the
same components: control images of any channel count and value range go in as tensors, every
image's starting noise comes from its own seed, guided and unguided halves share one forward
pass, and the batch is VAE-decoded and converted to 8-bit on the device before one transfer.
For the same seeds and settings it returns the stock pipeline's pixels
(tests/test_decoder.py checks this; bench/decode.py times both).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       StableDiffusionControlNetPipeline, UniPCMultistepScheduler)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from models.config import Config, DecodeConfig
from models.control import control_tensor, resize_label_map
from models.controlnet_io import (CheckpointFormatError, ControlNetSource, ControlSpec, check_checkpoint_path,
                                  load_controlnet, resolve_control_spec)
from models.diffusion import SDComponents, load_sd_components
from models.palettes import VOID_LABEL
from models.semantic_code import SemanticCode

# Samplers by name: (class, settings on top of the base model's noise schedule).
SCHEDULERS: dict[str, tuple[type, dict]] = {
    "unipc": (UniPCMultistepScheduler, {}),  # Zhao et al. 2023, UniPC (order 2, bh2)
    "ddim": (DDIMScheduler, {"clip_sample": False}),  # Song et al. 2021, DDIM with eta = 0
    "dpmpp": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),  # Lu et al. 2022
    "euler": (EulerDiscreteScheduler, {}),  # Karras et al. 2022, Euler (deterministic)
}
RESIZE_FILTERS = {"lanczos": Image.LANCZOS, "bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
SIZE_MULTIPLE = 8  # generation sizes are multiples of this many pixels
PRECISIONS = {"32": torch.float32, "16": torch.float16, "bf16": torch.bfloat16}


def make_scheduler(name: str, schedule_config: dict) -> SchedulerMixin:
    """The sampler ``name`` on the noise schedule the UNet was trained with."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    scheduler_class, settings = SCHEDULERS[name]
    return scheduler_class.from_config(schedule_config, **settings)


@dataclass(frozen=True)
class SamplerSettings:
    """How many steps of which sampler, and how strongly caption and control guide them."""

    num_inference_steps: int = 20
    scheduler: str = "unipc"
    guidance_scale: float = 7.5
    controlnet_conditioning_scale: float = 1.0
    negative_prompt: str = ""

    @classmethod
    def from_config(cls, decode: DecodeConfig) -> "SamplerSettings":
        return cls(decode.num_inference_steps, decode.scheduler, decode.guidance_scale,
                   decode.controlnet_conditioning_scale, decode.negative_prompt)


def image_seed(base_seed: int, key: str) -> int:
    """A 63-bit seed from ``base_seed`` and an image's key (its relative path without extension)."""
    digest = hashlib.sha256(f"{base_seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def initial_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(1, *shape) float32 Gaussian noise from a CPU generator: the same on every device."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, *shape), generator=generator, dtype=torch.float32)


def generation_size(width: int, height: int, spec: ControlSpec) -> tuple[int, int]:
    """(width, height) to generate at: the square, or the aspect ratio at about resolution^2 pixels."""
    if not spec.keep_aspect:
        return spec.resolution, spec.resolution
    scale = spec.resolution / math.sqrt(width * height)
    return tuple(max(SIZE_MULTIPLE, round(side * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE)
                 for side in (width, height))


def check_label_map(label_map: np.ndarray, num_classes: int) -> None:
    """Raise ``ValueError`` for class ids outside 0..num_classes-1 other than void (255)."""
    present = np.unique(label_map)
    bad = present[(present >= num_classes) & (present != VOID_LABEL)]
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise ValueError(f"class ids {shown} outside 0..{num_classes - 1} (and {VOID_LABEL} = void)")


def form_batches(keys: list, batch_size: int) -> list[list[int]]:
    """Indices grouped by equal key (first appearance first), in chunks of at most ``batch_size``."""
    groups: dict = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return [members[start:start + batch_size] for members in groups.values()
            for start in range(0, len(members), batch_size)]


class ControlNetDecoder:
    """Label maps and captions to images: SD1.5 components plus one ControlNet."""

    def __init__(self, components: SDComponents, controlnet: torch.nn.Module, spec: ControlSpec,
                 sampler: SamplerSettings = SamplerSettings(), resize_filter: str = "lanczos"):
        self.pipeline = StableDiffusionControlNetPipeline(
            vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
            unet=components.unet, controlnet=controlnet,
            scheduler=make_scheduler(sampler.scheduler, components.scheduler.config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        self.pipeline.set_progress_bar_config(disable=True)
        self.spec, self.sampler = spec, sampler
        self.resize_filter = RESIZE_FILTERS[resize_filter]
        self.vae_scale_factor = components.vae_scale_factor
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.source: ControlNetSource | None = None  # set by from_config
        self.note = ""  # where the control-image convention came from

    @classmethod
    def from_config(cls, config: Config, checkpoint_path: str | None = None) -> "ControlNetDecoder":
        """SD1.5 from ``diffusion.sd_model_path``, the ControlNet from ``checkpoint_path`` (any format)."""
        path = checkpoint_path or config.diffusion.controlnet_path
        if not path:
            raise CheckpointFormatError("no ControlNet: give --checkpoint_path (or diffusion.controlnet_path)")
        check_checkpoint_path(str(path))  # before the minutes that loading SD1.5 can take
        components = load_sd_components(config.diffusion.sd_model_path)
        source = load_controlnet(str(path), components.unet, allow_pickle=config.decode.allow_pickle)
        overlay_unet_weights(components.unet, source)
        spec, note = resolve_control_spec(source, config)
        decoder = cls(components, source.controlnet, spec, SamplerSettings.from_config(config.decode),
                      config.decode.resize_filter)
        decoder.source, decoder.note = source, note
        decoder.enable_memory_options(config.decode)
        return decoder

    def enable_memory_options(self, decode: DecodeConfig) -> None:
        """Attention slicing and VAE slicing/tiling, as set in ``decode`` (CPU offload: see ``place``)."""
        if decode.attention_slicing:
            self.pipeline.enable_attention_slicing()
        if decode.vae_slicing:
            self.pipeline.vae.enable_slicing()
        if decode.vae_tiling:
            self.pipeline.vae.enable_tiling()

    def place(self, device: torch.device, dtype: torch.dtype = torch.float32, cpu_offload: bool = False) -> None:
        """Move every model to ``device`` in ``dtype``, or keep them on the CPU until each one runs."""
        self.device, self.dtype = torch.device(device), dtype
        if dtype != torch.float32:
            self.pipeline.to(dtype=dtype)
        if cpu_offload and self.device.type != "cpu":
            self.pipeline.enable_model_cpu_offload(device=self.device)
        else:
            self.pipeline.to(self.device)

    def generation_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) at which an image of this size is generated."""
        return generation_size(width, height, self.spec)

    def control_image(self, label_map: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """(C, h, w) float32 control image for ``label_map`` at ``size`` = (w, h), in the spec's range."""
        check_label_map(label_map, self.spec.num_classes)
        resized = resize_label_map(label_map, *size)  # nearest: class ids are never blended
        control = control_tensor(resized, self.spec.mode, self.spec.palette, self.spec.num_classes)
        return control * 2 - 1 if self.spec.value_range == "signed" else control

    def decode(self, codes: list[SemanticCode], seeds: list[int], batch_size: int | None = None) -> list[np.ndarray]:
        """(H, W, 3) uint8 images at each code's size; codes of equal generation size share batches."""
        sizes = [self.generation_size(code.width, code.height) for code in codes]
        images: list[np.ndarray] = [None] * len(codes)  # type: ignore[list-item]
        for batch in form_batches(sizes, batch_size or max(1, len(codes))):
            width, height = sizes[batch[0]]
            control = torch.stack([self.control_image(codes[i].label_map, (width, height)) for i in batch])
            noise = torch.cat([initial_noise(seeds[i], self.latent_shape(width, height)) for i in batch])
            pixels = self.sample(control, [codes[i].caption for i in batch], noise)
            for index, image in zip(batch, pixels.numpy()):
                images[index] = self.resize_to(image, codes[index].width, codes[index].height)
        return images

    def latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        """(channels, h, w) of the latents for an image of ``width`` x ``height`` pixels."""
        channels = self.pipeline.unet.config.in_channels
        return channels, height // self.vae_scale_factor, width // self.vae_scale_factor

    def resize_to(self, image: np.ndarray, width: int, height: int) -> np.ndarray:
        """A generated (h, w, 3) uint8 image brought to the original size with ``resize_filter``."""
        if image.shape[:2] == (height, width):
            return image
        return np.asarray(Image.fromarray(image).resize((width, height), self.resize_filter))

    @torch.inference_mode()
    def sample(self, control: torch.Tensor, captions: list[str], noise: torch.Tensor) -> torch.Tensor:
        """(B, h, w, 3) uint8 CPU images from (B, C, h, w) control images and (B, 4, h/f, w/f) noise."""
        pipe, settings = self.pipeline, self.sampler
        guided = settings.guidance_scale > 1
        text = self.encode_text(captions)  # (B, 77, D)
        control = control.to(self.device, self.dtype)
        if guided:  # one forward pass for both halves: [unguided; guided]
            text = torch.cat([self.encode_text([settings.negative_prompt] * len(captions)), text])
            control = torch.cat([control, control])
        pipe.scheduler.set_timesteps(settings.num_inference_steps, device=self.device)
        latents = noise.to(self.device, self.dtype) * pipe.scheduler.init_noise_sigma  # (B, 4, h/f, w/f)
        for timestep in pipe.scheduler.timesteps:  # device tensors: no host synchronisation
            model_input = torch.cat([latents, latents]) if guided else latents
            model_input = pipe.scheduler.scale_model_input(model_input, timestep)
            down, mid = pipe.controlnet(model_input, timestep, encoder_hidden_states=text,
                                        controlnet_cond=control,
                                        conditioning_scale=settings.controlnet_conditioning_scale,
                                        return_dict=False)
            noise_pred = pipe.unet(model_input, timestep, encoder_hidden_states=text,
                                   down_block_additional_residuals=down,
                                   mid_block_additional_residual=mid, return_dict=False)[0]
            if guided:
                unguided, guided_pred = noise_pred.chunk(2)
                noise_pred = unguided + settings.guidance_scale * (guided_pred - unguided)
            latents = pipe.scheduler.step(noise_pred, timestep, latents, return_dict=False)[0]
        images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        images = (images * 0.5 + 0.5).clamp(0, 1).float()  # (B, 3, h, w) in [0, 1]
        pipe.maybe_free_model_hooks()
        return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(B, 77, D) CLIP embeddings of ``texts`` (truncated to the tokenizer's length)."""
        tokenizer = self.pipeline.tokenizer
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return self.pipeline.text_encoder(ids.to(self.device))[0].to(self.dtype)


def overlay_unet_weights(unet: torch.nn.Module, source: ControlNetSource) -> None:
    """Load the UNet weights a checkpoint carries over the base UNet (names must all exist)."""
    if not source.unet_weights:
        return
    try:
        result = unet.load_state_dict(source.unet_weights, strict=False)
    except RuntimeError as error:
        raise CheckpointFormatError(f"{source.path}: its UNet weights do not fit the base UNet ({error})") from None
    if result.unexpected_keys:
        raise CheckpointFormatError(
            f"{source.path}: UNet weights the base UNet does not have, e.g. {result.unexpected_keys[0]!r}")
