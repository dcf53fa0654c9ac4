"""Loading a ControlNet from every format we promise to read, and how it wants its control images.

``--checkpoint_path`` may be (docs/decoding.md has the details):

- ``training``: a Lightning checkpoint written by train.py (``*.ckpt`` whose dict holds a
  ``semantic_compression`` entry; docs/training.md, the checkpoint contract);
- ``export``: the folder train.py exports (``save_pretrained`` files plus
  ``semantic_compression.json``, optionally ``unet_trainable.safetensors``);
- ``diffusers``: any diffusers ControlNet folder or Hugging Face id (lllyasviel/sd-controlnet-seg);
- ``original``: a ControlLDM state dict with ``control_model.*`` keys (the original project's
  ``final.ckpt``, the public ``control_sd15_seg.pth``), or a bare ControlNet state dict
  (a single file with diffusers' key names counts as ``diffusers``).

Original-format files carry weights but no architecture. The architecture of a ControlNet is that
of its UNet's encoder half, so it is taken from the base UNet (``diffusion.sd_model_path``) and
the conditioning layers' shapes in the file; diffusers' single-file loader then converts the
weights offline. A full ControlLDM file also carries its UNet (``model.diffusion_model.*``): that
UNet is converted too and replaces the base weights, in case training unlocked it. The first two
formats are our own; ``models.decode.checkpoint_format`` writes and reads them.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from models.config import CONDITIONING_MODES, Config
from models.decode.checkpoint_format import (EXPORT_METADATA, TRAINING_KEY, CheckpointFormatError, build_controlnet,
                                             read_export, read_state_file, read_training_checkpoint)

ORIGINAL_CONTROL_PREFIX = "control_model."
ORIGINAL_UNET_PREFIX = "model.diffusion_model."
# Public ControlNets trained on ADE20K-coloured segmentation maps, recognised by name: they get
# the ADE20K palette, control images in [0, 1] and the image's aspect ratio by default.
PUBLIC_ADE20K_CONTROLNETS = ("sd-controlnet-seg", "control_sd15_seg", "control_v11p_sd15_seg")
FORMATS = ("training", "export", "diffusers", "original")


@dataclass
class ControlNetSource:
    """A loaded ControlNet, what it says about its training, and UNet weights to overlay."""

    controlnet: ControlNetModel
    format: str  # one of FORMATS
    path: str
    metadata: dict[str, Any] = field(default_factory=dict)  # conditioning, palette, num_classes, ...
    unet_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # diffusers UNet keys

    @property
    def is_public_ade20k(self) -> bool:
        """Whether this is one of the public ADE20K segmentation ControlNets (by name)."""
        return any(name in self.path for name in PUBLIC_ADE20K_CONTROLNETS)


def check_checkpoint_path(path: str) -> None:
    """Raise ``CheckpointFormatError`` unless ``path`` is a local file or folder or looks like a hub id."""
    if not Path(path).expanduser().exists() and not _looks_like_hub_id(path):
        raise CheckpointFormatError(f"{path}: no such file or folder (nor a Hugging Face id)")


def load_controlnet(path: str, base_unet: UNet2DConditionModel, allow_pickle: bool = False,
                    base_name: str = "the base model") -> ControlNetSource:
    """Load the ControlNet at ``path`` (any of ``FORMATS``), float32, on the CPU, checked to fit
    ``base_unet`` (of ``base_name``, for messages)."""
    check_checkpoint_path(path)
    local = Path(path).expanduser()
    if local.is_dir():
        source = _load_folder(local)
    elif local.is_file():
        source = _load_file(local, base_unet, allow_pickle)
    else:
        source = _load_diffusers(path)
    check_fits_unet(source.controlnet.config, base_unet.config, path, base_name)
    return source


# What a ControlNet shares with the UNet it steers: its residuals are added to the UNet's skip
# connections block by block, and both read the same text embeddings.
SHARED_UNET_SETTINGS = ("in_channels", "block_out_channels", "down_block_types", "layers_per_block",
                        "cross_attention_dim", "transformer_layers_per_block")


def check_fits_unet(controlnet_config: dict, unet_config: dict, controlnet_name: str, unet_name: str) -> None:
    """``CheckpointFormatError`` naming both models unless the ControlNet was made for a UNet
    of this shape (e.g. an SD2 ControlNet with SD1.5: cross_attention_dim 1024 against 768)."""
    def value(config: dict, key: str):
        found = config.get(key)
        if key == "transformer_layers_per_block" and isinstance(found, int):
            found = [found] * len(config.get("down_block_types") or ())
        return list(found) if isinstance(found, (list, tuple)) else found

    differences = [f"{key} {value(controlnet_config, key)} against {value(unet_config, key)}"
                   for key in SHARED_UNET_SETTINGS if value(controlnet_config, key) != value(unet_config, key)]
    if differences:
        raise CheckpointFormatError(
            f"the ControlNet {controlnet_name} was made for another base model than {unet_name}: "
            f"{'; '.join(differences)} (ControlNet against UNet); use the base model it was trained on "
            f"(diffusion.sd_model_path) or a ControlNet made for this one")


def _looks_like_hub_id(path: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+", path) is not None and not path.startswith((".", "/"))


def _load_folder(folder: Path) -> ControlNetSource:
    """An exported folder (with our metadata) or a plain diffusers ControlNet folder."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        hint = " (a Stable Diffusion folder: give its ControlNet, not the base model)" if (
            folder / "model_index.json").is_file() else ""
        raise CheckpointFormatError(f"{folder}: not a ControlNet folder, it has no config.json{hint}")
    class_name = json.loads(config_file.read_text(encoding="utf-8")).get("_class_name")
    if class_name != "ControlNetModel":
        raise CheckpointFormatError(f"{folder}: holds a {class_name}, not a ControlNetModel")
    source = _load_diffusers(str(folder))
    if (folder / EXPORT_METADATA).is_file():
        source.format = "export"
        source.metadata, source.unet_weights = read_export(folder)
    return source


def _load_diffusers(name_or_path: str) -> ControlNetSource:
    try:
        controlnet = ControlNetModel.from_pretrained(name_or_path, torch_dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise CheckpointFormatError(
            f"{name_or_path}: cannot load a diffusers ControlNet ({str(error).splitlines()[0]})") from None
    return ControlNetSource(controlnet=controlnet, format="diffusers", path=name_or_path)


def _load_file(path: Path, base_unet: UNet2DConditionModel, allow_pickle: bool) -> ControlNetSource:
    """A training checkpoint or an original-format (ControlLDM) state dict."""
    checkpoint = read_state_file(path, allow_pickle)
    if TRAINING_KEY in checkpoint:
        return _from_training_checkpoint(path, checkpoint)
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise CheckpointFormatError(f"{path}: its 'state_dict' entry is not a dict of weights")
    if _is_original_controlnet(state) or "controlnet_cond_embedding.conv_in.weight" in state:
        return _from_original(path, state, base_unet)
    raise CheckpointFormatError(f"{path}: not a ControlNet checkpoint: {_describe_keys(checkpoint)}")


def _is_original_controlnet(state: dict) -> bool:
    return any(key.startswith(ORIGINAL_CONTROL_PREFIX) for key in state) or "input_hint_block.0.weight" in state


def _describe_keys(checkpoint: dict) -> str:
    """What the file seems to be instead, for the error message."""
    keys = list(checkpoint)
    if "model_state" in checkpoint:
        return "it has 'model_state' (a DeepLabV3+ segmentation checkpoint?)"
    state = checkpoint.get("state_dict", checkpoint)
    if isinstance(state, dict) and any(str(k).startswith(ORIGINAL_UNET_PREFIX) for k in state):
        return "a Stable Diffusion checkpoint without a ControlNet (use it as diffusion.sd_model_path)"
    shown = ", ".join(repr(k) for k in keys[:4])
    return (f"top-level keys {shown}{', ...' if len(keys) > 4 else ''}; expected a training "
            f"checkpoint ('{TRAINING_KEY}'), or original-format weights ('{ORIGINAL_CONTROL_PREFIX}*')")


def _from_training_checkpoint(path: Path, checkpoint: dict) -> ControlNetSource:
    """Our Lightning checkpoint: ControlNet (EMA copy when present) plus trained UNet weights."""
    weights = read_training_checkpoint(checkpoint, path)
    return ControlNetSource(controlnet=build_controlnet(weights, path), format="training", path=str(path),
                            metadata=weights.metadata, unet_weights=weights.unet)


def _from_original(path: Path, state: dict, base_unet: UNet2DConditionModel) -> ControlNetSource:
    """Convert original-format weights with diffusers' single-file loader, shaped like ``base_unet``."""
    conditioning_channels, embedding_channels = _conditioning_shapes(state)
    with tempfile.TemporaryDirectory() as config_dir:
        _controlnet_config_like(base_unet, conditioning_channels, embedding_channels).save_config(config_dir)
        controlnet = _single_file(ControlNetModel, state, config_dir, path, "ControlNet")
    unet_weights = {}
    if any(key.startswith(ORIGINAL_UNET_PREFIX) for key in state):
        with tempfile.TemporaryDirectory() as config_dir:
            base_unet.save_config(config_dir)
            unet_weights = _single_file(UNet2DConditionModel, state, config_dir, path, "UNet").state_dict()
    kind = "original" if _is_original_controlnet(state) else "diffusers"  # diffusers names in one file
    return ControlNetSource(controlnet=controlnet, format=kind, path=str(path), unet_weights=unet_weights)


def _conditioning_shapes(state: dict) -> tuple[int, tuple[int, ...]]:
    """Control-image channels and conditioning-embedding widths, read from the weights' shapes."""
    diffusers_keys = "controlnet_cond_embedding.conv_in.weight" in state
    pattern = (r"controlnet_cond_embedding\.(conv_in|blocks\.(\d+))\.weight" if diffusers_keys
               else r"(?:control_model\.)?input_hint_block\.(\d+)\.weight")
    convs = []  # (order, weight) of every conv up to, not including, the last projection
    for key, weight in state.items():
        match = re.fullmatch(pattern, key)
        if match:
            order = (-1 if match[1] == "conv_in" else int(match[2])) if diffusers_keys else int(match[1])
            convs.append((order, weight))
    convs.sort(key=lambda item: item[0])
    if not diffusers_keys:
        convs = convs[:-1]  # the last hint conv is the zero-initialised projection (conv_out)
    if len(convs) < 1 or len(convs) % 2 == 0:
        raise CheckpointFormatError("unexpected conditioning-embedding layers in the ControlNet weights")
    widths = [convs[0][1].shape[0]] + [weight.shape[0] for _, weight in convs[2::2]]
    return int(convs[0][1].shape[1]), tuple(int(width) for width in widths)


def _controlnet_config_like(unet: UNet2DConditionModel, conditioning_channels: int,
                            embedding_channels: tuple[int, ...]) -> ControlNetModel:
    """An empty (meta-device) ControlNet with ``unet``'s architecture, for its config."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return ControlNetModel.from_unet(unet, conditioning_channels=conditioning_channels,
                                         conditioning_embedding_out_channels=embedding_channels,
                                         load_weights_from_unet=False)


def _single_file(model_class: type, state: dict, config_dir: str, path: Path, what: str):
    """``model_class.from_single_file`` with a local config; failures become one clear line."""
    try:
        return model_class.from_single_file(state, config=config_dir).float().eval()
    except (AttributeError, KeyError, RuntimeError, ValueError, TypeError) as error:
        raise CheckpointFormatError(
            f"{path}: its {what} weights do not fit the base model's UNet (diffusion.sd_model_path): "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None


@dataclass(frozen=True)
class ControlSpec:
    """How label maps become control images for one ControlNet."""

    mode: str  # "palette" (3 colour channels) or "onehot" (one channel per class)
    palette: str  # "voc" or "ade20k" (palette mode)
    num_classes: int  # of the maps it was trained on (one-hot: its control channels)
    value_range: str  # "unit": [0, 1] as diffusers feeds; "signed": [-1, 1] as the original project
    keep_aspect: bool  # False: stretched to a resolution x resolution square (the original project)
    resolution: int  # generation size: the square's side, or the side of a square of equal area
    label_set: str | None = None  # the label set of its training maps, when its metadata names one
    scale: str = "short_side"  # aspect kept: short side = resolution ("short_side") or area = resolution^2


def resolve_control_spec(source: ControlNetSource, config: Config) -> tuple[ControlSpec, str]:
    """The control-image convention for ``source``: explicit settings, else what the checkpoint says.

    Returns the convention and a one-line note saying where the defaults came from.
    """
    decode, meta = config.decode, source.metadata
    mode, num_classes = _conditioning(source, config)
    original_project = source.format == "original" and not source.is_public_ade20k
    palette = decode.palette or meta.get("palette") or (
        "ade20k" if source.is_public_ade20k else config.diffusion.palette)
    value_range = decode.control_range if decode.control_range != "auto" else (
        "signed" if original_project else "unit")
    keep_aspect = decode.keep_aspect if decode.keep_aspect is not None else meta.get(
        "keep_aspect", not original_project)  # a model trained on stretched maps decodes stretched
    resolution = decode.resolution or meta.get("resolution") or config.diffusion.resolution
    if resolution % 8:
        raise ValueError(f"the generation resolution must be a multiple of 8, got {resolution}")
    control = ControlSpec(mode, palette, num_classes, value_range, keep_aspect, int(resolution),
                          meta.get("label_set"), decode.generation_scale)
    origin = ("the original project's convention" if original_project else
              "a public ADE20K segmentation ControlNet" if source.is_public_ade20k else
              f"the {source.format} checkpoint's settings")
    return control, f"control images: {_describe(control)} (defaults from {origin})"


def _conditioning(source: ControlNetSource, config: Config) -> tuple[str, int]:
    """Rendering mode and class count, checked against the ControlNet's input channels."""
    channels = int(source.controlnet.config.conditioning_channels)
    mode = source.metadata.get("conditioning") or ("palette" if channels == 3 else "onehot")
    if mode not in CONDITIONING_MODES:
        raise CheckpointFormatError(f"{source.path}: unknown conditioning {mode!r} in its metadata")
    num_classes = int(source.metadata.get("num_classes") or (
        channels if mode == "onehot" else config.segmentation.num_classes))
    expected = 3 if mode == "palette" else num_classes
    if channels != expected:
        raise CheckpointFormatError(
            f"{source.path}: {mode} conditioning needs {expected} control channels, the ControlNet "
            f"takes {channels}")
    return mode, num_classes


def _describe(control: ControlSpec) -> str:
    drawing = (f"{control.palette} palette" if control.mode == "palette"
               else f"one-hot, {control.num_classes} classes")
    values = "[0, 1]" if control.value_range == "unit" else "[-1, 1]"
    kept = (f"short side {control.resolution}" if control.scale == "short_side"
            else f"about {control.resolution}^2 pixels")
    shape = f"aspect kept, {kept}" if control.keep_aspect else f"stretched to {control.resolution}x{control.resolution}"
    return f"{drawing}, values in {values}, {shape}"
