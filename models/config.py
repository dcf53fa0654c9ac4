"""The configuration contract: documented defaults, YAML loading, overrides, validation.

A config file is YAML with one mapping per section below. Anything it leaves out keeps the
default written here; a key that is not defined here is an error (with the closest known key
suggested), as is a value of the wrong type. ``load_config`` is the one place where settings
merge: the file, then typed values (``set_value``; command-line flags arrive this way, never as
YAML text, see ``models.cli``), then "section.key=value" override text read as YAML.

Fields marked as paths hold a local file/folder or a Hugging Face id. A relative path is looked
up next to the config file first, then in the working directory, then in the project root; if
none exists it is kept as written (a hub id, or a missing file the loader reports).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.imageio import DEFAULT_MAX_PIXELS, RESIZE_FILTERS
from models.palettes import PALETTES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "configs" / "config.yaml"
PRECISION_NAMES = ("32", "16", "bf16")  # network precisions on a GPU (models.runtime.PRECISIONS)
SEGMENTER_FAMILIES = ("deeplabv3plus", "transformers")  # the networks that draw label maps (models.encode)
CONDITIONING_MODES = ("palette", "onehot")  # how a label map is drawn as a control image (models.decode.control)


def path_field(default: str | None) -> Any:
    """A dataclass field that holds a local path or a Hugging Face id."""
    return field(default=default, metadata={"path": True})


def choice_field(default: Any, choices: tuple) -> Any:
    """A dataclass field restricted to ``choices``."""
    return field(default=default, metadata={"choices": choices})


@dataclass
class SegmentationConfig:
    """The label-map network: DeepLabV3+ (PASCAL VOC, 21 classes) or a transformers model (e.g. ADE20K)."""

    family: str = choice_field("deeplabv3plus", SEGMENTER_FAMILIES)  # which network draws the maps
    checkpoint: str | None = path_field("checkpoints/best_deeplabv3plus_resnet101_voc_os16.pth")  # DeepLabV3+
    model: str | None = path_field(None)  # transformers family: hub id or folder, e.g. openmmlab/upernet-convnext-small
    inference_size: int | None = None  # short side the network runs at (logits resized back); null: DeepLabV3+
    # at each image's own size, a transformers model at its processor's size
    encoder_name: str = "resnet101"  # any segmentation-models-pytorch encoder name
    output_stride: int = choice_field(16, (16, 8))  # 16: the checkpoint's own; 8: denser, slower
    num_classes: int = 21  # PASCAL VOC: background + 20 object classes
    aspp_channels: int = 256  # width of ASPP and decoder (256 in the original network)
    low_level_channels: int = 48  # width of the projected stride-4 features (48 originally)
    allow_pickle: bool = False  # load legacy checkpoints that need full unpickling (trusted only)


@dataclass
class CaptioningConfig:
    """BLIP captioner."""

    model: str = path_field("Salesforce/blip-image-captioning-large")  # hub id or local folder
    max_length: int = 30  # maximum number of generated tokens
    num_beams: int = 3  # beam search keeps captions deterministic; 1 = greedy
    prefix: str = ""  # optional text the caption starts with, e.g. "a photograph of"
    repetition_penalty: float = 1.0  # > 1 discourages repeated words


@dataclass
class EncodeConfig:
    """Batch encoding (process_input.py)."""

    batch_size: int = 8  # images per forward pass and per device
    num_workers: int = 2  # data-loader processes that decode images
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse larger images before decoding them
    precision: str = choice_field("32", PRECISION_NAMES)  # network precision on a GPU


@dataclass
class DiffusionConfig:
    """Stable Diffusion 1.5 and the ControlNet that decodes label maps and captions."""

    sd_model_path: str = path_field("stable-diffusion-v1-5/stable-diffusion-v1-5")
    controlnet_path: str | None = path_field(None)  # decoding: folder, hub id or .ckpt/.safetensors file;
    # training fine-tunes a folder or hub id (python -m models.train.export turns a .ckpt into one); None: from the UNet
    resolution: int = 512  # training and generation size (multiple of 8)
    palette: str = choice_field("voc", tuple(PALETTES))  # "ade20k" for public seg ControlNets
    conditioning: str = choice_field("palette", CONDITIONING_MODES)  # control image rendering


@dataclass
class DecodeConfig:
    """Batch decoding (process_decoding.py); see docs/decoding.md."""

    num_inference_steps: int = 20  # sampler steps (the original project: 50 DDIM steps)
    scheduler: str = choice_field("unipc", ("unipc", "ddim", "dpmpp", "euler"))  # the sampler
    guidance_scale: float = 7.5  # classifier-free guidance; <= 1 turns it off (original: 9)
    controlnet_conditioning_scale: float = 1.0  # weight of the ControlNet's residuals
    negative_prompt: str = ""  # text of the unguided half of classifier-free guidance
    seed: int = 0  # hashed with each image's relative path into that image's own noise seed
    batch_size: int = 4  # images per forward pass; batches are formed globally, in a fixed order
    resolution: int | None = None  # generation size; null: the ControlNet's own, else diffusion.resolution
    palette: str | None = choice_field(None, (None, *PALETTES))  # null: the ControlNet's own
    control_range: str = choice_field("auto", ("auto", "unit", "signed"))  # [0,1] or [-1,1]; auto: by format
    keep_aspect: bool | None = None  # false: stretch to a square as the original; null: by format
    generation_scale: str = choice_field("short_side", ("short_side", "area"))  # short side = resolution, as
    # training crops saw objects (at most 2 x resolution^2 pixels); area: about resolution^2 pixels (earlier rule)
    resize_filter: str = choice_field("lanczos", tuple(RESIZE_FILTERS))  # back to the original size
    missing_caption: str = choice_field("error", ("error", "empty"))  # "empty": decode with "" and warn
    precision: str = choice_field("32", PRECISION_NAMES)  # on a GPU; --use_fp16 sets "16"
    attention_slicing: bool = False  # attention in slices: less memory, a little slower
    vae_slicing: bool = False  # VAE-decode one image of the batch at a time
    vae_tiling: bool = False  # VAE-decode in overlapping tiles (large images on small cards)
    cpu_offload: bool = False  # models wait on the CPU; each moves to the GPU while it runs
    allow_pickle: bool = False  # load checkpoints that weights_only loading refuses (trusted only)
    # Speed: none of these changes the images beyond float rounding (docs/decoding.md, Speed).
    precomputed_sampler: bool | None = None  # sampler as precomputed weights: no per-step host sync; null: on CUDA
    channels_last: bool | None = None  # NHWC layout for UNet, ControlNet and VAE; null: on CUDA
    fuse_qkv: bool = False  # one projection for q, k, v in self-attention (k, v in cross-attention)
    compile: bool = False  # torch.compile UNet and ControlNet: compiles per new size (minutes), then faster
    compile_mode: str = choice_field("default", ("default", "max-autotune-no-cudagraphs"))  # torch.compile mode


@dataclass
class EvaluateConfig:
    """The metric suite (evaluate.py)."""

    torch_hub_dir: str | None = path_field(None)  # weights in <dir>/checkpoints/; None: torch's cache
    clip_model: str = path_field("openai/clip-vit-large-patch14")  # clip_score: hub id (from the cache) or folder
    clip_s_model: str = path_field("openai/clip-vit-base-patch32")  # clip_s: Hessel et al.'s CLIP-S model
    lpips_net: str = choice_field("alex", ("alex", "vgg", "squeeze"))  # LPIPS trunk (paper: alex)
    patch_size: int = 256  # FID/KID also on patches of this size (HiFiC protocol); 0 turns that off
    kid_subsets: int = 100  # KID: number of random subsets
    kid_subset_size: int = 1000  # KID: samples per subset (a set of no more: one subset of all)
    fid_features: int = choice_field(2048, (64, 192, 768, 2048))  # Inception layer; 2048 (pool3) is standard
    fid_antialias: bool = False  # False: resize to 299 like torch-fidelity/TF, so FIDs compare with papers
    resize_filter: str = choice_field("lanczos", tuple(RESIZE_FILTERS))  # to the truth's size
    aspect_mismatch: str = choice_field("error", ("error", "crop"))  # crop: centre-crop to the truth's shape


@dataclass
class TrainConfig:
    """ControlNet decoder training (train.py); see docs/training.md."""

    data_root: str = path_field("data")  # holds original_images/{split}/ and segmented_images/{split}/
    output_dir: str = "runs/decoder"  # the run folder: config, logs, checkpoints, exported ControlNet
    batch_size: int = 4  # images per device and micro-batch
    accumulate_grad_batches: int = 1  # micro-batches per optimizer step
    max_steps: int = 50_000  # optimizer steps
    learning_rate: float = 1e-5  # AdamW on the ControlNet (the ControlNet paper's rate)
    unet_decoder: bool = False  # also train the UNet's decoder half (up blocks and output layers)
    unet_learning_rate: float = 2e-6  # lower rate for that decoder half
    weight_decay: float = 1e-2  # AdamW decoupled weight decay
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    optimizer: str = choice_field("adamw", ("adamw", "adamw8bit"))  # adamw8bit needs bitsandbytes
    lr_scheduler: str = choice_field("constant", ("constant", "cosine", "linear"))  # after warm-up
    warmup_steps: int = 500  # linear learning-rate warm-up from 0
    max_grad_norm: float | None = 1.0  # gradient clipping by global norm; null: off
    prompt_dropout: float = 0.5  # captions replaced by "" this often (classifier-free guidance)
    ema_decay: float | None = None  # e.g. 0.9999 keeps an EMA copy of the ControlNet; null: off
    precision: str = choice_field("32", ("32", "bf16-mixed", "16-mixed"))  # trainable weights stay fp32
    gradient_checkpointing: bool = False  # recompute ControlNet activations in backward (less memory)
    channels_last: bool = False  # NHWC memory layout for ControlNet and UNet (faster convs on GPUs)
    attention: str = choice_field("sdpa", ("sdpa", "eager"))  # PyTorch SDPA kernels or plain matmuls
    cache_latents: bool = False  # keep VAE latents and text embeddings in memory (needs fixed crops)
    resize_mode: str = choice_field("crop", ("crop", "stretch"))  # crop: keep aspect; stretch: original project
    random_crop: bool = True  # random (else centre) crop after resizing the short side
    random_flip: bool = True  # horizontal flip of image and label map together
    num_workers: int = 4  # data-loader processes per device
    seed: int = 0  # one seed for data order, augmentation, noise and timesteps (offset per rank)
    checkpoint_every_n_steps: int = 1000  # Lightning checkpoint of the trainable weights
    keep_checkpoints: int = 3  # newest step checkpoints kept (-1: all); last.ckpt always links the newest
    log_every_n_steps: int = 50  # training-loss logging interval
    val_every_n_steps: int = 500  # validation loss and image grid interval
    val_max_samples: int = 64  # validation images used for the loss (first ones, sorted)
    val_timesteps: list[int] = field(default_factory=lambda: [100, 300, 500, 700, 900])  # fixed t
    num_validation_images: int = 4  # first validation label maps decoded as process_decoding.py would
    validation_inference_steps: int | None = None  # sampler steps of validation images; null: decode's
    validation_guidance_scale: float | None = None  # their guidance scale; null: decode.guidance_scale


@dataclass
class Config:
    """Every section of a config file."""

    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    captioning: CaptioningConfig = field(default_factory=CaptioningConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict, as written to YAML."""
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A config file or override is invalid; the message says what to change."""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None, source: str = "flag") -> Config:
    """Defaults, merged with the YAML at ``path`` (default ``configs/config.yaml``), then ``values``
    ({"section.key": typed value}, e.g. from command-line flags; a path that exists from the
    working directory is made absolute), then ``overrides`` ("section.key=value" text)."""
    path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    config = config_from_dict(data, source=str(path))
    for key, value in (values or {}).items():
        if config_field(key).metadata.get("path") and isinstance(value, str) and Path(value).expanduser().exists():
            value = str(Path(value).expanduser().resolve())
        set_value(config, key, value, f"{source} {key}")
    if overrides:
        apply_overrides(config, overrides)
    resolve_paths(config, base_dir=path.resolve().parent)
    return config


def config_field(key: str) -> dataclasses.Field:
    """The dataclass field of "section.key" (its default, choices, path marker)."""
    section_name, _, name = key.partition(".")
    section = _section(Config(), section_name, "config")
    fields = {item.name: item for item in dataclasses.fields(section)}
    if name not in fields:
        raise ConfigError(f"unknown key '{key}'{_suggest(name, list(fields))}")
    return fields[name]


def config_type(key: str) -> Any:
    """The type of the value "section.key" holds, without ``None`` (``int | None`` -> ``int``)."""
    section_name, _, name = key.partition(".")
    config_field(key)  # a wrong key raises ConfigError
    hint = typing.get_type_hints(type(getattr(Config(), section_name)))[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        hint = options[0] if len(options) == 1 else hint
    return hint


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a validated ``Config`` from a nested dict (missing keys keep their defaults)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    config = Config()
    for section_name, values in data.items():
        section = _section(config, section_name, source)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {section_name!r} must be a mapping")
        for key, value in values.items():
            _set_field(section, section_name, key, value, source)
    return config


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply "section.key=value" strings; the value is parsed as YAML ("8", "null", "[1, 2]")."""
    for override in overrides:
        name, sep, text = override.partition("=")
        if not sep or name.count(".") != 1:
            raise ConfigError(f"override {override!r} must look like section.key=value")
        set_dotted(config, name, text, "override")
    return config


def set_dotted(target: Any, key: str, text: str, source: str) -> None:
    """``set_value`` with ``text`` read as YAML ("8", "null", "[1, 2]", "a photo of")."""
    set_value(target, key, yaml.safe_load(text) if text.strip() else None, source)


def set_value(target: Any, key: str, value: Any, source: str) -> None:
    """Set the field ``key`` of the dataclass ``target`` ("name", "section.name", deeper through
    nested dataclasses) to ``value``, checked against the field's type and choices; a wrong key or
    kind of value raises ConfigError whose message starts with ``source``."""
    *parents, name = key.strip().split(".")
    path = []
    for parent in parents:
        target = _section(target, parent, source, ".".join(path + [parent]))
        path.append(parent)
    _set_field(target, ".".join(path), name, value, source)


def resolve_paths(config: Config, base_dir: Path) -> None:
    """Turn relative path fields into existing local paths where one exists."""
    for section_field in dataclasses.fields(config):
        section = getattr(config, section_field.name)
        for item in dataclasses.fields(section):
            value = getattr(section, item.name)
            if item.metadata.get("path") and isinstance(value, str):
                setattr(section, item.name, resolve_path(value, base_dir))


def without_paths(section: Any) -> dict:
    """A config section's settings as a dict, less its path fields (see ``path_field``)."""
    return {item.name: getattr(section, item.name) for item in dataclasses.fields(section)
            if not item.metadata.get("path")}


def resolve_path(value: str, base_dir: Path | None = None) -> str:
    """A relative ``value`` found next to the config, in the working dir or the project root."""
    candidate = Path(value).expanduser()
    if candidate.is_absolute():
        return str(candidate)
    for root in (base_dir, Path.cwd(), PROJECT_ROOT):
        if root is not None and (root / candidate).exists():
            return str((root / candidate).resolve())
    return value


def save_config(config: Config, path: str | Path) -> None:
    """Write the full config (every key, defaults included) as YAML."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


def _section(parent: Any, name: str, source: str, qualified: str | None = None) -> Any:
    names = [f.name for f in dataclasses.fields(parent) if dataclasses.is_dataclass(getattr(parent, f.name))]
    if name not in names:
        raise ConfigError(f"{source}: unknown section {qualified or name!r}{_suggest(name, names)}")
    return getattr(parent, name)


def _set_field(section: Any, section_name: str, key: str, value: Any, source: str) -> None:
    hints = typing.get_type_hints(type(section))
    qualified = f"{section_name}.{key}" if section_name else key
    if key not in hints:
        raise ConfigError(f"{source}: unknown key '{qualified}'{_suggest(key, list(hints))}")
    value = _yaml_float(value, hints[key])
    if not _matches(value, hints[key]):
        raise ConfigError(f"{source}: '{qualified}' must be {_describe(hints[key])}, got {value!r}")
    if typing.get_origin(hints[key]) is tuple:
        value = tuple(value)
    choices = {f.name: f for f in dataclasses.fields(section)}[key].metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{source}: '{qualified}' must be one of {list(choices)}, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and _describe(hints[key]) == "float":
        value = float(value)
    setattr(section, key, value)


def _yaml_float(value: Any, hint: Any) -> Any:
    """YAML 1.1 reads "1e-5" (no dot) as a string; for a float field, read it as the number."""
    if isinstance(value, str) and _matches(1.5, hint) and not _matches(value, hint):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is tuple and typing.get_args(hint) and typing.get_args(hint)[-1] is not Ellipsis:
        items = typing.get_args(hint)  # a fixed length: tuple[int, int, int]
        return (isinstance(value, (list, tuple)) and len(value) == len(items)
                and all(_matches(v, item) for v, item in zip(value, items)))
    if origin in (list, tuple):
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and all(_matches(v, item_hint) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is Any:
        return True
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is not None:
        return str(hint)  # list[int], tuple[int, int, int]
    return getattr(hint, "__name__", str(hint))


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
