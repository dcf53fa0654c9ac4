"""A sampler's whole trajectory as precomputed weights, so that the denoising loop never waits.

The deterministic samplers we use (UniPC, DDIM with eta 0, DPM-Solver++, Euler without churn)
are linear multistep methods: every latent they produce, and every model input they ask for, is
a fixed linear combination of the starting noise and of the model outputs so far, with
coefficients that depend only on the noise schedule and the step count. So the coefficients are
found once, on the CPU in float64, by running diffusers' own scheduler (``scale_model_input``
and ``step``) on coefficient vectors instead of latents: the latent tensor of shape (1, N + 1)
stands for a combination of the N + 1 basis tensors [noise, output_0, ..., output_{N-1}].

On the device each step is then one weighted sum, with no scheduler bookkeeping: no host
synchronisation (diffusers' UniPC copies CPU scalars to the device and calls
``torch.linalg.solve`` every step, each of which waits for the GPU), and the sums are in float32
whatever the models' precision. Results equal the scheduler's to float rounding; ``plan_sampler``
checks that on random data before a plan is used, so a scheduler setting that is not linear
(sample clipping, thresholding, stochastic steps) is refused instead of silently changed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

CHECK_TOLERANCE = 1e-6  # relative; some schedulers round to float32 inside their steps (DPM-Solver++)


class NonlinearSamplerError(ValueError):
    """The scheduler's steps are not a fixed linear map of noise and model outputs."""


@dataclass(frozen=True)
class SamplerPlan:
    """Model inputs and final latents as weights over [noise, output_0, ..., output_{N-1}]."""

    timesteps: torch.Tensor  # (N,) the timestep the models get at each step
    input_weights: torch.Tensor  # (N, N + 1) float64; row k is zero beyond column k
    final_weights: torch.Tensor  # (N + 1,) float64: the latents after the last step

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def plan_sampler(scheduler: SchedulerMixin, num_inference_steps: int) -> SamplerPlan:
    """The weights of ``scheduler``'s trajectory (a copy is run; ``scheduler`` is untouched)."""
    plan = _trace(scheduler, num_inference_steps)
    _check(scheduler, plan)
    return plan


def _trace(scheduler: SchedulerMixin, num_inference_steps: int) -> SamplerPlan:
    """Run the scheduler on coefficient vectors: a (1, N + 1, 1, 1) 'latent' per combination."""
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(num_inference_steps, device="cpu")
    steps = len(scheduler.timesteps)
    basis = torch.eye(steps + 1, dtype=torch.float64).view(steps + 1, 1, steps + 1, 1, 1)  # (N+1, 1, N+1, 1, 1)
    latents = basis[0] * scheduler.init_noise_sigma  # (1, N + 1, 1, 1): shaped as latents
    inputs = []
    try:
        for step, timestep in enumerate(scheduler.timesteps):
            inputs.append(scheduler.scale_model_input(latents, timestep))
            latents = scheduler.step(basis[step + 1], timestep, latents, return_dict=False)[0]
    except (RuntimeError, TypeError, ValueError) as error:
        raise NonlinearSamplerError(f"{type(scheduler).__name__} cannot be run on coefficients ({error}); "
                                    f"set decode.precomputed_sampler=false") from None
    return SamplerPlan(scheduler.timesteps.clone(), torch.cat(inputs).flatten(1), latents.flatten())


def _check(scheduler: SchedulerMixin, plan: SamplerPlan, seed: int = 0) -> None:
    """Compare the plan with the scheduler itself on random noise and a nonlinear stand-in model."""
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(plan.num_steps, device="cpu")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((2, 4, 3, 3), generator=generator, dtype=torch.float64)
    mixing = torch.randn((4, 4), generator=generator, dtype=torch.float64)

    def model(model_input: torch.Tensor) -> torch.Tensor:  # (2, 4, 3, 3): any nonlinear function
        return torch.tanh(torch.einsum("ij,bjhw->bihw", mixing, model_input))

    latents, basis = noise * scheduler.init_noise_sigma, [noise]
    for step, timestep in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents, timestep)
        planned_input = combine(plan.input_weights[step, :step + 1], torch.stack(basis))
        basis.append(model(planned_input))
        _expect_close(planned_input, model_input, f"model input of step {step}")
        latents = scheduler.step(basis[-1], timestep, latents, return_dict=False)[0]
    _expect_close(combine(plan.final_weights, torch.stack(basis)), latents, "final latents")


def _expect_close(planned: torch.Tensor, actual: torch.Tensor, what: str) -> None:
    error = (planned - actual).norm() / actual.norm().clamp_min(1e-300)
    if not error <= CHECK_TOLERANCE:
        raise NonlinearSamplerError(
            f"the sampler is not a fixed linear multistep method ({what} differs by {float(error):.2e}); "
            f"set decode.precomputed_sampler=false to run its own steps")


def combine(weights: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """sum_k weights[k] * basis[k]: (K,) weights over (K, B, C, h, w) tensors -> (B, C, h, w)."""
    return (basis * weights.view(-1, *([1] * (basis.dim() - 1)))).sum(0)
