"""The decoder's speed options: same images as the stock pipeline to float rounding, SDPA
attention, and a denoising loop with nothing in it that would wait for a GPU."""

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler
from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0
from torch.utils._python_dispatch import TorchDispatchMode

from models.config import ConfigError, apply_overrides, load_config
from models.decode.decoder import ControlNetDecoder, SpeedOptions, make_scheduler
from models.decode.sampling import NonlinearSamplerError, combine, plan_sampler
from models.decode.stable_diffusion import SD15_CONFIG_DIR
from models.semantic_code import SemanticCode
from tests.decode_fixtures import trained_controlnet  # noqa: F401
from tests.threads import one_cpu_thread  # noqa: F401

STEPS = 3
# Ops that make the host wait for a CUDA device: reading a value (item, nonzero, bool), solving
# on the device (torch.linalg.solve checks its result on the host), tensors from Python data.
SYNCING_OPS = ("aten.item", "aten._local_scalar_dense", "aten.nonzero", "aten.is_nonzero",
               "aten.linalg_solve", "aten._linalg_solve_ex", "aten.lift_fresh")
TRANSFER_OPS = ("aten.to.device", "aten._to_copy", "aten.to.dtype_layout")


@pytest.fixture(scope="module")
def decoders(tiny_config, trained_controlnet, one_cpu_thread):  # noqa: F811
    """The same decoder with the speed options off and all on."""
    config = apply_overrides(load_config(tiny_config), [f"decode.num_inference_steps={STEPS}"])
    off = ControlNetDecoder.from_config(config, str(trained_controlnet))
    fast = ControlNetDecoder.from_config(config, str(trained_controlnet))
    fast.speed = SpeedOptions(precomputed_sampler=True, channels_last=True, fuse_qkv=True)
    fast.fuse_attention_projections()
    fast.place("cpu")
    return off, fast


def label_map(seed):
    return np.random.RandomState(seed).choice([0, 8, 12, 15, 255], size=(64, 64)).astype(np.uint8)


def stock_pixels(decoder, codes, seeds, guidance):
    control = torch.stack([decoder.control_image(code.label_map, (64, 64)) for code in codes])
    images = decoder.pipeline([code.caption for code in codes], image=control, height=64, width=64,
                              num_inference_steps=STEPS, guidance_scale=guidance,
                              generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np").images
    return (images * 255).round().astype(np.uint8)


@pytest.mark.parametrize("scheduler, guidance", [("unipc", 7.5), ("euler", 7.5), ("dpmpp", 1.0)])
def test_the_fast_path_returns_the_stock_pipelines_pixels_to_float_rounding(decoders, scheduler, guidance):
    off, fast = decoders
    for decoder in decoders:
        decoder.pipeline.scheduler = make_scheduler(scheduler, decoder.pipeline.scheduler.config)
        decoder.sampler = replace(decoder.sampler, scheduler=scheduler, guidance_scale=guidance)
    codes = [SemanticCode(label_map(seed), caption) for seed, caption in enumerate(["a dog on the grass", "a car"])]
    ours, stock = np.stack(fast.decode(codes, [3, 4])), stock_pixels(off, codes, [3, 4], guidance)
    # Float32 sums in another order, NHWC convolutions and fused projections round differently:
    # a pixel whose value lies within ~1e-5 of a rounding boundary may come out one level apart.
    difference = np.abs(ours.astype(int) - stock.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3
    # Before rounding to 8 bits the latents agree to float32 precision.
    control = torch.stack([off.control_image(code.label_map, (64, 64)) for code in codes])
    noise = torch.randn((2, 4, 32, 32), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = off.denoise(noise, *off.conditioning(control, [c.caption for c in codes]))
        planned = fast.denoise_planned(noise, *fast.conditioning(control, [c.caption for c in codes]))
    assert relative_error(planned, reference) < 1e-5


def test_attention_runs_through_pytorch_sdpa(decoders):
    off, fast = decoders
    for model in (off.pipeline.unet, off.pipeline.controlnet, off.pipeline.vae):
        assert {type(p) for p in model.attn_processors.values()} == {AttnProcessor2_0}
    for model in (fast.pipeline.unet, fast.pipeline.controlnet, fast.pipeline.vae):
        assert {type(p) for p in model.attn_processors.values()} == {FusedAttnProcessor2_0}
    assert fast.pipeline.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops run while it is active."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func).rsplit(".", 1)[0]] += 1
        return func(*args, **(kwargs or {}))


def loop_ops(decoder, denoise, steps):
    decoder.sampler = replace(decoder.sampler, num_inference_steps=steps, scheduler="unipc", guidance_scale=7.5)
    decoder.pipeline.scheduler = make_scheduler("unipc", decoder.pipeline.scheduler.config)
    with torch.inference_mode():
        text, control = decoder.conditioning(torch.rand(1, 3, 64, 64), ["a dog"])
        decoder.sampler_plan()
        with OpCounter() as counter:
            denoise(torch.randn(1, 4, 32, 32), text, control)
    return counter.ops


def test_the_precomputed_loop_has_no_step_that_waits_for_the_device(decoders):
    off, fast = decoders
    short, long = loop_ops(fast, fast.denoise_planned, 2), loop_ops(fast, fast.denoise_planned, 5)
    assert not any(long[op] for op in SYNCING_OPS)
    assert all(short[op] == long[op] for op in TRANSFER_OPS)  # copies once per batch, none per step
    stock = loop_ops(off, off.denoise, 5)  # diffusers' UniPC step: the check does see waiting ops
    assert stock["aten.linalg_solve"] >= 3 and stock["aten.item"] >= 1


@pytest.mark.parametrize("name", ["unipc", "ddim", "dpmpp", "euler"])
def test_a_plan_reproduces_its_scheduler_on_any_model(name):
    scheduler = make_scheduler(name, DDIMScheduler.load_config(SD15_CONFIG_DIR / "scheduler"))
    plan = plan_sampler(scheduler, 7)
    generator = torch.Generator().manual_seed(5)
    scheduler.set_timesteps(7)
    latents = torch.randn((1, 4, 4, 4), generator=generator, dtype=torch.float64)
    basis, latents = [latents], latents * scheduler.init_noise_sigma
    for step, timestep in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents, timestep)
        assert relative_error(combine(plan.input_weights[step, :step + 1], torch.stack(basis)), model_input) < 1e-6
        basis.append(torch.sin(3 * model_input) + torch.randn(model_input.shape, generator=generator,
                                                              dtype=torch.float64))
        latents = scheduler.step(basis[-1], timestep, latents, return_dict=False)[0]
    assert relative_error(combine(plan.final_weights, torch.stack(basis)), latents) < 1e-6


def relative_error(value, reference):
    """Euler and DPM-Solver++ round to float32 inside their steps: compare at that precision."""
    return ((value - reference).norm() / reference.norm()).item()


def test_samplers_that_are_not_linear_are_refused():
    config = DDIMScheduler.load_config(SD15_CONFIG_DIR / "scheduler")
    for scheduler in (DDIMScheduler.from_config(config, clip_sample=True),
                      EulerAncestralDiscreteScheduler.from_config(config)):
        with pytest.raises(NonlinearSamplerError, match="precomputed_sampler=false"):
            plan_sampler(scheduler, 10)


def test_speed_options_come_from_the_config_and_default_to_cuda_only():
    from models.config import Config

    options = SpeedOptions.from_config(Config().decode)
    assert options.resolve(torch.device("cpu")) == SpeedOptions(False, False, False, False)
    assert options.resolve(torch.device("cuda")) == SpeedOptions(True, True, False, False)
    config = apply_overrides(Config(), ["decode.compile=true", "decode.cpu_offload=true"])
    with pytest.raises(ConfigError, match="compile and decode.cpu_offload"):
        SpeedOptions.from_config(config.decode)
