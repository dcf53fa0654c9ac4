"""The decoder: same pixels as the stock diffusers pipeline, sizes, seeds and control images."""

import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.config import apply_overrides, load_config
from models.decode.controlnet_loader import ControlSpec
from models.decode.decoder import ControlNetDecoder, form_batches, generation_size, image_seed, make_scheduler
from models.palettes import ADE20K, VOC
from models.semantic_code import SemanticCode
from tests.decode_fixtures import trained_controlnet  # noqa: F401


@pytest.fixture(scope="module")
def decoder(tiny_config, trained_controlnet):  # noqa: F811
    config = apply_overrides(load_config(tiny_config), ["decode.num_inference_steps=3"])
    return ControlNetDecoder.from_config(config, str(trained_controlnet))


def label_map(height, width, seed=0):
    return np.random.RandomState(seed).choice([0, 8, 12, 15, 255], size=(height, width)).astype(np.uint8)


@pytest.mark.parametrize("scheduler, guidance", [("unipc", 7.5), ("euler", 7.5), ("unipc", 1.0)])
def test_our_loop_returns_the_stock_pipelines_pixels(decoder, scheduler, guidance):
    decoder.pipeline.scheduler = make_scheduler(scheduler, decoder.pipeline.scheduler.config)
    decoder.sampler = replace(decoder.sampler, scheduler=scheduler, guidance_scale=guidance)
    codes = [SemanticCode(label_map(64, 64, seed), caption)
             for seed, caption in enumerate(["a dog on the grass", "a person next to a car", "a boat"])]
    seeds = [7, 8, 9]
    ours = decoder.decode(codes, seeds)
    control = torch.stack([decoder.control_image(code.label_map, (64, 64)) for code in codes])
    stock = decoder.pipeline([code.caption for code in codes], image=control, height=64, width=64,
                             num_inference_steps=3, guidance_scale=guidance,
                             generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np").images
    assert np.array_equal(np.stack(ours), (stock * 255).round().astype(np.uint8))


def test_the_area_rule_keeps_the_aspect_ratio_near_the_resolution_in_multiples_of_eight():
    spec = ControlSpec("palette", "voc", 21, "unit", keep_aspect=True, resolution=512, scale="area")
    for width, height in [(500, 375), (375, 500), (1000, 100), (64, 64), (3, 5000)]:
        gen_width, gen_height = generation_size(width, height, spec)
        assert gen_width % 8 == 0 and gen_height % 8 == 0 and min(gen_width, gen_height) >= 8
        assert abs(gen_width / gen_height - width / height) <= 8 / min(gen_width, gen_height) * width / height + 1e-9
        if min(width, height) * 512 / (width * height) ** 0.5 >= 64:  # not clamped by the 8-pixel floor
            assert 0.9 < gen_width * gen_height / 512**2 < 1.1
    assert generation_size(500, 375, spec) == (592, 440)
    assert generation_size(500, 375, replace(spec, keep_aspect=False)) == (512, 512)


def test_images_are_generated_at_the_scale_training_crops_saw():
    """Training resizes the short side to the resolution and crops: decoding generates at that
    scale (short side 512) in multiples of SD1.5's 64, with at most 2 x 512^2 pixels."""
    spec = ControlSpec("palette", "voc", 21, "unit", keep_aspect=True, resolution=512)
    assert spec.scale == "short_side"
    assert generation_size(500, 375, spec, 64) == (704, 512)  # 500x375 VOC: objects at 1.0, not 0.86
    assert generation_size(375, 500, spec, 64) == (512, 704)
    assert generation_size(1920, 1080, spec, 64) == (896, 512)  # 16:9: 1.75 x 512^2 pixels
    assert generation_size(512 * 3, 512, spec, 64) == (1152, 448)  # 3:1 exceeds 2 x 512^2: shrunk to fit
    assert generation_size(64, 64, spec, 64) == (512, 512)
    for width, height in [(500, 375), (1000, 100), (3, 5000), (4000, 3000)]:
        gen_width, gen_height = generation_size(width, height, spec, 64)
        assert gen_width % 64 == 0 and gen_height % 64 == 0 and gen_width * gen_height <= 2 * 512**2


def test_images_come_back_at_their_original_size(decoder):
    codes = [SemanticCode(label_map(37, 101), "a bus"), SemanticCode(label_map(90, 30, 1), "a sheep")]
    images = decoder.decode(codes, [1, 2])
    assert [image.shape for image in images] == [(37, 101, 3), (90, 30, 3)]
    assert all(image.dtype == np.uint8 for image in images)


def test_each_image_has_its_own_seed(decoder):
    assert image_seed(0, "train/a") == int.from_bytes(hashlib.sha256(b"0:train/a").digest()[:8], "little") & (2**63 - 1)
    assert len({image_seed(0, "a"), image_seed(1, "a"), image_seed(0, "b")}) == 3
    code = SemanticCode(label_map(64, 64), "a dog")
    first, again, other = (decoder.decode([code], [seed])[0] for seed in (5, 5, 6))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_control_images_follow_the_spec(decoder):
    ids = label_map(30, 40)
    unit = decoder.control_image(ids, (48, 32))
    assert unit.shape == (3, 32, 48) and unit.min() >= 0 and unit.max() <= 1
    spec = decoder.control_spec
    try:
        decoder.control_spec = replace(spec, value_range="signed", keep_aspect=False)
        signed = decoder.control_image(ids, (48, 32))
        assert torch.equal(signed, unit * 2 - 1)
        assert decoder.generation_size(40, 30) == (64, 64)  # stretched to the square
        decoder.control_spec = replace(spec, mode="onehot", num_classes=21)
        onehot = decoder.control_image(ids, (48, 32))
        assert onehot.shape == (21, 32, 48) and set(onehot.sum(0).unique().tolist()) <= {0.0, 1.0}
    finally:
        decoder.control_spec = spec


def test_maps_the_controlnet_cannot_draw_are_refused(decoder):
    decoder.check_code(np.array([[0, 20, 255]], dtype=np.uint8), VOC)
    with pytest.raises(ValueError, match="class ids 21, 40 outside 0..20"):
        decoder.check_code(np.array([[0, 21, 40, 255]], dtype=np.uint8), VOC)
    with pytest.raises(ValueError, match="ade20k label maps cannot be drawn for a ControlNet trained on voc"):
        decoder.check_code(np.array([[1, 2]], dtype=np.uint8), ADE20K)


def test_batches_group_equal_sizes_in_a_fixed_order():
    keys = ["a", "b", "a", "a", "b", "c"]
    assert form_batches(keys, 2) == [[0, 2], [3], [1, 4], [5]]


def test_memory_options_give_the_same_images(tiny_config, trained_controlnet, decoder):  # noqa: F811
    config = apply_overrides(load_config(tiny_config), [
        "decode.num_inference_steps=3", "decode.attention_slicing=true", "decode.vae_slicing=true",
        "decode.vae_tiling=true"])
    frugal = ControlNetDecoder.from_config(config, str(trained_controlnet))
    assert frugal.pipeline.vae.use_slicing and frugal.pipeline.vae.use_tiling
    decoder.pipeline.scheduler = make_scheduler("unipc", decoder.pipeline.scheduler.config)
    decoder.sampler = frugal.sampler
    codes = [SemanticCode(label_map(64, 64, seed), "a dog") for seed in (3, 4)]
    reference, sliced = decoder.decode(codes, [1, 2]), frugal.decode(codes, [1, 2])
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(reference, sliced))
