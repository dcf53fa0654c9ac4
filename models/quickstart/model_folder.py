"""The quickstart model folder (``checkpoints/shapes/``): where each component lies, and the config
that points every script at a folder.

    segmentation.safetensors   DeepLabV3+ (models.encode.segmentation.save_checkpoint)
    blip/                      BlipForConditionalGeneration + BlipProcessor (save_pretrained)
    stable-diffusion/          an SD1.5-style diffusers folder: vae, text_encoder, tokenizer, unet, scheduler
    controlnet/                the ControlNet train.py exported (save_pretrained + semantic_compression.json)
    training.json              seeds, steps, losses, timings, thread count and library versions

``models.quickstart.recipe`` writes such a folder; ``model_config`` reads one. Nothing here
imports torch, so command lines can take their defaults from this module.
"""

from __future__ import annotations

from pathlib import Path

from models.config import PROJECT_ROOT, Config, load_config

SHAPES_CONFIG = PROJECT_ROOT / "configs" / "shapes.yaml"
DEFAULT_MODEL_DIR = PROJECT_ROOT / "checkpoints" / "shapes"
SEGMENTATION_FILE = "segmentation.safetensors"
BLIP_DIR, SD_DIR, CONTROLNET_DIR = "blip", "stable-diffusion", "controlnet"
TRAINING_REPORT = "training.json"
MODEL_PATHS = {"segmentation.checkpoint": SEGMENTATION_FILE, "captioning.model": BLIP_DIR,
               "diffusion.sd_model_path": SD_DIR, "diffusion.controlnet_path": CONTROLNET_DIR}  # config key: file


def model_config(model_dir: str | Path | None = None, config_path: str | Path = SHAPES_CONFIG,
                 extra_overrides: list[str] | None = None) -> Config:
    """``configs/shapes.yaml``, with every model path moved into ``model_dir`` when given, then
    ``extra_overrides`` ("section.key=value") applied."""
    values = {}
    if model_dir is not None:
        model_dir = Path(model_dir).resolve()
        values = {key: str(model_dir / name) for key, name in MODEL_PATHS.items()}
    return load_config(config_path, list(extra_overrides or []), values=values)
