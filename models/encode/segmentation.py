"""DeepLabV3+ (Chen et al. 2018, arXiv:1802.02611) for PASCAL VOC label maps.

The network reproduces the widely used PyTorch DeepLabV3+ whose checkpoint
``best_deeplabv3plus_resnet101_voc_os16.pth`` the original project ships: a torchvision-style
ResNet (``backbone.*``) and a head (``classifier.*``) made of plain ASPP, a 1x1 projection of the
stride-4 features to 48 channels, and a dense 3x3 conv on [low-level, ASPP] features. The
encoder and the ASPP block come from segmentation-models-pytorch; smp's own ``DeepLabV3Plus``
head differs (separable convs, an extra conv after ASPP, [ASPP, low-level] order,
align_corners=True, dilation on the first block of the last stage), so it is not used.

The module attributes mirror the checkpoint's key names, so an original state dict loads with
``strict=True`` and no renaming.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.deeplabv3.decoder import ASPP
from segmentation_models_pytorch.encoders import encoders as smp_encoders
from segmentation_models_pytorch.encoders import get_encoder
from segmentation_models_pytorch.encoders.resnet import ResNetEncoder
from torch import nn
from torchvision.models.resnet import Bottleneck

from models.config import SegmentationConfig
from models.encode.scaling import predict_bounded
from models.palettes import NUM_VOC_CLASSES, UINT8, VOC
from models.weights import WeightsFileError, read_weights_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ATROUS_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
MIN_INFERENCE_SIZE = 32  # the network downsamples 16 or 32 times; below this it sees a few pixels


def build_backbone(encoder_name: str, output_stride: int) -> nn.Module:
    """An smp encoder with random weights, dilated to ``output_stride``.

    Bottleneck ResNets are dilated the torchvision way (the first block of a dilated stage keeps
    the previous dilation), as the original network was; other encoders use smp's own rule.
    """
    if output_stride not in ATROUS_RATES:
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    spec = smp_encoders.get(encoder_name)
    if spec is not None and spec["encoder"] is ResNetEncoder and spec["params"]["block"] is Bottleneck:
        params = dict(spec["params"], depth=5, output_stride=output_stride)
        params["replace_stride_with_dilation"] = [False, output_stride == 8, True]
        return ResNetEncoder(**params)
    return get_encoder(encoder_name, in_channels=3, depth=5, weights=None, output_stride=output_stride)


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the deepest features, fused with projected stride-4 features."""

    def __init__(self, high_channels: int, low_channels: int, num_classes: int,
                 output_stride: int = 16, aspp_channels: int = 256, low_level_channels: int = 48):
        super().__init__()
        self.project = nn.Sequential(
            nn.Conv2d(low_channels, low_level_channels, 1, bias=False),
            nn.BatchNorm2d(low_level_channels),
            nn.ReLU(inplace=True),
        )
        self.aspp = ASPP(high_channels, aspp_channels, ATROUS_RATES[output_stride],
                         separable=False, dropout=0.1)
        self.classifier = nn.Sequential(
            nn.Conv2d(low_level_channels + aspp_channels, aspp_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(aspp_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(aspp_channels, num_classes, 1),
        )

    def forward(self, low_level: torch.Tensor, high_level: torch.Tensor) -> torch.Tensor:
        low = self.project(low_level)  # (B, 48, H/4, W/4)
        context = self.aspp(high_level)  # (B, 256, H/os, W/os)
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, context], dim=1))  # (B, classes, H/4, W/4)


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ with the original checkpoint's module names (``backbone``, ``classifier``)."""

    def __init__(self, encoder_name: str = "resnet101", num_classes: int = 21,
                 output_stride: int = 16, aspp_channels: int = 256, low_level_channels: int = 48):
        super().__init__()
        self.backbone = build_backbone(encoder_name, output_stride)
        channels = self.backbone.out_channels  # per stage: input, /2, /4, /8, /16, /32
        self.classifier = DeepLabV3PlusHead(channels[-1], channels[2], num_classes,
                                            output_stride, aspp_channels, low_level_channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.label_set = VOC if num_classes == NUM_VOC_CLASSES else UINT8
        self.inference_size: int | None = None  # short side at which it runs; None: each image's own size

    @classmethod
    def from_config(cls, config: SegmentationConfig) -> "DeepLabV3Plus":
        """Build (random weights) from the ``segmentation`` config section."""
        return cls(config.encoder_name, config.num_classes, config.output_stride,
                   config.aspp_channels, config.low_level_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, classes, H, W) for ImageNet-normalised images (B, 3, H, W) of any size."""
        features = self.backbone(images)  # [x, /2, /4, /8, /16, /os]
        logits = self.classifier(features[2], features[-1])  # (B, classes, H/4, W/4)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) or float [0, 1] (B, 3, H, W) images to ImageNet-normalised input."""
        if images.dtype == torch.uint8:
            images = images.permute(0, 3, 1, 2).float() / 255.0
        return (images.to(self.mean.dtype) - self.mean) / self.std

    @torch.inference_mode()
    def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Label maps (H, W) uint8 for RGB uint8 images (H, W, 3), each at its own size.

        Each image runs at its exact size, as the original network did, or at the bounded
        ``inference_size`` (``models.encode.scaling``); images of equal network size share a
        batch without padding, so a label map never depends on what else is in the batch.
        """
        device, dtype = self.mean.device, next(self.parameters()).dtype

        def run_batch(batch: list[np.ndarray]) -> torch.Tensor:
            return self(self.normalize(torch.from_numpy(np.stack(batch)).to(device)).to(dtype))  # (B, C, h, w)

        return predict_bounded(images, self.inference_size, run_batch)


# --- checkpoints --------------------------------------------------------------------------------

def _numpy_safe_globals() -> list:
    """What an original checkpoint pickles besides tensors: numpy scalars and their dtypes."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    dtype_classes = [getattr(np.dtypes, name) for name in (
        "Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType",
        "UInt8DType", "BoolDType") if hasattr(np.dtypes, name)]
    # Files written under numpy 1.x name the scalar constructor "numpy.core.multiarray.scalar".
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtype_classes]


class CheckpointError(ValueError):
    """A segmentation checkpoint is missing, unreadable or does not fit the configured network."""


def load_state_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The network weights from an original ``.pth`` checkpoint or our ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"segmentation checkpoint not found: {path} (put best_deeplabv3plus_resnet101_voc_os16.pth "
            f"there, or pass --segmentation_ckpt)"
        )
    try:
        payload = read_weights_file(path, allow_pickle, safe_globals=_numpy_safe_globals())
    except WeightsFileError as error:
        raise CheckpointError(f"{error} (segmentation.allow_pickle)") from None
    return _extract_state_dict(path, payload)


def _extract_state_dict(path: Path, payload: object) -> dict[str, torch.Tensor]:
    if isinstance(payload, dict):
        for key in ("model_state", "state_dict", "model"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CheckpointError(f"{path}: no state dict of tensors found (expected key 'model_state')")
    return {k.removeprefix("module."): v for k, v in payload.items()}


def check_state_dict(path: str | Path, state_dict: dict[str, torch.Tensor], config: SegmentationConfig) -> None:
    """Explain a mismatch between checkpoint and config before ``load_state_dict`` does."""
    if not any(k.startswith("backbone.") for k in state_dict) or not any(
            k.startswith("classifier.") for k in state_dict):
        raise CheckpointError(f"{path}: not a DeepLabV3+ checkpoint (no backbone.* / classifier.* keys)")
    head = state_dict.get("classifier.classifier.3.weight")
    if head is not None and head.shape[0] != config.num_classes:
        raise CheckpointError(
            f"{path}: the checkpoint predicts {head.shape[0]} classes but segmentation.num_classes "
            f"is {config.num_classes}"
        )


def save_checkpoint(model: DeepLabV3Plus, config: SegmentationConfig, path: str | Path) -> None:
    """Save weights as safetensors, with the architecture settings in the metadata."""
    from safetensors.torch import save_file

    architecture = {k: getattr(config, k) for k in (
        "encoder_name", "num_classes", "output_stride", "aspp_channels", "low_level_channels")}
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"architecture": json.dumps(architecture)})


def load_segmenter(config: SegmentationConfig, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> nn.Module:
    """The configured label-map network in eval mode on ``device``: DeepLabV3+ with its checkpoint,
    or a transformers model (``segmentation.family``); either has ``predict`` and ``label_set``."""
    if config.inference_size is not None and not (isinstance(config.inference_size, int)
                                                  and config.inference_size >= MIN_INFERENCE_SIZE):
        raise CheckpointError(f"segmentation.inference_size must be null (each image at its own size) or a short "
                              f"side of at least {MIN_INFERENCE_SIZE} pixels, got {config.inference_size!r}")
    if config.family == "transformers":
        from models.encode.transformers_segmenter import TransformersSegmenter

        try:
            return TransformersSegmenter.from_config(config, device, dtype)
        except (OSError, ValueError) as error:
            raise CheckpointError(str(error)) from None
    model = load_deeplab(config)
    model.inference_size = config.inference_size
    return model.to(device=device, dtype=dtype).eval()


def load_deeplab(config: SegmentationConfig) -> DeepLabV3Plus:
    """DeepLabV3+ as configured, with the checkpoint's weights."""
    if config.checkpoint is None:
        raise CheckpointError("segmentation.checkpoint is not set (pass --segmentation_ckpt)")
    state_dict = load_state_dict(config.checkpoint, allow_pickle=config.allow_pickle)
    check_state_dict(config.checkpoint, state_dict, config)
    model = DeepLabV3Plus.from_config(config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{config.checkpoint}: weights do not fit encoder {config.encoder_name!r} "
            f"(aspp_channels={config.aspp_channels}, low_level_channels={config.low_level_channels}): "
            f"{str(error).splitlines()[1] if len(str(error).splitlines()) > 1 else error}"
        ) from None
    return model
