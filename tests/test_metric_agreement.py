"""Each metric against an independent implementation with the same weights (random stand-ins of the
real architectures), at a stated tolerance, and against a deliberately broken variant that the
tolerance must reject; plus the identities LPIPS(x, x) = 0, FID(X, X) ~ 0, MS-SSIM(x, x) = 1."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg
from scipy.signal import convolve2d

from models.config import EvaluateConfig
from models.evaluation.metrics import (DISTSMetric, ImagePair, InceptionDistances, LPIPSMetric, SSIMMetric,
                                       hub_dir)
from models.imageio import read_rgb
from tests.conftest import VOC_IMAGES

CPU = torch.device("cpu")


def photo_pairs(size: tuple[int, int], count: int = 2) -> list[ImagePair]:
    """Real photos (VOC samples) and JPEG-degraded copies, at ``size`` = (width, height)."""
    pairs = []
    for path in sorted(VOC_IMAGES.glob("*.jpg"))[:count]:
        truth = read_rgb(path).resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        truth.save(buffer, format="JPEG", quality=15)
        prediction = Image.open(buffer).convert("RGB")
        pairs.append(ImagePair(np.asarray(truth), np.asarray(prediction), CPU))
    return pairs


# --- MS-SSIM: Wang, Simoncelli and Bovik 2003, written from the paper and its reference code ------

WANG_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    offsets = np.arange(size) - size // 2
    profile = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    window = np.outer(profile, profile)
    return window / window.sum()


def luminance_and_contrast_structure(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean l * cs and mean cs of one channel, windows inside the image only ('valid')."""
    window, c1, c2 = gaussian_window(), 0.01 ** 2, 0.03 ** 2  # K1, K2 for a data range of 1

    def blur(image):
        return convolve2d(image, window, mode="valid")

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2
    covariance = blur(x * y) - mu_x * mu_y
    cs = (2 * covariance + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    return float((luminance * cs).mean()), float(cs.mean())


def halve(image: np.ndarray) -> np.ndarray:
    """2x2 means; an odd side is first extended symmetrically at its end (Wang et al.'s
    ``imfilter(..., 'symmetric')``, TensorFlow's SYMMETRIC padding)."""
    if image.shape[0] % 2:
        image = np.concatenate([image, image[-1:]], axis=0)
    if image.shape[1] % 2:
        image = np.concatenate([image, image[:, -1:]], axis=1)
    return (image[0::2, 0::2] + image[1::2, 0::2] + image[0::2, 1::2] + image[1::2, 1::2]) / 4


def reference_ms_ssim(truth: np.ndarray, prediction: np.ndarray) -> float:
    """Five scales: cs at the first four, l * cs at the last, 2x2 means between; each RGB channel
    on its own, then their mean."""
    values = []
    for channel in range(3):
        x, y = truth[..., channel] / 255.0, prediction[..., channel] / 255.0
        product = 1.0
        for level, weight in enumerate(WANG_WEIGHTS):
            ssim, cs = luminance_and_contrast_structure(x, y)
            product *= (ssim if level == len(WANG_WEIGHTS) - 1 else cs) ** weight
            x, y = halve(x), halve(y)
        values.append(product)
    return float(np.mean(values))


MS_SSIM_TOLERANCE = 5e-6  # float32 (ours) against float64 (the reference); seen: below 1.2e-6


@pytest.mark.parametrize("size", [(256, 192), (255, 339)])  # sides halving evenly; sides odd at once
def test_ms_ssim_agrees_with_wang_et_al_and_is_one_on_identical_images(size):
    import pytorch_msssim
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    metric = SSIMMetric("ms_ssim")
    for pair in photo_pairs(size):
        ours = metric(pair)["ms_ssim"]
        reference = reference_ms_ssim(pair.truth, pair.prediction)
        assert 0.5 < reference < 0.99
        assert ours == pytest.approx(reference, abs=MS_SSIM_TOLERANCE)
        # Broken on purpose: windows reaching into a reflect-padded border (torchmetrics' own
        # convention), and, where a side is odd, zeros averaged into the 2x2 means
        # (pytorch_msssim.ms_ssim): both outside the tolerance.
        padded = float(multiscale_structural_similarity_index_measure(pair.prediction_float, pair.truth_float,
                                                                       data_range=1.0))
        assert abs(padded - reference) > 10 * MS_SSIM_TOLERANCE
        if size[0] % 2:
            zeros = float(pytorch_msssim.ms_ssim(pair.prediction_float, pair.truth_float, data_range=1.0))
            assert abs(zeros - reference) > 100 * MS_SSIM_TOLERANCE
        assert metric(ImagePair(pair.truth, pair.truth, CPU))["ms_ssim"] == pytest.approx(1.0, abs=1e-6)


# --- LPIPS: the lpips package against torchmetrics' implementation ---------------------------------

LPIPS_TOLERANCE = 1e-5  # relative


def test_lpips_agrees_with_torchmetrics_and_is_zero_on_identical_images(stand_in_hub):
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    config = EvaluateConfig(torch_hub_dir=str(stand_in_hub))
    ours = LPIPSMetric(config, CPU)
    with hub_dir(config):  # the same stand-in AlexNet trunk; torchmetrics ships the same linear heads
        reference = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True).eval()
    for pair in photo_pairs((96, 64)):
        value = ours(pair)["lpips"]
        expected = float(reference(pair.prediction_float, pair.truth_float))
        assert value > 0 and value == pytest.approx(expected, rel=LPIPS_TOLERANCE)
        # Broken on purpose: [0, 1] images passed as if they were already in [-1, 1].
        with torch.no_grad():
            wrong_range = float(ours.model(pair.prediction_float, pair.truth_float, normalize=False))
        assert abs(wrong_range - expected) > 100 * LPIPS_TOLERANCE * expected
        assert ours(ImagePair(pair.truth, pair.truth, CPU))["lpips"] == 0.0


# --- DISTS: Ding et al. 2020, eq. (7)-(9), on the network's own stage features ----------------------

DISTS_TOLERANCE = 1e-5


def reference_dists(stages_x: list, stages_y: list, alpha: np.ndarray, beta: np.ndarray) -> float:
    """1 - sum over stages i and channels j of alpha_ij l + beta_ij s, with sum(alpha + beta) = 1;
    l and s compare each channel's global mean and (co)variance, c1 = c2 = 1e-6."""
    total = alpha.sum() + beta.sum()
    similarity, start = 0.0, 0
    for x, y in zip(stages_x, stages_y):
        x, y = x[0].double().numpy(), y[0].double().numpy()  # (C, H, W)
        channels = x.shape[0]
        mean_x, mean_y = x.mean(axis=(1, 2)), y.mean(axis=(1, 2))
        var_x, var_y = x.var(axis=(1, 2)), y.var(axis=(1, 2))
        covariance = (x * y).mean(axis=(1, 2)) - mean_x * mean_y
        luminance = (2 * mean_x * mean_y + 1e-6) / (mean_x ** 2 + mean_y ** 2 + 1e-6)
        structure = (2 * covariance + 1e-6) / (var_x + var_y + 1e-6)
        a, b = alpha[start:start + channels] / total, beta[start:start + channels] / total
        similarity += float((a * luminance + b * structure).sum())
        start += channels
    return 1.0 - similarity


def test_dists_follows_its_published_formula(stand_in_hub):
    config = EvaluateConfig(torch_hub_dir=str(stand_in_hub))
    ours = DISTSMetric(config, CPU)
    network = ours.model
    alpha = network.alpha.detach().double().flatten().numpy()
    beta = network.beta.detach().double().flatten().numpy()
    for pair in photo_pairs((64, 48)):
        with torch.no_grad():
            stages_x = network.forward_once(pair.prediction_float)
            stages_y = network.forward_once(pair.truth_float)
            wrong_range = network.forward_once(pair.prediction_float * 255)  # broken on purpose: [0, 255]
        expected = reference_dists(stages_x, stages_y, alpha, beta)
        assert ours(pair)["dists"] == pytest.approx(expected, abs=DISTS_TOLERANCE)
        assert abs(reference_dists(wrong_range, stages_y, alpha, beta) - expected) > 100 * DISTS_TOLERANCE
        assert ours(ImagePair(pair.truth, pair.truth, CPU))["dists"] == pytest.approx(0.0, abs=1e-6)


# --- FID and KID: closed forms on fixed features, torch-fidelity, and our torchmetrics pipeline -----

class FixedFeatures(torch.nn.Module):
    """Maps an image whose first pixel encodes a row number to that row of a feature table."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.register_buffer("table", torch.from_numpy(table))
        self.num_features = table.shape[1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixel = images[:, :, 0, 0].long()  # (B, 3) uint8 digits
        return self.table[pixel[:, 0] * 65536 + pixel[:, 1] * 256 + pixel[:, 2]]


def coded_image(row: int) -> np.ndarray:
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[0, 0] = (row // 65536, row // 256 % 256, row % 256)
    return image


def closed_form_fid(real: np.ndarray, fake: np.ndarray, ddof: int = 1) -> float:
    mu_real, mu_fake = real.mean(0), fake.mean(0)
    cov_real, cov_fake = np.cov(real, rowvar=False, ddof=ddof), np.cov(fake, rowvar=False, ddof=ddof)
    root = linalg.sqrtm(cov_real @ cov_fake).real
    return float(((mu_real - mu_fake) ** 2).sum() + np.trace(cov_real + cov_fake - 2 * root))


def closed_form_kid(real: np.ndarray, fake: np.ndarray, unbiased: bool = True) -> float:
    """MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 on all samples (one subset)."""
    n, dimension = real.shape

    def kernel(a, b):
        return (a @ b.T / dimension + 1) ** 3

    k_rr, k_ff, k_rf = kernel(real, real), kernel(fake, fake), kernel(real, fake)
    if unbiased:
        within = (k_rr.sum() - np.trace(k_rr) + k_ff.sum() - np.trace(k_ff)) / (n * (n - 1))
    else:
        within = (k_rr.sum() + k_ff.sum()) / n ** 2
    return float(within - 2 * k_rf.sum() / n ** 2)


FID_TOLERANCE, KID_TOLERANCE = 1e-4, 1e-4  # relative


def run_distances(real: np.ndarray, fake: np.ndarray, **settings):
    """Our InceptionDistances fed the fixed features (pairs in order), whole images only."""
    table = np.concatenate([real, fake]).astype(np.float32)
    config = EvaluateConfig(patch_size=0, **settings)
    distances = InceptionDistances(config, ["fid", "kid"], CPU, extractor=FixedFeatures(table))
    for index in range(len(real)):
        distances.update(ImagePair(coded_image(index), coded_image(len(real) + index), CPU))
    return distances.compute()


def test_fid_and_kid_agree_with_their_closed_forms_and_torch_fidelity():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    generator = np.random.default_rng(0)
    samples, dimension = 300, 32
    real = generator.normal(size=(samples, dimension)).astype(np.float32)
    mixing = np.eye(dimension) + 0.2 * generator.normal(size=(dimension, dimension))
    fake = (generator.normal(size=(samples, dimension)) @ mixing + 0.3).astype(np.float32)
    real64, fake64 = real.astype(np.float64), fake.astype(np.float64)

    result = run_distances(real, fake)
    fid = closed_form_fid(real64, fake64)
    fidelity = fid_statistics_to_metric(fid_features_to_statistics(torch.from_numpy(real64)),
                                        fid_features_to_statistics(torch.from_numpy(fake64)),
                                        verbose=False)["frechet_inception_distance"]
    assert fid == pytest.approx(fidelity, rel=FID_TOLERANCE)
    assert result.values["fid"] == pytest.approx(fid, rel=FID_TOLERANCE)
    assert abs(closed_form_fid(real64, fake64, ddof=0) - fid) > 10 * FID_TOLERANCE * fid  # broken: biased covariance

    kid = closed_form_kid(real64, fake64)
    fidelity_kid = kid_features_to_metric(torch.from_numpy(real64), torch.from_numpy(fake64), kid_subsets=1,
                                          kid_subset_size=samples, verbose=False)
    assert kid == pytest.approx(fidelity_kid["kernel_inception_distance_mean"], rel=KID_TOLERANCE)
    assert result.values["kid"] == pytest.approx(kid, rel=KID_TOLERANCE)  # 300 < 1000: one subset of all
    assert abs(closed_form_kid(real64, fake64, unbiased=False) - kid) > 10 * KID_TOLERANCE * kid  # broken: biased
    assert np.isnan(result.values["kid_std"]) and "subset size 1000" in result.small_sample["kid"]
    assert "fid" not in result.small_sample  # 300 samples, 32 features

    same = run_distances(real, real)
    assert abs(same.values["fid"]) < 1e-3  # FID(X, X) ~ 0 (a matrix square root in float64)


def test_kid_on_random_subsets_when_the_set_is_larger_than_a_subset():
    generator = np.random.default_rng(1)
    real = generator.normal(size=(300, 32)).astype(np.float32)
    fake = (generator.normal(size=(300, 32)) * 1.2 + 0.3).astype(np.float32)
    result = run_distances(real, fake, kid_subset_size=100, kid_subsets=50)
    whole = closed_form_kid(real.astype(np.float64), fake.astype(np.float64))
    assert "kid" not in result.small_sample and result.values["kid_std"] > 0  # a real spread over subsets
    # every subset estimate is unbiased: their mean is near the all-sample value
    assert result.values["kid"] == pytest.approx(whole, abs=3 * result.values["kid_std"] / np.sqrt(50))
