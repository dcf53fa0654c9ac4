"""The training loop: the Lightning module that trains the ControlNet decoder on frozen SD1.5.

The objective is the one of ControlNet (Zhang, Rao and Agrawala, 2023, "Adding Conditional
Control to Text-to-Image Diffusion Models") and of diffusers' ``train_controlnet`` example: the
VAE latent of the photograph (times the VAE's scaling factor) is noised at a uniformly drawn
timestep, the frozen SD1.5 UNet plus a trainable ControlNet that sees the label map predict
the scheduler's target (epsilon, or v for v-prediction models; Salimans and Ho, 2022), and the
loss is their mean squared error. Captions are dropped (replaced by "") with probability
``train.prompt_dropout`` so that classifier-free guidance (Ho and Salimans, 2022) works at
decoding time.

Checkpoints hold only what is trained, in the format of ``models.decode.checkpoint_format``
(docs/training.md, the contract with decoding), and ``export`` writes that module's export folder.
Validation images are drawn by the decoder users get (``models.train.validation``).
"""

from __future__ import annotations

import copy
import math
import zlib
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler

from models.config import Config, ConfigError
from models.decode.checkpoint_format import (CONTROLNET_PREFIX, EMA_PREFIX, TRAINING_KEY, UNET_PREFIX, TrainedWeights,
                                             controlnet_config_dict, training_record, write_export)
from models.decode.control import conditioning_channels
from models.decode.controlnet_loader import check_fits_unet
from models.decode.stable_diffusion import SDComponents, load_sd_components, unet_fingerprint
from models.palettes import VOC, LabelSet
from models.train.data import derived_seed

NOISE_STREAM = 1  # derived_seed(seed, NOISE_STREAM, draw): latents, dropout, noise, timesteps
INIT_STREAM = 2  # derived_seed(seed, INIT_STREAM): the ControlNet's freshly initialised layers
HALF_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
UNET_DECODER_MODULES = ("up_blocks", "conv_norm_out", "conv_out")  # the UNet's decoder half
LR_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}
HINT_CHANNELS = (16, 32, 96, 256)  # ControlNet's hint encoder widths for SD1.5 (VAE factor 8)


def check_train_config(config: Config) -> None:
    """Refuse settings that cannot work, saying what to change (raises ConfigError)."""
    train = config.train
    problems = []
    if config.diffusion.resolution % 8:
        problems.append(f"diffusion.resolution must be a multiple of 8, got {config.diffusion.resolution}")
    if not 0.0 <= train.prompt_dropout <= 1.0:
        problems.append(f"train.prompt_dropout must be in [0, 1], got {train.prompt_dropout}")
    if train.ema_decay is not None and not 0.0 < train.ema_decay < 1.0:
        problems.append(f"train.ema_decay must be in (0, 1) or null, got {train.ema_decay}")
    if train.cache_latents and (train.random_crop or train.random_flip):
        problems.append("train.cache_latents needs fixed inputs: set train.random_crop=false and "
                        "train.random_flip=false")
    for key in ("batch_size", "accumulate_grad_batches", "max_steps", "checkpoint_every_n_steps",
                "val_every_n_steps", "log_every_n_steps"):
        if getattr(train, key) < 1:
            problems.append(f"train.{key} must be at least 1, got {getattr(train, key)}")
    if train.optimizer == "adamw8bit":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            problems.append("train.optimizer=adamw8bit needs bitsandbytes (pip install bitsandbytes, "
                            "CUDA only); or use train.optimizer=adamw")
    if problems:
        raise ConfigError("; ".join(problems))


def hint_channels(vae_scale_factor: int) -> tuple[int, ...]:
    """Hint-encoder widths with one stride-2 stage per halving of the VAE (8: 16, 32, 96, 256)."""
    stages = int(math.log2(vae_scale_factor))
    if 2 ** stages != vae_scale_factor or stages + 1 > len(HINT_CHANNELS):
        raise ValueError(f"unsupported VAE scale factor {vae_scale_factor} (1, 2, 4 or 8)")
    return HINT_CHANNELS[:stages + 1]


def initial_controlnet(components: SDComponents, config: Config, label_set: LabelSet = VOC) -> ControlNetModel:
    """``diffusion.controlnet_path`` if set (fine-tuning), else a ControlNet copied from the UNet."""
    channels = conditioning_channels(config.diffusion.conditioning, label_set.num_classes)
    path = config.diffusion.controlnet_path
    if path is None:
        return ControlNetModel.from_unet(components.unet, conditioning_channels=channels,
                                         conditioning_embedding_out_channels=hint_channels(
                                             components.vae_scale_factor))
    if Path(path).expanduser().is_file():
        raise OSError(f"cannot fine-tune from the file {path}: training starts from a diffusers ControlNet folder "
                      f"or hub id (python -m models.train.export CKPT OUT makes a folder of a training checkpoint), "
                      f"or set diffusion.controlnet_path=null to start from the UNet")
    try:
        controlnet = ControlNetModel.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise OSError(f"cannot load the ControlNet to fine-tune from {path!r}: "
                      f"{str(error).splitlines()[0]}; set diffusion.controlnet_path=null to start "
                      f"from the UNet") from None
    check_fits_unet(controlnet.config, components.unet.config, path, config.diffusion.sd_model_path)
    if controlnet.config.conditioning_channels != channels:
        raise ValueError(f"{path} takes {controlnet.config.conditioning_channels} control channels, "
                         f"{config.diffusion.conditioning!r} conditioning gives {channels}; set "
                         f"diffusion.controlnet_path=null to start from the UNet")
    return controlnet


def check_scheduler(scheduler_config, val_timesteps: list[int]) -> None:
    """``ConfigError`` unless ``train.val_timesteps`` are timesteps of the scheduler; ``ValueError``
    for a prediction type the loss does not know."""
    steps = scheduler_config.num_train_timesteps
    if any(not 0 <= t < steps for t in val_timesteps):
        raise ConfigError(f"train.val_timesteps must lie in [0, {steps}), got {val_timesteps}")
    if scheduler_config.prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"unsupported prediction type {scheduler_config.prediction_type!r}")


class ControlNetModule(pl.LightningModule):
    """Frozen SD1.5 (VAE, CLIP text encoder, UNet) and a trainable ControlNet."""

    def __init__(self, config: Config, components: SDComponents | None = None, label_set: LabelSet = VOC):
        super().__init__()
        check_train_config(config)
        self.config, self.label_set = config, label_set  # label_set: of the training maps
        components = components or load_sd_components(config.diffusion.sd_model_path)
        self.base_fingerprint = unet_fingerprint(components.unet)  # before any of it trains
        self.vae, self.text_encoder, self.unet = components.vae, components.text_encoder, components.unet
        self.tokenizer, self.noise_scheduler = components.tokenizer, components.scheduler
        with torch.random.fork_rng(devices=[]):  # the same initial weights in every run and rank
            torch.manual_seed(derived_seed(config.train.seed, INIT_STREAM))
            self.controlnet = initial_controlnet(components, config, label_set)
        self._freeze()
        self.controlnet_ema = (copy.deepcopy(self.controlnet).requires_grad_(False)
                               if config.train.ema_decay is not None else None)
        self._configure_speed()
        check_scheduler(self.noise_scheduler.config, config.train.val_timesteps)
        self.strict_loading = False  # checkpoints leave the frozen weights out on purpose
        self.latent_cache: dict[str, torch.Tensor] = {}
        self.text_cache: dict[str, torch.Tensor] = {}
        self._ema_step = 0

    def _freeze(self) -> None:
        """Freeze SD1.5 (eval mode, no gradients), optionally unfreezing the UNet decoder half."""
        for module in (self.vae, self.text_encoder, self.unet):
            module.requires_grad_(False).eval()
        if self.config.train.unet_decoder:
            for name in UNET_DECODER_MODULES:
                getattr(self.unet, name).requires_grad_(True)
        self.controlnet.requires_grad_(True).train()

    def _configure_speed(self) -> None:
        """Attention kernels, gradient checkpointing and memory layout from the config."""
        train = self.config.train
        processor = AttnProcessor2_0 if train.attention == "sdpa" else AttnProcessor
        for module in (self.controlnet, self.unet, self.vae):
            module.set_attn_processor(processor())
        if train.gradient_checkpointing:
            self.controlnet.enable_gradient_checkpointing()
            if train.unet_decoder:
                self.unet.enable_gradient_checkpointing()
        if train.channels_last:
            self.controlnet.to(memory_format=torch.channels_last)
            self.unet.to(memory_format=torch.channels_last)

    def sd_components(self) -> SDComponents:
        """The frozen SD1.5 components, as the decoder takes them (the module's own objects)."""
        return SDComponents(self.vae, self.text_encoder, self.tokenizer, self.unet, self.noise_scheduler)

    def train(self, mode: bool = True) -> ControlNetModule:
        """Lightning switches everything to training mode; SD1.5 stays in eval mode."""
        super().train(mode)
        for module in (self.vae, self.text_encoder, self.unet):
            module.eval()  # no dropout or batch norm in the UNet: its trained half is unaffected
        return self

    def setup(self, stage: str) -> None:
        dtype = HALF_DTYPES.get(str(self.trainer.precision))
        if dtype is not None:
            self.cast_frozen(dtype)

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Frozen weights in ``dtype`` (half the memory under mixed precision); trained ones stay fp32."""
        self.vae.to(dtype)
        self.text_encoder.to(dtype)
        trained = UNET_DECODER_MODULES if self.config.train.unet_decoder else ()
        for name, child in self.unet.named_children():
            if name not in trained:  # a round trip through half precision would round trained weights
                child.to(dtype)

    # ----- the objective -------------------------------------------------------------------------

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """(B, 77, D) CLIP hidden states (cached per caption when ``train.cache_latents``)."""
        if not self.config.train.cache_latents:
            return self._encode_text(captions)
        missing = sorted({c for c in captions if c not in self.text_cache})
        if missing:
            for caption, hidden in zip(missing, self._encode_text(missing)):
                self.text_cache[caption] = hidden.cpu()
        return torch.stack([self.text_cache[c] for c in captions]).to(self.device)

    def _encode_text(self, captions: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(self.device))[0]  # (B, 77, D)

    def latent_distribution(self, pixel_values: torch.Tensor, keys: list[str]) -> DiagonalGaussianDistribution:
        """The VAE posterior of (B, 3, R, R) images (parameters cached per key when asked)."""
        if not self.config.train.cache_latents:
            return self.vae.encode(pixel_values.to(self.vae.dtype)).latent_dist
        missing = [i for i, key in enumerate(keys) if key not in self.latent_cache]
        if missing:
            parameters = self.vae.encode(pixel_values[missing].to(self.vae.dtype)).latent_dist.parameters
            for i, params in zip(missing, parameters):
                self.latent_cache[keys[i]] = params.cpu()
        parameters = torch.stack([self.latent_cache[key] for key in keys]).to(self.device)
        return DiagonalGaussianDistribution(parameters)  # (B, 2 * 4, h, w): mean and log-variance

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                control: torch.Tensor, controlnet: ControlNetModel | None = None) -> torch.Tensor:
        """UNet output with the residuals of ``controlnet`` (default: the live one) added: (B, 4, h, w)."""
        if self.config.train.channels_last:
            noisy_latents = noisy_latents.contiguous(memory_format=torch.channels_last)
            control = control.contiguous(memory_format=torch.channels_last)
        down_residuals, mid_residual = (self.controlnet if controlnet is None else controlnet)(
            noisy_latents, timesteps, encoder_hidden_states=text, controlnet_cond=control, return_dict=False)
        return self.unet(noisy_latents, timesteps, encoder_hidden_states=text,
                         down_block_additional_residuals=down_residuals,
                         mid_block_additional_residual=mid_residual, return_dict=False)[0]

    def denoising_loss(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                       text: torch.Tensor, control: torch.Tensor,
                       controlnet: ControlNetModel | None = None) -> torch.Tensor:
        """MSE between the prediction (with ``controlnet``, default the live one) and the
        scheduler's target (epsilon or v)."""
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)  # (B, 4, h, w)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        prediction = self.predict(noisy, timesteps, text, control, controlnet)
        return F.mse_loss(prediction.float(), target.float())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """One micro-batch; its randomness is seeded by the batch's first draw number."""
        generator = torch.Generator().manual_seed(
            derived_seed(self.config.train.seed, NOISE_STREAM, int(batch["draw"][0])))
        size = len(batch["caption"])
        with torch.no_grad():
            posterior = self.latent_distribution(batch["pixel_values"], batch["key"])
            latents = posterior.sample(generator).float() * self.vae.config.scaling_factor  # (B, 4, h, w)
            keep = torch.rand(size, generator=generator) >= self.config.train.prompt_dropout
            text = self.encode_text([c if k else "" for c, k in zip(batch["caption"], keep)])
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (size,),
                                  generator=generator).to(self.device)
        loss = self.denoising_loss(latents, noise, timesteps, text, batch["control"])
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    @property
    def exported_controlnet(self) -> ControlNetModel:
        """The ControlNet an export holds: the EMA copy when the run keeps one."""
        return self.controlnet_ema if self.controlnet_ema is not None else self.controlnet

    @torch.no_grad()
    def validation_loss(self, batch: dict, controlnet: ControlNetModel | None = None) -> torch.Tensor:
        """Denoising loss of ``controlnet`` (default: the exported one) averaged over
        ``train.val_timesteps`` with noise fixed per sample key, so it is comparable between
        steps and runs (captions kept, posterior mean)."""
        controlnet = self.exported_controlnet if controlnet is None else controlnet
        posterior = self.latent_distribution(batch["pixel_values"], batch["key"])
        latents = posterior.mode().float() * self.vae.config.scaling_factor  # (B, 4, h, w)
        text = self.encode_text(list(batch["caption"]))
        losses = []
        for t in self.config.train.val_timesteps:
            noise = torch.stack([
                torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(
                    derived_seed(zlib.crc32(key.encode()), t))) for key in batch["key"]]).to(latents)
            timesteps = torch.full((len(latents),), t, device=self.device, dtype=torch.long)
            losses.append(self.denoising_loss(latents, noise, timesteps, text, batch["control"], controlnet))
        return torch.stack(losses).mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """``val/loss`` of the weights an export holds; with EMA also ``val/loss_live``."""
        size = len(batch["key"])
        self.log("val/loss", self.validation_loss(batch), sync_dist=True, batch_size=size)
        if self.controlnet_ema is not None:
            self.log("val/loss_live", self.validation_loss(batch, self.controlnet), sync_dist=True, batch_size=size)

    # ----- optimisation --------------------------------------------------------------------------

    def configure_optimizers(self) -> dict:
        """AdamW (or 8-bit AdamW) with warm-up; the UNet decoder half at its own learning rate."""
        train = self.config.train
        groups = [{"params": list(self.controlnet.parameters()), "lr": train.learning_rate}]
        unet_params = [p for p in self.unet.parameters() if p.requires_grad]
        if unet_params:
            groups.append({"params": unet_params, "lr": train.unet_learning_rate})
        if train.optimizer == "adamw8bit":
            import bitsandbytes

            optimizer_class = bitsandbytes.optim.AdamW8bit
        else:
            optimizer_class = torch.optim.AdamW
        optimizer = optimizer_class(groups, betas=(train.adam_beta1, train.adam_beta2),
                                    eps=train.adam_epsilon, weight_decay=train.weight_decay)
        scheduler = get_scheduler(LR_SCHEDULES[train.lr_scheduler], optimizer,
                                  num_warmup_steps=train.warmup_steps, num_training_steps=train.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        self._ema_step = self.global_step

    def optimizer_step(self, *args, **kwargs) -> None:
        """Step, then update the EMA: here (once per optimizer step, not per accumulated
        micro-batch) the update happens before any checkpoint callback saves this step."""
        super().optimizer_step(*args, **kwargs)
        if self.controlnet_ema is not None:
            self._ema_step += 1
            self.update_ema(self._ema_step)

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """EMA with diffusers' warm-up: decay min(ema_decay, (1 + step) / (10 + step)) at optimizer step ``step``."""
        decay = min(self.config.train.ema_decay, (1 + step) / (10 + step))
        for average, current in zip(self.controlnet_ema.parameters(), self.controlnet.parameters()):
            average.lerp_(current.detach(), 1.0 - decay)

    # ----- checkpoints ---------------------------------------------------------------------------

    def trainable_state_keys(self) -> set[str]:
        """The state-dict keys a checkpoint holds: trained modules only."""
        keys = {CONTROLNET_PREFIX + key for key in self.controlnet.state_dict()}
        keys |= {UNET_PREFIX + name for name, p in self.unet.named_parameters() if p.requires_grad}
        if self.controlnet_ema is not None:
            keys |= {EMA_PREFIX + key for key in self.controlnet_ema.state_dict()}
        return keys

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint[TRAINING_KEY] = training_record(self.controlnet, self.config, self.controlnet_ema is not None,
                                                   self.label_set, self.base_fingerprint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint whose trained parts differ from this module's (EMA, UNet half)."""
        found, expected = set(checkpoint["state_dict"]), self.trainable_state_keys()
        if found != expected:
            raise ValueError(
                f"the checkpoint's trained weights do not match this configuration: "
                f"{len(expected - found)} missing (e.g. {sorted(expected - found)[:2]}), "
                f"{len(found - expected)} unexpected (e.g. {sorted(found - expected)[:2]}); "
                f"train.unet_decoder and train.ema_decay must be as in the run that wrote it")

    def trained_weights(self) -> TrainedWeights:
        """What an export holds: the ControlNet (its EMA copy if any) and the trained UNet half."""
        source = self.exported_controlnet
        unet = {name: p.detach() for name, p in self.unet.named_parameters() if p.requires_grad}
        return TrainedWeights(controlnet_config_dict(self.controlnet), source.state_dict(), unet,
                              self.config.to_dict(), self.controlnet_ema is not None, self.global_step,
                              self.label_set.name, self.label_set.num_classes, self.base_fingerprint)

    def export(self, output_dir: str | Path) -> Path:
        """Write the export folder (``models.decode.checkpoint_format``)."""
        return write_export(output_dir, self.trained_weights())
