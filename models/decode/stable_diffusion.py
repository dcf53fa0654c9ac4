"""Loading the Stable Diffusion 1.5 components that training and decoding share.

``sd_model_path`` is a diffusers folder, a Hugging Face id (loaded with diffusers' and
transformers' ``from_pretrained``), or a single-file SD1.5 checkpoint (``.safetensors`` or
``.ckpt``, the original CompVis/RunwayML layout). A single file loads with no network: diffusers'
``from_single_file`` gets the component configs from ``configs/sd15/`` (shipped) and a CLIP
tokenizer whose vocabulary is derived from the ``open-clip-torch`` wheel, instead of fetching
them from the hub.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from models.config import PROJECT_ROOT

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
SD15_CONFIG_DIR = PROJECT_ROOT / "configs" / "sd15"
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"  # inside the open_clip package
CLIP_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges of that file


@dataclass
class SDComponents:
    """The parts of an SD1.5 checkpoint that a ControlNet is trained on and decodes with."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    unet: UNet2DConditionModel
    scheduler: SchedulerMixin  # the noise schedule the UNet was trained with (DDPM form)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for SD1.5's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


@torch.no_grad()
def unet_fingerprint(unet: torch.nn.Module) -> str:
    """16 hex digits identifying a UNet: its config, and per weight tensor its name, shape, sum and
    first values (cheap, yet different for any other base model or fine-tune)."""
    digest = hashlib.sha256()
    config = {key: value for key, value in dict(unet.config).items() if not key.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(unet.state_dict().items()):
        values = tensor.detach().flatten().double()
        digest.update(f"{name}{tuple(tensor.shape)}{float(values.sum()):.6e}".encode())
        digest.update(values[:4].cpu().numpy().round(6).tobytes())
    return digest.hexdigest()[:16]


def is_single_file(sd_model_path: str) -> bool:
    """Whether ``sd_model_path`` names a single-file checkpoint rather than a folder or hub id."""
    return Path(sd_model_path).suffix.lower() in SINGLE_FILE_SUFFIXES


def load_sd_components(sd_model_path: str, dtype: torch.dtype = torch.float32,
                       config_dir: str | Path | None = None) -> SDComponents:
    """Load VAE, text encoder, tokenizer, UNet and the training scheduler.

    ``sd_model_path``: a diffusers folder, a hub id, or a single ``.safetensors``/``.ckpt``
    file; for a single file, ``config_dir`` is a diffusers folder whose configs describe it
    (default: the shipped SD1.5 configs).
    """
    if is_single_file(sd_model_path):
        return _load_single_file(Path(sd_model_path), dtype, config_dir)
    try:
        return SDComponents(
            vae=AutoencoderKL.from_pretrained(sd_model_path, subfolder="vae", torch_dtype=dtype),
            text_encoder=CLIPTextModel.from_pretrained(sd_model_path, subfolder="text_encoder", dtype=dtype),
            tokenizer=CLIPTokenizer.from_pretrained(sd_model_path, subfolder="tokenizer"),
            unet=UNet2DConditionModel.from_pretrained(sd_model_path, subfolder="unet", torch_dtype=dtype),
            scheduler=DDPMScheduler.from_pretrained(sd_model_path, subfolder="scheduler"),
        )
    except (OSError, ValueError) as error:
        raise OSError(
            f"cannot load Stable Diffusion components from {sd_model_path!r}: "
            f"{str(error).splitlines()[0]}. Give a diffusers folder, a Hugging Face id "
            f"(with network access) or a single .safetensors/.ckpt SD1.5 checkpoint"
        ) from None


def _load_single_file(path: Path, dtype: torch.dtype, config_dir: str | Path | None) -> SDComponents:
    """Convert an original-layout checkpoint with diffusers' single-file loader, offline."""
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    if not path.is_file():
        raise OSError(f"cannot load Stable Diffusion components: {path} is not a file")
    with sd15_config_folder(config_dir) as folder:
        try:
            pipeline = StableDiffusionPipeline.from_single_file(
                str(path), config=str(folder), local_files_only=True, torch_dtype=dtype,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        except (OSError, ValueError, KeyError, RuntimeError, SingleFileComponentError) as error:
            raise OSError(f"cannot load {path} as a single-file SD1.5 checkpoint: "
                          f"{str(error).splitlines()[0]}") from None
    return SDComponents(vae=pipeline.vae, text_encoder=pipeline.text_encoder, tokenizer=pipeline.tokenizer,
                        unet=pipeline.unet, scheduler=DDPMScheduler.from_config(pipeline.scheduler.config))


@contextlib.contextmanager
def sd15_config_folder(config_dir: str | Path | None = None) -> Iterator[Path]:
    """A temporary diffusers config folder: ``config_dir``'s files, else the shipped SD1.5
    configs plus a CLIP tokenizer vocabulary derived from open_clip's BPE file."""
    with tempfile.TemporaryDirectory(prefix="sd-config-") as temporary:
        folder = Path(temporary) / "config"
        source = Path(config_dir) if config_dir is not None else SD15_CONFIG_DIR
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.ckpt"))
        if not (folder / "tokenizer" / "vocab.json").exists():
            write_clip_vocabulary(folder / "tokenizer")
        yield folder


def write_clip_vocabulary(folder: Path) -> None:
    """Write CLIP's ``vocab.json`` and ``merges.txt`` (as openai/clip-vit-large-patch14 has them)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise OSError("a single-file SD1.5 checkpoint needs the CLIP tokenizer vocabulary, taken from "
                      "the open-clip-torch package: pip install open-clip-torch")
    bpe_path = Path(spec.submodule_search_locations[0]) / CLIP_BPE_FILE
    merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1:CLIP_MERGES + 1]
    characters = list(bytes_to_unicode().values())
    vocabulary = characters + [c + "</w>" for c in characters] + ["".join(m.split()) for m in merges]
    write_clip_tokenizer(folder, vocabulary + ["<|startoftext|>", "<|endoftext|>"], merges)


def write_word_tokenizer(folder: Path, words: list[str]) -> int:
    """CLIP tokenizer files whose vocabulary is every byte's character plus each of ``words`` as
    one token (merged left to right), for small text encoders; returns the vocabulary size."""
    table = bytes_to_unicode()
    characters = [table[byte] for byte in range(256)]
    vocabulary, merges = characters + [c + "</w>" for c in characters], []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge, merged = f"{pieces[0]} {pieces[1]}", pieces[0] + pieces[1]
            if merge not in merges:
                merges.append(merge)
                if merged not in vocabulary:
                    vocabulary.append(merged)
            pieces = [merged] + pieces[2:]
    vocabulary += ["<|startoftext|>", "<|endoftext|>"]
    write_clip_tokenizer(folder, vocabulary, merges)
    return len(vocabulary)


def write_clip_tokenizer(folder: Path, vocabulary: list[str], merges: list[str]) -> None:
    """CLIP's byte-level BPE files: ``vocab.json`` (token -> its index in ``vocabulary``) and
    ``merges.txt`` ("left right" pairs in merge order)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocabulary)}),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(merge + "\n" for merge in merges),
                                       encoding="utf-8")
