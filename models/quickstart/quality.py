"""The end-to-end quality check of the quickstart system (``python -m models.quickstart evaluate``).

Held-out shapes images (a split training never sees) go through the chain as in use: encode with
the segmenter and BLIP, send the codes through the ``.sem`` format, decode with the ControlNet,
re-segment the reconstructions and compare them with the transmitted label maps. The same
captions are then decoded from the label maps of other images, which a decoder that ignores its
control image cannot tell apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from models.config import Config
from models.quickstart.shapes import HELD_OUT_SPLIT, held_out_samples, image_name


def dataset_miou(label_maps: list[np.ndarray], predictions: list[np.ndarray], num_classes: int) -> float:
    """mIoU over all pixels of a set (one confusion matrix), as ``sem_miou_dataset`` reports it."""
    from models.evaluation.metrics import confusion_matrix, mean_iou

    return mean_iou(sum(confusion_matrix(truth, predicted, num_classes)
                        for truth, predicted in zip(label_maps, predictions)))


@dataclass
class QualityReport:
    """How well the system keeps the label map, measured on held-out shapes images."""

    images: int
    segmenter_miou: float  # the segmenter on the originals vs the exact label maps
    end_to_end_miou: float  # reconstructions re-segmented vs the transmitted label maps
    shuffled_miou: float  # decoded from other images' maps (same captions) vs the transmitted maps
    caption_accuracy: float  # share of BLIP captions equal to the data set's
    seconds: float

    def passes(self) -> bool:
        """The acceptance thresholds of the quickstart (issue 7)."""
        return (self.segmenter_miou >= 0.9 and self.end_to_end_miou >= 0.75
                and self.shuffled_miou < 0.6 * self.end_to_end_miou)


def quality_report(config: Config, count: int = 16, seed: int = 0, split: str = HELD_OUT_SPLIT) -> QualityReport:
    """Encode held-out images, send the codes through the ``.sem`` format, decode, re-segment."""
    from models.bitstream import decode_code, encode_code
    from models.decode.decoder import ControlNetDecoder, image_seed
    from models.encode.encoder import SemanticEncoder
    from models.layout import stem_key
    from models.semantic_code import SemanticCode

    start = time.perf_counter()
    samples = held_out_samples(count, seed, split)
    encoder = SemanticEncoder.from_config(config)
    codes = [decode_code(encode_code(code)) for code in encoder.encode([s.image for s in samples])]
    maps, classes = [code.label_map for code in codes], config.segmentation.num_classes
    decoder = ControlNetDecoder.from_config(config)
    seeds = [image_seed(config.decode.seed, stem_key(image_name(index))) for index in range(count)]
    decoded = decoder.decode(codes, seeds, config.decode.batch_size)
    shuffled = [SemanticCode(maps[(i + 1) % count], code.caption, label_set=code.label_set)
                for i, code in enumerate(codes)]
    decoded_shuffled = decoder.decode(shuffled, seeds, config.decode.batch_size)
    return QualityReport(
        images=count,
        segmenter_miou=dataset_miou([s.label_map for s in samples], maps, classes),
        end_to_end_miou=dataset_miou(maps, encoder.segmenter.predict(decoded), classes),
        shuffled_miou=dataset_miou(maps, encoder.segmenter.predict(decoded_shuffled), classes),
        caption_accuracy=float(np.mean([c.caption == s.caption for c, s in zip(codes, samples)])),
        seconds=round(time.perf_counter() - start, 1))


def aspect_ratio_mious(config: Config, aspects: tuple[float, ...], count: int = 16, seed: int = 0,
                       size_multiple: int | None = None) -> dict[float, float]:
    """End-to-end mIoU (``quality_report``'s) on held-out shapes images of each aspect ratio
    (width / height; height 64 px, shapes as large as in the square training images), decoded at
    the sizes ``config.decode`` gives them (sides in multiples of ``size_multiple``, default the
    decoder's)."""
    from models.decode.decoder import ControlNetDecoder, image_seed
    from models.encode.encoder import SemanticEncoder
    from models.layout import stem_key
    from models.quickstart.shapes import IMAGE_SIZE, SPLIT_IDS, make_sample

    encoder, decoder = SemanticEncoder.from_config(config), ControlNetDecoder.from_config(config)
    decoder.size_multiple = size_multiple or decoder.size_multiple
    mious = {}
    for aspect in aspects:
        width = round(IMAGE_SIZE * aspect)
        samples = [make_sample([seed, SPLIT_IDS[HELD_OUT_SPLIT], index], width=width) for index in range(count)]
        codes = encoder.encode([sample.image for sample in samples])
        seeds = [image_seed(config.decode.seed, stem_key(image_name(index))) for index in range(count)]
        decoded = decoder.decode(codes, seeds, config.decode.batch_size)
        maps = [code.label_map for code in codes]
        mious[aspect] = dataset_miou(maps, encoder.segmenter.predict(decoded), config.segmentation.num_classes)
    return mious
