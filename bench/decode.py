"""Decoding speed on the CPU: our decoder against the stock diffusers pipeline on the same components.

    python bench/decode.py                                  # tiny random components, CPU
    python bench/decode.py --precomputed_sampler            # our loop with precomputed sampler weights

Both paths get the same UNet, ControlNet, VAE, text encoder and sampler, the same steps,
resolution, batch and per-image seeds, in one process; they run alternately after one warm-up
call each. Ours: label maps to 8-bit images (control rendering, noise, sampling, VAE decode,
conversion). Stock: ``StableDiffusionControlNetPipeline.__call__`` on ready control tensors
with ``output_type="np"``. Prints images per second for both, the ratio, and the largest pixel
difference between the two outputs (0 means identical). The two share their models, so layout
options (channels_last, fused projections) stay off here; SD1.5 sizes on a GPU, with every
speed option against a separate stock pipeline, are measured by bench/gpu.py.
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

from models.decode.controlnet_loader import ControlSpec  # noqa: E402
from models.decode.decoder import ControlNetDecoder, SamplerSettings, SpeedOptions  # noqa: E402
from models.decode.stable_diffusion import SDComponents, load_sd_components  # noqa: E402
from models.palettes import NUM_VOC_CLASSES  # noqa: E402
from models.semantic_code import SemanticCode  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config_path", default=None, help="an existing tiny config.yaml (models.tiny)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precomputed_sampler", action="store_true",
                        help="our loop with the sampler as precomputed weights (models.decode.sampling)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=20, help="UniPC steps")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per path and batch size")
    return parser.parse_args(argv)


def tiny_components(config_path: str | None) -> tuple[SDComponents, torch.nn.Module]:
    """The tiny SD folder and ControlNet (built in a temporary folder unless given)."""
    from diffusers import ControlNetModel

    from models.config import load_config
    from models.tiny.components import build_tiny_components

    if config_path is None:
        config_path = build_tiny_components(tempfile.mkdtemp(prefix="bench-decode-"))
    config = load_config(config_path)
    return load_sd_components(config.diffusion.sd_model_path), ControlNetModel.from_pretrained(
        config.diffusion.controlnet_path)


def time_calls(function, repeats: int, device: torch.device) -> float:
    """Seconds per call of ``function`` (after it has run once)."""
    start = time.perf_counter()
    for _ in range(repeats):
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def compare(decoder: ControlNetDecoder, batch_size: int, resolution: int, repeats: int) -> dict:
    """Images per second of both paths for one batch size, and their largest pixel difference."""
    rng = np.random.RandomState(batch_size)
    codes = [SemanticCode(rng.choice([0, 8, 12, 15], size=(resolution, resolution)).astype(np.uint8),
                          "a dog on the grass next to a person") for _ in range(batch_size)]
    seeds = list(range(batch_size))
    control = torch.stack([decoder.control_image(code.label_map, (resolution, resolution)) for code in codes])
    settings = decoder.sampler

    def ours():
        return np.stack(decoder.decode(codes, seeds))

    def stock():
        return decoder.pipeline([code.caption for code in codes], image=control, height=resolution, width=resolution,
                                num_inference_steps=settings.num_inference_steps,
                                guidance_scale=settings.guidance_scale,
                                generator=[torch.Generator().manual_seed(s) for s in seeds],
                                output_type="np").images

    ours_pixels, stock_pixels = ours(), (stock() * 255).round().astype(np.uint8)  # also the warm-up
    ours_seconds = stock_seconds = 0.0
    for _ in range(repeats):  # alternate, so that drift in the machine's speed hits both alike
        ours_seconds += time_calls(ours, 1, decoder.device)
        stock_seconds += time_calls(stock, 1, decoder.device)
    return {"batch": batch_size, "ours": batch_size * repeats / ours_seconds,
            "stock": batch_size * repeats / stock_seconds,
            "max_diff": int(np.abs(ours_pixels.astype(int) - stock_pixels.astype(int)).max())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    components, controlnet = tiny_components(args.config_path)
    spec = ControlSpec("palette", "voc", NUM_VOC_CLASSES, "unit", keep_aspect=True, resolution=args.resolution)
    speed = SpeedOptions(precomputed_sampler=args.precomputed_sampler, channels_last=False)
    decoder = ControlNetDecoder(components, controlnet, spec, SamplerSettings(num_inference_steps=args.steps),
                                speed=speed)
    decoder.place(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"tiny components, {name}, float32, {args.resolution}x{args.resolution}, {args.steps} UniPC steps, "
          f"guidance {decoder.sampler.guidance_scale}, precomputed sampler {args.precomputed_sampler}, "
          f"{args.repeats} timed calls")
    print(f"{'batch':>5}  {'ours img/s':>10}  {'stock img/s':>11}  {'ratio':>5}  {'max pixel diff':>14}")
    for batch_size in args.batch_sizes:
        row = compare(decoder, batch_size, args.resolution, args.repeats)
        print(f"{row['batch']:>5}  {row['ours']:>10.3f}  {row['stock']:>11.3f}  "
              f"{row['ours'] / row['stock']:>5.2f}  {row['max_diff']:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
