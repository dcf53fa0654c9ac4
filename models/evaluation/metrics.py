"""The metric suite: fidelity, perception, distribution, text and semantic agreement.

Per image pair (prediction against ground truth, at the ground truth's size):

- ``psnr`` (torchmetrics), ``ssim`` (Wang et al. 2004) and ``ms_ssim`` (Wang et al. 2003) on
  ``pytorch_msssim``'s window statistics, on RGB in [0, 1]: Gaussian window 11, sigma 1.5, each
  channel averaged over the window positions that lie inside the image (no padded border), as
  Wang et al.'s reference code, scikit-image and TensorFlow do; the channels' values are then
  averaged. MS-SSIM has five scales with the paper's weights, 2x2 means between them (an odd
  side extended by its last row, as theirs), negative terms clipped at 0 (as TensorFlow), and
  needs both sides larger than 160 pixels; SSIM needs both sides at least 11;
- ``lpips`` (Zhang et al. 2018, the ``lpips`` package, AlexNet trunk by default);
- ``dists`` (Ding et al. 2020, torchmetrics' network, at full resolution);
- ``clip_score``: torchmetrics' ``CLIPScore``, 100 x max(cosine, 0) of the CLIP image embedding
  and the caption's (``evaluate.clip_model``, ViT-L/14 by default). It is not Hessel et al.'s
  CLIP-S, which is ``clip_s``: 2.5 x max(cosine, 0) with ViT-B/32 (``evaluate.clip_s_model``)
  and the caption prefixed with "A photo depicts ", as in the paper's code (Hessel et al. 2021);
- ``sem_miou``, ``sem_pixel_accuracy``: the prediction re-segmented by the encoder's network
  (``segmentation``: DeepLabV3+ or a transformers model) against the label map that was
  transmitted, in that network's label set (void pixels ignored; mIoU over classes in either map).

A metric that cannot score a pair (too small for its window, no caption, a network error)
raises ``MetricSkipped``; the suite records the value as missing with the reason and goes on.

Over the whole set: ``fid`` (Heusel et al. 2017) and ``kid`` (Binkowski et al. 2018) with
torch-fidelity's Inception-v3 through torchmetrics, on whole images and on ``patch_size``
patches (``fid_patch``, ``kid_patch``), the protocol of HiFiC (Mentzer et al. 2020, App. A.7):
per image the non-overlapping grid of patches, plus the grid shifted by half a patch. Sets with
fewer samples than FID's feature dimension, or than KID's subset size, are computed and marked
(``small_sample``): FID is then biased upward, and KID's subsets are the whole set.

Weights are only read from disk (``evaluate.torch_hub_dir`` or torch's own cache, and the
Hugging Face cache or a folder for CLIP). A metric whose file is missing is *unavailable*, with
the file it needs named, and the others still run. Each file is first opened with
``torch.load(weights_only=True)``, so nothing but tensors is ever unpickled from it.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.config import Config, EvaluateConfig, SegmentationConfig
from models.weights import WeightsFileError, read_weights_file

SSIM_WINDOW = 11  # Gaussian window for sigma 1.5, as scikit-image's: 2 * int(3.5 * 1.5 + 0.5) + 1
SSIM_SIGMA = 1.5
MS_SSIM_MIN_SIDE = 161  # five scales of an 11-pixel window: (11 - 1) * 2 ** 4 < side
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, finest scale first
CLIP_S_WEIGHT = 2.5  # Hessel et al.'s w: CLIP-S = w * max(cos, 0)
CLIP_S_PREFIX = "A photo depicts "  # what Hessel et al.'s code puts before each caption


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
LPIPS_MIN_SIDE = {"alex": 31, "vgg": 16, "squeeze": 17}  # smallest side each trunk runs on (lpips 0.1.4)


class MetricUnavailable(Exception):
    """A metric cannot be computed here; the message says what it needs."""


class MetricSkipped(Exception):
    """A metric cannot score one image pair; the message says why (the run goes on)."""


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


def _size(image: torch.Tensor) -> str:
    return f"{image.shape[-1]}x{image.shape[-2]}"


class PSNRMetric:
    """Peak signal-to-noise ratio in dB (torchmetrics), data range 1."""

    columns = ("psnr",)

    @torch.inference_mode()
    def __call__(self, pair: ImagePair) -> dict[str, float]:
        from torchmetrics.functional.image import peak_signal_noise_ratio

        return {"psnr": float(peak_signal_noise_ratio(pair.prediction_float, pair.truth_float, data_range=1.0))}


class SSIMMetric:
    """SSIM or MS-SSIM on ``pytorch_msssim``'s per-scale statistics (window positions inside the
    image only), combined over scales as Wang et al.'s code and TensorFlow do."""

    def __init__(self, name: str):
        self.name = name
        self.columns = (name,)
        self.min_side = MS_SSIM_MIN_SIDE if name == "ms_ssim" else SSIM_WINDOW

    @torch.inference_mode()
    def __call__(self, pair: ImagePair) -> dict[str, float]:
        import pytorch_msssim

        prediction, truth = pair.prediction_float, pair.truth_float
        if min(truth.shape[-2:]) < self.min_side:
            raise MetricSkipped(f"{self.name} needs both sides at least {self.min_side} px, the image is "
                                f"{_size(truth)}")
        if self.name == "ssim":
            return {"ssim": float(pytorch_msssim.ssim(prediction, truth, data_range=1.0, win_size=SSIM_WINDOW,
                                                      win_sigma=SSIM_SIGMA))}
        return {"ms_ssim": multiscale_ssim(prediction, truth)}


def multiscale_ssim(prediction: torch.Tensor, truth: torch.Tensor) -> float:
    """MS-SSIM of (1, 3, H, W) images in [0, 1]: contrast-structure at the first four scales, SSIM
    at the fifth, each clipped at 0 and raised to the paper's weight, per channel, then averaged
    over the channels. Between scales a side of odd length is first extended by repeating its
    last row or column, then 2x2 blocks are averaged: Wang et al.'s code (symmetric padding) and
    TensorFlow's ``ssim_multiscale`` do this, while ``pytorch_msssim.ms_ssim`` averages zero
    padding into both borders, which moves MS-SSIM by up to 5e-3 on such sizes."""
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    window = _fspecial_gauss_1d(SSIM_WINDOW, SSIM_SIGMA).repeat([truth.shape[1], 1, 1, 1])
    factors = []
    for level, weight in enumerate(MS_SSIM_WEIGHTS):
        ssim, contrast_structure = _ssim(prediction, truth, data_range=1.0, win=window, size_average=False)
        last = level == len(MS_SSIM_WEIGHTS) - 1
        factors.append(torch.relu(ssim if last else contrast_structure) ** weight)  # (1, C)
        if not last:
            prediction, truth = _halve(prediction), _halve(truth)
    return float(torch.stack(factors).prod(dim=0).mean())


def _halve(image: torch.Tensor) -> torch.Tensor:
    """2x2 block means, an odd side first extended by its last row or column."""
    padding = (0, image.shape[-1] % 2, 0, image.shape[-2] % 2)
    return F.avg_pool2d(F.pad(image, padding, mode="replicate"), kernel_size=2)


class LPIPSMetric:
    """LPIPS distance from the ``lpips`` package (lower is better)."""

    columns = ("lpips",)

    def __init__(self, config: EvaluateConfig, device: torch.device):
        import lpips

        require_weights(config, LPIPS_TRUNKS[config.lpips_net])
        with hub_dir(config), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
            self.model = lpips.LPIPS(net=config.lpips_net, verbose=False).to(device).eval()
        self.net, self.min_side = config.lpips_net, LPIPS_MIN_SIDE[config.lpips_net]

    @torch.inference_mode()
    def __call__(self, pair: ImagePair) -> dict[str, float]:
        if min(pair.truth.shape[:2]) < self.min_side:
            raise MetricSkipped(f"lpips ({self.net}) needs both sides at least {self.min_side} px, the image is "
                                f"{_size(pair.truth_float)}")
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
    """CLIP score of each prediction against its caption (higher is better): ``scale`` x
    torchmetrics' CLIPScore (100 x max(cos, 0)) of the caption after ``prefix``."""

    def __init__(self, model_path: str, device: torch.device, column: str = "clip_score",
                 prefix: str = "", scale: float = 1.0):
        from torchmetrics.multimodal import CLIPScore
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(model_path, local_files_only=True).eval()
            processor = CLIPProcessor.from_pretrained(model_path, local_files_only=True)
        except OSError:
            setting = "evaluate.clip_s_model" if column == "clip_s" else "evaluate.clip_model"
            raise MetricUnavailable(
                f"needs the CLIP model {model_path!r} in the Hugging Face cache or as a local "
                f"folder (set {setting})") from None
        self.columns, self.prefix, self.scale = (column,), prefix, scale
        self.metric = CLIPScore(model_name_or_path=lambda: (PooledCLIP(model), processor)).to(device)

    @classmethod
    def clip_s(cls, config: EvaluateConfig, device: torch.device) -> "CLIPScoreMetric":
        """Hessel et al.'s CLIP-S: 2.5 x max(cos, 0), ViT-B/32, "A photo depicts " + caption."""
        return cls(config.clip_s_model, device, "clip_s", CLIP_S_PREFIX, CLIP_S_WEIGHT / 100)

    @torch.inference_mode()
    def __call__(self, pair: ImagePair) -> dict[str, float]:
        if pair.caption is None:
            raise MetricSkipped("no caption")
        self.metric.reset()
        self.metric.update(pair.prediction_uint8[0], self.prefix + pair.caption)
        return {self.columns[0]: self.scale * float(self.metric.compute())}


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

    def __call__(self, pair: ImagePair) -> dict[str, float]:
        if pair.label_map is None:
            raise MetricSkipped("no transmitted label map")
        if pair.label_set not in (None, self.label_set.name):
            raise MetricSkipped(f"its label map is {pair.label_set}, the segmenter predicts {self.label_set.name} "
                                f"(set segmentation.* to the encoder that made it)")
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

    def reset(self) -> None:
        self.confusion[:] = 0


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
    """One feature network for FID and KID: the same input tensor is only run through once."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor
        if hasattr(extractor, "num_features"):  # else torchmetrics runs a dummy image to find it
            self.num_features = extractor.num_features
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


@dataclass
class SetMetrics:
    """What the set-level metrics give: values, the samples each used, and notes."""

    values: dict[str, float] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)  # images (or patches) behind each value
    small_sample: dict[str, str] = field(default_factory=dict)  # metric -> why its sample is too small
    notes: dict[str, str] = field(default_factory=dict)  # metric -> why it has no value


class InceptionDistances:
    """FID and KID over the set, on whole images and on HiFiC patches."""

    PATCH_BATCH = 32  # patches per Inception forward

    def __init__(self, config: EvaluateConfig, names: list[str], device: torch.device,
                 extractor: nn.Module | None = None):
        """``extractor``: the feature network (default: torch-fidelity's Inception-v3 from its weight
        file); anything mapping (B, 3, H, W) uint8 images to (B, F) features."""
        from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
        from torchmetrics.image.kid import KernelInceptionDistance

        if extractor is None:
            path = require_weights(config, "inception")
            extractor = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(config.fid_features)],
                                           feature_extractor_weights_path=str(path),
                                           antialias=config.fid_antialias)
            self.feature_dim = config.fid_features
        else:
            self.feature_dim = int(getattr(extractor, "num_features", config.fid_features))
        features = SharedFeatures(extractor)
        self.patch_size = config.patch_size
        self.kid_subsets, self.kid_subset_size = config.kid_subsets, config.kid_subset_size
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

    def compute(self) -> SetMetrics:
        """The distances, the samples behind them, and what is wrong with small samples."""
        result = SetMetrics()
        for name, metric in self.metrics.items():
            count = self.counts["_patch" if name.endswith("_patch") else ""]
            unit = "patches" if name.endswith("_patch") else "images"
            if count < 2:
                result.notes[name] = f"needs at least 2 {unit}, got {count}"
                continue
            result.samples[name] = count
            if name.startswith("kid"):
                self._compute_kid(name, metric, count, unit, result)
                continue
            result.values[name] = float(metric.compute())
            if count <= self.feature_dim:
                result.small_sample[name] = (
                    f"{count} {unit}, not more than its {self.feature_dim} features: the covariance is singular "
                    f"and FID is biased upward, the more so the fewer the samples; compare only FIDs on "
                    f"equally many samples" + ("" if name.endswith("_patch") else ", or use fid_patch"))
        return result

    def _compute_kid(self, name: str, metric: nn.Module, count: int, unit: str, result: SetMetrics) -> None:
        whole_set = count <= self.kid_subset_size  # every subset would be the whole set
        metric.subset_size = min(self.kid_subset_size, count)
        metric.subsets = 1 if whole_set else self.kid_subsets
        torch.manual_seed(0)  # KID draws random subsets
        mean, std = metric.compute()
        result.values[name] = float(mean)
        result.values[name + "_std"] = math.nan if whole_set else float(std)
        if whole_set:
            result.small_sample[name] = (
                f"{count} {unit}, not more than the subset size {self.kid_subset_size}: one subset of all "
                f"{count}, so no spread ({name}_std empty); KID is unbiased and can be slightly negative")

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
        self.failures: dict[str, int] = {}  # column -> pairs it failed on unforeseen (not MetricSkipped)
        self.image_metrics: list = []
        self.distances: InceptionDistances | None = None
        captions = "captions (--prompt_json_path, or a prompts.json in --label_path, or .sem files there)"
        builders = {
            "psnr": PSNRMetric,
            "ssim": lambda: SSIMMetric("ssim"),
            "ms_ssim": lambda: SSIMMetric("ms_ssim"),
            "lpips": lambda: LPIPSMetric(config.evaluate, self.device),
            "dists": lambda: DISTSMetric(config.evaluate, self.device),
            "clip_score": lambda: self._needs(has_captions, captions, lambda: CLIPScoreMetric(
                config.evaluate.clip_model, self.device)),
            "clip_s": lambda: self._needs(has_captions, captions,
                                          lambda: CLIPScoreMetric.clip_s(config.evaluate, self.device)),
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

    def evaluate(self, pair: ImagePair) -> tuple[dict[str, float], dict[str, str]]:
        """Every per-image metric of ``pair`` (NaN where missing), and why each missing one is
        missing; the pair also joins the FID/KID distributions."""
        values: dict[str, float] = {}
        missing: dict[str, str] = {}
        for metric in self.image_metrics:
            try:
                values.update(metric(pair))
            except MetricSkipped as reason:
                missing.update({column: str(reason) for column in metric.columns})
            except (RuntimeError, ValueError) as error:  # unforeseen: the run goes on, but fails at the end
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # after an out-of-memory error
                first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
                reason = f"failed on this {_size(pair.truth_float)} pair: {type(error).__name__}: {first_line}"
                missing.update({column: reason for column in metric.columns})
                for column in metric.columns:
                    self.failures[column] = self.failures.get(column, 0) + 1
        values.update({column: math.nan for column in missing})
        if self.distances is not None:
            self.distances.update(pair)
        return values, missing

    def dataset_metrics(self) -> SetMetrics:
        """Metrics over the whole set (FID, KID, dataset mIoU) with their sample counts and notes."""
        result = SetMetrics() if self.distances is None else self.distances.compute()
        for metric in self.image_metrics:
            if isinstance(metric, SemanticConsistency):
                result.values.update(metric.dataset_metrics())
        return result

    def reset(self) -> None:
        """Forget the set seen so far (before evaluating another method)."""
        if self.distances is not None:
            self.distances.reset()
        for metric in self.image_metrics:
            if isinstance(metric, SemanticConsistency):
                metric.reset()
