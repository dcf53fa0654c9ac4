"""Single-file SD1.5 checkpoints load offline (HF_HUB_OFFLINE=1 is set by conftest)."""

from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from models.config import load_config
from models.decode.stable_diffusion import SD15_CONFIG_DIR, load_sd_components, sd15_config_folder
from models.tiny.components import SINGLE_FILE_NAME


def test_a_tiny_original_layout_file_loads_to_the_same_weights(tiny_config):
    folder = Path(load_config(tiny_config).diffusion.sd_model_path)
    single_file = tiny_config.parent / SINGLE_FILE_NAME
    from_folder = load_sd_components(str(folder))
    from_file = load_sd_components(str(single_file), config_dir=folder)
    for name in ("unet", "vae", "text_encoder"):
        expected, loaded = getattr(from_folder, name).state_dict(), getattr(from_file, name).state_dict()
        assert expected.keys() == loaded.keys()
        assert all(torch.equal(expected[k], loaded[k]) for k in expected), name
    assert from_file.scheduler.config.beta_schedule == "scaled_linear"
    assert type(from_file.scheduler).__name__ == "DDPMScheduler"
    assert from_file.tokenizer("a dog").input_ids == from_folder.tokenizer("a dog").input_ids


def test_the_shipped_configs_describe_sd15(tmp_path):
    with sd15_config_folder() as folder:
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        assert len(tokenizer) == 49408
        # SD1.5's (openai/clip-vit-large-patch14) token ids for these words
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert tokenizer.model_max_length == 77
    with init_empty_weights():  # parameter counts without allocating 1 GB
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG_DIR / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIG_DIR / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIG_DIR / "text_encoder"))
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(unet) == 859_520_964
    assert count(vae) == 83_653_863
    assert count(text_encoder) == 123_060_480
    assert vae.config.scaling_factor == 0.18215


def test_a_missing_or_foreign_file_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="is not a file"):
        load_sd_components(str(tmp_path / "missing.safetensors"))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(OSError, match="single-file SD1.5 checkpoint"):
        load_sd_components(str(tmp_path / "other.safetensors"), config_dir=SD15_CONFIG_DIR)
