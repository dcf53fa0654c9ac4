"""Small models of the real architectures, trained on the synthetic shapes data on a CPU.

The quickstart (``models.quickstart``) ships one of each component the real system uses, at a
size that trains in minutes and weighs a few MB, saved in the same on-disk formats:

- ``train_segmenter``: DeepLabV3+ (our ``models.encode.segmentation.DeepLabV3Plus`` on a small timm
  encoder), pixel-wise cross-entropy; saved as safetensors with ``save_checkpoint``;
- ``train_captioner``: BLIP (``BlipForConditionalGeneration``: ViT encoder, BERT decoder with
  cross-attention), the captioning loss of Li et al. 2022; saved with ``save_pretrained``;
- ``train_autoencoder``: ``AutoencoderKL`` with a reconstruction loss and a small KL term
  (Rombach et al. 2022, without the perceptual and adversarial terms, which flat shapes do
  not need), and SD's latent scaling factor set to 1 / std of the latents;
- ``train_text_to_image``: ``UNet2DConditionModel`` and a ``CLIPTextModel`` trained together
  on the VAE's latents with the noise-prediction loss of DDPM (Ho et al. 2020) and 10% empty
  captions for classifier-free guidance (Ho and Salimans 2022).

The ControlNet is not trained here: ``train.py`` trains it on these frozen components.

Every loop is seeded (``torch.manual_seed`` and one ``numpy`` generator for the data order and
augmentation), so the same seed, library versions and CPU thread count give the same weights.
Each loop takes a ``device`` (default the CPU; a GPU trains the same recipe far faster, with
other float rounding) and returns the model on the CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.quickstart.shapes import BACKGROUND_COLORS, SHAPE_CLASS_IDS, SHAPE_COLORS, ShapesSplit


def batches(count: int, batch_size: int, steps: int, rng: np.random.Generator):
    """``steps`` index batches drawn epoch by epoch from seeded permutations of ``range(count)``."""
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order.extend(rng.permutation(count).tolist())
        batch, order = order[:batch_size], order[batch_size:]
        yield np.asarray(batch)


def adamw_cosine(parameters, learning_rate: float, steps: int, warmup: int = 50,
                 weight_decay: float = 1e-2) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with a linear warm-up and a cosine decay to 5% of ``learning_rate``."""
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, schedule, losses: list[float],
                   clip_parameters: list[torch.nn.Parameter] | None = None) -> None:
    """Backpropagate ``loss``, clip the gradient norm of ``clip_parameters`` to 1 when given, step
    the optimizer and the learning-rate schedule, and append the loss to ``losses``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_parameters is not None:
        torch.nn.utils.clip_grad_norm_(clip_parameters, 1.0)
    optimizer.step()
    schedule.step()
    losses.append(loss.item())


def to_unit(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 to (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def progress(steps: int, description: str):
    """A progress bar over the steps of one training loop."""
    return tqdm(range(steps), desc=description, mininterval=2.0, dynamic_ncols=True)


# --- DeepLabV3+ ---------------------------------------------------------------------------------

def degrade(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random blur and noise on (B, 3, H, W) images in [0, 1], so that the segmenter also reads
    the slightly soft, noisy images a decoder or a codec gives back."""
    from torchvision.transforms.functional import gaussian_blur

    sigma = float(torch.empty(1).uniform_(0.1, 1.2, generator=generator))
    blurred = gaussian_blur(images, kernel_size=5, sigma=sigma)
    keep = torch.rand(images.shape[0], 1, 1, 1, generator=generator) < 0.5
    images = torch.where(keep, images, blurred)
    noise_std = torch.rand(images.shape[0], 1, 1, 1, generator=generator) * 0.05
    return (images + noise_std * torch.randn(images.shape, generator=generator)).clamp(0, 1)


def train_segmenter(model, data: ShapesSplit, steps: int, batch_size: int, learning_rate: float,
                    seed: int, device: str | torch.device = "cpu") -> list[float]:
    """Pixel-wise cross-entropy with flips, blur and noise; returns the loss of every step."""
    torch.manual_seed(seed)
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    model.to(device)
    optimizer, schedule = adamw_cosine(model.parameters(), learning_rate, steps)
    images, label_maps = to_unit(data.images), torch.from_numpy(data.label_maps).long()
    model.train()
    losses = []
    for _, index in zip(progress(steps, "segmenter"), batches(len(images), batch_size, steps, rng)):
        batch, target = images[index], label_maps[index]  # (B, 3, H, W), (B, H, W)
        flip = torch.from_numpy(rng.random(len(index)) < 0.5)
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        target = torch.where(flip[:, None, None], target.flip(-1), target)
        logits = model(model.normalize(degrade(batch, generator).to(device)))  # (B, classes, H, W)
        loss = F.cross_entropy(logits, target.to(device))
        optimizer_step(loss, optimizer, schedule, losses)
    model.eval().cpu()
    return losses


# --- BLIP ---------------------------------------------------------------------------------------

def caption_words() -> list[str]:
    """Every word (and the comma) a shapes caption can contain, sorted."""
    words = {"a", "an", "and", "on", "background", "small", "large", ","}
    for name in [*SHAPE_COLORS, *BACKGROUND_COLORS, *SHAPE_CLASS_IDS]:
        words.update(name.split())
    return sorted(words)


def build_captioner(image_size: int, vocab_dir: Path, architecture: dict):
    """An untrained BLIP captioner and its processor (BERT word-piece tokenizer over shapes words)."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                              BlipImageProcessor, BlipProcessor)

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + caption_words()
    vocab_dir.mkdir(parents=True, exist_ok=True)
    (vocab_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab_dir / "vocab.txt"), bos_token="[DEC]",
                              clean_up_tokenization_spaces=True)
    text = architecture["text"]
    text_config = dict(vocab_size=len(vocab), pad_token_id=0, sep_token_id=3, eos_token_id=3,
                       bos_token_id=vocab.index("[DEC]"), **text)
    vision_config = dict(image_size=image_size, **architecture["vision"])
    config = BlipConfig(text_config=text_config, vision_config=vision_config,
                        projection_dim=architecture["text"]["hidden_size"])
    processor = BlipProcessor(image_processor=BlipImageProcessor(
        size={"height": image_size, "width": image_size}), tokenizer=tokenizer)
    return BlipForConditionalGeneration(config), processor


def train_captioner(model, processor, data: ShapesSplit, steps: int, batch_size: int,
                    learning_rate: float, seed: int, device: str | torch.device = "cpu") -> list[float]:
    """Teacher-forced captioning loss (the decoder's first token is BLIP's [DEC]); step losses."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device)
    pixel_values = processor.image_processor(list(data.images), return_tensors="pt")["pixel_values"]
    tokens = processor.tokenizer(data.captions, padding="longest", return_tensors="pt")
    input_ids = tokens.input_ids.clone()
    input_ids[:, 0] = model.config.text_config.bos_token_id  # as BLIP's generate() starts
    labels = input_ids.masked_fill(tokens.attention_mask == 0, -100)
    optimizer, schedule = adamw_cosine(model.parameters(), learning_rate, steps)
    model.train()
    losses = []
    for _, index in zip(progress(steps, "captioner"), batches(len(input_ids), batch_size, steps, rng)):
        index = torch.from_numpy(index)
        loss = model(pixel_values=pixel_values[index].to(device), input_ids=input_ids[index].to(device),
                     attention_mask=tokens.attention_mask[index].to(device), labels=labels[index].to(device)).loss
        optimizer_step(loss, optimizer, schedule, losses)
    model.eval().cpu()
    return losses


# --- AutoencoderKL ------------------------------------------------------------------------------

def train_autoencoder(vae, data: ShapesSplit, steps: int, batch_size: int, learning_rate: float,
                      seed: int, crop: int = 32, kl_weight: float = 1e-6,
                      device: str | torch.device = "cpu") -> list[float]:
    """Reconstruction (L1 on [-1, 1] pixels) plus ``kl_weight`` x KL to N(0, 1); step losses.

    The VAE is convolutional, so it trains on random ``crop`` x ``crop`` crops (a quarter of the
    cost of whole 64 px images). Afterwards ``vae.config.scaling_factor`` is 1 / std of the
    latents of the training images, as SD's 0.18215 was chosen, so that the diffusion model
    sees unit-variance latents.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images = to_unit(data.images) * 2 - 1  # (N, 3, H, W) in [-1, 1]
    vae.to(device)
    optimizer, schedule = adamw_cosine(vae.parameters(), learning_rate, steps, weight_decay=0.0)
    vae.train()
    losses = []
    for _, index in zip(progress(steps, "autoencoder"), batches(len(images), batch_size, steps, rng)):
        top, left = rng.integers(0, images.shape[-1] - crop + 1, size=2)
        batch = images[index, :, top:top + crop, left:left + crop].to(device)  # (B, 3, crop, crop)
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(reconstruction, batch) + kl_weight * posterior.kl().mean()
        optimizer_step(loss, optimizer, schedule, losses)
    vae.eval()
    latents = encode_latents(vae, data.images, scaled=False, device=device)[0]
    vae.cpu()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return losses


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, scaled: bool = True, batch_size: int = 64,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations (N, 4, h, w) of uint8 images, times the scaling
    factor when ``scaled``; on the CPU, computed where ``vae`` is (``device``)."""
    means, stds = [], []
    for start in range(0, len(images), batch_size):
        batch = (to_unit(images[start:start + batch_size]) * 2 - 1).to(device)
        posterior = vae.encode(batch).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    factor = vae.config.scaling_factor if scaled else 1.0
    return torch.cat(means) * factor, torch.cat(stds) * factor


# --- UNet and CLIP text encoder -------------------------------------------------------------------

def train_text_to_image(unet, text_encoder, tokenizer, scheduler, vae, data: ShapesSplit, steps: int,
                        batch_size: int, learning_rate: float, seed: int,
                        caption_dropout: float = 0.1, device: str | torch.device = "cpu") -> list[float]:
    """Noise prediction on VAE latents, UNet and text encoder trained together; step losses.

    Every random draw comes from one CPU generator, so the data the networks see is the same
    on every device."""
    torch.manual_seed(seed)
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    means, stds = encode_latents(vae, data.images)  # (N, 4, h, w) each, scaled
    unet.to(device)
    text_encoder.to(device)
    tokens = tokenizer(list(data.captions) + [""], padding="max_length",
                       max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    empty = tokens[-1]
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer, schedule = adamw_cosine(parameters, learning_rate, steps)
    unet.train()
    text_encoder.train()
    losses = []
    for _, index in zip(progress(steps, "text-to-image"), batches(len(means), batch_size, steps, rng)):
        index = torch.from_numpy(index)
        latents = means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)
        drop = torch.rand(len(index), generator=generator) < caption_dropout
        ids = torch.where(drop[:, None], empty, tokens[index])  # (B, L)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy.to(device), timesteps.to(device),
                          encoder_hidden_states=text_encoder(ids.to(device))[0]).sample
        loss = F.mse_loss(prediction, noise.to(device))
        optimizer_step(loss, optimizer, schedule, losses, clip_parameters=parameters)
    unet.eval().cpu()
    text_encoder.eval().cpu()
    return losses
