import json

import pytest
import torch
from diffusers import ControlNetModel, DDPMScheduler
from safetensors.torch import load_file

from models.config import ConfigError, apply_overrides, load_config
from models.decode.checkpoint_format import export_checkpoint
from models.decode.stable_diffusion import load_sd_components
from models.train.controlnet_module import ControlNetModule, check_train_config, hint_channels
from models.train.export import main
from tests.conftest import REPO
from tests.decode_fixtures import perturb
from tests.threads import one_cpu_thread  # noqa: F401  (fixture)

pytestmark = [pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`"),
              pytest.mark.usefixtures("one_cpu_thread")]


@pytest.fixture(scope="module")
def components(tiny_config):
    return load_sd_components(load_config(tiny_config).diffusion.sd_model_path)


def make_module(tiny_config, components, *overrides):
    config = load_config(tiny_config, ["diffusion.controlnet_path=null", *overrides])
    fresh = load_sd_components(config.diffusion.sd_model_path)  # modules are modified in place
    return ControlNetModule(config, fresh)


def make_batch(module, size=2):
    generator = torch.Generator().manual_seed(0)
    resolution = module.config.diffusion.resolution
    channels = module.controlnet.config.conditioning_channels
    return {"pixel_values": torch.rand(size, 3, resolution, resolution, generator=generator) * 2 - 1,
            "control": torch.rand(size, channels, resolution, resolution, generator=generator).round(),
            "caption": ["a red circle", "a dog on grass"][:size], "key": [f"train/{i}.png" for i in range(size)],
            "draw": torch.arange(size)}


def test_sd_is_frozen_and_only_the_controlnet_learns(tiny_config, components):
    module = make_module(tiny_config, components, "diffusion.conditioning=onehot")
    assert module.controlnet.config.conditioning_channels == 21
    assert module.controlnet.controlnet_cond_embedding.conv_in.in_channels == 21
    assert hint_channels(module.sd_components().vae_scale_factor) == (16, 32) and hint_channels(8) == (16, 32, 96, 256)
    module.train()
    assert not (module.vae.training or module.text_encoder.training or module.unet.training)
    assert module.controlnet.training
    loss = module.training_step(make_batch(module), 0)
    loss.backward()
    assert torch.isfinite(loss)
    for frozen in (module.vae, module.text_encoder, module.unet):
        assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    assert all(p.grad is not None for p in module.controlnet.parameters())
    assert {k.split(".")[0] for k in module.trainable_state_keys()} == {"controlnet"}


def test_unet_decoder_half_trains_at_its_own_rate(tiny_config, components):
    module = make_module(tiny_config, components, "train.unet_decoder=true", "train.unet_learning_rate=0.5",
                         "train.ema_decay=0.99")
    trainable = [name for name, p in module.unet.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith(("up_blocks.", "conv_norm_out.", "conv_out.")) for n in trainable)
    assert not any(p.requires_grad for p in module.unet.down_blocks.parameters())
    optimizer = module.configure_optimizers()["optimizer"]
    assert [group["initial_lr"] for group in optimizer.param_groups] == [1e-5, 0.5]  # before warm-up
    controlnet_params = len(list(module.controlnet.parameters()))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == controlnet_params + len(trainable)
    keys = module.trainable_state_keys()
    assert {k.split(".")[0] for k in keys} == {"controlnet", "unet", "controlnet_ema"}
    assert {k[len("unet."):] for k in keys if k.startswith("unet.")} == set(trainable)


def test_checkpoint_hook_keeps_only_trained_weights_and_loads_with_weights_only(tiny_config, components, tmp_path):
    module = make_module(tiny_config, components, "train.ema_decay=0.9")
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == module.trainable_state_keys()
    assert not any(k.startswith(("vae.", "text_encoder.", "unet.")) for k in checkpoint["state_dict"])
    torch.save(checkpoint, tmp_path / "c.ckpt")
    loaded = torch.load(tmp_path / "c.ckpt", map_location="cpu", weights_only=True)
    meta = loaded["semantic_compression"]
    assert meta["format_version"] == 1 and meta["ema"] is True
    assert meta["config"]["train"]["ema_decay"] == 0.9
    rebuilt = ControlNetModel(**meta["controlnet_config"])
    rebuilt.load_state_dict({k[len("controlnet."):]: v for k, v in loaded["state_dict"].items()
                             if k.startswith("controlnet.")})
    other = make_module(tiny_config, components)  # no EMA: the checkpoint does not fit it
    with pytest.raises(ValueError, match="unexpected"):
        other.on_load_checkpoint(loaded)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_loss_targets_the_schedulers_prediction_type(tiny_config, components, prediction_type):
    module = make_module(tiny_config, components)
    module.noise_scheduler = DDPMScheduler.from_config(module.noise_scheduler.config,
                                                       prediction_type=prediction_type)
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor([10, 900])
    velocity = module.noise_scheduler.get_velocity(latents, noise, timesteps)
    right, wrong = (noise, velocity) if prediction_type == "epsilon" else (velocity, noise)
    module.predict = lambda *args: right
    assert module.denoising_loss(latents, noise, timesteps, None, None) == 0
    module.predict = lambda *args: wrong
    assert module.denoising_loss(latents, noise, timesteps, None, None) > 0.1


@pytest.mark.parametrize("dropout,expected_empty", [(0.0, 0), (1.0, 2)])
def test_prompt_dropout_replaces_captions_by_empty_strings(tiny_config, components, dropout, expected_empty):
    module = make_module(tiny_config, components, f"train.prompt_dropout={dropout}")
    seen = []
    original = module.encode_text
    module.encode_text = lambda captions: seen.extend(captions) or original(captions)
    module.training_step(make_batch(module), 0)
    assert sum(caption == "" for caption in seen) == expected_empty


def test_latent_and_text_caches_encode_each_item_once(tiny_config, components):
    module = make_module(tiny_config, components, "train.cache_latents=true", "train.random_crop=false",
                         "train.random_flip=false")
    calls = []
    encode = module.vae.encode
    module.vae.encode = lambda x: calls.append(len(x)) or encode(x)
    batch = make_batch(module)
    first = module.latent_distribution(batch["pixel_values"], batch["key"]).mean
    again = module.latent_distribution(batch["pixel_values"] * 0, batch["key"]).mean  # served from cache
    assert calls == [2] and torch.equal(first, again)
    assert torch.equal(module.encode_text(["a dog"]), module.encode_text(["a dog"]))
    assert set(module.text_cache) == {"a dog"}


def test_the_example_experiment_config_is_valid():
    config = load_config(REPO / "configs/train_example.yaml")
    check_train_config(config)
    assert config.train.precision == "bf16-mixed" and config.train.ema_decay == 0.9999


def test_flag_combinations_that_cannot_work_are_refused(tiny_config):
    config = load_config(tiny_config)
    for overrides, message in ((["train.cache_latents=true"], "random_crop=false"),
                               (["diffusion.resolution=60"], "multiple of 8"),
                               (["train.prompt_dropout=1.5"], "prompt_dropout"),
                               (["train.optimizer=adamw8bit"], "bitsandbytes")):
        try:
            import bitsandbytes  # noqa: F401
            if "bitsandbytes" in message:
                continue
        except ImportError:
            pass
        with pytest.raises(ConfigError, match=message):
            check_train_config(apply_overrides(load_config(tiny_config), overrides))
    check_train_config(config)


def test_half_precision_keeps_the_trained_unet_half_exactly(tiny_config, components):
    module = make_module(tiny_config, components, "train.unet_decoder=true")
    trained = {n: p.detach().clone() for n, p in module.unet.named_parameters() if p.requires_grad}
    module.cast_frozen(torch.bfloat16)
    for name, parameter in module.unet.named_parameters():
        if name in trained:  # never rounded through bf16
            assert parameter.dtype == torch.float32 and torch.equal(parameter, trained[name]), name
        else:
            assert parameter.dtype == torch.bfloat16, name
    assert module.vae.dtype == torch.bfloat16 and module.text_encoder.dtype == torch.bfloat16


def test_export_writes_the_ema_controlnet_and_the_unet_overlay(tiny_config, components, tmp_path):
    module = make_module(tiny_config, components, "train.unet_decoder=true", "train.ema_decay=0.5")
    with torch.no_grad():
        for p in module.controlnet.parameters():
            p.add_(1.0)
        module.update_ema(1)  # the EMA now differs from both the start and the live weights
    exported = module.export(tmp_path / "controlnet")
    loaded = ControlNetModel.from_pretrained(exported)
    for key, value in module.controlnet_ema.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert not torch.equal(loaded.conv_in.weight, module.controlnet.conv_in.weight)
    info = json.loads((exported / "semantic_compression.json").read_text())
    assert info["conditioning"] == "palette" and info["palette"] == "voc" and info["num_classes"] == 21
    assert info["resolution"] == 64 and info["sd_model_path"] == module.config.diffusion.sd_model_path
    assert info["label_set"] == "voc"  # the training maps' set travels with the weights
    assert info["ema"] is True and info["unet_trainable"] is True and info["unet_averaged"] is False
    overlay = load_file(exported / "unet_trainable.safetensors")
    assert set(overlay) == {n for n, p in module.unet.named_parameters() if p.requires_grad}

    checkpoint = {"state_dict": module.state_dict(), "global_step": 3}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "step.ckpt")
    assert main([str(tmp_path / "step.ckpt"), str(tmp_path / "again")]) == 0
    again = ControlNetModel.from_pretrained(tmp_path / "again")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in loaded.state_dict().items())
    assert json.loads((tmp_path / "again/semantic_compression.json").read_text())["global_step"] == 3
    torch.save({"state_dict": {}}, tmp_path / "foreign.ckpt")
    with pytest.raises(ValueError, match="not a training checkpoint"):
        export_checkpoint(tmp_path / "foreign.ckpt", tmp_path / "x")


def test_the_validation_loss_is_fixed_per_sample(tiny_config, components):
    module = make_module(tiny_config, components)
    batch = make_batch(module)
    loss = module.validation_loss(batch)
    assert torch.isfinite(loss) and loss == module.validation_loss(batch)  # fixed noise and timesteps


def test_the_fresh_controlnet_depends_only_on_the_seed(tiny_config, components):
    """Fresh runs start from the same weights (train.seed), whatever ran before in the process."""
    first = make_module(tiny_config, components, "train.seed=5").controlnet.state_dict()
    torch.rand(1000)  # global RNG use in between must not matter
    again = make_module(tiny_config, components, "train.seed=5").controlnet.state_dict()
    other = make_module(tiny_config, components, "train.seed=6").controlnet.state_dict()
    hint = "controlnet_cond_embedding.conv_in.weight"  # initialised at random, not copied from the UNet
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first[hint], other[hint])


def test_a_controlnet_trained_on_a_named_set_knows_it_and_refuses_other_maps(tiny_config, tmp_path):
    import numpy as np

    from models.decode.decoder import ControlNetDecoder
    from models.palettes import VOC, custom_label_set

    cityscapes = custom_label_set("cityscapes", ["road", "sidewalk", "car"])
    config = load_config(tiny_config, ["diffusion.controlnet_path=null", "diffusion.conditioning=onehot"])
    module = ControlNetModule(config, load_sd_components(config.diffusion.sd_model_path), cityscapes)
    assert module.controlnet.config.conditioning_channels == 3  # one per class of the maps, not segmentation.*
    exported = module.export(tmp_path / "controlnet")
    info = json.loads((exported / "semantic_compression.json").read_text())
    assert (info["label_set"], info["num_classes"]) == ("cityscapes", 3)
    decoder = ControlNetDecoder.from_config(load_config(tiny_config, [f"diffusion.controlnet_path={exported}"]))
    assert decoder.control_spec.label_set == "cityscapes"
    decoder.check_code(np.array([[0, 2]], dtype=np.uint8), cityscapes)
    with pytest.raises(ValueError, match="voc label set has 21 classes"):
        decoder.check_code(np.array([[0, 2]], dtype=np.uint8), VOC)


def test_validation_judges_the_exported_weights_and_logs_the_live_ones_too(tiny_config, components):
    """With EMA the export holds the EMA ControlNet: val/loss is its loss, val/loss_live the live
    one's (replacing the EMA weights with noise must move val/loss and only val/loss)."""
    module = make_module(tiny_config, components, "train.ema_decay=0.9")
    batch = make_batch(module)
    logged = {}
    module.log = lambda name, value, **options: logged.__setitem__(name, float(value))
    module.validation_step(batch, 0)
    before = dict(logged)
    assert set(before) == {"val/loss", "val/loss_live"}
    perturb(module.controlnet_ema, seed=3, scale=0.5)
    module.validation_step(batch, 0)
    assert logged["val/loss"] != before["val/loss"] and logged["val/loss_live"] == before["val/loss_live"]
    assert module.validation_loss(batch) == module.validation_loss(batch, module.controlnet_ema)
    plain = make_module(tiny_config, components)
    logged.clear()
    plain.log = lambda name, value, **options: logged.__setitem__(name, float(value))
    plain.validation_step(make_batch(plain), 0)
    assert set(logged) == {"val/loss"}  # no EMA: the live weights are the exported ones


def test_the_export_names_its_base_model_and_decoding_warns_on_another(tiny_config, components, tmp_path):
    import shutil

    from diffusers import UNet2DConditionModel

    from models.decode.decoder import ControlNetDecoder
    from models.decode.stable_diffusion import unet_fingerprint

    module = make_module(tiny_config, components)
    exported = module.export(tmp_path / "controlnet")
    info = json.loads((exported / "semantic_compression.json").read_text())
    base = module.config.diffusion.sd_model_path
    assert info["base_fingerprint"] == unet_fingerprint(UNet2DConditionModel.from_pretrained(base, subfolder="unet"))
    same = ControlNetDecoder.from_config(load_config(tiny_config, [f"diffusion.controlnet_path={exported}"]))
    assert same.warnings == []
    other = tmp_path / "other-base"  # the same architecture, fine-tuned weights: fits, but is not the base
    shutil.copytree(base, other)
    unet = UNet2DConditionModel.from_pretrained(other, subfolder="unet")
    perturb(unet, seed=5, scale=0.01).save_pretrained(other / "unet")
    decoder = ControlNetDecoder.from_config(load_config(
        tiny_config, [f"diffusion.controlnet_path={exported}", f"diffusion.sd_model_path={other}"]))
    assert len(decoder.warnings) == 1 and info["base_fingerprint"] in decoder.warnings[0]
    assert str(other) in decoder.warnings[0] and base in decoder.warnings[0]


def test_the_export_gets_the_usual_permissions_not_those_of_a_temporary_folder(tiny_config, components, tmp_path):
    import os
    import stat

    previous = os.umask(0o022)
    try:
        exported = make_module(tiny_config, components).export(tmp_path / "controlnet")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(exported.stat().st_mode) == 0o755
    files = sorted(exported.iterdir())
    assert files and {path.name: stat.S_IMODE(path.stat().st_mode) for path in files} == {
        path.name: 0o644 for path in files}
