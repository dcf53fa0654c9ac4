import pytest
import torch

from models.config import load_config
from models.decode.stable_diffusion import load_sd_components


def test_components_load_from_a_diffusers_folder(tiny_config):
    components = load_sd_components(load_config(tiny_config).diffusion.sd_model_path)
    assert components.vae_scale_factor == 2
    assert components.scheduler.config.num_train_timesteps == 1000
    assert components.scheduler.config.beta_schedule == "scaled_linear"
    ids = components.tokenizer("a dog", return_tensors="pt").input_ids
    assert components.text_encoder(ids).last_hidden_state.shape[-1] == components.unet.config.cross_attention_dim
    half = load_sd_components(load_config(tiny_config).diffusion.sd_model_path, dtype=torch.float16)
    assert half.unet.dtype == torch.float16 and half.text_encoder.dtype == torch.float16


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="cannot load Stable Diffusion components"):
        load_sd_components(str(tmp_path / "nothing"))
