"""Shared fixtures. Tests never touch the network: the hubs are switched off here."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
VOC_IMAGES = DATA / "voc-samples" / "images"
VOC_MASKS = DATA / "voc-samples" / "masks"


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    """Path of the config.yaml of freshly built tiny components (built once per session)."""
    from models.tiny.components import build_tiny_components

    return build_tiny_components(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def stand_in_hub(tmp_path_factory) -> Path:
    """Random weights under the real file names and formats (LPIPS-AlexNet, DISTS-VGG, Inception)."""
    from models.tiny.stand_in_weights import write_random_weights

    hub = tmp_path_factory.mktemp("hub")
    write_random_weights(hub, ("alexnet", "vgg16", "inception"))
    return hub


@pytest.fixture
def voc_images(tmp_path) -> Path:
    """A private copy of the 14 VOC sample photos."""
    target = tmp_path / "voc-images"
    shutil.copytree(VOC_IMAGES, target)
    return target


def run_script(script: str, *args: str, timeout: float = 600):
    """Run one of the top-level scripts in a fresh process, as a user would."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
