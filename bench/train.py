"""Training-step speed and peak memory: our ControlNetModule against a plain diffusers loop.

    python bench/train.py                                   # tiny components, CPU (seconds)
    python bench/train.py --components sd15-random --device cuda --resolution 512 \\
        --batch_size 4 --precision bf16-mixed               # SD1.5-sized random weights, one GPU

The reference is a hand-written step as in diffusers' ``examples/controlnet/train_controlnet.py``
(frozen models in the half dtype under mixed precision, autocast, AdamW, clipping). Ours is
``ControlNetModule.training_step`` + backward + the optimizer from ``configure_optimizers``.
Both use the same components (same seed), the same batch and the same AdamW settings; each
variant runs in its own process, so the peak memory is its own: CUDA's peak allocation on a GPU,
the process's peak resident set on the CPU. Prints one table row per variant.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.config import Config, set_value  # noqa: E402
from models.decode.stable_diffusion import SDComponents  # noqa: E402

VARIANTS = ("reference", "reference+checkpointing", "ours", "ours+checkpointing", "ours+channels_last")
HALF = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def tiny_components(seed: int) -> SDComponents:
    """The tiny components of ``models.tiny``, built in a temporary folder."""
    import tempfile

    from models.decode.stable_diffusion import load_sd_components
    from models.tiny.components import build_stable_diffusion

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as folder:
        sd_dir, _ = build_stable_diffusion(Path(folder))
        return load_sd_components(str(sd_dir))


def sd15_random_components(seed: int, device: str) -> SDComponents:
    """SD1.5-shaped components with random weights, from the shipped configs (no download)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from models.decode.stable_diffusion import SD15_CONFIG_DIR, sd15_config_folder

    torch.manual_seed(seed)
    with sd15_config_folder() as folder, torch.device(device):
        return SDComponents(
            vae=AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
            tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            unet=UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
            scheduler=DDPMScheduler.from_config(DDPMScheduler.load_config(SD15_CONFIG_DIR / "scheduler")),
        )


def make_batch(args: argparse.Namespace, channels: int = 3) -> dict:
    """The same random batch for every variant."""
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.batch_size, 3, args.resolution, args.resolution)
    return {"pixel_values": torch.rand(shape, generator=generator) * 2 - 1,
            "control": torch.rand(args.batch_size, channels, args.resolution, args.resolution,
                                  generator=generator).round(),
            "caption": ["a photograph of a dog on the grass"] * args.batch_size,
            "key": [f"bench/{i}" for i in range(args.batch_size)], "draw": torch.arange(args.batch_size)}


def reference_step_fn(components: SDComponents, args: argparse.Namespace, device: torch.device,
                      variant: str = "reference"):
    """A diffusers-example training step; returns a closure that runs one step."""
    from diffusers import ControlNetModel

    from models.train.controlnet_module import hint_channels  # the hint encoder must match the VAE factor

    controlnet = ControlNetModel.from_unet(components.unet, conditioning_embedding_out_channels=hint_channels(
        components.vae_scale_factor)).to(device).train()
    if "checkpointing" in variant:
        controlnet.enable_gradient_checkpointing()
    weight_dtype = HALF.get(args.precision, torch.float32)
    for module in (components.vae, components.text_encoder, components.unet):
        module.requires_grad_(False).to(device, dtype=weight_dtype)
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=1e-5, weight_decay=1e-2)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in make_batch(args).items()}
    tokens = components.tokenizer(batch["caption"], padding="max_length", truncation=True,
                                  max_length=components.tokenizer.model_max_length, return_tensors="pt")
    ids = tokens.input_ids.to(device)
    scheduler = components.scheduler

    def step() -> None:
        with torch.autocast(device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32):
            latents = components.vae.encode(batch["pixel_values"].to(weight_dtype)).latent_dist.sample()
            latents = latents * components.vae.config.scaling_factor
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), device=device)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            text = components.text_encoder(ids, return_dict=False)[0]
            down, mid = controlnet(noisy, timesteps, encoder_hidden_states=text,
                                   controlnet_cond=batch["control"], return_dict=False)
            prediction = components.unet(noisy, timesteps, encoder_hidden_states=text,
                                         down_block_additional_residuals=[r.to(weight_dtype) for r in down],
                                         mid_block_additional_residual=mid.to(weight_dtype), return_dict=False)[0]
            loss = F.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def ours_step_fn(components: SDComponents, args: argparse.Namespace, device: torch.device, variant: str):
    """Our module's training step, optimizer and clipping; returns a closure."""
    from models.train.controlnet_module import ControlNetModule

    config = Config()
    for key, value in {"diffusion.resolution": args.resolution, "train.warmup_steps": 0,
                       "train.precision": args.precision, "train.gradient_checkpointing": "checkpointing" in variant,
                       "train.channels_last": "channels_last" in variant}.items():
        set_value(config, key, value, "bench/train.py")
    module = ControlNetModule(config, components).to(device).train()
    if args.precision in HALF:
        module.cast_frozen(HALF[args.precision])
    optimizer = module.configure_optimizers()["optimizer"]
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in make_batch(args).items()}
    dtype = HALF.get(args.precision, torch.float32)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = module.training_step(batch, 0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.controlnet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run_worker(args: argparse.Namespace) -> dict:
    """Time ``args.steps`` steps of one variant after ``args.warmup`` untimed ones (the first of
    which is also counted with torch.utils.flop_counter).

    Peak memory: on a GPU, CUDA's peak allocation above what was allocated when the worker
    started (nothing in a fresh process); on the CPU, the process's peak resident set.
    """
    from torch.utils.flop_counter import FlopCounterMode

    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    allocated_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    components = (tiny_components(args.seed) if args.components == "tiny"
                  else sd15_random_components(args.seed, args.device))
    if args.worker.startswith("reference"):
        step = reference_step_fn(components, args, device, args.worker)
    else:
        step = ours_step_fn(components, args, device, args.worker)
    with FlopCounterMode(display=False) as flops:  # SDPA is counted on CUDA only (no CPU formula)
        step()
    for _ in range(args.warmup - 1):
        step()
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - allocated_before if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"variant": args.worker, "steps_per_s": args.steps / seconds, "peak_mib": peak / 2**20,
            "step_flop": flops.get_total_flops()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--components", choices=("tiny", "sd15-random"), default="tiny")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--precision", choices=("32", "bf16-mixed", "16-mixed"), default="32")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (at least 1)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_worker(args)))
        return 0
    forwarded = [f"--{key}={getattr(args, key)}" for key in
                 ("components", "device", "resolution", "batch_size", "precision", "steps", "warmup", "seed")]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"components {args.components}, {device_name}, resolution {args.resolution}, batch {args.batch_size}, "
          f"precision {args.precision}, {args.steps} timed steps after {args.warmup}\n")
    print(f"| {'variant':<23} | {'steps/s':>8} | {'peak memory (MiB)':>17} |\n|{'-' * 25}|{'-' * 10}|{'-' * 19}|")
    for variant in args.variants:
        result = subprocess.run([sys.executable, __file__, *forwarded, "--worker", variant],
                                capture_output=True, text=True)
        if result.returncode != 0:
            print(f"| {variant:<23} | failed: {result.stderr.strip().splitlines()[-1]} |")
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(f"| {variant:<23} | {row['steps_per_s']:>8.2f} | {row['peak_mib']:>17.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
