"""The quickstart system: small models trained on synthetic shapes, shipped in checkpoints/shapes/.

    python -m models.quickstart train --output_dir checkpoints/shapes   # every model, seeded, on CPU
    python -m models.quickstart evaluate [--model_dir checkpoints/shapes] # the end-to-end quality check

``train`` writes a shapes data set (``models.quickstart.shapes``, seed ``--seed``) into ``--work_dir`` and
trains, in order: the DeepLabV3+ segmenter, the BLIP captioner, the VAE, the UNet with its CLIP
text encoder (``models.quickstart.trainers``), then the ControlNet with ``train.py`` on those frozen
components. The model folder holds every component in its real on-disk format, stored in
float16 (loading upcasts to float32):

    segmentation.safetensors   DeepLabV3+ (models.encode.segmentation.save_checkpoint)
    blip/                      BlipForConditionalGeneration + BlipProcessor (save_pretrained)
    stable-diffusion/          an SD1.5-style diffusers folder: vae, text_encoder, tokenizer, unet, scheduler
    controlnet/                the ControlNet train.py exported (save_pretrained + semantic_compression.json)
    training.json              seeds, steps, losses, timings, thread count and library versions

``configs/shapes.yaml`` points every script at ``checkpoints/shapes/``. ``evaluate`` encodes
held-out shapes images (a split never used in training), decodes them, re-segments the
reconstructions and compares them with the transmitted label maps (``quality_report``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from models.config import PROJECT_ROOT, Config, ConfigError, load_config, set_dotted, without_paths
from models.imageio import atomic_write_json
from models.runtime import library_versions

SHAPES_CONFIG = PROJECT_ROOT / "configs" / "shapes.yaml"
DEFAULT_MODEL_DIR = PROJECT_ROOT / "checkpoints" / "shapes"
IMAGE_SIZE = 64  # shapes images are IMAGE_SIZE x IMAGE_SIZE
HELD_OUT_SPLIT = "test"  # models.quickstart.shapes split that training never sees
SEGMENTATION_FILE = "segmentation.safetensors"
BLIP_DIR, SD_DIR, CONTROLNET_DIR = "blip", "stable-diffusion", "controlnet"
TRAINING_REPORT = "training.json"
TOKENIZER_LENGTH = 32  # CLIP tokens per caption (SD1.5: 77); the longest shapes caption needs 24


@dataclass
class Stage:
    """Optimisation settings of one component."""

    steps: int
    batch_size: int
    learning_rate: float


@dataclass
class Recipe:
    """Everything the training command decides; the defaults are the shipped models' settings."""

    train_images: int = 4000  # shapes training split (validation: 64 images)
    segmenter: Stage = field(default_factory=lambda: Stage(3000, 16, 3e-3))
    captioner: Stage = field(default_factory=lambda: Stage(4000, 32, 2e-3))
    autoencoder: Stage = field(default_factory=lambda: Stage(3000, 16, 2e-3))
    text_to_image: Stage = field(default_factory=lambda: Stage(8000, 32, 5e-4))
    controlnet_steps: int | None = None  # None: the config's train.max_steps (the shipped run)
    unet_channels: tuple[int, int, int] = (32, 64, 64)  # UNet block widths
    text_width: int = 64  # CLIP text encoder width (= the UNet's cross-attention width)


def apply_recipe_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """A copy of ``recipe`` with "key=value" settings applied, e.g. ``text_to_image.steps=8000`` or
    ``unet_channels=[64,128,128]`` (values in YAML, checked against the field types as config
    overrides are); unknown keys and wrong values raise ``ConfigError``."""
    recipe = copy.deepcopy(recipe)
    for override in overrides:
        key, separator, text = override.partition("=")
        if not separator:
            raise ConfigError(f"--recipe {override!r}: expected KEY=VALUE with KEY one of "
                              f"{', '.join(recipe_keys(asdict(recipe)))}")
        set_dotted(recipe, key, text, f"--recipe {override!r}")
    return recipe


def recipe_keys(values: dict, prefix: str = "") -> list[str]:
    """Every settable key of a recipe's ``asdict``, dotted."""
    keys = []
    for name, value in values.items():
        keys += recipe_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [prefix + name]
    return keys


# Architectures: the real ones, narrow. Segmenter settings live in configs/shapes.yaml.
BLIP_ARCHITECTURE = {
    "vision": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                   patch_size=8),
    "text": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                 max_position_embeddings=40),
}
VAE_ARCHITECTURE = dict(  # three blocks: latents at 1/4 resolution (SD1.5's VAE: four, 1/8)
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64),
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1, norm_num_groups=16, sample_size=IMAGE_SIZE,
)
# The UNet's and text encoder's widths are in the recipe (``unet_channels``, ``text_width``).
UNET_ARCHITECTURE = dict(  # SD1.5's block layout with two cross-attention levels instead of three
    sample_size=IMAGE_SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=8, norm_num_groups=16,
)
TEXT_ENCODER_ARCHITECTURE = dict(num_hidden_layers=2, num_attention_heads=4,
                                 max_position_embeddings=TOKENIZER_LENGTH)


def unet_architecture(recipe: Recipe) -> dict:
    """``UNET_ARCHITECTURE`` at the recipe's widths (cross-attention: the text encoder's width)."""
    return {**UNET_ARCHITECTURE, "block_out_channels": tuple(recipe.unet_channels),
            "cross_attention_dim": recipe.text_width}


def text_encoder_architecture(recipe: Recipe) -> dict:
    """``TEXT_ENCODER_ARCHITECTURE`` at the recipe's width (feed-forward: twice the width)."""
    return {**TEXT_ENCODER_ARCHITECTURE, "hidden_size": recipe.text_width,
            "intermediate_size": 2 * recipe.text_width, "projection_dim": recipe.text_width}


NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule="scaled_linear")  # SD1.5's


# --- training -------------------------------------------------------------------------------------

def train_segmentation(config: Config, data, stage: Stage, seed: int, output_dir: Path, device: str = "cpu") -> dict:
    """DeepLabV3+ with the architecture of ``config.segmentation``, saved as float16 safetensors."""
    from models.encode.segmentation import DeepLabV3Plus, save_checkpoint
    from models.quickstart.trainers import train_segmenter

    torch.manual_seed(seed)
    model = DeepLabV3Plus.from_config(config.segmentation)
    losses = train_segmenter(model, data, stage.steps, stage.batch_size, stage.learning_rate, seed, device)
    save_checkpoint(copy.deepcopy(model).half(), config.segmentation, output_dir / SEGMENTATION_FILE)
    return {"final_loss": mean_tail(losses)}


def train_blip(data, stage: Stage, seed: int, output_dir: Path, device: str = "cpu") -> dict:
    """The BLIP captioner and its processor, saved with ``save_pretrained`` in float16."""
    from models.quickstart.trainers import build_captioner, train_captioner

    torch.manual_seed(seed)
    model, processor = build_captioner(IMAGE_SIZE, output_dir / BLIP_DIR, BLIP_ARCHITECTURE)
    losses = train_captioner(model, processor, data, stage.steps, stage.batch_size, stage.learning_rate, seed,
                             device)
    model.half().save_pretrained(output_dir / BLIP_DIR)
    processor.save_pretrained(output_dir / BLIP_DIR)
    return {"final_loss": mean_tail(losses)}


def build_tokenizer(folder: Path):
    """A CLIP BPE tokenizer whose vocabulary holds every shapes-caption word as one token."""
    from transformers import CLIPTokenizer

    from models.quickstart.trainers import caption_words
    from models.tiny.components import write_clip_tokenizer_files

    write_clip_tokenizer_files(folder, caption_words())
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=TOKENIZER_LENGTH)


def train_stable_diffusion(data, recipe: Recipe, seed: int, output_dir: Path, work_dir: Path,
                           device: str = "cpu") -> dict:
    """VAE first, then UNet and text encoder on its latents; one SD1.5-style diffusers folder."""
    from diffusers import (AutoencoderKL, DDPMScheduler, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    from models.quickstart.trainers import train_autoencoder, train_text_to_image

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_ARCHITECTURE)
    stage = recipe.autoencoder
    vae_losses = train_autoencoder(vae, data, stage.steps, stage.batch_size, stage.learning_rate, seed,
                                   device=device)
    vae = round_to_half(vae)  # the diffusion model learns the latents of the shipped weights
    tokenizer = build_tokenizer(work_dir / "tokenizer")
    vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1, **text_encoder_architecture(recipe)))
    unet = UNet2DConditionModel(**unet_architecture(recipe))
    stage = recipe.text_to_image
    unet_losses = train_text_to_image(unet, text_encoder, tokenizer, DDPMScheduler(**NOISE_SCHEDULE), vae, data,
                                      stage.steps, stage.batch_size, stage.learning_rate, seed, device=device)
    scheduler = PNDMScheduler(**NOISE_SCHEDULE, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    pipeline = StableDiffusionPipeline(
        vae=vae.half(), text_encoder=text_encoder.half(), tokenizer=tokenizer, unet=unet.half(),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(output_dir / SD_DIR)
    return {"autoencoder_final_loss": mean_tail(vae_losses), "text_to_image_final_loss": mean_tail(unet_losses),
            "vae_scaling_factor": vae.config.scaling_factor}


def round_to_half(module: torch.nn.Module) -> torch.nn.Module:
    """The module with its weights rounded to float16 and kept in float32 (what loading gives)."""
    return module.half().float()


def train_controlnet(config_path: Path, sd_dir: Path, data_root: Path, run_dir: Path, seed: int,
                     threads: int, output_dir: Path, max_steps: int | None = None, device: str = "cpu") -> dict:
    """``train.py`` on the frozen components (settings: the config's train section), run as a
    user runs it; then its export (ControlNet, trained UNet decoder half, metadata) copied with
    the weights stored in float16."""
    import subprocess

    from safetensors.torch import load_file, save_file

    from models.decode.controlnet_loader import EXPORT_METADATA

    command = [sys.executable, str(PROJECT_ROOT / "train.py"), "--config_path", str(config_path),
               "--sd_model_path", str(sd_dir), "--data_root", str(data_root), "--output_dir", str(run_dir),
               "--seed", str(seed), "--accelerator", "gpu" if device == "cuda" else "cpu", "--devices", "1",
               "--no_progress_bar",
               "--override", "diffusion.controlnet_path=null"]
    if max_steps is not None:
        command += ["--max_steps", str(max_steps)]
    print("$ " + " ".join(command), flush=True)
    status = subprocess.run(command, cwd=PROJECT_ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)}).returncode
    if status != 0:
        raise RuntimeError(f"train.py failed (exit status {status}); see its messages above")
    exported, target = run_dir / "controlnet", output_dir / CONTROLNET_DIR
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for source in sorted(exported.iterdir()):
        if source.suffix == ".safetensors":  # float16 on disk; loading upcasts
            weights = {key: value.half() if value.is_floating_point() else value
                       for key, value in load_file(source).items()}
            save_file(weights, target / source.name, metadata={"format": "pt"})
        elif source.name != EXPORT_METADATA:
            shutil.copyfile(source, target / source.name)
    info = json.loads((exported / EXPORT_METADATA).read_text(encoding="utf-8"))
    info["sd_model_path"] = os.path.relpath(sd_dir, target)  # portable: the folder next to it
    atomic_write_json(target / EXPORT_METADATA, info)
    return {"steps": info["global_step"]}


def mean_tail(losses: list[float], count: int = 100) -> float:
    """Mean of the last ``count`` step losses."""
    return float(np.mean(losses[-count:]))


def _run_stage(name: str, threads: int, function, *arguments) -> tuple[str, dict]:
    """One stage in a worker process: fixed thread count, its result and its duration."""
    torch.set_num_threads(threads)
    start = time.perf_counter()
    result = function(*arguments)
    return name, {**result, "seconds": round(time.perf_counter() - start, 1)}


def stage_settings(name: str, config: Config, recipe: Recipe, seed: int, threads: int, device: str = "cpu") -> dict:
    """Everything that decides the bits a stage writes (besides code and library versions). The
    stages read their inputs from the work and output folders, so the config's paths are left out:
    a moved or freshly cloned repository still finds its finished stages."""
    common = {"seed": seed, "threads": threads, "device": device, "train_images": recipe.train_images,
              "image_size": IMAGE_SIZE}
    if name == "segmenter":
        return {**common, "stage": asdict(recipe.segmenter), "architecture": without_paths(config.segmentation)}
    if name == "captioner":
        return {**common, "stage": asdict(recipe.captioner), "architecture": BLIP_ARCHITECTURE}
    if name == "stable_diffusion":
        return {**common, "autoencoder": asdict(recipe.autoencoder), "text_to_image": asdict(recipe.text_to_image),
                "architecture": [VAE_ARCHITECTURE, unet_architecture(recipe), text_encoder_architecture(recipe),
                                 NOISE_SCHEDULE, TOKENIZER_LENGTH]}
    return {**common, "steps": recipe.controlnet_steps, "train": without_paths(config.train),
            "diffusion": without_paths(config.diffusion), "segmentation": without_paths(config.segmentation)}


STAGE_OUTPUTS = {"segmenter": SEGMENTATION_FILE, "captioner": f"{BLIP_DIR}/model.safetensors",
                 "stable_diffusion": f"{SD_DIR}/model_index.json",
                 "controlnet": f"{CONTROLNET_DIR}/semantic_compression.json"}


def finished_stage(work_dir: Path, output_dir: Path, name: str, settings: dict) -> dict | None:
    """The recorded result of ``name`` when it already ran with ``settings`` and its output is there."""
    record = work_dir / "stages" / f"{name}.json"
    if not record.is_file() or not (output_dir / STAGE_OUTPUTS[name]).exists():
        return None
    done = json.loads(record.read_text(encoding="utf-8"))
    return done["result"] if done["settings"] == json.loads(json.dumps(settings)) else None


def record_stage(work_dir: Path, name: str, settings: dict, result: dict) -> None:
    """Note that ``name`` finished with ``settings`` (written after its outputs)."""
    atomic_write_json(work_dir / "stages" / f"{name}.json", {"settings": settings, "result": result})


def train_all(output_dir: str | Path, work_dir: str | Path, seed: int = 0, threads: int = 1,
              workers: int = 2, recipe: Recipe = Recipe(), config_path: str | Path = SHAPES_CONFIG,
              fresh: bool = False, device: str = "cpu") -> dict:
    """Generate the data, train every component, write ``training.json``; returns its content.

    Segmenter, captioner and the VAE + UNet chain are independent and run in ``workers``
    processes of ``threads`` threads each; the ControlNet needs the last of them and runs after,
    alone, with ``threads * workers`` threads. A stage that already finished into ``output_dir``
    with the same settings (recorded under ``work_dir/stages/``) is not run again, unless
    ``fresh``; the ControlNet's settings include the SD stage's, so it follows a retrained SD.
    ``device`` "cuda" trains every stage (the ControlNet too) on the GPU, far faster than on the
    CPU and with other float rounding, so other bits than a CPU run.
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from models.quickstart.shapes import write_shapes_dataset
    from models.quickstart.trainers import read_split

    output_dir, work_dir = Path(output_dir).resolve(), Path(work_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        shutil.rmtree(work_dir / "stages", ignore_errors=True)
    start = time.perf_counter()
    config = load_config(config_path)
    data_root = work_dir / "data"
    write_shapes_dataset(data_root, {"train": recipe.train_images, "val": 64}, size=IMAGE_SIZE, seed=seed)
    data = read_split(data_root, "train")
    stages = [("stable_diffusion", train_stable_diffusion, data, recipe, seed, output_dir, work_dir, device),
              ("segmenter", train_segmentation, config, data, recipe.segmenter, seed, output_dir, device),
              ("captioner", train_blip, data, recipe.captioner, seed, output_dir, device)]
    settings = {name: stage_settings(name, config, recipe, seed, threads, device) for name, *_ in stages}
    results = {name: finished_stage(work_dir, output_dir, name, settings[name]) for name in settings}
    for name, result in results.items():
        if result is not None:
            print(f"{name}: already trained with these settings ({output_dir / STAGE_OUTPUTS[name]})", flush=True)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_run_stage, name, threads, function, *arguments)
                   for name, function, *arguments in stages if results[name] is None]
        for future in futures:
            name, result = future.result()
            record_stage(work_dir, name, settings[name], result)
            results[name] = result
    settings["controlnet"] = {**stage_settings("controlnet", config, recipe, seed, threads * workers, device),
                              "stable_diffusion": settings["stable_diffusion"]}
    results["controlnet"] = finished_stage(work_dir, output_dir, "controlnet", settings["controlnet"])
    if results["controlnet"] is None:
        shutil.rmtree(work_dir / "controlnet_run", ignore_errors=True)  # train.py refuses a used folder
        controlnet_start = time.perf_counter()
        results["controlnet"] = train_controlnet(Path(config_path).resolve(), output_dir / SD_DIR, data_root,
                                                 work_dir / "controlnet_run", seed, threads * workers, output_dir,
                                                 recipe.controlnet_steps, device)
        results["controlnet"]["seconds"] = round(time.perf_counter() - controlnet_start, 1)
        record_stage(work_dir, "controlnet", settings["controlnet"], results["controlnet"])
    report = {"seed": seed, "device": device_name(device), "threads_per_process": threads, "worker_processes": workers,
              "recipe": asdict(recipe), "config": str(Path(config_path).name), "stages": results,
              "total_seconds": round(time.perf_counter() - start, 1), "software": software_versions()}
    atomic_write_json(output_dir / TRAINING_REPORT, report)
    return report


def device_name(device: str) -> str:
    """"cpu", or the GPU's name."""
    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def software_versions() -> dict:
    """Versions that decide the trained weights' bits (with the seed and the thread count)."""
    return {**library_versions("torch", "diffusers", "transformers", "timm", "segmentation_models_pytorch"),
            "processor": platform.processor() or platform.machine()}


# --- the end-to-end quality check ---------------------------------------------------------------

def model_config(model_dir: str | Path | None = None, config_path: str | Path = SHAPES_CONFIG,
                 extra_overrides: list[str] | None = None) -> Config:
    """``configs/shapes.yaml``, with every model path moved into ``model_dir`` when given, then
    ``extra_overrides`` ("section.key=value") applied."""
    overrides = []
    if model_dir is not None:
        model_dir = Path(model_dir).resolve()
        for key, name in (("segmentation.checkpoint", SEGMENTATION_FILE), ("captioning.model", BLIP_DIR),
                          ("diffusion.sd_model_path", SD_DIR), ("diffusion.controlnet_path", CONTROLNET_DIR)):
            overrides.append(f"{key}={json.dumps(str(model_dir / name))}")
    return load_config(config_path, overrides + list(extra_overrides or []))


def held_out_samples(count: int, seed: int = 0, split: str = HELD_OUT_SPLIT) -> list:
    """The first ``count`` shapes samples of ``split`` (``models.quickstart.shapes``' seeds): by default the
    split that training never uses; ``val`` (train.py's validation images) is for choosing settings."""
    from models.quickstart.shapes import SPLIT_IDS, make_sample

    return [make_sample([seed, SPLIT_IDS[split], index], size=IMAGE_SIZE) for index in range(count)]


def dataset_miou(label_maps: list[np.ndarray], predictions: list[np.ndarray], num_classes: int) -> float:
    """mIoU over all pixels of a set (one confusion matrix), as ``sem_miou_dataset`` reports it."""
    from models.evaluation.metrics import confusion_matrix, mean_iou

    return mean_iou(sum(confusion_matrix(truth, predicted, num_classes)
                        for truth, predicted in zip(label_maps, predictions)))


@dataclass
class QualityReport:
    """How well the system keeps the label map, measured on held-out shapes images."""

    images: int
    segmenter_miou: float  # the segmenter on the originals vs the exact label maps
    end_to_end_miou: float  # reconstructions re-segmented vs the transmitted label maps
    shuffled_miou: float  # decoded from other images' maps (same captions) vs the transmitted maps
    caption_accuracy: float  # share of BLIP captions equal to the data set's
    seconds: float

    def passes(self) -> bool:
        """The acceptance thresholds of the quickstart (issue 7)."""
        return (self.segmenter_miou >= 0.9 and self.end_to_end_miou >= 0.75
                and self.shuffled_miou < 0.6 * self.end_to_end_miou)


def quality_report(config: Config, count: int = 16, seed: int = 0, split: str = HELD_OUT_SPLIT) -> QualityReport:
    """Encode held-out images, send the codes through the ``.sem`` format, decode, re-segment."""
    from models.bitstream import decode_code, encode_code
    from models.decode.decoder import ControlNetDecoder, image_seed
    from models.encode.encoder import SemanticEncoder
    from models.semantic_code import SemanticCode

    start = time.perf_counter()
    samples = held_out_samples(count, seed, split)
    encoder = SemanticEncoder.from_config(config)
    codes = [decode_code(encode_code(code)) for code in encoder.encode([s.image for s in samples])]
    maps, classes = [code.label_map for code in codes], config.segmentation.num_classes
    decoder = ControlNetDecoder.from_config(config)
    seeds = [image_seed(config.decode.seed, f"shape_{index:05d}") for index in range(count)]
    decoded = decoder.decode(codes, seeds, config.decode.batch_size)
    shuffled = [SemanticCode(maps[(i + 1) % count], code.caption) for i, code in enumerate(codes)]
    decoded_shuffled = decoder.decode(shuffled, seeds, config.decode.batch_size)
    return QualityReport(
        images=count,
        segmenter_miou=dataset_miou([s.label_map for s in samples], maps, classes),
        end_to_end_miou=dataset_miou(maps, encoder.segmenter.predict(decoded), classes),
        shuffled_miou=dataset_miou(maps, encoder.segmenter.predict(decoded_shuffled), classes),
        caption_accuracy=float(np.mean([c.caption == s.caption for c, s in zip(codes, samples)])),
        seconds=round(time.perf_counter() - start, 1))


# --- command line ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train every small model on generated shapes",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--output_dir", default=str(DEFAULT_MODEL_DIR), help="the model folder to write")
    train.add_argument("--work_dir", default="runs/quickstart",
                       help="data set and train.py run folder (not shipped)")
    train.add_argument("--config_path", default=str(SHAPES_CONFIG),
                       help="architecture of the segmenter and the ControlNet's training settings")
    train.add_argument("--seed", type=int, default=0, help="seed of the data set and of every model")
    train.add_argument("--threads", type=int, default=1,
                       help="torch threads per process (the float results depend on it)")
    train.add_argument("--workers", type=int, default=2, help="processes for the independent models")
    train.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                       help="where every stage trains (a GPU: far faster, other bits than the CPU)")
    train.add_argument("--recipe", action="append", default=[], metavar="KEY=VALUE",
                       help="change the recipe, e.g. text_to_image.steps=8000 (repeatable; default: the shipped one)")
    train.add_argument("--fresh", action="store_true",
                       help="train every stage again (default: skip stages already trained with the same settings)")
    evaluate = commands.add_parser("evaluate", help="end-to-end quality on held-out shapes images",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    evaluate.add_argument("--model_dir", default=None,
                          help="a model folder written by 'train' (default: the config's paths)")
    evaluate.add_argument("--config_path", default=str(SHAPES_CONFIG), help="YAML config")
    evaluate.add_argument("--num_images", type=int, default=32, help="held-out images")
    evaluate.add_argument("--seed", type=int, default=0, help="data-set seed of the held-out split")
    evaluate.add_argument("--split", default=HELD_OUT_SPLIT, choices=("val", HELD_OUT_SPLIT),
                          help="shapes split: 'val' to choose settings, the held-out split to report")
    evaluate.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE",
                          help="config override, e.g. decode.guidance_scale=2 (repeatable)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "train":
        if args.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available here; train with --device cpu")
        try:
            recipe = apply_recipe_overrides(Recipe(), args.recipe)
        except ConfigError as error:
            raise SystemExit(f"quickstart train: {error}") from None
        report = train_all(args.output_dir, args.work_dir, args.seed, args.threads, args.workers, recipe,
                           args.config_path, args.fresh, args.device)
        print(f"trained in {report['total_seconds'] / 60:.1f} min; models in {args.output_dir}")
        return 0
    try:
        config = model_config(args.model_dir, args.config_path, args.override)
    except ConfigError as error:
        raise SystemExit(f"quickstart evaluate: {error}") from None
    report = quality_report(config, args.num_images, args.seed, args.split)
    for name, value in asdict(report).items():
        print(f"{name:>18}: {value:.4f}" if isinstance(value, float) else f"{name:>18}: {value}")
    print("meets the quickstart thresholds" if report.passes() else
          "BELOW the quickstart thresholds (segmenter >= 0.9, end to end >= 0.75, shuffled < 0.6 x end to end)")
    return 0 if report.passes() else 1


if __name__ == "__main__":
    sys.exit(main())
