"""Rate of the .sem format against palette PNG and WebP lossless on real VOC and ADE20K label maps.

    python bench/bitstream.py [--masks tests/data/voc-samples/masks] [--ade_maps ...] [--repeats 3]
                              [--budgets 48,64,96,128,256,512,1024] [--budget_caption "a man riding a horse"]

Prints one table (mean over the masks; bits per pixel relative to each map's size, from
``models.rate.bits_per_pixel``; agreement = fraction of non-void pixels equal after decoding;
ms = encode + decode, best of --repeats, after one warm-up), the same for one 512x512 map and for
the ADE20K annotations (``ade20k`` codes, format version 2; no void, so every pixel counts), then
the caption sizes of the fixture captions. The rate-control table codes each VOC mask with
``--budget_caption`` within each of ``--budgets`` bytes (``models.bitstream.encode_within``: lossless
if it fits, else the finest grid that fits) and gives bytes, grids and agreement.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.bitstream import RateSearch, decode_code, encode_caption, encode_code, inspect_code  # noqa: E402
from models.palettes import ADE20K, VOC, LabelSet, label_map_to_pil  # noqa: E402
from models.rate import bits_per_pixel  # noqa: E402
from models.semantic_code import SemanticCode  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--masks", default=str(REPO / "tests/data/voc-samples/masks"),
                        help="folder of label-map PNGs (255 = void)")
    parser.add_argument("--captions", default=str(REPO / "tests/data/captions.txt"),
                        help="one caption per line")
    parser.add_argument("--grids", default="32,48,64,128", help="compact-mode grid sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")
    parser.add_argument("--large_mask", default="2007_005547.png",
                        help="mask stretched (nearest) to 512x512 for the second table")
    parser.add_argument("--ade_maps", default=str(REPO / "tests/data/ade-samples/annotations"),
                        help="folder of ADE20K annotation PNGs (0 other, 1..150 classes) for the third table")
    parser.add_argument("--budgets", default="48,64,96,128,256,512,1024", help="byte budgets of the rate-control table")
    parser.add_argument("--budget_caption", default="a man riding a horse",
                        help="the caption stored with every mask in the rate-control table")
    return parser.parse_args(argv)


def timed(function, repeats: int):
    """(result, best wall time in ms) of ``function()``."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return result, best * 1000


def sem_codec(grid: int | None, label_set: LabelSet):
    def run(label_map: np.ndarray):
        data = encode_code(SemanticCode(label_map, "", label_set=label_set.name), grid=grid)
        return len(data), decode_code(data).label_map
    return run


def pillow_codec(image_format: str, mode: str, label_set: LabelSet, **options):
    def run(label_map: np.ndarray):
        buffer = io.BytesIO()
        image = label_map_to_pil(label_map, label_set) if mode == "P" else Image.fromarray(label_map, mode="L")
        image.save(buffer, format=image_format, **options)
        with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
            decoded = decoded.convert(mode) if decoded.mode != mode else decoded
            return buffer.tell(), np.array(decoded)
    return run


def codecs(grids: list[int], label_set: LabelSet) -> dict[str, object]:
    table = {"sem lossless": sem_codec(None, label_set)}
    table.update({f"sem compact grid {grid}": sem_codec(grid, label_set) for grid in grids})
    table["palette PNG (optimize)"] = pillow_codec("PNG", "P", label_set, optimize=True)
    table["WebP lossless (method 6)"] = pillow_codec("WEBP", "L", label_set, lossless=True, quality=100,
                                                     method=6)
    try:
        import pillow_jxl  # noqa: F401, PLC0415 (registers JPEG XL with Pillow)
        table["JPEG XL lossless (effort 9)"] = pillow_codec("JXL", "L", label_set, lossless=True, effort=9)
    except ImportError:
        pass
    return table


def measure(run, label_maps: list[np.ndarray], repeats: int,
            void: int | None) -> tuple[float, float, float, float]:
    """Mean bytes, mean bpp, mean agreement (pixels other than ``void``), mean ms over ``label_maps``."""
    sizes, rates, agreements, times = [], [], [], []
    for label_map in label_maps:
        run(label_map)  # warm-up (numba compilation, caches)
        (size, decoded), ms = timed(lambda: run(label_map), repeats)
        valid = label_map != (-1 if void is None else void)
        sizes.append(size)
        rates.append(bits_per_pixel(size, label_map.shape[1], label_map.shape[0]))
        agreements.append(float(np.mean(decoded[valid] == label_map[valid])))
        times.append(ms)
    return tuple(float(np.mean(values)) for values in (sizes, rates, agreements, times))


def print_table(title: str, label_maps: list[np.ndarray], grids: list[int], repeats: int,
                label_set: LabelSet = VOC) -> None:
    print(f"\n{title}\n")
    print("| mode | bytes | bpp | agreement | ms |")
    print("|---|---:|---:|---:|---:|")
    for name, run in codecs(grids, label_set).items():
        size, rate, agreement, ms = measure(run, label_maps, repeats, label_set.void)
        print(f"| {name} | {size:.1f} | {rate:.4f} | {agreement:.4f} | {ms:.1f} |")


def compact_map_bytes(label_maps: list[np.ndarray], grids: list[int], label_set: LabelSet = VOC) -> None:
    """The map part alone of compact files (what the grid costs without header and CRC)."""
    parts = []
    for grid in grids:
        sizes = [inspect_code(encode_code(SemanticCode(m, "", label_set=label_set.name), grid)).map_bytes
                 for m in label_maps]
        parts.append(f"grid {grid}: {np.mean(sizes):.1f}")
    print("\nCompact mode, map part only (mean bytes):", ", ".join(parts))


def budget_table(label_maps: list[np.ndarray], budgets: list[int], caption: str, void: int | None) -> None:
    """Rate control on every map: mean bytes, the grids chosen and the agreement per budget."""
    print(f"\nRate control: whole files with the caption {caption!r}, within each budget (mean per map)\n")
    print("| budget | bytes | bpp | grids chosen (min / median / max) | lossless | agreement | ms |")
    print("|---:|---:|---:|---|---:|---:|---:|")
    for budget in budgets:
        sizes, rates, grids, agreements, times = [], [], [], [], []
        for label_map in label_maps:
            code = SemanticCode(label_map, caption)
            fitted, ms = timed(lambda: RateSearch(code).fit(budget), 1)
            decoded = decode_code(fitted.data).label_map
            valid = label_map != (-1 if void is None else void)
            sizes.append(fitted.num_bytes)
            rates.append(fitted.bits_per_pixel)
            grids.append(fitted.grid)
            agreements.append(float(np.mean(decoded[valid] == label_map[valid])))
            times.append(ms)
        coarse = sorted(grid for grid in grids if grid is not None)
        shown = f"{coarse[0]} / {np.median(coarse):g} / {coarse[-1]}" if coarse else "-"
        print(f"| {budget} | {np.mean(sizes):.1f} | {np.mean(rates):.4f} | {shown} | {grids.count(None)} | "
              f"{np.mean(agreements):.4f} | {np.mean(times):.0f} |")


def caption_sizes(captions: list[str]) -> None:
    coded = [len(encode_caption(caption)[1]) for caption in captions]
    utf8 = [len(caption.encode("utf-8")) for caption in captions]
    print(f"\nCaptions ({len(captions)}): median {np.median(coded):.1f} bytes coded "
          f"(mean {np.mean(coded):.1f}, max {max(coded)}) vs {np.median(utf8):.1f} bytes UTF-8")


def per_map_rates(paths: list[Path], label_maps: list[np.ndarray], grids: list[int],
                  label_set: LabelSet) -> None:
    """Each map's lossless rate and compact sizes (whole files) with their agreement."""
    print(f"\nPer map ({label_set.name} codes): lossless bpp; compact bytes @ agreement")
    for path, label_map in zip(paths, label_maps):
        height, width = label_map.shape
        parts = [f"lossless {bits_per_pixel(sem_codec(None, label_set)(label_map)[0], width, height):.4f} bpp"]
        for grid in grids:
            size, decoded = sem_codec(grid, label_set)(label_map)
            valid = label_map != (-1 if label_set.void is None else label_set.void)
            parts.append(f"grid {grid} {size} B @ {np.mean(decoded[valid] == label_map[valid]):.4f}")
        print(f"- {path.name}: " + ", ".join(parts))


def ade_tables(folder: str, grids: list[int], repeats: int) -> None:
    """The tables of the ADE20K annotations, as ``ade20k`` codes (format version 2)."""
    paths = sorted(Path(folder).glob("*.png"))
    if not paths:
        print(f"\n(no ADE20K annotations in {folder}: table skipped)")
        return
    label_maps = [np.array(Image.open(p)) for p in paths]
    print_table(f"{len(paths)} ADE20K annotation maps from {folder} (ade20k codes, mean per map)",
                label_maps, grids, repeats, ADE20K)
    compact_map_bytes(label_maps, grids, ADE20K)
    per_map_rates(paths, label_maps, grids, ADE20K)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = sorted(Path(args.masks).glob("*.png"))
    if not paths:
        print(f"error: no PNG masks in {args.masks}", file=sys.stderr)
        return 1
    grids = [int(g) for g in args.grids.split(",") if g]
    label_maps = [np.array(Image.open(p)) for p in paths]
    print_table(f"{len(paths)} label maps from {args.masks} (mean per map)", label_maps, grids,
                args.repeats)
    compact_map_bytes(label_maps, grids)
    budget_table(label_maps, [int(b) for b in args.budgets.split(",") if b], args.budget_caption, VOC.void)
    large = Image.open(Path(args.masks) / args.large_mask).resize((512, 512), Image.NEAREST)
    print_table(f"One 512x512 map ({args.large_mask} stretched, nearest)", [np.array(large)],
                grids, args.repeats)
    ade_tables(args.ade_maps, grids, args.repeats)
    caption_sizes(Path(args.captions).read_text(encoding="utf-8").splitlines())
    return 0


if __name__ == "__main__":
    sys.exit(main())
