"""Decoding speed: our decoder against the stock diffusers pipeline on the same components.

    python bench/decode.py                                  # tiny random components, CPU
    python bench/decode.py --mode sd15 --fp16 --batch_sizes 1 8   # SD1.5-sized, random weights, GPU

Both paths get the same UNet, ControlNet, VAE, text encoder and sampler, the same steps,
resolution, batch and per-image seeds, in one process; they run alternately after one warm-up
call each. Ours: label maps to 8-bit images (control rendering, noise, sampling, VAE decode,
conversion). Stock: ``StableDiffusionControlNetPipeline.__call__`` on ready control tensors
with ``output_type="np"``. Prints images per second for both, the ratio, and the largest pixel
difference between the two outputs (0 means identical).
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

from models.controlnet_io import ControlSpec  # noqa: E402
from models.decoder import PRECISIONS, ControlNetDecoder, SamplerSettings  # noqa: E402
from models.diffusion import SDComponents, load_sd_components  # noqa: E402
from models.semantic_code import SemanticCode  # noqa: E402

SD15_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "set_alpha_to_one": False, "steps_offset": 1,
                 "clip_sample": False, "timestep_spacing": "leading", "prediction_type": "epsilon"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--mode", choices=("tiny", "sd15"), default="tiny",
                        help="tiny: models.tiny components; sd15: SD1.5-sized random weights (GPU)")
    parser.add_argument("--config_path", default=None, help="tiny mode: an existing tiny config.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fp16", action="store_true", help="half precision (GPU)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--steps", type=int, default=20, help="UniPC steps")
    parser.add_argument("--resolution", type=int, default=None, help="default: 64 (tiny), 512 (sd15)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per path and batch size")
    return parser.parse_args(argv)


def tiny_components(config_path: str | None) -> tuple[SDComponents, torch.nn.Module]:
    """The tiny SD folder and ControlNet (built in a temporary folder unless given)."""
    from diffusers import ControlNetModel

    from models.config import load_config
    from models.tiny import build_tiny_components

    if config_path is None:
        config_path = build_tiny_components(tempfile.mkdtemp(prefix="bench-decode-"))
    config = load_config(config_path)
    return load_sd_components(config.diffusion.sd_model_path), ControlNetModel.from_pretrained(
        config.diffusion.controlnet_path)


def sd15_components(device: str) -> tuple[SDComponents, torch.nn.Module]:
    """SD1.5-shaped UNet, ControlNet, VAE and CLIP text encoder with random weights (no download)."""
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from models.tiny import write_clip_tokenizer_files

    folder = Path(tempfile.mkdtemp(prefix="bench-tokenizer-"))
    vocab_size = write_clip_tokenizer_files(folder)
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    with torch.device(device):  # initialise on the device: seconds instead of a minute on the CPU
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        controlnet = ControlNetModel.from_unet(unet)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            latent_channels=4, sample_size=512)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1))
    components = SDComponents(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=DDPMScheduler.from_config(SD15_SCHEDULE))
    return components, controlnet


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
    resolution = args.resolution or (64 if args.mode == "tiny" else 512)
    components, controlnet = (tiny_components(args.config_path) if args.mode == "tiny"
                              else sd15_components(args.device))
    spec = ControlSpec("palette", "voc", 21, "unit", keep_aspect=True, resolution=resolution)
    decoder = ControlNetDecoder(components, controlnet, spec, SamplerSettings(num_inference_steps=args.steps))
    dtype = PRECISIONS["16"] if args.fp16 and device.type == "cuda" else torch.float32
    decoder.place(device, dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.mode} components, {name}, {str(dtype).replace('torch.', '')}, {resolution}x{resolution}, "
          f"{args.steps} UniPC steps, guidance {decoder.sampler.guidance_scale}, {args.repeats} timed calls")
    print(f"{'batch':>5}  {'ours img/s':>10}  {'stock img/s':>11}  {'ratio':>5}  {'max pixel diff':>14}")
    for batch_size in args.batch_sizes:
        row = compare(decoder, batch_size, resolution, args.repeats)
        print(f"{row['batch']:>5}  {row['ours']:>10.3f}  {row['stock']:>11.3f}  "
              f"{row['ours'] / row['stock']:>5.2f}  {row['max_diff']:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
