"""Tiny random versions of every component, saved in their real on-disk formats.

``python -m models.tiny --output_dir D`` (``build_tiny_components``) writes, in a few seconds and
with no network:

- ``D/segmentation/deeplabv3plus_resnet18_tiny.pth``: a DeepLabV3+ checkpoint in the original
  project's format (a dict with ``model_state`` holding ``backbone.*``/``classifier.*`` and a
  numpy ``best_score``), narrow head on a ResNet-18;
- ``D/scene-parser/``: a SegFormer with ADE20K's 150 classes and its image processor
  (``save_pretrained``), the transformers family of segmenters;
- ``D/blip/``: a BLIP captioner (``save_pretrained``: config, safetensors, BERT tokenizer,
  image processor);
- ``D/stable-diffusion/``: an SD1.5-style diffusers folder (UNet, VAE, CLIP text encoder and
  BPE tokenizer, PNDM scheduler with SD1.5's noise schedule);
- ``D/controlnet/``: a ControlNet initialised from that UNet (``save_pretrained``);
- ``D/clip/``: a CLIP model and processor for the CLIP score (``save_pretrained``);
- ``D/stable-diffusion-single-file.safetensors``: the same SD weights as one file in the
  original CompVis layout (``model.diffusion_model.*``, ``first_stage_model.*``,
  ``cond_stage_model.transformer.*``), for the single-file loader;
- ``D/config.yaml``: a config that points every script at them (segmenter: DeepLabV3+, VOC maps;
  ``segmenter="transformers"``: the SegFormer, ADE20K maps, decoded in ADE20K colours).

Everything is loaded back through the same code paths as the real models.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from models.config import SEGMENTER_FAMILIES, Config, SegmentationConfig, save_config
from models.decode.stable_diffusion import write_word_tokenizer
from models.palettes import ADE20K_CLASSES, VOC_CLASSES

# Words of the tiny tokenizers (BLIP's and CLIP's), so that random captions are at least made of words.
VOCABULARY_WORDS = sorted(set(VOC_CLASSES) | {
    "a", "an", "the", "of", "on", "in", "with", "and", "at", "near", "photo", "picture",
    "sitting", "standing", "lying", "two", "small", "large", "red", "blue", "green", "white",
    "black", "grass", "road", "table", "room", "street", "field", "water", "sky", "man",
    "woman", "child", "group", "people", "front", "next", "to", "is", "are",
})
SEGMENTATION_TINY = SegmentationConfig(
    checkpoint=None, encoder_name="resnet18", output_stride=16, num_classes=21,
    aspp_channels=16, low_level_channels=8,
)
RESOLUTION = 64  # tiny decoding/training resolution (multiple of 8)
SINGLE_FILE_NAME = "stable-diffusion-single-file.safetensors"  # original SD1.x key layout


def build_segmentation(output_dir: Path) -> Path:
    """A random DeepLabV3+ saved exactly as the original project's checkpoints are."""
    from models.encode.segmentation import DeepLabV3Plus

    model = DeepLabV3Plus.from_config(SEGMENTATION_TINY)
    for module in model.modules():  # non-trivial batch-norm statistics, as in a trained net
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    path = output_dir / "segmentation" / "deeplabv3plus_resnet18_tiny.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "cur_itrs": 0,
        "model_state": model.state_dict(),
        "optimizer_state": {},
        "scheduler_state": {},
        "best_score": np.float64(0.0),
    }
    torch.save(checkpoint, path)
    return path


def build_scene_parser(output_dir: Path) -> Path:
    """A SegFormer with ADE20K's 150 classes (names in ``id2label``) and its image processor."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    folder = output_dir / "scene-parser"
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                             num_attention_heads=[1, 2], strides=[4, 2], patch_sizes=[7, 3],
                             decoder_hidden_size=16, num_labels=len(ADE20K_CLASSES),
                             id2label=dict(enumerate(ADE20K_CLASSES)),
                             label2id={name: index for index, name in enumerate(ADE20K_CLASSES)})
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": RESOLUTION, "width": RESOLUTION}).save_pretrained(folder)
    return folder


def build_blip(output_dir: Path) -> Path:
    """A BLIP captioner with a 2-layer text decoder and vision encoder."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration,
                              BlipImageProcessor, BlipProcessor)

    folder = output_dir / "blip"
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + VOCABULARY_WORDS
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]")
    text_config = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37,
                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                       pad_token_id=0, sep_token_id=3, eos_token_id=3,
                       bos_token_id=vocab.index("[DEC]"), initializer_range=0.2)
    vision_config = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, image_size=30, patch_size=2,
                         initializer_range=0.2)  # BLIP's default (1e-10) makes images invisible
    config = BlipConfig(text_config=text_config, vision_config=vision_config, projection_dim=32,
                        initializer_range=0.2)
    model = BlipForConditionalGeneration(config)
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 30, "width": 30}), tokenizer=tokenizer
    )
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_stable_diffusion(output_dir: Path) -> tuple[Path, Path]:
    """An SD1.5-style diffusers folder and a ControlNet initialised from its UNet."""
    from diffusers import (AutoencoderKL, ControlNetModel, PNDMScheduler,
                           StableDiffusionPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tokenizer_dir:
        vocab_size = write_word_tokenizer(Path(tokenizer_dir), VOCABULARY_WORDS)
        tokenizer = CLIPTokenizer(f"{tokenizer_dir}/vocab.json", f"{tokenizer_dir}/merges.txt",
                                  model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=5,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    ))
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 2, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4), norm_num_groups=32,
    )
    vae = AutoencoderKL(  # two blocks: latents at 1/2 resolution (SD1.5's VAE: four, 1/8)
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=32, sample_size=RESOLUTION,
    )
    scheduler = PNDMScheduler(  # SD1.5's scheduler config
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    sd_dir, controlnet_dir = output_dir / "stable-diffusion", output_dir / "controlnet"
    pipeline.save_pretrained(sd_dir)
    # One stride-2 step in the conditioning embedding, to match the VAE's factor of 2.
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    controlnet.save_pretrained(controlnet_dir)
    return sd_dir, controlnet_dir


def build_clip(output_dir: Path) -> Path:
    """A CLIP model (for the CLIP score) with 2-layer text and vision towers, saved with its processor."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              CLIPTokenizer)

    folder = output_dir / "clip"
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        vocab_size = write_word_tokenizer(Path(tokenizer_dir), VOCABULARY_WORDS)
        tokenizer = CLIPTokenizer(f"{tokenizer_dir}/vocab.json", f"{tokenizer_dir}/merges.txt",
                                  model_max_length=77)
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=vocab_size, max_position_embeddings=77,
                         bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
                         pad_token_id=vocab_size - 1),
        vision_config=dict(tower, image_size=32, patch_size=4),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_single_file_checkpoint(sd_dir: Path, path: Path) -> Path:
    """Save the diffusers folder ``sd_dir`` as one original-layout ``.safetensors`` file."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from models.tiny.original_layout import to_original_layout

    checkpoint = to_original_layout(UNet2DConditionModel.from_pretrained(sd_dir, subfolder="unet"),
                                    AutoencoderKL.from_pretrained(sd_dir, subfolder="vae"),
                                    CLIPTextModel.from_pretrained(sd_dir, subfolder="text_encoder"))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint, str(path))
    return path


def build_tiny_components(output_dir: str | Path, seed: int = 0, segmenter: str = "deeplabv3plus") -> Path:
    """Write every tiny component and ``config.yaml`` under ``output_dir``; return the config path.
    ``segmenter`` picks the encoder family the config uses (and so VOC or ADE20K maps)."""
    if segmenter not in SEGMENTER_FAMILIES:
        raise ValueError(f"unknown segmenter {segmenter!r}; choose one of {SEGMENTER_FAMILIES}")
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = Config()
    config.segmentation = SegmentationConfig(**{
        **vars(SEGMENTATION_TINY), "checkpoint": str(build_segmentation(output_dir))})
    config.segmentation.model = str(build_scene_parser(output_dir))
    if segmenter == "transformers":
        config.segmentation.family, config.diffusion.palette = "transformers", "ade20k"
    config.captioning.model = str(build_blip(output_dir))
    config.captioning.max_length = 12
    sd_dir, controlnet_dir = build_stable_diffusion(output_dir)
    build_single_file_checkpoint(sd_dir, output_dir / SINGLE_FILE_NAME)
    config.diffusion.sd_model_path = str(sd_dir)
    config.diffusion.controlnet_path = str(controlnet_dir)
    config.diffusion.resolution = RESOLUTION
    config.encode.batch_size = 4
    config.encode.num_workers = 0
    config.evaluate.clip_model = config.evaluate.clip_s_model = str(build_clip(output_dir))
    config.train.batch_size = 2
    config.train.num_workers = 0
    config.train.num_validation_images = 2
    config.train.validation_inference_steps = 4
    config_path = output_dir / "config.yaml"
    save_config(config, config_path)
    return config_path
