"""Random stand-ins for the metric networks' weight files, for tests and benchmarks.

Each file has the name, keys, shapes and format of the real one (``models.evaluation.metrics.WEIGHT_FILES``),
so every loading path of the metric suite runs offline; the metrics they give are meaningless.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from models.evaluation.metrics import WEIGHT_FILES

ARCHITECTURES = {"alexnet": "alexnet", "vgg16": "vgg16", "squeezenet": "squeezenet1_1",
                 "inception": "inception"}  # weight file -> the torchvision model whose shapes it has


def random_state_dict(architecture: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the names and shapes of a real weight file (He-scaled, unit batch norm)."""
    import torchvision.models as tv

    with torch.device("meta"):
        if architecture == "inception":  # torch-fidelity's layout: torchvision's, with 1008 logits
            model = tv.inception_v3(weights=None, aux_logits=False, init_weights=False)
            model.fc = nn.Linear(2048, 1008)
        else:
            model = getattr(tv, architecture)(weights=None)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, meta in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        elif meta.dim() > 1:
            fan_in = meta[0].numel()
            state[key] = torch.randn(meta.shape, generator=generator) * math.sqrt(2.0 / fan_in)
        elif key.endswith(("running_var", ".weight")):  # batch-norm scales
            state[key] = torch.ones(meta.shape)
        else:
            state[key] = torch.zeros(meta.shape)
    return state


def write_random_weights(hub_directory: str | Path,
                         names: tuple[str, ...] = ("alexnet", "vgg16", "inception"),
                         seed: int = 0) -> list[Path]:
    """Save random stand-ins for the weight files ``names`` under ``<hub_directory>/checkpoints``.

    Same file names, keys, shapes and format as the real files, so every loading path runs; the
    metrics they give are meaningless. For tests and benchmarks only.
    """
    folder = Path(hub_directory) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / WEIGHT_FILES[name].filename
        torch.save(random_state_dict(ARCHITECTURES[name], seed), path)
        paths.append(path)
    return paths
