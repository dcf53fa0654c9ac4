"""Speed at real scale: decode, training and encoding throughput of SD1.5-sized models on one GPU.

    python bench/gpu.py --out gpu.json                       # one GPU: about 8 minutes on an H100
    python bench/gpu.py --sections decode compile --out gpu.json
    python bench/gpu.py --dry_run --out /tmp/gpu.json        # CPU, tiny components: checks the script

Weights do not change the cost, so every model has random weights in its real shape: UNet and
VAE from configs/sd15 (860M and 84M parameters), a ControlNet copied from the UNet (361M), the
CLIP ViT-L/14 text encoder, DeepLabV3+ ResNet-101 and a BLIP-large-sized captioner. Each
figure is compared with the stock path in the same process, on the same card and settings.
Sections run in this order; the expected times are estimates for an H100, and a section that
would not finish within ``--time_budget_s`` is skipped (the JSON is written after each one):

- floor (~15 s): FLOPs of one guided denoising step (ControlNet + UNet at batch 2) and of one VAE
  decode, counted with torch.utils.flop_counter on the meta device, and the card's fp16/bf16
  matrix-product rate; the floor per image is steps x step FLOPs / rate (before the VAE).
- decode (~110 s): images/s at 512x512, 20 UniPC steps, guidance 7.5, fp16 and bf16, batch 1
  and 8: ours (precomputed sampler, channels_last, fused QKV, eager) against
  ``StableDiffusionControlNetPipeline``; host synchronisations per call; at fp16 batch 8, ours
  with each option off in turn. Outputs must match the stock pipeline's to half-precision
  rounding: ours may differ from stock by no more than twice as much as stock's half-precision
  images differ from its float32 ones (mean absolute pixel difference, + 0.5 grey levels).
- train (~100 s): steps/s and peak memory at batch 4, 512x512, bf16-mixed, with and without
  gradient checkpointing: our ControlNetModule against a plain diffusers step (bench/train.py).
- encode (~40 s): images/s of DeepLabV3+ and the captioner (3 beams, up to 30 tokens: random
  weights never stop early, so captioning is timed at its longest) at batch 16, fp16 and fp32.
- compile (~240 s): ours with torch.compile of UNet and ControlNet at fp16, batch 8 then 1 (left
  out when less than two minutes of the budget remain); the compilation time is reported
  separately from the images/s.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model is built from a config: never wait on a network

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import train as bench_train  # noqa: E402
from models.decode.controlnet_loader import ControlSpec  # noqa: E402
from models.decode.decoder import ControlNetDecoder, SamplerSettings, SpeedOptions  # noqa: E402
from models.decode.stable_diffusion import SDComponents  # noqa: E402
from models.imageio import atomic_write_json  # noqa: E402
from models.palettes import NUM_VOC_CLASSES  # noqa: E402
from models.runtime import PRECISIONS, library_versions  # noqa: E402
from models.semantic_code import SemanticCode  # noqa: E402

SECTIONS = ("floor", "decode", "train", "encode", "compile")
EXPECTED_SECONDS = {"floor": 15, "decode": 110, "train": 100, "encode": 40, "compile": 240}  # H100
STOCK = SpeedOptions(precomputed_sampler=False, channels_last=False)
OURS = SpeedOptions(precomputed_sampler=True, channels_last=True, fuse_qkv=True)
ABLATIONS = {"-precomputed_sampler": replace(OURS, precomputed_sampler=False),
             "-channels_last": replace(OURS, channels_last=False), "-fuse_qkv": replace(OURS, fuse_qkv=False)}
TRAIN_VARIANTS = ("reference", "ours", "reference+checkpointing", "ours+checkpointing")
CAPTION = "a dog on the grass next to a person"


@dataclass(frozen=True)
class Sizes:
    """What one run measures (the real sizes, or the dry run's tiny ones)."""

    resolution: int = 512
    steps: int = 20  # UniPC
    guidance: float = 7.5
    decode_batches: tuple[int, ...] = (1, 8)
    decode_precisions: tuple[str, ...] = ("16", "bf16")
    ablation_batch: int = 8
    repeats: int = 3  # timed calls per path, alternating ours and stock, after one warm-up each
    train_batch: int = 4
    train_steps: int = 10
    train_warmup: int = 2
    encode_batch: int = 16
    encode_size: tuple[int, int] = (500, 375)  # (width, height): a typical VOC photo
    encode_precisions: tuple[str, ...] = ("16", "32")
    compile_batches: tuple[int, ...] = (8, 1)
    compile_precision: str = "16"
    compile_backend: str = "inductor"
    matmul_size: int = 8192


DRY_SIZES = Sizes(resolution=32, steps=2, decode_batches=(1, 2), decode_precisions=("32", "bf16"),
                  ablation_batch=2, repeats=1, train_batch=2, train_steps=1, train_warmup=1, encode_batch=4,
                  encode_size=(48, 32), encode_precisions=("32",), compile_batches=(1,), compile_precision="32",
                  compile_backend="eager", matmul_size=256)


@dataclass
class Bench:
    """One run: where it runs, what it measures, and everything measured so far."""

    device: torch.device
    sizes: Sizes
    dry_run: bool
    seed: int = 0
    compile_mode: str = "default"
    deadline: float | None = None  # time.perf_counter() by which the run should end
    results: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)  # built components and reference images

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.perf_counter()

    def tiny_config(self) -> Path:
        """The dry run's tiny components (models.tiny), built once in a temporary folder unless given."""
        if "tiny_config" not in self.cache:
            from models.tiny.components import build_tiny_components

            self.cache["tiny_config"] = build_tiny_components(tempfile.mkdtemp(prefix="bench-gpu-"))
        return self.cache["tiny_config"]


# ----- components ---------------------------------------------------------------------------------

def decode_components(bench: Bench) -> tuple[SDComponents, torch.nn.Module]:
    """Float32 SD components and ControlNet on the device (built once per run)."""
    if "components" not in bench.cache:
        from diffusers import ControlNetModel

        if bench.dry_run:
            from models.config import load_config
            from models.decode.stable_diffusion import load_sd_components

            config = load_config(bench.tiny_config())
            components = load_sd_components(config.diffusion.sd_model_path)
            controlnet = ControlNetModel.from_pretrained(config.diffusion.controlnet_path)
        else:
            components = bench_train.sd15_random_components(bench.seed, str(bench.device))
            with torch.device(bench.device):
                controlnet = ControlNetModel.from_unet(components.unet)
        fill_zero_parameters(controlnet)
        bench.cache["components"] = (components, controlnet.to(bench.device).eval())
    return bench.cache["components"]


@torch.no_grad()
def fill_zero_parameters(model: torch.nn.Module, std: float = 0.02) -> None:
    """Give ControlNet's zero convolutions small random weights, as after training, so that the
    control image changes the output and the pixel comparison covers the ControlNet."""
    generator = torch.Generator(model.device).manual_seed(1)
    for parameter in model.parameters():
        if not parameter.any():
            parameter.normal_(0, std, generator=generator)


def make_decoder(bench: Bench, precision: str, speed: SpeedOptions) -> ControlNetDecoder:
    """A decoder on copies of the components, placed on the device in ``precision``."""
    components, controlnet = decode_components(bench)
    sizes = bench.sizes
    control = ControlSpec("palette", "voc", NUM_VOC_CLASSES, "unit", keep_aspect=True, resolution=sizes.resolution)
    sampler = SamplerSettings(num_inference_steps=sizes.steps, scheduler="unipc", guidance_scale=sizes.guidance)
    decoder = ControlNetDecoder(copy.deepcopy(components), copy.deepcopy(controlnet), control, sampler, speed=speed)
    decoder.place(bench.device, PRECISIONS[precision])
    return decoder


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----- timing and checks --------------------------------------------------------------------------

def timed(bench: Bench, function) -> tuple[float, object]:
    """Wall seconds of one call, the device synchronised before and after, and its result."""
    bench.synchronize()
    start = time.perf_counter()
    result = function()
    bench.synchronize()
    return time.perf_counter() - start, result


def count_host_syncs(bench: Bench, function) -> int | None:
    """How often one call makes the host wait for the GPU (CUDA's sync debug mode); None on CPU."""
    if bench.device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            function()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


def pixel_match(ours: np.ndarray, stock: np.ndarray, reference: np.ndarray) -> dict:
    """Ours against stock, measured against how far stock's precision moves it from float32."""
    ours_vs_stock = np.abs(ours.astype(float) - stock.astype(float))
    rounding = float(np.abs(stock.astype(float) - reference.astype(float)).mean())
    mean = float(ours_vs_stock.mean())
    return {"mean_abs_diff": mean, "max_abs_diff": int(ours_vs_stock.max()),
            "stock_vs_float32_mean_abs_diff": rounding, "passed": mean <= 2 * rounding + 0.5}


def decode_inputs(bench: Bench, batch: int) -> tuple[list[SemanticCode], list[int]]:
    """``batch`` random VOC label maps with one caption, and their seeds."""
    rng = np.random.RandomState(batch)
    size = bench.sizes.resolution
    codes = [SemanticCode(rng.choice([0, 8, 12, 15], size=(size, size)).astype(np.uint8), CAPTION)
             for _ in range(batch)]
    return codes, list(range(batch))


def decode_calls(decoder: ControlNetDecoder, stock: ControlNetDecoder, codes: list[SemanticCode],
                 seeds: list[int]):
    """Closures: our decode, and the stock pipeline on the same control images, seeds and settings."""
    size = stock.control_spec.resolution
    control = torch.stack([stock.control_image(code.label_map, (size, size)) for code in codes])
    settings = stock.sampler

    def ours() -> np.ndarray:
        return np.stack(decoder.decode(codes, seeds))

    def reference() -> np.ndarray:
        images = stock.pipeline([code.caption for code in codes], image=control, height=size, width=size,
                                num_inference_steps=settings.num_inference_steps,
                                guidance_scale=settings.guidance_scale,
                                generator=[torch.Generator().manual_seed(seed) for seed in seeds],
                                output_type="np").images
        return (images * 255).round().astype(np.uint8)

    return ours, reference


def float32_reference(bench: Bench, batch: int) -> np.ndarray:
    """The stock pipeline's images in float32 without TF32: the scale of half-precision rounding."""
    key = ("float32_reference", batch)
    if key not in bench.cache:
        decoder = make_decoder(bench, "32", STOCK)
        codes, seeds = decode_inputs(bench, batch)
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            bench.cache[key] = decode_calls(decoder, decoder, codes, seeds)[1]()
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        del decoder
        free_memory()
    return bench.cache[key]


# ----- sections -----------------------------------------------------------------------------------

def section_floor(bench: Bench) -> dict:
    """FLOPs per guided step and VAE decode (meta device), and the card's matrix-product rates."""
    flops = count_decode_flops(bench)
    peaks = {precision: matmul_rate(bench, PRECISIONS[precision])
             for precision in dict.fromkeys(bench.sizes.decode_precisions + (bench.sizes.compile_precision,))}
    steps = bench.sizes.steps
    per_image = {precision: {"denoising_s": steps * flops["guided_step"] / rate,
                             "with_vae_s": (steps * flops["guided_step"] + flops["vae_decode_per_image"]) / rate}
                 for precision, rate in peaks.items()}
    return {"flop": flops, "peak_flop_per_s": peaks, "floor_per_image": per_image, "steps": steps}


def meta_models(bench: Bench):
    """UNet, ControlNet and VAE of the measured shapes on the meta device (no memory, no time)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

    from models.config import load_config
    from models.decode.stable_diffusion import SD15_CONFIG_DIR

    folder, controlnet_dir = SD15_CONFIG_DIR, None
    if bench.dry_run:
        config = load_config(bench.tiny_config())
        folder, controlnet_dir = Path(config.diffusion.sd_model_path), Path(config.diffusion.controlnet_path)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        controlnet = (ControlNetModel.from_config(ControlNetModel.load_config(controlnet_dir)) if controlnet_dir
                      else ControlNetModel.from_unet(unet))
    return unet, controlnet, vae


@torch.inference_mode()
def count_decode_flops(bench: Bench) -> dict:
    """FLOPs of ControlNet and UNet on a guided batch of one image (2 rows), and of one VAE decode."""
    from torch.utils.flop_counter import FlopCounterMode

    unet, controlnet, vae = meta_models(bench)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    size, latent = bench.sizes.resolution, bench.sizes.resolution // factor
    with torch.device("meta"):
        latents, timestep = torch.randn(2, unet.config.in_channels, latent, latent), torch.tensor(999)
        text = torch.randn(2, 77, unet.config.cross_attention_dim)
        control = torch.randn(2, controlnet.config.conditioning_channels, size, size)
        with FlopCounterMode(display=False) as controlnet_flops:
            down, mid = controlnet(latents, timestep, encoder_hidden_states=text, controlnet_cond=control,
                                   return_dict=False)
        with FlopCounterMode(display=False) as unet_flops:
            unet(latents, timestep, encoder_hidden_states=text, down_block_additional_residuals=down,
                 mid_block_additional_residual=mid, return_dict=False)
        with FlopCounterMode(display=False) as vae_flops:
            vae.decode(torch.randn(1, vae.config.latent_channels, latent, latent))
    return {"controlnet": controlnet_flops.get_total_flops(), "unet": unet_flops.get_total_flops(),
            "guided_step": controlnet_flops.get_total_flops() + unet_flops.get_total_flops(),
            "vae_decode_per_image": vae_flops.get_total_flops()}


def matmul_rate(bench: Bench, dtype: torch.dtype, products: int = 10, repeats: int = 5) -> float:
    """FLOP/s of n x n x n matrix products on random data: the median over ``repeats`` timings of
    ``products`` back-to-back products each, after 3 warm-ups."""
    n = bench.sizes.matmul_size
    generator = torch.Generator(bench.device).manual_seed(0)
    a, b = (torch.randn((n, n), generator=generator, device=bench.device).to(dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    seconds = [timed(bench, lambda: [a @ b for _ in range(products)])[0] / products for _ in range(repeats)]
    return 2 * n**3 / statistics.median(seconds)


def section_decode(bench: Bench) -> dict:
    """Ours against the stock pipeline per precision and batch size, then the ablation."""
    rows, ablation, syncs = [], [], {}
    for precision in bench.sizes.decode_precisions:
        ours, stock = make_decoder(bench, precision, OURS), make_decoder(bench, precision, STOCK)
        for batch in bench.sizes.decode_batches:
            rows.append(compare_decode(bench, ours, stock, precision, batch))
            if not syncs:
                calls = decode_calls(ours, stock, *decode_inputs(bench, batch))
                syncs = {"ours": count_host_syncs(bench, calls[0]), "stock": count_host_syncs(bench, calls[1]),
                         "batch": batch, "steps": bench.sizes.steps}
        if not ablation:  # the first precision only
            ablation = [ablate(bench, stock, precision, name, speed) for name, speed in ABLATIONS.items()]
        del ours, stock
        free_memory()
    return {"rows": rows, "ablation": ablation, "host_syncs_per_call": syncs}


def compare_decode(bench: Bench, ours: ControlNetDecoder, stock: ControlNetDecoder, precision: str,
                   batch: int, label: str = "ours") -> dict:
    """Images/s of both paths (alternating after a warm-up each) and the pixel match."""
    codes, seeds = decode_inputs(bench, batch)
    ours_call, stock_call = decode_calls(ours, stock, codes, seeds)
    first_seconds, ours_images = timed(bench, ours_call)
    stock_images = stock_call()
    ours_seconds, stock_seconds = [], []
    for _ in range(bench.sizes.repeats):  # alternate: drift in the card's speed hits both alike
        ours_seconds.append(timed(bench, ours_call)[0])
        stock_seconds.append(timed(bench, stock_call)[0])
    ours_rate = batch / statistics.median(ours_seconds)
    stock_rate = batch / statistics.median(stock_seconds)
    print(f"  {label}, {PRECISION_LABELS[precision]} batch {batch}: {ours_rate:.2f} img/s (first call "
          f"{first_seconds:.1f} s), stock {stock_rate:.2f} img/s", flush=True)
    floor = bench.results.get("floor", {}).get("floor_per_image", {}).get(precision, {}).get("denoising_s")
    return {"label": label, "precision": precision, "batch": batch, "ours_img_per_s": ours_rate,
            "stock_img_per_s": stock_rate, "ratio": ours_rate / stock_rate,
            "fraction_of_floor": floor * ours_rate if floor else None,
            "first_call_s": first_seconds, "ours_s": ours_seconds, "stock_s": stock_seconds,
            "match": pixel_match(ours_images, stock_images, float32_reference(bench, batch))}


def ablate(bench: Bench, stock: ControlNetDecoder, precision: str, name: str, speed: SpeedOptions) -> dict:
    """Ours with one option off, at the ablation batch size (stock timed again alongside)."""
    decoder = make_decoder(bench, precision, speed)
    row = compare_decode(bench, decoder, stock, precision, bench.sizes.ablation_batch, label=f"ours {name}")
    del decoder
    free_memory()
    return row


def section_train(bench: Bench) -> dict:
    """bench/train.py's steps in this process, one variant at a time, then ours against reference."""
    sizes = bench.sizes
    runs = {}
    for variant in TRAIN_VARIANTS:
        args = bench_train.parse_args([
            f"--components={'tiny' if bench.dry_run else 'sd15-random'}", f"--device={bench.device}",
            f"--resolution={sizes.resolution}", f"--batch_size={sizes.train_batch}", "--precision=bf16-mixed",
            f"--steps={sizes.train_steps}", f"--warmup={sizes.train_warmup}", f"--seed={bench.seed}"])
        args.worker = variant
        runs[variant] = bench_train.run_worker(args)
        print(f"  {variant}: {runs[variant]['steps_per_s']:.2f} steps/s, {runs[variant]['peak_mib']:.0f} MiB",
              flush=True)
        free_memory()
    peak = bench.results.get("floor", {}).get("peak_flop_per_s", {}).get("bf16")
    floor = runs["reference"]["step_flop"] / peak if peak else None  # without recomputation
    rows = [{"checkpointing": suffix != "", "ours": runs["ours" + suffix], "reference": runs["reference" + suffix],
             "ratio": runs["ours" + suffix]["steps_per_s"] / runs["reference" + suffix]["steps_per_s"],
             "fraction_of_floor": floor * runs["ours" + suffix]["steps_per_s"] if floor else None}
            for suffix in ("", "+checkpointing")]
    return {"rows": rows, "batch": sizes.train_batch, "resolution": sizes.resolution, "precision": "bf16-mixed",
            "peak_memory": "CUDA peak allocation above the start" if bench.device.type == "cuda"
            else "peak resident set of the whole process (CPU)"}


def build_encoder(bench: Bench, precision: str):
    """DeepLabV3+ and the captioner: the tiny ones from their files, or real-sized random ones."""
    from models.encode.encoder import SemanticEncoder

    dtype = PRECISIONS[precision]
    if bench.dry_run:
        from models.config import load_config

        encoder = SemanticEncoder.from_config(load_config(bench.tiny_config()), bench.device)
    else:
        from models.encode.captioning import BlipCaptioner
        from models.config import CaptioningConfig
        from models.encode.segmentation import DeepLabV3Plus

        with torch.device(bench.device):
            segmenter = DeepLabV3Plus("resnet101", num_classes=NUM_VOC_CLASSES, output_stride=16)
            model, processor = blip_large(bench)
        encoder = SemanticEncoder(segmenter.to(dtype).eval(), BlipCaptioner(model.to(dtype), processor,
                                                                            CaptioningConfig()))
    return encoder


def blip_large(bench: Bench):
    """A BLIP-large-sized captioner (ViT-L/16 at 384 px, BERT-base decoder) with random weights,
    and a processor with a made-up vocabulary of BLIP's size (the tokens only name ids)."""
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    vocab_size = 30524  # BERT's 30522 plus BLIP's [DEC] and [ENC]
    vocabulary = [f"w{i}" for i in range(vocab_size)]
    for index, token in {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 30522: "[DEC]"}.items():
        vocabulary[index] = token
    folder = Path(tempfile.mkdtemp(prefix="bench-blip-"))
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 384, "width": 384}),
                              tokenizer=BertTokenizer(str(folder / "vocab.txt"), bos_token="[DEC]"))
    config = BlipConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=768, encoder_hidden_size=1024, intermediate_size=3072,
                         num_hidden_layers=12, num_attention_heads=12, bos_token_id=30522, eos_token_id=2,
                         pad_token_id=0, sep_token_id=102),
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=384, patch_size=16),
        projection_dim=512)
    return BlipForConditionalGeneration(config).eval(), processor


def section_encode(bench: Bench) -> dict:
    """Images/s of segmentation, captioning and both (the encoder), per precision."""
    sizes = bench.sizes
    rng = np.random.RandomState(0)
    width, height = sizes.encode_size
    images = [rng.randint(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in range(sizes.encode_batch)]
    rows = []
    for precision in sizes.encode_precisions:
        rows.append({"precision": precision, "batch": sizes.encode_batch, "size": [width, height],
                     **time_encoder(bench, build_encoder(bench, precision), images)})
        free_memory()
    return {"rows": rows, "num_beams": 3, "max_new_tokens": 30}


def time_encoder(bench: Bench, encoder, images: list[np.ndarray]) -> dict:
    """Images/s of the segmenter, the captioner and the whole encoder (median after a warm-up)."""
    calls = {"segmentation": lambda: encoder.segmenter.predict(images),
             "captioning": lambda: encoder.captioner.caption(images), "encode": lambda: encoder.encode(images)}
    rates = {}
    for name, call in calls.items():
        call()  # warm-up
        seconds = [timed(bench, call)[0] for _ in range(bench.sizes.repeats)]
        rates[f"{name}_img_per_s"] = len(images) / statistics.median(seconds)
        print(f"  {name}: {rates[f'{name}_img_per_s']:.2f} img/s", flush=True)
    return rates


def section_compile(bench: Bench) -> dict:
    """Ours with torch.compile of UNet and ControlNet against the stock pipeline (eager)."""
    sizes = bench.sizes
    precision = sizes.compile_precision
    stock = make_decoder(bench, precision, STOCK)
    ours = make_decoder(bench, precision, OURS)
    ours.compile_models(bench.compile_mode, dynamic=False, backend=sizes.compile_backend)  # one graph per size
    rows, skipped = [], []
    for batch in sizes.compile_batches:
        if rows and bench.seconds_left() < EXPECTED_SECONDS["compile"] / 2:  # each size compiles anew
            skipped.append(batch)
            continue
        how = bench.compile_mode if sizes.compile_backend == "inductor" else f"{sizes.compile_backend} backend"
        row = compare_decode(bench, ours, stock, precision, batch, label=f"ours + compile ({how})")
        row["compile_s"] = row["first_call_s"] - statistics.median(row["ours_s"])
        rows.append(row)
    del ours, stock
    torch._dynamo.reset()  # drop the compiled graphs and the models they hold
    free_memory()
    return {"rows": rows, "mode": bench.compile_mode, "backend": sizes.compile_backend, "dynamic": False,
            "batches_skipped_for_time": skipped}


SECTION_FUNCTIONS = {"floor": section_floor, "decode": section_decode, "train": section_train,
                     "encode": section_encode, "compile": section_compile}


# ----- the run ------------------------------------------------------------------------------------

def metadata(bench: Bench, argv: list[str]) -> dict:
    """Card, software versions, date, command and settings of this run."""
    versions = {**library_versions("torch", "diffusers", "transformers", "pytorch_lightning",
                                   "segmentation_models_pytorch"),
                "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    if bench.device.type == "cuda":
        properties = torch.cuda.get_device_properties(bench.device)
        card = f"{properties.name}, {properties.total_memory / 2**30:.0f} GiB"
    else:
        card = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} thread(s)"
    return {"card": card, "device": str(bench.device), "versions": versions, "dry_run": bench.dry_run,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python bench/gpu.py " + " ".join(argv), "sizes": bench.sizes.__dict__,
            "ours": OURS.__dict__, "stock": "StableDiffusionControlNetPipeline, default attention (SDPA), eager"}


def run_sections(bench: Bench, sections: list[str], out: Path, time_budget_s: float | None) -> None:
    """Each section in order; skip what would overrun the budget; write the JSON after each."""
    start = time.perf_counter()
    bench.deadline = None if time_budget_s is None else start + time_budget_s
    bench.results.setdefault("seconds", {})
    for name in SECTIONS:
        if name not in sections:
            continue
        elapsed = time.perf_counter() - start
        if time_budget_s is not None and elapsed + EXPECTED_SECONDS[name] > time_budget_s:
            bench.results[name] = {"skipped": f"{elapsed:.0f} s spent; {EXPECTED_SECONDS[name]} s expected "
                                              f"would pass the {time_budget_s:.0f} s budget"}
        else:
            print(f"[{elapsed:6.1f} s] {name} ...", flush=True)
            section_start = time.perf_counter()
            try:
                bench.results[name] = SECTION_FUNCTIONS[name](bench)
            except Exception as error:  # one broken section must not cost the others' GPU time
                traceback.print_exc()
                first_line = (str(error).splitlines() or [""])[0][:300]
                bench.results[name] = {"error": f"{type(error).__name__}: {first_line}"}
                free_memory()
            bench.results["seconds"][name] = time.perf_counter() - section_start
        atomic_write_json(out, bench.results)


# ----- the table ----------------------------------------------------------------------------------

PRECISION_LABELS = {"32": "fp32", "16": "fp16", "bf16": "bf16"}


def _number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _flop(value: float) -> str:
    return f"{value / 1e12:.3f} TFLOP" if value >= 1e11 else f"{value / 1e9:.3f} GFLOP"


def _check(match: dict) -> str:
    verdict = "match" if match["passed"] else "MISMATCH"
    return (f"{verdict}: mean diff {match['mean_abs_diff']:.2f} (stock vs fp32 "
            f"{match['stock_vs_float32_mean_abs_diff']:.2f}), max {match['max_abs_diff']}")


def decode_lines(section: str, rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        setting = (f"{PRECISION_LABELS[row['precision']]} batch {row['batch']}"
                   + ("" if row["label"] == "ours" else f", {row['label']}"))
        if "compile_s" in row:
            setting += f" (compiling: {row['compile_s']:.0f} s)"
        lines.append(f"| {section} | {setting} | {row['ours_img_per_s']:.2f} img/s "
                     f"| {row['stock_img_per_s']:.2f} img/s | {row['ratio']:.2f} "
                     f"| {_number(row['fraction_of_floor'])} | {_check(row['match'])} |")
    return lines


def train_lines(result: dict) -> list[str]:
    lines = []
    for row in result["rows"]:
        setting = f"{result['precision']} batch {result['batch']}"
        setting += " + checkpointing" if row["checkpointing"] else ""
        ours, reference = (f"{run['steps_per_s']:.2f} steps/s, {run['peak_mib'] / 1024:.1f} GiB"
                           for run in (row["ours"], row["reference"]))
        lines.append(f"| train | {setting} | {ours} | {reference} | {row['ratio']:.2f} "
                     f"| {_number(row['fraction_of_floor'])} | peak memory: {result['peak_memory']} |")
    return lines


def encode_lines(result: dict) -> list[str]:
    return [f"| encode | {PRECISION_LABELS[row['precision']]} batch {row['batch']}, {row['size'][0]}x{row['size'][1]} "
            f"| {row['encode_img_per_s']:.2f} img/s (segmentation {row['segmentation_img_per_s']:.1f}, "
            f"captioning {row['captioning_img_per_s']:.2f}) | n/a | n/a | n/a | {result['num_beams']} beams, "
            f"{result['max_new_tokens']} tokens |" for row in result["rows"]]


def header_lines(results: dict) -> list[str]:
    """Card, versions and command; the FLOP floor; host synchronisations per decode call."""
    meta = results["meta"]
    versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
    lines = [f"card: {meta['card']}; {meta['date']}", f"versions: {versions}", f"command: {meta['command']}"]
    floor = results.get("floor", {})
    if "flop" in floor:
        flop, size = floor["flop"], meta["sizes"]["resolution"]
        rates = ", ".join(f"{PRECISION_LABELS[p]} {rate / 1e12:.1f}" for p, rate in floor["peak_flop_per_s"].items())
        per_image = ", ".join(f"{PRECISION_LABELS[p]} {value['denoising_s'] * 1e3:.1f} ms "
                              f"({value['with_vae_s'] * 1e3:.1f} with VAE)"
                              for p, value in floor["floor_per_image"].items())
        lines += [f"FLOP per guided step at {size}x{size}: ControlNet {_flop(flop['controlnet'])} + UNet "
                  f"{_flop(flop['unet'])} = {_flop(flop['guided_step'])}; VAE decode "
                  f"{_flop(flop['vae_decode_per_image'])} per image",
                  f"matrix-product rate (TFLOP/s): {rates}; floor per image ({floor['steps']} steps): {per_image}"]
    syncs = results.get("decode", {}).get("host_syncs_per_call")
    if syncs and syncs.get("ours") is not None:
        lines.append(f"host synchronisations per decode call (batch {syncs['batch']}, {syncs['steps']} steps): "
                     f"ours {syncs['ours']}, stock {syncs['stock']}")
    return lines


def format_table(results: dict) -> str:
    """The run as a markdown table, with card, versions and floor above it."""
    lines = header_lines(results) + ["", "| section | setting | ours | reference | ratio | fraction of floor | check |",
                                     "|---|---|---|---|---|---|---|"]
    for name in SECTIONS:
        result = results.get(name)
        if result is None or name == "floor" and "flop" in result:
            continue
        if "error" in result or "skipped" in result:
            lines.append(f"| {name} | {'error' if 'error' in result else 'skipped'}: "
                         f"{result.get('error') or result.get('skipped')} | | | | | |")
        elif name in ("decode", "compile"):
            lines += decode_lines(name, result["rows"]) + decode_lines("decode ablation", result.get("ablation", []))
        elif name == "train":
            lines += train_lines(result)
        elif name == "encode":
            lines += encode_lines(result)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default="bench-gpu.json", help="JSON of every figure (written after each section)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to measure")
    parser.add_argument("--dry_run", action="store_true",
                        help="tiny components and sizes on the CPU, one thread: checks the whole script in seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config_path", default=None, help="dry run: an existing tiny config.yaml (models.tiny)")
    parser.add_argument("--time_budget_s", type=float, default=450,
                        help="skip a section whose expected time would pass this (0: no budget)")
    parser.add_argument("--compile_mode", choices=("default", "max-autotune-no-cudagraphs"), default="default")
    parser.add_argument("--seed", type=int, default=0, help="random weights")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = torch.device("cpu" if args.dry_run else args.device)
    if device.type == "cpu" and not args.dry_run:
        print("error: bench/gpu.py measures a GPU; on the CPU use --dry_run", file=sys.stderr)
        return 2
    threads, verbosity = torch.get_num_threads(), diffusers.utils.logging.get_verbosity()
    if args.dry_run:
        torch.set_num_threads(1)  # OpenMP threads spin on shared cores (tests/threads.py)
    diffusers.utils.logging.set_verbosity_error()  # not the casting notes of every .to(dtype)
    bench = Bench(device, DRY_SIZES if args.dry_run else Sizes(), args.dry_run, args.seed, args.compile_mode)
    if args.config_path:
        bench.cache["tiny_config"] = Path(args.config_path)
    bench.results["meta"] = metadata(bench, argv)
    try:
        run_sections(bench, args.sections, Path(args.out), None if args.dry_run or not args.time_budget_s
                     else args.time_budget_s)
    finally:
        torch.set_num_threads(threads)
        diffusers.utils.logging.set_verbosity(verbosity)
    print(format_table(bench.results))
    print(f"wrote {args.out}")
    failed = [name for name in args.sections if "error" in bench.results.get(name, {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
