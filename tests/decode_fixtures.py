"""Fixtures and file builders shared by the decoding tests.

The tiny ControlNet of models.tiny starts from zero-initialised output convolutions, so control
images would have no effect; ``trained_controlnet`` perturbs every weight, as training would.
Checkpoint files in our own formats are written here by hand, following the checkpoint contract
(docs/decoding.md), so that the readers are tested without the training code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors.torch import save_file

from models.config import load_config
from tests.conftest import VOC_MASKS
from models.tiny.original_layout import controlnet_to_original, unet_to_original

CAPTIONS = ["a dog on the grass", "a person next to a car", "a cat sitting on a sofa",
            "two sheep in a field", "a boat on the water", "a bus in the street"]


@pytest.fixture(scope="session")
def trained_controlnet(tiny_config, tmp_path_factory) -> Path:
    """A diffusers ControlNet folder whose weights are all non-zero (as after training)."""
    controlnet = ControlNetModel.from_pretrained(load_config(tiny_config).diffusion.controlnet_path)
    perturb(controlnet, seed=1)
    folder = tmp_path_factory.mktemp("trained") / "controlnet"
    controlnet.save_pretrained(folder)
    return folder


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Add seeded Gaussian noise to every parameter of ``model``, in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


def base_unet(config_path: Path) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_pretrained(load_config(config_path).diffusion.sd_model_path, subfolder="unet")


def up_block_weights(unet: UNet2DConditionModel, seed: int) -> dict[str, torch.Tensor]:
    """Changed weights for the UNet's decoder half (what training may unfreeze)."""
    generator = torch.Generator().manual_seed(seed)
    return {key: value + 0.05 * torch.randn(value.shape, generator=generator)
            for key, value in unet.state_dict().items() if key.startswith("up_blocks.")}


def write_training_checkpoint(path: Path, controlnet: ControlNetModel, config_path: Path,
                              ema: ControlNetModel | None = None, unet: dict | None = None) -> Path:
    """A Lightning checkpoint as train.py writes it (contract section 1)."""
    state = {f"controlnet.{k}": v for k, v in controlnet.state_dict().items()}
    if ema is not None:
        state.update({f"controlnet_ema.{k}": v for k, v in ema.state_dict().items()})
    state.update({f"unet.{k}": v for k, v in (unet or {}).items()})
    checkpoint = {
        "epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.6.6", "state_dict": state,
        # Private config keys can hold a pathlib.Path, which weights_only loading refuses.
        "semantic_compression": {"format_version": 1,
                                 "controlnet_config": {k: v for k, v in controlnet.config.items()
                                                       if not k.startswith("_")},
                                 "config": load_config(config_path).to_dict(), "ema": ema is not None},
    }
    torch.save(checkpoint, path)
    return path


def write_export_folder(folder: Path, controlnet: ControlNetModel, metadata: dict, unet: dict | None = None) -> Path:
    """The exported ControlNet folder (contract section 2)."""
    controlnet.save_pretrained(folder)
    (folder / "semantic_compression.json").write_text(json.dumps(metadata), encoding="utf-8")
    if unet:
        save_file({k: v.contiguous() for k, v in unet.items()}, folder / "unet_trainable.safetensors")
    return folder


def write_original_file(path: Path, controlnet: ControlNetModel, unet: UNet2DConditionModel | None = None) -> Path:
    """An original-format ControlLDM checkpoint: ``control_model.*`` (+ ``model.diffusion_model.*``)."""
    state = controlnet_to_original(controlnet.state_dict(), controlnet.config)
    if unet is not None:
        state.update(unet_to_original(unet.state_dict(), unet.config))
    torch.save({"state_dict": state, "global_step": 10}, path)
    return path


@pytest.fixture(scope="session")
def label_maps(tmp_path_factory) -> Path:
    """Six VOC ground-truth label maps (three in train/) with a prompts.json keyed by photo names."""
    folder = tmp_path_factory.mktemp("label_maps") / "segmented"
    prompts = {}
    for index, mask in enumerate(sorted(VOC_MASKS.glob("*.png"))[:6]):
        relpath = f"train/{mask.name}" if index < 3 else mask.name
        (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(mask, folder / relpath)
        prompts[relpath.replace(".png", ".jpg")] = CAPTIONS[index]
    (folder / "prompts.json").write_text(json.dumps(prompts, indent=2), encoding="utf-8")
    return folder
