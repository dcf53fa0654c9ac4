"""The tiny components load through the same code as the real ones."""

import numpy as np
import torch
from PIL import Image

from models.config import load_config
from models.tiny.__main__ import main as tiny_main


def test_every_component_is_in_its_real_format(tiny_config):
    config = load_config(tiny_config)
    checkpoint = torch.load(config.segmentation.checkpoint, weights_only=False)
    assert set(checkpoint) >= {"model_state", "best_score", "cur_itrs"}
    assert isinstance(checkpoint["best_score"], np.floating)
    assert any(k.startswith("backbone.layer4.") for k in checkpoint["model_state"])
    assert any(k.startswith("classifier.aspp.") for k in checkpoint["model_state"])

    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    controlnet = ControlNetModel.from_pretrained(config.diffusion.controlnet_path)
    pipeline = StableDiffusionControlNetPipeline.from_pretrained(
        config.diffusion.sd_model_path, controlnet=controlnet, safety_checker=None)
    size = config.diffusion.resolution
    control = Image.fromarray(np.zeros((size, size, 3), dtype=np.uint8))
    output = pipeline("a dog on the grass", image=control, num_inference_steps=2, height=size,
                      width=size, generator=torch.Generator().manual_seed(0), output_type="np")
    assert output.images.shape == (1, size, size, 3)
    assert pipeline.tokenizer("a dog")["input_ids"][1:-1] == [pipeline.tokenizer.convert_tokens_to_ids("a</w>"),
                                                             pipeline.tokenizer.convert_tokens_to_ids("dog</w>")]


def test_command_line_writes_a_loadable_config(tmp_path, capsys):
    assert tiny_main(["--output_dir", str(tmp_path / "tiny"), "--seed", "1"]) == 0
    assert "--config_path" in capsys.readouterr().out
    config = load_config(tmp_path / "tiny" / "config.yaml")
    assert config.captioning.model == str(tmp_path / "tiny" / "blip")
