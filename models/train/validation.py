"""Validation images: what ``process_decoding.py`` makes of the validation label maps, during training.

Every ``train.val_every_n_steps`` steps rank 0 decodes the first ``train.num_validation_images``
validation label maps with their captions through the decoder users get
(``models.decode.decoder.ControlNetDecoder``), wrapped around the module's own frozen SD1.5 and
the ControlNet an export would hold (its EMA copy when the run keeps one): the same sampler,
control rendering, text encoding, seeds, batching and resizing as ``process_decoding.py
--input_path <data_root>/segmented_images/val`` with the run's config
(``train.validation_inference_steps`` and ``train.validation_guidance_scale`` replace the decode
section's step count and guidance when set). In float32 ``validation/step-NNNNNNN/<rel>.png`` is
that script's output for the export of this step; under mixed precision it runs in the training's
autocast, so it differs by the rounding of that precision. ``validation/step-NNNNNNN.png`` shows
each map, its decoding and the photograph in a column (also logged to TensorBoard).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger

from models.config import Config
from models.decode.checkpoint_format import control_metadata
from models.decode.controlnet_loader import ControlNetSource, resolve_control_spec
from models.decode.decoder import ControlNetDecoder, SamplerSettings, SpeedOptions, image_seed
from models.imageio import atomic_save_image, read_label_map, read_rgb, thumbnail
from models.layout import IMAGE_OUTPUT_SUFFIX, output_relpath, stem_key
from models.palettes import colorize
from models.semantic_code import SemanticCode

GRID_PADDING = 2  # white pixels between the cells of the grid


def validation_sampler(config: Config) -> SamplerSettings:
    """The decode section's sampler, with the validation step count and guidance when set."""
    train, sampler = config.train, SamplerSettings.from_config(config.decode)
    if train.validation_inference_steps is not None:
        sampler = replace(sampler, num_inference_steps=train.validation_inference_steps)
    if train.validation_guidance_scale is not None:
        sampler = replace(sampler, guidance_scale=train.validation_guidance_scale)
    return sampler


def training_decoder(module: pl.LightningModule) -> ControlNetDecoder:
    """A decoder on the module's own components (no copies: it sees the weights as they train),
    with the ControlNet that an export would hold (the EMA copy when the run keeps one).

    Speed options that would change the training modules (fused projections, channels-last
    weights, compilation) stay off; the precomputed sampler only changes the loop.
    """
    config, label_set = module.config, module.label_set
    controlnet = module.exported_controlnet
    metadata = control_metadata(config.to_dict(), label_set.name, label_set.num_classes)
    source = ControlNetSource(controlnet, "training", str(config.train.output_dir), metadata=metadata)
    control, _ = resolve_control_spec(source, config)
    speed = SpeedOptions(precomputed_sampler=config.decode.precomputed_sampler, channels_last=False)
    return ControlNetDecoder(module.sd_components(), controlnet, control, validation_sampler(config),
                             config.decode.resize_filter, speed)


class ValidationImages(pl.Callback):
    """Decodes and writes the validation images on rank 0 after each validation."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.decoder: ControlNetDecoder | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        index = getattr(trainer.datamodule, "val_index", None)
        pairs = index.pairs[:max(0, pl_module.config.train.num_validation_images)] if index is not None else []
        if not trainer.is_global_zero or trainer.sanity_checking or not pairs:
            return
        self.decoder = self.decoder or training_decoder(pl_module)
        self.decoder.use(pl_module.device)
        decode, label_set = pl_module.config.decode, trainer.datamodule.options.label_set
        codes = [SemanticCode(read_label_map(pair.label_map_path), pair.caption, label_set=label_set.name)
                 for pair in pairs]
        relpaths = [pair.relpath for pair in pairs]
        seeds = [image_seed(decode.seed, stem_key(relpath)) for relpath in relpaths]
        with trainer.precision_plugin.forward_context():
            images = self.decoder.decode(codes, seeds, decode.batch_size, {label_set.name: label_set})
        step_folder = self.folder / f"step-{trainer.global_step:07d}"
        for relpath, image in zip(relpaths, images):
            atomic_save_image(Image.fromarray(image), step_folder / output_relpath(relpath, IMAGE_OUTPUT_SUFFIX))
        columns = [[colorize(code.label_map, label_set), image,
                    np.asarray(read_rgb(pair.image_path))] for code, image, pair in zip(codes, images, pairs)]
        self.log_grid(trainer, image_grid(columns, pl_module.config.diffusion.resolution))

    def log_grid(self, trainer: pl.Trainer, grid: np.ndarray) -> None:
        """Write the grid next to the step folders and to TensorBoard."""
        atomic_save_image(Image.fromarray(grid), self.folder / f"step-{trainer.global_step:07d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/label_map_decoded_photo", grid, trainer.global_step,
                                            dataformats="HWC")


def image_grid(columns: list[list[np.ndarray]], height: int) -> np.ndarray:
    """(H, W, 3) uint8: each column's (h, w, 3) images (label map, decoding, photograph) one above the
    other, as thumbnails ``height`` rows high, columns side by side on white."""
    scaled = [[thumbnail(image, height) for image in column] for column in columns]
    widths = [max(image.shape[1] for image in column) for column in scaled]
    rows = max(len(column) for column in scaled)
    grid = np.full((rows * (height + GRID_PADDING) + GRID_PADDING,
                    sum(widths) + GRID_PADDING * (len(widths) + 1), 3), 255, dtype=np.uint8)
    left = GRID_PADDING
    for column, width in zip(scaled, widths):
        for row, image in enumerate(column):
            top = GRID_PADDING + row * (height + GRID_PADDING)
            grid[top:top + height, left:left + image.shape[1]] = image
        left += width + GRID_PADDING
    return grid
