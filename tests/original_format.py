"""Diffusers -> original (ControlLDM / LDM) key names, to build original-format files in tests.

The original code names a UNet by its position in flat lists: ``input_blocks.N`` (the stem, then
per level ``layers_per_block`` resnet[+attention] blocks and a downsampler), ``middle_block.0..2``,
``output_blocks.N`` (per level ``layers_per_block + 1`` blocks, the last one with the upsampler)
and ``out``. A ControlNet repeats the encoder half and adds ``input_hint_block`` (the
conditioning embedding: convs at even indices, the final projection at 14), ``zero_convs.N``
and ``middle_block_out``.
"""

from __future__ import annotations

import re

import torch

RESNET_NAMES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0",
                "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
SHARED_NAMES = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                "conv_in": "input_blocks.0.0"}
UNET_NAMES = {"conv_norm_out": "out.0", "conv_out": "out.2"}
CONTROLNET_NAMES = {"controlnet_mid_block": "middle_block_out.0",
                    "controlnet_cond_embedding.conv_in": "input_hint_block.0",
                    "controlnet_cond_embedding.conv_out": "input_hint_block.14"}


def _resnet(rest: str) -> str:
    layer, _, param = rest.partition(".")
    return f"{RESNET_NAMES[layer]}.{param}"


def _encoder_key(key: str, per_level: int) -> str | None:
    """Original name of a key of the encoder half (shared by UNet and ControlNet), or None."""
    match = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key)
    if match:
        level, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        if kind == "downsamplers":
            return f"input_blocks.{(level + 1) * per_level}.0.op.{rest.split('.', 1)[1]}"
        block = level * per_level + index + 1
        return f"input_blocks.{block}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{block}.1.{rest}"
    match = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if match:
        if match[1] == "attentions":
            return f"middle_block.1.{match[3]}"
        return f"middle_block.{2 * int(match[2])}.{_resnet(match[3])}"
    return _renamed(key, SHARED_NAMES)


def _renamed(key: str, names: dict[str, str]) -> str | None:
    module, _, param = key.rpartition(".")
    return f"{names[module]}.{param}" if module in names else None


def controlnet_to_original(state: dict[str, torch.Tensor], layers_per_block: int,
                           prefix: str = "control_model.") -> dict[str, torch.Tensor]:
    """A diffusers ControlNet state dict under original names."""
    converted = {}
    for key, value in state.items():
        name = _encoder_key(key, layers_per_block + 1) or _renamed(key, CONTROLNET_NAMES)
        if name is None:
            match = re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key)
            match = match or re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", key)
            if match is None:
                raise KeyError(f"no original name for ControlNet key {key}")
            name = (f"zero_convs.{match[1]}.0.{match[2]}" if key.startswith("controlnet_down_blocks")
                    else f"input_hint_block.{2 * int(match[1]) + 2}.{match[2]}")
        converted[prefix + name] = value
    return converted


def unet_to_original(state: dict[str, torch.Tensor], layers_per_block: int,
                     prefix: str = "model.diffusion_model.") -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel state dict under original names."""
    per_level = layers_per_block + 1
    attention_levels = {int(k.split(".")[1]) for k in state if re.match(r"up_blocks\.\d+\.attentions\.", k)}
    converted = {}
    for key, value in state.items():
        name = _encoder_key(key, per_level) or _renamed(key, UNET_NAMES)
        match = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", key)
        if name is None and match:
            level, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
            if kind == "upsamplers":
                slot = 2 if level in attention_levels else 1
                name = f"output_blocks.{level * per_level + layers_per_block}.{slot}.{rest}"
            else:
                block = f"output_blocks.{level * per_level + index}"
                name = f"{block}.0.{_resnet(rest)}" if kind == "resnets" else f"{block}.1.{rest}"
        if name is None:
            raise KeyError(f"no original name for UNet key {key}")
        converted[prefix + name] = value
    return converted
