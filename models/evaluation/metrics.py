"""The metric suite: fidelity, perception, distribution, text and semantic agreement.

Per image pair (prediction against ground truth, at the ground truth's size):

- ``psnr``, ``ssim`` (Wang et al. 2004, Gaussian window 11, sigma 1.5, averaged over the window
  positions inside the image like the reference code and scikit-image) and ``ms_ssim`` (Wang et
  al. 2003; five scales, negative contrast terms clipped as in TensorFlow) from torchmetrics, on
  RGB in [0, 1]. MS-SSIM needs both sides larger than 160 pixels, else it is NaN;
- ``lpips`` (Zhang et al. 2018, the ``lpips`` package, AlexNet trunk by default);
- ``dists`` (Ding et al. 2020, torchmetrics' network, at full resolution);
- ``clip_score`` (Hessel et al. 2021): 100 x cosine of CLIP image and caption embeddings,
  clipped at 0 (torchmetrics ``CLIPScore``);
- ``sem_miou``, ``sem_pixel_accuracy``: the prediction re-segmented by the encoder's network
  (``segmentation``: DeepLabV3+ or a transformers model) against the label map that was
  transmitted, in that network's label set (void pixels ignored; mIoU over classes in either map).

Over the whole set: ``fid`` (Heusel et al. 2017) and ``kid`` (Binkowski et al. 2018) with
torch-fidelity's Inception-v3 through torchmetrics, on whole images and on ``patch_size``
patches (``fid_patch``, ``kid_patch``), the protocol of HiFiC (Mentzer et al. 2020, App. A.7):
per image the non-overlapping grid of patches, plus the grid shifted by half a patch.

Weights are only read from disk (``evaluate.torch_hub_dir`` or torch's own cache, and the
Hugging Face cache or a folder for CLIP). A metric whose file is missing is *unavailable*, with
the file it needs named, and the others still run. Each file is first opened with
``torch.load(weights_only=True)``, so nothing but tensors is ever unpickled from it.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from models.config import Config, EvaluateConfig, SegmentationConfig
from models.weights import WeightsFileError, read_weights_file

SSIM_WINDOW = 11  # torchmetrics' Gaussian window for sigma 1.5: 2 * int(3.5 * 1.5 + 0.5) + 1
MS_SSIM_MIN_SIDE = 161  # five scales of an 11-pixel window: (11 - 1) * 2 ** 4 < side


@dataclass(frozen=True)
class WeightFile:
    """A weight file that a metric reads from the torch hub cache's ``checkpoints/`` folder."""

    filename: str
    description: str


WEIGHT_FILES = {
    "alexnet": WeightFile("alexnet-owt-7be5be79.pth", "torchvision AlexNet (LPIPS)"),
    "vgg16": WeightFile("vgg16-397923af.pth", "torchvision VGG-16 (DISTS, LPIPS-VGG)"),
    "squeezenet": WeightFile("squeezenet1_1-b8a52dc0.pth", "torchvision SqueezeNet 1.1 (LPIPS)"),
    "inception": WeightFile("weights-inception-2015-12-05-6726825d.pth", "torch-fidelity Inception-v3 (FID, KID)"),
}
LPIPS_TRUNKS = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet"}


class MetricUnavailable(Exception):
    """A metric cannot be computed here; the message says what it needs."""


def checkpoints_dir(config: EvaluateConfig) -> Path:
    """The folder the weight files are read from: ``<hub dir>/checkpoints``."""
    return Path(config.torch_hub_dir or torch.hub.get_dir()) / "checkpoints"


def require_weights(config: EvaluateConfig, name: str) -> Path:
    """The path of weight file ``name``, checked to hold only tensors; or ``MetricUnavailable``."""
    weight_file = WEIGHT_FILES[name]
    path = checkpoints_dir(config) / weight_file.filename
    if not path.is_file():
        raise MetricUnavailable(
            f"needs {path} ({weight_file.description}); put the file there or set "
            f"evaluate.torch_hub_dir to a folder whose checkpoints/ holds it")
    try:
        read_weights_file(path)
    except WeightsFileError as error:
        raise MetricUnavailable(f"not a plain weight file: {error}") from None
    return path


@contextlib.contextmanager
def hub_dir(config: EvaluateConfig) -> Iterator[None]:
    """Let torchvision's loaders find their files in ``evaluate.torch_hub_dir`` for a while."""
    if config.torch_hub_dir is None:
        yield
        return
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(config.torch_hub_dir))
    try:
        yield
    finally:
        torch.hub.set_dir(previous)


@dataclass
class ImagePair:
    """One prediction and its ground truth, both (H, W, 3) uint8 of the same size."""

    truth: np.ndarray
    prediction: np.ndarray
    device: torch.device
    caption: str | None = None
    label_map: np.ndarray | None = None  # the transmitted (H', W') uint8 label map
    label_set: str | None = None  # the name of its label set (None: the segmenter's)

    @cached_property
    def truth_uint8(self) -> torch.Tensor:
        return _to_tensor(self.truth, self.device)  # (1, 3, H, W) uint8

    @cached_property
    def prediction_uint8(self) -> torch.Tensor:
        return _to_tensor(self.prediction, self.device)  # (1, 3, H, W) uint8

    @cached_property
    def truth_float(self) -> torch.Tensor:
        return self.truth_uint8.float() / 255.0  # (1, 3, H, W) in [0, 1]

    @cached_property
    def prediction_float(self) -> torch.Tensor:
        return self.prediction_uint8.float() / 255.0  # (1, 3, H, W) in [0, 1]


def _to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.tensor(image).permute(2, 0, 1)[None].to(device)  # copies: PIL arrays are read-only


class PixelFidelity:
    """PSNR, SSIM and MS-SSIM from torchmetrics."""

    def __init__(self, names: list[str]):
        self.columns = tuple(names)

    @torch.inference_mode()
    def __call__(self, pair: ImagePair) -> dict[str, float]:
        from torchmetrics.functional.image import (multiscale_structural_similarity_index_measure,
                                                   peak_signal_noise_ratio,
                                                   structural_similarity_index_measure)

        prediction, truth = pair.prediction_float, pair.truth_float
        values = {}
        if "psnr" in self.columns:
            values["psnr"] = float(peak_signal_noise_ratio(prediction, truth, data_range=1.0))
        if "ssim" in self.columns:
            # Mean over the window positions inside the image ("valid"), as Wang et al.'s reference
            # code and scikit-image do; torchmetrics also averages the reflect-padded border.
            _, ssim_map = structural_similarity_index_measure(prediction, truth, data_range=1.0,
                                                              return_full_image=True)
            border = SSIM_WINDOW // 2
            values["ssim"] = float(ssim_map[..., border:-border, border:-border].mean())
        if "ms_ssim" in self.columns:
            values["ms_ssim"] = (
                float(multiscale_structural_similarity_index_measure(prediction, truth, data_range=1.0))
                if min(truth.shape[-2:]) >= MS_SSIM_MIN_SIDE else math.nan)
        return values


class LPIPSMetric:
    """LPIPS distance from the ``lpips`` package (lower is better)."""

    columns = ("lpips",)

    def __init__(self, config: EvaluateConfig, device: torch.device):
        import lpips

        require_weights(config, LPIPS_TRUNKS[config.lpips_net])
        with hub_dir(config), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
            self.model = lpips.LPIPS(net=config.lpips_net, verbose=False).to(device).eval()

    @torch.inference_mode()
    def __call__(self, pair: ImagePair) -> dict[str, float]:
        return {"lpips": float(self.model(pair.prediction_float, pair.truth_float, normalize=True))}


class DISTSMetric:
    """DISTS distance with torchmetrics' network, built once (lower is better)."""

    columns = ("dists",)

    def __init__(self, config: EvaluateConfig, device: torch.device):
        from torchmetrics.functional.image.dists import DISTSNetwork

        require_weights(config, "vgg16")
        with hub_dir(config):
            self.model = DISTSNetwork().to(device).eval()

    @torch.inference_mode()
    def __call__(self, pair: ImagePair) -> dict[str, float]:
        return {"dists": float(self.model(pair.prediction_float, pair.truth_float))}


class PooledCLIP(nn.Module):
    """A CLIPModel whose feature methods return the projected embeddings as tensors.

    torchmetrics 1.9 expects tensors from ``get_image_features``/``get_text_features``; with
    transformers 5 they return an output object whose ``pooler_output`` holds them.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixel_values))  # (B, D)

    def get_text_features(self, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return _pooled(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def _pooled(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPScoreMetric:
    """CLIP score of each prediction against its caption (higher is better)."""

    columns = ("clip_score",)

    def __init__(self, config: EvaluateConfig, device: torch.device):
        from torchmetrics.multimodal import CLIPScore
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(config.clip_model, local_files_only=True).eval()
            processor = CLIPProcessor.from_pretrained(config.clip_model, local_files_only=True)
        except OSError:
            raise MetricUnavailable(
                f"needs the CLIP model {config.clip_model!r} in the Hugging Face cache or as a local "
                f"folder (set evaluate.clip_model)") from None
        self.metric = CLIPScore(model_name_or_path=lambda: (PooledCLIP(model), processor)).to(device)

    @torch.inference_mode()
    def __call__(self, pair: ImagePair) -> dict[str, float]:
        if pair.caption is None:
            return {"clip_score": math.nan}
        self.metric.reset()
        self.metric.update(pair.prediction_uint8[0], pair.caption)
        return {"clip_score": float(self.metric.compute())}


class SemanticConsistency:
    """The prediction re-segmented by the encoder's network, compared with the transmitted label map."""

    columns = ("sem_miou", "sem_pixel_accuracy")

    def __init__(self, config: SegmentationConfig, device: torch.device):
        from models.encode.segmentation import CheckpointError, load_segmenter

        try:
            self.segmenter = load_segmenter(config, device)
        except CheckpointError as error:
            raise MetricUnavailable(str(error)) from None
        self.label_set = self.segmenter.label_set  # transmitted maps of another set are not compared
        self.num_classes = self.label_set.num_classes
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.other_sets: dict[str, int] = {}  # label set -> maps of it left out

    def __call__(self, pair: ImagePair) -> dict[str, float]:
        if pair.label_map is None:
            return {"sem_miou": math.nan, "sem_pixel_accuracy": math.nan}
        if pair.label_set not in (None, self.label_set.name):
            self.other_sets[pair.label_set] = self.other_sets.get(pair.label_set, 0) + 1
            return {"sem_miou": math.nan, "sem_pixel_accuracy": math.nan}
        predicted = self.segmenter.predict([pair.prediction])[0]  # (H, W) at the truth's size
        if predicted.shape != pair.label_map.shape:  # the label map was made at another size
            from PIL import Image

            height, width = pair.label_map.shape
            predicted = np.asarray(Image.fromarray(predicted).resize((width, height),
                                                                     Image.Resampling.NEAREST))
        confusion = confusion_matrix(pair.label_map, predicted, self.num_classes, self.label_set.ignored)
        self.confusion += confusion
        return {"sem_miou": mean_iou(confusion), "sem_pixel_accuracy": pixel_accuracy(confusion)}

    def dataset_metrics(self) -> dict[str, float]:
        """mIoU over all pixels of the set (the usual segmentation benchmark number)."""
        return {"sem_miou_dataset": mean_iou(self.confusion)} if self.confusion.any() else {}

    def note(self) -> str | None:
        """Why some maps were not compared, if any were left out."""
        if not self.other_sets:
            return None
        left_out = ", ".join(f"{count} {name}" for name, count in sorted(self.other_sets.items()))
        return (f"label maps left out ({left_out}): the segmenter predicts {self.label_set.name} maps; "
                f"set segmentation.* to the encoder that made them")

    def reset(self) -> None:
        self.confusion[:] = 0
        self.other_sets.clear()


def confusion_matrix(label_map: np.ndarray, predicted: np.ndarray, num_classes: int,
                     ignored: tuple[int, ...] = ()) -> np.ndarray:
    """(classes, classes) counts of (transmitted, re-segmented) labels; void, unknown and
    ``ignored`` transmitted ids (ADE20K's 0, "other") are skipped."""
    valid = (label_map < num_classes) & ~np.isin(label_map, ignored)
    index = label_map[valid].astype(np.int64) * num_classes + predicted[valid].astype(np.int64)
    counts = np.bincount(index, minlength=num_classes * num_classes)
    return counts[: num_classes * num_classes].reshape(num_classes, num_classes)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean intersection over union of the classes present in either map (NaN if none)."""
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean()) if present.any() else math.nan


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Share of non-void pixels whose class was recovered (NaN if there are none)."""
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else math.nan


class SharedFeatures(nn.Module):
    """One Inception network for FID and KID: the same input tensor is only run through once."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self._last is None or self._last[0] is not images:
            self._last = (images, self.extractor(images))  # (B, features)
        return self._last[1]


def hific_patches(image: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, size, size) patches of a (1, C, H, W) image: the grid, then the grid shifted by size/2."""
    patches = []
    for offset in (0, size // 2):
        region = image[..., offset:, offset:]
        rows, columns = region.shape[-2] // size, region.shape[-1] // size
        for row in range(rows):
            for column in range(columns):
                patches.append(region[0, :, row * size:(row + 1) * size, column * size:(column + 1) * size])
    return torch.stack(patches) if patches else image.new_zeros((0, image.shape[1], size, size))


class InceptionDistances:
    """FID and KID over the set, on whole images and on HiFiC patches."""

    PATCH_BATCH = 32  # patches per Inception forward

    def __init__(self, config: EvaluateConfig, names: list[str], device: torch.device):
        from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
        from torchmetrics.image.kid import KernelInceptionDistance

        path = require_weights(config, "inception")
        inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(config.fid_features)],
                                       feature_extractor_weights_path=str(path),
                                       antialias=config.fid_antialias)
        features = SharedFeatures(inception)
        self.patch_size = config.patch_size
        self.kid_subset_size = config.kid_subset_size
        suffixes = ("", "_patch") if config.patch_size > 0 else ("",)
        self.metrics: dict[str, nn.Module] = {}
        for suffix in suffixes:
            if "fid" in names:
                self.metrics["fid" + suffix] = FrechetInceptionDistance(feature=features)
            if "kid" in names:
                with warnings.catch_warnings():  # it warns that it keeps every feature vector
                    warnings.simplefilter("ignore", UserWarning)
                    self.metrics["kid" + suffix] = KernelInceptionDistance(
                        feature=features, subsets=config.kid_subsets, subset_size=config.kid_subset_size)
        for metric in self.metrics.values():
            metric.to(device)
        self.counts = {"": 0, "_patch": 0}

    @torch.inference_mode()
    def update(self, pair: ImagePair) -> None:
        """Add one pair to the real (truth) and generated (prediction) distributions."""
        self._add("", pair.truth_uint8, pair.prediction_uint8)
        if self.patch_size > 0:
            truth = hific_patches(pair.truth_uint8, self.patch_size)
            prediction = hific_patches(pair.prediction_uint8, self.patch_size)
            for start in range(0, len(truth), self.PATCH_BATCH):
                end = start + self.PATCH_BATCH
                self._add("_patch", truth[start:end], prediction[start:end])

    def _add(self, suffix: str, truth: torch.Tensor, prediction: torch.Tensor) -> None:
        self.counts[suffix] += len(truth)
        for real, images in ((True, truth), (False, prediction)):
            for name, metric in self.metrics.items():
                if name.endswith(suffix) and (suffix or not name.endswith("_patch")):
                    metric.update(images, real=real)

    def compute(self) -> tuple[dict[str, float], dict[str, str]]:
        """The distances, and a reason for each one that could not be computed."""
        values, notes = {}, {}
        for name, metric in self.metrics.items():
            count = self.counts["_patch" if name.endswith("_patch") else ""]
            if count < 2:
                notes[name] = f"needs at least 2 samples, got {count}"
                continue
            if name.startswith("kid"):
                metric.subset_size = min(self.kid_subset_size, count)
                torch.manual_seed(0)  # KID draws random subsets
                mean, std = metric.compute()
                values[name], values[name + "_std"] = float(mean), float(std)
            else:
                values[name] = float(metric.compute())
        return values, notes

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
        self.counts = {"": 0, "_patch": 0}


class MetricSuite:
    """Every requested metric that can run here; the others are listed in ``unavailable``."""

    def __init__(self, config: Config, names: list[str], device: str | torch.device = "cpu",
                 has_label_maps: bool = True, has_captions: bool = True):
        self.device = torch.device(device)
        self.unavailable: dict[str, str] = {}
        self.image_metrics: list = []
        self.distances: InceptionDistances | None = None
        pixel = [name for name in ("psnr", "ssim", "ms_ssim") if name in names]
        if pixel:
            self.image_metrics.append(PixelFidelity(pixel))
        builders = {
            "lpips": lambda: LPIPSMetric(config.evaluate, self.device),
            "dists": lambda: DISTSMetric(config.evaluate, self.device),
            "clip_score": lambda: self._needs(has_captions, "captions (--prompt_json_path, or a "
                                              "prompts.json in --label_path)",
                                              lambda: CLIPScoreMetric(config.evaluate, self.device)),
            "semantic": lambda: self._needs(has_label_maps, "the transmitted label maps (--label_path)",
                                            lambda: SemanticConsistency(config.segmentation, self.device)),
        }
        for name, build in builders.items():
            if name in names:
                self._try(name, build, self.image_metrics.append)
        wanted = [name for name in ("fid", "kid") if name in names]
        if wanted:
            self._try("/".join(wanted), lambda: InceptionDistances(config.evaluate, wanted, self.device),
                      lambda built: setattr(self, "distances", built))

    @staticmethod
    def _needs(available: bool, what: str, build):
        if not available:
            raise MetricUnavailable(f"needs {what}")
        return build()

    def _try(self, name: str, build, keep) -> None:
        try:
            keep(build())
        except MetricUnavailable as error:
            self.unavailable[name] = str(error)

    @property
    def columns(self) -> list[str]:
        """The per-image columns this suite computes, in a fixed order."""
        return [column for metric in self.image_metrics for column in metric.columns]

    def evaluate(self, pair: ImagePair) -> dict[str, float]:
        """Every per-image metric of ``pair``; the pair also joins the FID/KID distributions."""
        values: dict[str, float] = {}
        for metric in self.image_metrics:
            values.update(metric(pair))
        if self.distances is not None:
            self.distances.update(pair)
        return values

    def dataset_metrics(self) -> tuple[dict[str, float], dict[str, str]]:
        """Metrics over the whole set (FID, KID, dataset mIoU), and notes on those left out."""
        values, notes = ({}, {}) if self.distances is None else self.distances.compute()
        for metric in self.image_metrics:
            if isinstance(metric, SemanticConsistency):
                values.update(metric.dataset_metrics())
                if metric.note():
                    notes["semantic"] = metric.note()
        return values, notes

    def reset(self) -> None:
        """Forget the set seen so far (before evaluating another method)."""
        if self.distances is not None:
            self.distances.reset()
        for metric in self.image_metrics:
            if isinstance(metric, SemanticConsistency):
                metric.reset()
