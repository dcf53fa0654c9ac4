"""Decoding semantic codes (label map + caption) into images with Stable Diffusion 1.5 and a ControlNet.

The sampling loop is the one of diffusers' ``StableDiffusionControlNetPipeline`` (Zhang et al.
2023, "Adding Conditional Control to Text-to-Image Diffusion Models"), driven directly on the
same components: control images of any channel count and value range go in as tensors, every
image's starting noise comes from its own seed, guided and unguided halves share one forward
pass, and the batch is VAE-decoded and converted to 8-bit on the device before one transfer.
For the same seeds and settings it returns the stock pipeline's pixels
(tests/test_decode_sampling.py checks this; bench/decode.py and bench/gpu.py time both).

Speed options (``SpeedOptions``, from the ``decode`` config) change float rounding only: the
sampler as precomputed weights (``models.decode.sampling``: no per-step host synchronisation),
channels-last memory layout, fused attention projections and ``torch.compile``. Attention runs
through PyTorch's scaled-dot-product kernels (diffusers' ``AttnProcessor2_0``, its default).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       StableDiffusionControlNetPipeline, UniPCMultistepScheduler)
from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from models.config import Config, ConfigError, DecodeConfig
from models.decode.control import check_drawable, control_tensor, resize_label_map
from models.decode.controlnet_loader import (CheckpointFormatError, ControlNetSource, ControlSpec,
                                             check_checkpoint_path, load_controlnet, resolve_control_spec)
from models.decode.sampling import SamplerPlan, combine, plan_sampler
from models.decode.stable_diffusion import SDComponents, load_sd_components, unet_fingerprint
from models.imageio import RESIZE_FILTERS
from models.palettes import VOC, LabelSet, get_label_set
from models.semantic_code import SemanticCode

# Samplers by name: (class, settings on top of the base model's noise schedule).
SCHEDULERS: dict[str, tuple[type, dict]] = {
    "unipc": (UniPCMultistepScheduler, {}),  # Zhao et al. 2023, UniPC (order 2, bh2)
    "ddim": (DDIMScheduler, {"clip_sample": False}),  # Song et al. 2021, DDIM with eta = 0
    "dpmpp": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),  # Lu et al. 2022
    "euler": (EulerDiscreteScheduler, {}),  # Karras et al. 2022, Euler (deterministic)
}
SIZE_MULTIPLE = 8  # generation sizes are multiples of this many pixels at least (decoders use their UNet's)
MAX_GENERATION_AREA = 2.0  # short-side rule: at most this many times resolution^2 pixels (wider images shrink)


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


@dataclass(frozen=True)
class SpeedOptions:
    """How the models run; each option changes float rounding at most (None: on CUDA only)."""

    precomputed_sampler: bool | None = None  # models.decode.sampling: one weighted sum per step, no host sync
    channels_last: bool | None = None  # NHWC weights and inputs for UNet, ControlNet and VAE
    fuse_qkv: bool = False  # diffusers' fused attention projections
    compile: bool = False  # torch.compile of UNet and ControlNet
    compile_mode: str = "default"

    @classmethod
    def from_config(cls, decode: DecodeConfig) -> "SpeedOptions":
        if decode.compile and decode.cpu_offload:
            raise ConfigError("decode.compile and decode.cpu_offload do not go together (offloading moves "
                              "the compiled models between devices); turn one off")
        return cls(decode.precomputed_sampler, decode.channels_last, decode.fuse_qkv, decode.compile,
                   decode.compile_mode)

    def resolve(self, device: torch.device) -> "SpeedOptions":
        """The options with every None decided for ``device`` (on for CUDA, off elsewhere)."""
        on_cuda = device.type == "cuda"
        return SpeedOptions(on_cuda if self.precomputed_sampler is None else self.precomputed_sampler,
                            on_cuda if self.channels_last is None else self.channels_last,
                            self.fuse_qkv, self.compile, self.compile_mode)


def image_seed(base_seed: int, key: str) -> int:
    """A 63-bit seed from ``base_seed`` and an image's key (its relative path without extension)."""
    digest = hashlib.sha256(f"{base_seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def initial_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(1, *shape) float32 Gaussian noise from a CPU generator: the same on every device."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, *shape), generator=generator, dtype=torch.float32)


class NonFiniteOutput(ValueError):
    """Sampling gave NaN or infinite values (half precision overflowing, or broken weights)."""


def generation_size(width: int, height: int, control: ControlSpec, multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """(width, height) to generate at, in multiples of ``multiple``: the square, or the aspect
    ratio kept with the short side at ``resolution`` (objects at the scale of training's crops;
    at most ``MAX_GENERATION_AREA`` x resolution^2 pixels) or, by the "area" rule, about
    resolution^2 pixels."""
    resolution = control.resolution
    if not control.keep_aspect:
        return resolution, resolution
    scale = resolution / min(width, height) if control.scale == "short_side" else resolution / math.sqrt(width * height)
    limit = MAX_GENERATION_AREA * resolution ** 2
    scale = min(scale, math.sqrt(limit / (width * height)))
    sides = [max(multiple, round(side * scale / multiple) * multiple) for side in (width, height)]
    if sides[0] * sides[1] > limit:  # rounding (or a sliver's floor of one multiple) pushed it over
        long = int(sides[0] < sides[1])
        sides[long] = max(multiple, int(limit / sides[1 - long]) // multiple * multiple)
    return sides[0], sides[1]


def form_batches(keys: list, batch_size: int) -> list[list[int]]:
    """Indices grouped by equal key (first appearance first), in chunks of at most ``batch_size``."""
    groups: dict = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return [members[start:start + batch_size] for members in groups.values()
            for start in range(0, len(members), batch_size)]


class ControlNetDecoder:
    """Label maps and captions to images: SD1.5 components plus one ControlNet."""

    def __init__(self, components: SDComponents, controlnet: torch.nn.Module, control: ControlSpec,
                 sampler: SamplerSettings = SamplerSettings(), resize_filter: str = "lanczos",
                 speed: SpeedOptions = SpeedOptions()):
        self.pipeline = StableDiffusionControlNetPipeline(
            vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
            unet=components.unet, controlnet=controlnet,
            scheduler=make_scheduler(sampler.scheduler, components.scheduler.config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        self.pipeline.set_progress_bar_config(disable=True)
        self.control_spec, self.sampler = control, sampler
        self.resize_filter = RESIZE_FILTERS[resize_filter]
        self.vae_scale_factor = components.vae_scale_factor
        # Generated sides are multiples of one latent pixel at the UNet's coarsest level (64 for
        # SD1.5: the VAE's 8 times the UNet's three halvings), so no level pads or crops.
        halvings = len(components.unet.config.block_out_channels) - 1
        self.size_multiple = max(SIZE_MULTIPLE, self.vae_scale_factor * 2 ** halvings)
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.speed, self.active = speed, speed.resolve(self.device)  # as configured; as in effect
        self.plans: dict[tuple, SamplerPlan] = {}  # per scheduler and step count
        self.source: ControlNetSource | None = None  # set by from_config
        self.note = ""  # where the control-image convention came from
        self.warnings: list[str] = []  # e.g. a base model other than the one the ControlNet was trained on
        self.redone_in_float32: set[int] = set()  # of the last decode() call: codes redone in float32
        self.on_step: Callable[[], None] | None = None  # called once per sampler step (a progress display)
        if speed.fuse_qkv:
            self.fuse_attention_projections()

    @classmethod
    def from_config(cls, config: Config, checkpoint_path: str | None = None) -> "ControlNetDecoder":
        """SD1.5 from ``diffusion.sd_model_path``, the ControlNet from ``checkpoint_path`` (any format)."""
        path = checkpoint_path or config.diffusion.controlnet_path
        if not path:
            raise CheckpointFormatError("no ControlNet: give --checkpoint_path (or diffusion.controlnet_path)")
        check_checkpoint_path(str(path))  # before the minutes that loading SD1.5 can take
        components = load_sd_components(config.diffusion.sd_model_path)
        source = load_controlnet(str(path), components.unet, allow_pickle=config.decode.allow_pickle,
                                 base_name=config.diffusion.sd_model_path)
        warnings = base_model_warnings(source, components.unet, config.diffusion.sd_model_path)
        overlay_unet_weights(components.unet, source)
        control, note = resolve_control_spec(source, config)
        decoder = cls(components, source.controlnet, control, SamplerSettings.from_config(config.decode),
                      config.decode.resize_filter, SpeedOptions.from_config(config.decode))
        decoder.source, decoder.note, decoder.warnings = source, note, warnings
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

    def fuse_attention_projections(self) -> None:
        """One matrix product for q, k, v (k, v in cross-attention): diffusers' fused processor."""
        self.pipeline.unet.fuse_qkv_projections()
        self.pipeline.vae.fuse_qkv_projections()
        controlnet = self.pipeline.controlnet  # ControlNetModel has no such method: as the UNet's does it
        for module in controlnet.modules():
            if isinstance(module, Attention):
                module.fuse_projections(fuse=True)
        controlnet.set_attn_processor(FusedAttnProcessor2_0())

    def place(self, device: torch.device, dtype: torch.dtype = torch.float32, cpu_offload: bool = False) -> None:
        """Move every model to ``device`` in ``dtype`` (or keep them on the CPU until each one runs),
        then apply the speed options that depend on the device."""
        if dtype != torch.float32:
            self.pipeline.to(dtype=dtype)
        if cpu_offload and torch.device(device).type != "cpu":
            self.pipeline.enable_model_cpu_offload(device=device)
        else:
            self.pipeline.to(device)
        self.use(device, dtype)
        if self.active.channels_last:
            for model in (self.pipeline.unet, self.pipeline.controlnet, self.pipeline.vae):
                model.to(memory_format=torch.channels_last)
        if self.active.compile:
            self.compile_models(self.active.compile_mode)

    def use(self, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        """Decode on ``device`` with inputs in ``dtype``, the models left where their owner put them
        (``place`` moves them; training's validation images use its modules in place)."""
        self.device, self.dtype = torch.device(device), dtype
        self.active = self.speed.resolve(self.device)

    def compile_models(self, mode: str = "default", dynamic: bool | None = None, backend: str = "inductor") -> None:
        """``torch.compile`` UNet and ControlNet in place; each compiles at its first call per input size."""
        options = {"mode": mode} if backend == "inductor" else {}
        for model in (self.pipeline.unet, self.pipeline.controlnet):
            model.compile(dynamic=dynamic, backend=backend, **options)

    def generation_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) at which an image of this size is generated."""
        return generation_size(width, height, self.control_spec, self.size_multiple)

    def check_code(self, label_map: np.ndarray, label_set: LabelSet) -> None:
        """``ValueError`` unless this ControlNet can draw ``label_map``: its values are classes (or
        void) of ``label_set`` and the set is one the ControlNet knows (``check_drawable``)."""
        label_set.check(label_map)
        spec = self.control_spec
        check_drawable(label_set, spec.mode, spec.palette, spec.num_classes, spec.label_set)

    def control_image(self, label_map: np.ndarray, size: tuple[int, int], label_set: LabelSet = VOC) -> torch.Tensor:
        """(C, h, w) float32 control image for a ``label_set`` map at ``size`` = (w, h), in the spec's range."""
        self.check_code(label_map, label_set)
        resized = resize_label_map(label_map, *size)  # nearest: class ids are never blended
        spec = self.control_spec
        control = control_tensor(resized, label_set, spec.palette, spec.mode)
        return control * 2 - 1 if spec.value_range == "signed" else control

    def decode(self, codes: list[SemanticCode], seeds: list[int], batch_size: int | None = None,
               label_sets: dict[str, LabelSet] | None = None) -> list[np.ndarray]:
        """(H, W, 3) uint8 images at each code's size; codes of equal generation size share batches.
        A code's label set is a built-in one or, by name, one of ``label_sets``."""
        sizes = [self.generation_size(code.width, code.height) for code in codes]
        sets = [(label_sets or {}).get(code.label_set) or get_label_set(code.label_set) for code in codes]
        images: list[np.ndarray] = [None] * len(codes)  # type: ignore[list-item]
        self.redone_in_float32: set[int] = set()  # indices of codes whose half-precision run was not finite
        for batch in form_batches(sizes, batch_size or max(1, len(codes))):
            width, height = sizes[batch[0]]
            control = torch.stack([self.control_image(codes[i].label_map, (width, height), sets[i]) for i in batch])
            noise = torch.cat([initial_noise(seeds[i], self.latent_shape(width, height)) for i in batch])
            captions = [codes[i].caption for i in batch]
            try:
                pixels = self.sample(control, captions, noise)
            except NonFiniteOutput:
                if self.dtype == torch.float32:
                    raise
                with in_float32(self):
                    pixels = self.sample(control, captions, noise)
                self.redone_in_float32.update(batch)
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
        text, control = self.conditioning(control, captions)
        if self.active.precomputed_sampler:
            latents = self.denoise_planned(noise, text, control)
        else:
            latents = self.denoise(noise, text, control)
        return self.to_pixels(latents)

    def conditioning(self, control: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Text (2B, 77, D) and control images (2B, C, h, w) as [unguided; guided], or (B, ...) unguided."""
        settings = self.sampler
        text = self.encode_text(captions)  # (B, 77, D)
        control = self.layout(control.to(self.device, self.dtype))
        if settings.guidance_scale > 1:  # one forward pass for both halves
            text = torch.cat([self.encode_text([settings.negative_prompt] * len(captions)), text])
            control = torch.cat([control, control])
        return text, control

    def denoise(self, noise: torch.Tensor, text: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
        """(B, 4, h/f, w/f) latents after the scheduler's own steps (the stock pipeline's loop)."""
        scheduler = self.pipeline.scheduler
        scheduler.set_timesteps(self.sampler.num_inference_steps, device=self.device)
        latents = noise.to(self.device, self.dtype) * scheduler.init_noise_sigma  # (B, 4, h/f, w/f)
        for timestep in scheduler.timesteps:
            model_input = scheduler.scale_model_input(latents, timestep)
            noise_pred = self.predict_noise(model_input, timestep, text, control)
            latents = scheduler.step(noise_pred, timestep, latents, return_dict=False)[0]
        return latents

    def denoise_planned(self, noise: torch.Tensor, text: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
        """(B, 4, h/f, w/f) float32 latents after the precomputed sampler: a weighted sum per step."""
        plan = self.sampler_plan()
        timesteps = plan.timesteps.to(self.device)  # copied once per batch, never per step
        input_weights = plan.input_weights.to(self.device, torch.float32)  # (N, N + 1)
        basis = torch.zeros((plan.num_steps + 1, *noise.shape), device=self.device)  # (N + 1, B, 4, h/f, w/f)
        basis[0] = noise.to(self.device)
        for step in range(plan.num_steps):
            model_input = combine(input_weights[step, :step + 1], basis[:step + 1])  # (B, 4, h/f, w/f)
            basis[step + 1] = self.predict_noise(model_input.to(self.dtype), timesteps[step], text, control)
        return combine(plan.final_weights.to(self.device, torch.float32), basis)

    def sampler_plan(self) -> SamplerPlan:
        """The current scheduler's precomputed weights (checked against it once, then cached)."""
        scheduler, steps = self.pipeline.scheduler, self.sampler.num_inference_steps
        key = (type(scheduler).__name__, repr(sorted(scheduler.config.items())), steps)
        if key not in self.plans:
            self.plans[key] = plan_sampler(scheduler, steps)
        return self.plans[key]

    def predict_noise(self, model_input: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor,
                      control: torch.Tensor) -> torch.Tensor:
        """The guided noise prediction (B, 4, h/f, w/f) for a scaled model input of the same shape."""
        pipe, settings = self.pipeline, self.sampler
        guided = settings.guidance_scale > 1
        model_input = self.layout(torch.cat([model_input, model_input]) if guided else model_input)
        down, mid = pipe.controlnet(model_input, timestep, encoder_hidden_states=text, controlnet_cond=control,
                                    conditioning_scale=settings.controlnet_conditioning_scale, return_dict=False)
        noise_pred = pipe.unet(model_input, timestep, encoder_hidden_states=text,
                               down_block_additional_residuals=down, mid_block_additional_residual=mid,
                               return_dict=False)[0]
        if guided:
            unguided, guided_pred = noise_pred.chunk(2)
            noise_pred = unguided + settings.guidance_scale * (guided_pred - unguided)
        if self.on_step is not None:
            self.on_step()
        return noise_pred

    def to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, h, w, 3) uint8 CPU images: the whole batch VAE-decoded and rounded on the device."""
        vae = self.pipeline.vae
        if not torch.isfinite(latents).all():
            raise NonFiniteOutput("the sampler's latents are not all finite")
        latents = self.layout((latents / vae.config.scaling_factor).to(self.dtype))
        images = vae.decode(latents, return_dict=False)[0]
        if not torch.isfinite(images).all():
            raise NonFiniteOutput("the VAE's pixels are not all finite")
        images = (images * 0.5 + 0.5).clamp(0, 1).float()  # (B, 3, h, w) in [0, 1]
        self.pipeline.maybe_free_model_hooks()
        return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()

    def layout(self, tensor: torch.Tensor) -> torch.Tensor:
        """A 4-D model input in the models' memory layout."""
        return tensor.contiguous(memory_format=torch.channels_last) if self.active.channels_last else tensor

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(B, 77, D) CLIP embeddings of ``texts`` (truncated to the tokenizer's length)."""
        tokenizer = self.pipeline.tokenizer
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return self.pipeline.text_encoder(ids.to(self.device))[0].to(self.dtype)


@contextlib.contextmanager
def in_float32(decoder: ControlNetDecoder) -> Iterator[None]:
    """Run ``decoder`` in float32 for a while: its half-precision weights widened (the fix for
    activations that overflow in half precision, as diffusers' VAE upcasting), then back."""
    dtype = decoder.dtype
    decoder.pipeline.to(dtype=torch.float32)
    decoder.dtype = torch.float32
    try:
        yield
    finally:
        decoder.pipeline.to(dtype=dtype)
        decoder.dtype = dtype


def base_model_warnings(source: ControlNetSource, unet: torch.nn.Module, sd_model_path: str) -> list[str]:
    """A warning when the ControlNet's metadata names a base UNet other than ``unet``."""
    trained_on = source.metadata.get("base_fingerprint")
    if not trained_on:
        return []
    fingerprint = unet_fingerprint(unet)
    if fingerprint == trained_on:
        return []
    named = source.metadata.get("sd_model_path") or "another base model"
    return [f"the ControlNet {source.path} was trained on {named} (UNet fingerprint {trained_on}); decoding with "
            f"{sd_model_path} (fingerprint {fingerprint}), whose images it has not learned to steer"]


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
