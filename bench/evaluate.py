"""Throughput of the metric suite: images per second for 512x512 pairs, on the CPU by default.

    python bench/evaluate.py [--images 4] [--size 512] [--device cpu]

Every network metric runs with random stand-in weights of its real architecture (AlexNet for
LPIPS, VGG-16 for DISTS, torch-fidelity's Inception-v3 for FID/KID, DeepLabV3+ ResNet-101 for
semantic consistency, CLIP ViT-L/14 for the CLIP score): speed does not depend on the values, and
no real weights are needed. PSNR and SSIM are also timed with scikit-image, the reference
implementation, in the same run. Images per second count the per-image work (FID/KID: Inception
features of the whole image and its HiFiC patches); the set-level step (FID's 2048x2048 matrix
square root, KID's subsets) is timed on its own, once per evaluated set.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.config import Config  # noqa: E402
from models.evaluation.metrics import ImagePair, MetricSuite  # noqa: E402
from models.evaluation.report import format_table  # noqa: E402
from models.tiny.stand_in_weights import write_random_weights  # noqa: E402

METRICS = ("psnr", "ssim", "ms_ssim", "lpips", "dists", "fid", "kid", "clip_score", "semantic")
SET_LEVEL = ("fid", "kid", "semantic")  # metrics with work once per set (FID: 2048x2048 matrices)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=4, help="pairs timed per metric (after one warm-up)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--device", default="cpu", help="device of the metric networks")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS),
                        help="metrics to time")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch CPU threads (fewer than free cores avoids slow thread hand-offs)")
    return parser.parse_args(argv)


def stand_in_config(folder: Path, metrics: list[str]) -> Config:
    """A config whose every weight file is a random stand-in under ``folder``."""
    from models.encode.segmentation import DeepLabV3Plus, save_checkpoint

    config = Config()
    config.evaluate.torch_hub_dir = str(folder / "hub")
    write_random_weights(folder / "hub", ("alexnet", "vgg16", "inception"))
    if "semantic" in metrics:
        config.segmentation.checkpoint = str(folder / "deeplabv3plus_resnet101.safetensors")
        save_checkpoint(DeepLabV3Plus.from_config(config.segmentation), config.segmentation,
                        config.segmentation.checkpoint)
    if "clip_score" in metrics:
        config.evaluate.clip_model = str(save_random_clip(folder / "clip"))
    return config


def save_random_clip(folder: Path) -> Path:
    """A randomly initialised CLIP with ViT-L/14's shapes (the CLIP score's usual model)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from models.decode.stable_diffusion import write_word_tokenizer
    from models.tiny.components import VOCABULARY_WORDS

    vocab_size = write_word_tokenizer(folder / "tokenizer", VOCABULARY_WORDS)
    tokenizer = CLIPTokenizer(str(folder / "tokenizer" / "vocab.json"),
                              str(folder / "tokenizer" / "merges.txt"))
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=768, intermediate_size=3072,
                         num_hidden_layers=12, num_attention_heads=12),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                           num_attention_heads=16, image_size=224, patch_size=14),
        projection_dim=768,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def make_pairs(count: int, size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Smooth random images, their noisy copies and random label maps."""
    generator = np.random.default_rng(0)
    pairs = []
    for _ in range(count + 1):
        coarse = generator.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        truth = np.kron(coarse, np.ones((16, 16, 1), dtype=np.uint8))
        noise = generator.integers(-12, 13, truth.shape)
        prediction = np.clip(truth.astype(int) + noise, 0, 255).astype(np.uint8)
        label_map = generator.integers(0, 21, (size, size), dtype=np.uint8)
        pairs.append((truth, prediction, label_map))
    return pairs


def time_suite(config: Config, metrics: list[str], pairs: list, device: str) -> tuple[float, float]:
    """Images per second of ``metrics`` in one ``MetricSuite``, and seconds of its set-level step."""
    suite = MetricSuite(config, metrics, device)
    if suite.unavailable:
        raise RuntimeError(f"unavailable: {suite.unavailable}")
    suite.evaluate(ImagePair(*pairs[0][:2], torch.device(device), "a photo", pairs[0][2]))  # warm-up
    suite.reset()
    start = time.perf_counter()
    for truth, prediction, label_map in pairs[1:]:
        _, missing = suite.evaluate(ImagePair(truth, prediction, torch.device(device), "a photo", label_map))
        if missing:  # a timing of a metric that did not run would mean nothing
            raise RuntimeError(f"missing values: {missing}")
    middle = time.perf_counter()
    suite.dataset_metrics()
    return (len(pairs) - 1) / (middle - start), time.perf_counter() - middle


def time_reference(metric: str, pairs: list) -> float | None:
    """Images per second of scikit-image's PSNR or SSIM (same definition as ours)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    functions = {
        "psnr": lambda a, b: peak_signal_noise_ratio(a, b, data_range=255),
        "ssim": lambda a, b: structural_similarity(a, b, channel_axis=2, data_range=255,
                                                   gaussian_weights=True, sigma=1.5,
                                                   use_sample_covariance=False),
    }
    if metric not in functions:
        return None
    start = time.perf_counter()
    for truth, prediction, _ in pairs[1:]:
        functions[metric](truth, prediction)
    return (len(pairs) - 1) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pairs = make_pairs(args.images, args.size)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        config = stand_in_config(Path(folder), args.metrics)
        for metric in args.metrics:
            ours, set_seconds = time_suite(config, [metric], pairs, args.device)
            reference = time_reference(metric, pairs)
            rows.append([metric, ours, set_seconds if metric in SET_LEVEL else None, reference,
                         ours / reference if reference else None])
            print(f"{metric}: {ours:.3f} images/s", file=sys.stderr)
        if len(args.metrics) > 1:  # one suite: FID and KID share their Inception features
            rows.append(["all together", *time_suite(config, args.metrics, pairs, args.device), None, None])
    print(f"metric suite, {args.size}x{args.size} pairs, {args.images} timed per metric, device "
          f"{args.device}, {torch.get_num_threads()} threads")
    print(format_table(["metric", "ours (img/s)", "set-level step (s)", "scikit-image (img/s)",
                        "ours / reference"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
