"""Diffusers -> original (CompVis LDM / ControlLDM) key names.

The inverse of diffusers' single-file conversion, for the few places that must write files in
the original layout: the tiny single-file SD checkpoint of ``models.tiny`` and original-format
ControlNet files in tests. Reading such files is diffusers' job (``from_single_file``).

The original code names a UNet by position in flat lists: ``input_blocks.N`` (the stem, then per
level ``layers_per_block`` resnet[+attention] blocks and a downsampler), ``middle_block.0..2``,
``output_blocks.N`` (per level ``layers_per_block + 1`` blocks, the last with the upsampler) and
``out``. A ControlNet repeats the encoder half and adds ``input_hint_block`` (the conditioning
embedding: convs at even indices, the final projection at 14), ``zero_convs.N`` and
``middle_block_out``.
"""

from __future__ import annotations

import torch

RESNET_NAMES = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
                ("conv_shortcut", "skip_connection"))
VAE_ATTENTION_NAMES = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"),
                       ("to_out.0", "proj_out"))
HINT_OUT_INDEX = 14  # diffusers reads the conditioning embedding's last conv from this slot


def encoder_prefixes(config: dict) -> dict[str, str]:
    """Prefixes of the encoder half, which a UNet and its ControlNet share."""
    levels, layers = len(config["block_out_channels"]), config["layers_per_block"]
    prefixes = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
                "conv_in.": "input_blocks.0.0.", "mid_block.resnets.0.": "middle_block.0.",
                "mid_block.attentions.0.": "middle_block.1.", "mid_block.resnets.1.": "middle_block.2."}
    for level in range(levels):
        for layer in range(layers):
            block = 1 + level * (layers + 1) + layer
            prefixes[f"down_blocks.{level}.resnets.{layer}."] = f"input_blocks.{block}.0."
            prefixes[f"down_blocks.{level}.attentions.{layer}."] = f"input_blocks.{block}.1."
        resample = (level + 1) * (layers + 1)  # the block after a level's layers downsamples
        prefixes[f"down_blocks.{level}.downsamplers.0.conv."] = f"input_blocks.{resample}.0.op."
    return prefixes


def unet_prefixes(config: dict) -> dict[str, str]:
    """Diffusers UNet module prefixes -> original (LDM ``openaimodel``) prefixes."""
    layers = config["layers_per_block"]
    prefixes = encoder_prefixes(config) | {"conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for level in range(len(config["block_out_channels"])):
        for layer in range(layers + 1):
            block = level * (layers + 1) + layer
            prefixes[f"up_blocks.{level}.resnets.{layer}."] = f"output_blocks.{block}.0."
            prefixes[f"up_blocks.{level}.attentions.{layer}."] = f"output_blocks.{block}.1."
        slot = 2 if "CrossAttn" in config["up_block_types"][level] else 1
        prefixes[f"up_blocks.{level}.upsamplers.0."] = f"output_blocks.{level * (layers + 1) + layers}.{slot}."
    return prefixes


def controlnet_prefixes(config: dict) -> dict[str, str]:
    """Diffusers ControlNet module prefixes -> original (``cldm``) prefixes."""
    prefixes = encoder_prefixes(config) | {
        "controlnet_mid_block.": "middle_block_out.0.",
        "controlnet_cond_embedding.conv_in.": "input_hint_block.0.",
        "controlnet_cond_embedding.conv_out.": f"input_hint_block.{HINT_OUT_INDEX}."}
    for index in range(2 * (len(config["conditioning_embedding_out_channels"]) - 1)):
        prefixes[f"controlnet_cond_embedding.blocks.{index}."] = f"input_hint_block.{2 * index + 2}."
    levels, layers = len(config["block_out_channels"]), config["layers_per_block"]
    for index in range(levels * (layers + 1)):
        prefixes[f"controlnet_down_blocks.{index}."] = f"zero_convs.{index}.0."
    return prefixes


def vae_prefixes(config: dict) -> dict[str, str]:
    """Diffusers VAE module prefixes -> original (LDM ``autoencoder``) prefixes."""
    levels = len(config["block_out_channels"])
    prefixes = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        prefixes[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    for level in range(levels):
        prefixes[f"encoder.down_blocks.{level}.resnets."] = f"encoder.down.{level}.block."
        prefixes[f"encoder.down_blocks.{level}.downsamplers.0."] = f"encoder.down.{level}.downsample."
        prefixes[f"decoder.up_blocks.{level}.resnets."] = f"decoder.up.{levels - 1 - level}.block."
        prefixes[f"decoder.up_blocks.{level}.upsamplers.0."] = f"decoder.up.{levels - 1 - level}.upsample."
    return prefixes


def _rename(key: str, prefixes: dict[str, str]) -> str:
    """``key`` with its longest matching prefix replaced; a key no prefix covers is an error."""
    matches = [p for p in prefixes if key.startswith(p)]
    if not matches:
        raise KeyError(f"no original name for {key}")
    prefix = max(matches, key=len)
    return prefixes[prefix] + key[len(prefix):]


def _resnet_names(key: str, original: str) -> str:
    if ".resnets." in key:
        for diffusers_name, ldm_name in RESNET_NAMES:
            original = original.replace(f".{diffusers_name}.", f".{ldm_name}.")
    return original


def unet_to_original(state: dict[str, torch.Tensor], config: dict,
                     prefix: str = "model.diffusion_model.") -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict under original names."""
    prefixes = unet_prefixes(config)
    return {prefix + _resnet_names(k, _rename(k, prefixes)): v for k, v in state.items()}


def controlnet_to_original(state: dict[str, torch.Tensor], config: dict,
                           prefix: str = "control_model.") -> dict[str, torch.Tensor]:
    """A diffusers ``ControlNetModel`` state dict under original (ControlLDM) names."""
    prefixes = controlnet_prefixes(config)
    return {prefix + _resnet_names(k, _rename(k, prefixes)): v for k, v in state.items()}


def vae_to_original(state: dict[str, torch.Tensor], config: dict,
                    prefix: str = "first_stage_model.") -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict under original names (attention as 1x1 convs)."""
    prefixes, converted = vae_prefixes(config), {}
    for key, value in state.items():
        name = (_rename(key, prefixes) if any(key.startswith(p) for p in prefixes) else key)
        name = name.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".attentions." in key:
            for diffusers_name, ldm_name in VAE_ATTENTION_NAMES:
                name = name.replace(f".{diffusers_name}.", f".{ldm_name}.")
            value = value[:, :, None, None] if value.ndim == 2 else value
        converted[prefix + name] = value
    return converted


def to_original_layout(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """One state dict in the original SD1.x single-file layout."""
    checkpoint = unet_to_original(unet.state_dict(), unet.config)
    checkpoint |= vae_to_original(vae.state_dict(), vae.config)
    for key, value in text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        checkpoint["cond_stage_model.transformer." + key] = value
    return {key: value.contiguous() for key, value in checkpoint.items()}
