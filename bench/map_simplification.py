"""Cheaper label maps at equal meaning? Simplifications before coding, measured end to end on the shapes world.

    python bench/map_simplification.py [--num_images 64] [--budgets 40 48 56 60 64 68 72]
                                       [--min_regions 8 16 32] [--modal_radius 1 2] [--decode_seeds 0]

Held-out shapes images (the split training never sees) are encoded with the shipped segmenter
and BLIP: their label maps M are what the encoder would send, the meaning to keep. Each variant
simplifies M before coding: ``none``; ``drop<N>``: every connected region (8-neighbourhood)
smaller than N pixels takes the label of the nearest pixel outside such regions; ``modal<R>``:
each pixel takes the most frequent label in a disc of radius R (``skimage.filters.rank.modal``,
which rounds staircase boundaries and removes one-pixel features). Each variant is coded
losslessly and at each byte budget (``models.bitstream.encode_within``: the finest grid that fits),
the files' bytes are counted (captions and headers included), and the decoded maps are drawn by
the shipped ControlNet with the same seed per image for every variant and point, re-segmented
with the shipped segmenter, and compared with M (mIoU over the pooled confusion matrix, as
``models.quickstart.quality`` measures the chain). ``map mIoU`` compares the decoded maps with M
without the decoder. A variant pays only if it lowers the bytes at equal end-to-end mIoU, or
raises the mIoU at equal bytes: the last table gives each variant's Bjøntegaard deltas against
``none`` over the points of its curve (``models.evaluation.bd_rate``: mean bytes against mIoU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.bitstream import decode_code, encode_code, encode_within  # noqa: E402
from models.semantic_code import SemanticCode  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--num_images", type=int, default=64, help="held-out shapes images")
    parser.add_argument("--seed", type=int, default=0, help="data-set seed of the images")
    parser.add_argument("--budgets", type=int, nargs="*", default=[40, 48, 56, 60, 64, 68, 72],
                        help="byte budgets per file (besides lossless)")
    parser.add_argument("--min_regions", type=int, nargs="*", default=[8, 16, 32],
                        help="drop<N> variants: regions below N pixels are removed")
    parser.add_argument("--modal_radius", type=int, nargs="*", default=[1, 2], help="modal<R> variants")
    parser.add_argument("--decode_seeds", type=int, nargs="+", default=[0],
                        help="decode.seed values; each gives every image another noise (results pooled)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    return parser.parse_args(argv)


def remove_small_regions(label_map: np.ndarray, min_pixels: int) -> np.ndarray:
    """Regions (8-connected, one label) of fewer than ``min_pixels`` pixels take the label of the
    nearest pixel outside all such regions."""
    from scipy import ndimage

    small = np.zeros(label_map.shape, dtype=bool)
    for label in np.unique(label_map):
        regions, _ = ndimage.label(label_map == label, structure=np.ones((3, 3), dtype=bool))
        sizes = np.bincount(regions.ravel())
        too_small = sizes < min_pixels
        too_small[0] = False  # not this label
        small |= too_small[regions]
    if not small.any() or small.all():
        return label_map.copy()
    _, (rows, cols) = ndimage.distance_transform_edt(small, return_indices=True)
    return label_map[rows, cols]


def modal_filter(label_map: np.ndarray, radius: int) -> np.ndarray:
    """The most frequent label in a disc of ``radius`` around each pixel."""
    from skimage.filters.rank import modal
    from skimage.morphology import disk

    return modal(label_map, disk(radius)).astype(np.uint8)


def variants(args: argparse.Namespace) -> dict[str, object]:
    table = {"none": lambda label_map: label_map}
    table.update({f"drop{n}": (lambda m, n=n: remove_small_regions(m, n)) for n in args.min_regions})
    table.update({f"modal{r}": (lambda m, r=r: modal_filter(m, r)) for r in args.modal_radius})
    return table


def coded(codes: list[SemanticCode], point: int | None) -> list[bytes]:
    """The files of ``codes``: lossless (``point`` None) or within ``point`` bytes each."""
    return [encode_code(code) if point is None else encode_within(code, point).data for code in codes]


class Chain:
    """The shipped decoder and segmenter; each (file, seed) is decoded and re-segmented once
    (variants often leave a file unchanged)."""

    def __init__(self, config, encoder) -> None:
        from models.decode.decoder import ControlNetDecoder

        self.config, self.encoder = config, encoder
        self.decoder = ControlNetDecoder.from_config(config)
        self.cache: dict[tuple[bytes, int], np.ndarray] = {}

    def predictions(self, files: list[bytes], seeds: list[int]) -> list[np.ndarray]:
        """The re-segmented reconstruction of each file."""
        todo = [index for index, key in enumerate(zip(files, seeds)) if key not in self.cache]
        if todo:
            decoded = self.decoder.decode([decode_code(files[i]) for i in todo], [seeds[i] for i in todo],
                                          self.config.decode.batch_size)
            for index, prediction in zip(todo, self.encoder.segmenter.predict(decoded)):
                self.cache[files[index], seeds[index]] = prediction
        return [self.cache[key] for key in zip(files, seeds)]


def measure(args: argparse.Namespace) -> list[dict]:
    """One row per variant and coding point: mean bytes, map mIoU, end-to-end mIoU."""
    import torch

    from models.decode.decoder import image_seed
    from models.encode.encoder import SemanticEncoder
    from models.quickstart.model_folder import model_config
    from models.quickstart.quality import dataset_miou
    from models.quickstart.shapes import held_out_samples, image_name

    torch.set_num_threads(args.threads)
    config = model_config()
    classes = config.segmentation.num_classes
    samples = held_out_samples(args.num_images, args.seed)
    encoder = SemanticEncoder.from_config(config)
    chain = Chain(config, encoder)
    codes = encoder.encode([sample.image for sample in samples])
    meaning = [code.label_map for code in codes]
    print(f"segmenter on the originals vs the exact maps: mIoU "
          f"{dataset_miou([s.label_map for s in samples], meaning, classes):.4f}", flush=True)
    rows = []
    for name, simplify in variants(args).items():
        simple = [SemanticCode(simplify(code.label_map), code.caption, label_set=code.label_set) for code in codes]
        for point in [None, *args.budgets]:
            start, files = time.perf_counter(), coded(simple, point)
            truths, predictions = [], []
            for decode_seed in args.decode_seeds:
                seeds = [image_seed(decode_seed, image_name(i).removesuffix(".png")) for i in range(len(files))]
                predictions += chain.predictions(files, seeds)
                truths += meaning
            rows.append({"variant": name, "point": "lossless" if point is None else f"{point} B",
                         "bytes": float(np.mean([len(data) for data in files])),
                         "map_miou": dataset_miou(meaning, [decode_code(d).label_map for d in files], classes),
                         "miou": dataset_miou(truths, predictions, classes),
                         "seconds": time.perf_counter() - start})
            print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: dict) -> str:
    return (f"| {row['variant']} | {row['point']} | {row['bytes']:.1f} | {row['map_miou']:.4f} | "
            f"{row['miou']:.4f} |")


def print_deltas(rows: list[dict]) -> None:
    """Each variant's BD-rate (% bytes at equal end-to-end mIoU) and BD-mIoU (at equal bytes)
    against ``none``; "-" where a curve is not monotone or the curves do not overlap."""
    from models.evaluation.bd_rate import BDError, bd_quality, bd_rate

    curves: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        curves.setdefault(row["variant"], []).append((row["bytes"], row["miou"]))
    print("\n| variant | BD-rate vs none (bytes at equal mIoU) | BD-mIoU vs none (at equal bytes) |\n|---|---:|---:|")
    for name, curve in curves.items():
        cells = []
        for delta, form in ((bd_rate, "{:+.2f}%"), (bd_quality, "{:+.4f}")):
            try:
                cells.append(form.format(delta(curves["none"], curve)))
            except BDError as error:
                cells.append(f"- ({error})")
        print(f"| {name} | {cells[0]} | {cells[1]} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print("| variant | coding | bytes | map mIoU | end-to-end mIoU |\n|---|---|---:|---:|---:|", flush=True)
    rows = measure(args)
    print("\nsorted by point:\n| variant | coding | bytes | map mIoU | end-to-end mIoU |\n|---|---|---:|---:|---:|")
    for row in sorted(rows, key=lambda row: (row["point"], row["variant"])):
        print(format_row(row))
    print_deltas(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
