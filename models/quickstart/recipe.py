"""The quickstart recipe: small models of the real architectures, trained on synthetic shapes.

``train_all`` (``python -m models.quickstart train``) writes a shapes data set
(``models.quickstart.shapes``, seed ``seed``) into the work folder and trains, in order: the
DeepLabV3+ segmenter, the BLIP captioner, the VAE, the UNet with its CLIP text encoder (loops in
``models.quickstart.trainers``), then the ControlNet with ``train.py`` on those frozen components.
It writes the model folder of ``models.quickstart.model_folder``, every component in its real
on-disk format, stored in float16 (loading upcasts to float32). A stage that already finished with
the same settings (recorded in the work folder) is not trained again.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from models.config import PROJECT_ROOT, Config, ConfigError, load_config, set_dotted, without_paths
from models.decode.checkpoint_format import EXPORT_METADATA, read_export_metadata, write_export_metadata
from models.decode.stable_diffusion import write_word_tokenizer
from models.imageio import atomic_write_json
from models.quickstart.model_folder import (BLIP_DIR, CONTROLNET_DIR, SD_DIR, SEGMENTATION_FILE, SHAPES_CONFIG,
                                            TRAINING_REPORT)
from models.quickstart.shapes import IMAGE_SIZE, ShapesSplit, read_split, write_shapes_dataset
from models.quickstart.trainers import (build_captioner, caption_words, train_autoencoder, train_captioner,
                                        train_segmenter, train_text_to_image)
from models.runtime import library_versions

TOKENIZER_LENGTH = 32  # CLIP tokens per caption (SD1.5: 77); the longest shapes caption needs 24
VALIDATION_IMAGES = 64  # shapes val split: the images whose loss train.py reports


@dataclass
class Stage:
    """Optimisation settings of one component."""

    steps: int
    batch_size: int
    learning_rate: float


@dataclass
class Recipe:
    """Everything the training command decides; the defaults are the shipped models' settings."""

    train_images: int = 4000  # shapes training split (validation: VALIDATION_IMAGES)
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

def train_segmentation(config: Config, data: ShapesSplit, stage: Stage, seed: int, output_dir: Path,
                       device: str = "cpu") -> dict:
    """DeepLabV3+ with the architecture of ``config.segmentation``, saved as float16 safetensors."""
    from models.encode.segmentation import DeepLabV3Plus, save_checkpoint

    torch.manual_seed(seed)
    model = DeepLabV3Plus.from_config(config.segmentation)
    losses = train_segmenter(model, data, stage.steps, stage.batch_size, stage.learning_rate, seed, device)
    save_checkpoint(copy.deepcopy(model).half(), config.segmentation, output_dir / SEGMENTATION_FILE)
    return {"final_loss": mean_tail(losses)}


def train_blip(data: ShapesSplit, stage: Stage, seed: int, output_dir: Path, device: str = "cpu") -> dict:
    """The BLIP captioner and its processor, saved with ``save_pretrained`` in float16."""
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

    write_word_tokenizer(folder, caption_words())
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                         model_max_length=TOKENIZER_LENGTH)


def train_stable_diffusion(data: ShapesSplit, recipe: Recipe, seed: int, output_dir: Path, work_dir: Path,
                           device: str = "cpu") -> dict:
    """VAE first, then UNet and text encoder on its latents; one SD1.5-style diffusers folder."""
    from diffusers import (AutoencoderKL, DDPMScheduler, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

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
    from safetensors.torch import load_file, save_file

    command = [sys.executable, str(PROJECT_ROOT / "train.py"), "--config_path", str(config_path),
               "--sd_model_path", str(sd_dir), "--data_root", str(data_root), "--output_dir", str(run_dir),
               "--seed", str(seed), "--accelerator", "gpu" if device == "cuda" else "cpu", "--devices", "1",
               "--no_progress_bar",
               "--override", "diffusion.controlnet_path=null"]
    if max_steps is not None:
        command += ["--max_steps", str(max_steps)]
    print("$ " + " ".join(command), flush=True)
    shutil.rmtree(run_dir, ignore_errors=True)  # train.py refuses a used folder
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
    info = read_export_metadata(exported)
    info["sd_model_path"] = os.path.relpath(sd_dir, target)  # portable: the folder next to it
    write_export_metadata(target, info)
    return {"steps": info["global_step"]}


def mean_tail(losses: list[float], count: int = 100) -> float:
    """Mean of the last ``count`` step losses."""
    return float(np.mean(losses[-count:]))


def timed(function: Callable[..., dict], *arguments) -> dict:
    """``function(*arguments)``, a dict, with its duration added as ``seconds``."""
    start = time.perf_counter()
    result = function(*arguments)
    return {**result, "seconds": round(time.perf_counter() - start, 1)}


def _run_stage(name: str, threads: int, function: Callable[..., dict], *arguments) -> tuple[str, dict]:
    """One stage in a worker process at a fixed thread count: its name and timed result."""
    torch.set_num_threads(threads)
    return name, timed(function, *arguments)


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
                 "controlnet": f"{CONTROLNET_DIR}/{EXPORT_METADATA}"}  # written last


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


def train_in_parallel(stages: list[tuple], settings: dict[str, dict], work_dir: Path, output_dir: Path,
                      threads: int, workers: int) -> dict[str, dict]:
    """Each stage's result (a stage: name, function, arguments): recorded when it already finished
    with its settings, else trained in one of ``workers`` processes of ``threads`` threads."""
    results = {name: finished_stage(work_dir, output_dir, name, settings[name]) for name, *_ in stages}
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
    return results


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
    output_dir, work_dir = Path(output_dir).resolve(), Path(work_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        shutil.rmtree(work_dir / "stages", ignore_errors=True)
    start = time.perf_counter()
    config, data_root = load_config(config_path), work_dir / "data"
    write_shapes_dataset(data_root, {"train": recipe.train_images, "val": VALIDATION_IMAGES}, seed=seed)
    data = read_split(data_root, "train")
    stages = [("stable_diffusion", train_stable_diffusion, data, recipe, seed, output_dir, work_dir, device),
              ("segmenter", train_segmentation, config, data, recipe.segmenter, seed, output_dir, device),
              ("captioner", train_blip, data, recipe.captioner, seed, output_dir, device)]
    settings = {name: stage_settings(name, config, recipe, seed, threads, device) for name, *_ in stages}
    results = train_in_parallel(stages, settings, work_dir, output_dir, threads, workers)
    settings["controlnet"] = {**stage_settings("controlnet", config, recipe, seed, threads * workers, device),
                              "stable_diffusion": settings["stable_diffusion"]}
    results["controlnet"] = finished_stage(work_dir, output_dir, "controlnet", settings["controlnet"])
    if results["controlnet"] is None:
        results["controlnet"] = timed(train_controlnet, Path(config_path).resolve(), output_dir / SD_DIR, data_root,
                                      work_dir / "controlnet_run", seed, threads * workers, output_dir,
                                      recipe.controlnet_steps, device)
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
