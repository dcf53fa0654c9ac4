"""Our own ControlNet files, written and read side by side: the training checkpoint and the export.

Training checkpoint: the Lightning ``.ckpt`` that train.py writes (torch's zip format; its pickle
holds only tensors and plain containers, so it loads with ``weights_only=True``). Its
``state_dict`` holds only what is trained: ``controlnet.*``, optionally ``controlnet_ema.*`` and
``unet.*`` (the unfrozen UNet decoder half). Its ``semantic_compression`` entry
(``training_record``) holds the format version, the ControlNet's constructor arguments, the
project config as plain data and whether an EMA copy is kept.

Export: the folder train.py writes to ``RUN/controlnet/`` (and ``python -m models.train.export``
makes from a checkpoint): a ``save_pretrained`` ControlNet (the EMA weights when there are any),
``semantic_compression.json`` (``export_metadata``: how the ControlNet wants its control images,
the base model, the step) and, when the UNet decoder half was trained,
``unet_trainable.safetensors``. docs/training.md, "the checkpoint contract", describes both.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel

from models.config import Config
from models.imageio import atomic_write_json, give_usual_permissions
from models.palettes import LabelSet
from models.weights import WeightsFileError, read_weights_file

FORMAT_VERSION = 1  # of both the training checkpoint's record and the export metadata
TRAINING_KEY = "semantic_compression"  # the checkpoint entry written by training_record
# State-dict prefixes of a training checkpoint: the trained modules' attribute names in
# models.train.controlnet_module.ControlNetModule (Lightning names the keys after them).
CONTROLNET_PREFIX, EMA_PREFIX, UNET_PREFIX = "controlnet.", "controlnet_ema.", "unet."
EXPORT_METADATA = "semantic_compression.json"
EXPORT_UNET_WEIGHTS = "unet_trainable.safetensors"


class CheckpointFormatError(ValueError):
    """A ControlNet file is missing, of the wrong kind, or does not fit the base model."""


def controlnet_config_dict(controlnet: ControlNetModel) -> dict:
    """The ControlNet's constructor arguments (``ControlNetModel.from_config(it)`` rebuilds it)."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in controlnet.config.items() if not key.startswith("_")}


def training_record(controlnet: ControlNetModel, config: Config, ema: bool, label_set: LabelSet,
                    base_fingerprint: str | None = None) -> dict:
    """What a training checkpoint stores under ``TRAINING_KEY`` (``label_set``: of the training
    maps; ``base_fingerprint``: ``unet_fingerprint`` of the base UNet it was trained on)."""
    return {"format_version": FORMAT_VERSION, "controlnet_config": controlnet_config_dict(controlnet),
            "config": config.to_dict(), "ema": ema, "label_set": label_set.name, "num_classes": label_set.num_classes,
            "base_fingerprint": base_fingerprint}


def control_metadata(config: dict, label_set: str | None = None, num_classes: int | None = None) -> dict:
    """How a ControlNet trained with ``config`` (as a plain dict) on ``label_set`` maps of
    ``num_classes`` classes wants its control images (older records name no set: the config's
    class count stands)."""
    diffusion, train = config.get("diffusion", {}), config.get("train", {})
    metadata = {"conditioning": diffusion.get("conditioning"), "palette": diffusion.get("palette"),
                "label_set": label_set, "num_classes": num_classes or config.get("segmentation", {}).get("num_classes"),
                "resolution": diffusion.get("resolution"), "keep_aspect": train.get("resize_mode", "crop") != "stretch",
                "sd_model_path": diffusion.get("sd_model_path")}
    return {key: value for key, value in metadata.items() if value is not None}


@dataclass
class TrainedWeights:
    """What a training checkpoint holds for decoding and for export."""

    controlnet_config: dict
    controlnet: dict[str, torch.Tensor]  # the EMA weights when the run kept an EMA copy
    unet: dict[str, torch.Tensor]  # the trained UNet decoder half (diffusers key names), or empty
    config: dict  # the project config of the run, plain data
    ema: bool
    global_step: int
    label_set: str | None = None  # the training maps' label set (None in records older than label sets)
    num_classes: int | None = None  # its classes
    base_fingerprint: str | None = None  # unet_fingerprint of the base UNet (None in older records)

    @property
    def metadata(self) -> dict:
        return {**control_metadata(self.config, self.label_set, self.num_classes), "ema": self.ema,
                **({"base_fingerprint": self.base_fingerprint} if self.base_fingerprint else {})}


def read_training_checkpoint(checkpoint: dict, path: str | Path) -> TrainedWeights:
    """The weights of a loaded training checkpoint; ``CheckpointFormatError`` if it is not ours."""
    record, state = checkpoint.get(TRAINING_KEY), checkpoint.get("state_dict", {})
    if not isinstance(record, dict):
        raise CheckpointFormatError(f"{path}: not a training checkpoint of this project (no '{TRAINING_KEY}')")
    if record.get("format_version") != FORMAT_VERSION:
        raise CheckpointFormatError(f"{path}: training checkpoint format {record.get('format_version')!r}; "
                                    f"this version reads {FORMAT_VERSION}")
    if not isinstance(record.get("controlnet_config"), dict):
        raise CheckpointFormatError(f"{path}: its '{TRAINING_KEY}' record has no ControlNet config")
    ema = bool(record.get("ema"))
    prefix = EMA_PREFIX if ema else CONTROLNET_PREFIX
    weights = _strip(state, prefix)
    if not weights:
        raise CheckpointFormatError(f"{path}: training checkpoint without '{prefix}*' weights")
    return TrainedWeights(record["controlnet_config"], weights, _strip(state, UNET_PREFIX), record.get("config", {}),
                          ema, int(checkpoint.get("global_step", 0)), record.get("label_set"),
                          record.get("num_classes"), record.get("base_fingerprint"))


def _strip(state: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def build_controlnet(weights: TrainedWeights, path: str | Path) -> ControlNetModel:
    """The ControlNet of a training checkpoint, float32, in eval mode."""
    controlnet = ControlNetModel.from_config(weights.controlnet_config)
    try:
        controlnet.load_state_dict({k: v.float().cpu() for k, v in weights.controlnet.items()}, strict=True)
    except RuntimeError as error:
        raise CheckpointFormatError(f"{path}: ControlNet weights do not match its config ({error})") from None
    return controlnet.eval()


def export_metadata(weights: TrainedWeights) -> dict:
    """The content of ``semantic_compression.json``."""
    return {**weights.metadata, "format_version": FORMAT_VERSION, "global_step": weights.global_step,
            "unet_trainable": bool(weights.unet),
            "unet_averaged": False}  # the UNet decoder half is exported as trained last, never averaged


def write_export(output_dir: str | Path, weights: TrainedWeights) -> Path:
    """Write the export folder for ``weights``: built in a temporary folder beside ``output_dir``,
    which then replaces it (an interrupted export leaves the previous folder or none)."""
    from safetensors.torch import save_file

    output_dir = Path(output_dir)
    controlnet = build_controlnet(weights, output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        controlnet.save_pretrained(staging, safe_serialization=True)
        if weights.unet:
            save_file({k: v.float().cpu().contiguous() for k, v in weights.unet.items()},
                      str(staging / EXPORT_UNET_WEIGHTS))
        write_export_metadata(staging, export_metadata(weights))
        for path in (staging, *staging.iterdir()):  # mkdtemp's folder is private to its owner
            give_usual_permissions(path)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def write_export_metadata(folder: Path, metadata: dict) -> None:
    """Write an export folder's ``semantic_compression.json`` (atomically)."""
    atomic_write_json(folder / EXPORT_METADATA, metadata)


def read_export_metadata(folder: Path) -> dict:
    """An export folder's metadata; ``CheckpointFormatError`` for another format version."""
    metadata = json.loads((folder / EXPORT_METADATA).read_text(encoding="utf-8"))
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointFormatError(f"{folder}: export format {metadata.get('format_version')!r}; "
                                    f"this version reads {FORMAT_VERSION}")
    return metadata


def read_export(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata of an export folder and the UNet weights it carries (empty if none)."""
    metadata = read_export_metadata(folder)
    if not (folder / EXPORT_UNET_WEIGHTS).is_file():
        return metadata, {}
    from safetensors.torch import load_file

    return metadata, load_file(folder / EXPORT_UNET_WEIGHTS)


def read_state_file(path: Path, allow_pickle: bool = False) -> dict[str, Any]:
    """A checkpoint file as a dict (``models.weights``: safe loading unless pickle is allowed)."""
    try:
        checkpoint = read_weights_file(path, allow_pickle)
    except WeightsFileError as error:
        raise CheckpointFormatError(str(error)) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointFormatError(f"{path}: holds a {type(checkpoint).__name__}, not a dict of weights")
    return checkpoint


def export_checkpoint(checkpoint_path: str | Path, output_dir: str | Path) -> Path:
    """Export a training checkpoint's ControlNet (EMA weights when present) as a folder."""
    weights = read_training_checkpoint(read_state_file(Path(checkpoint_path)), checkpoint_path)
    return write_export(output_dir, weights)
