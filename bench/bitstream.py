"""Rate of the .sem format against palette PNG and WebP lossless on real VOC label maps.

    python bench/bitstream.py [--masks tests/data/voc-samples/masks] [--repeats 3]

Prints one table (mean over the masks; bits per pixel relative to each map's size, from
``models.rate.bits_per_pixel``; agreement = fraction of non-void pixels equal after decoding;
ms = encode + decode, best of --repeats, after one warm-up) and the same for one 512x512 map,
then the caption sizes of the fixture captions.
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

from models.bitstream import decode_code, encode_caption, encode_code, inspect_code  # noqa: E402
from models.palettes import VOID_LABEL, label_map_to_pil  # noqa: E402
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
    return parser.parse_args(argv)


def timed(function, repeats: int):
    """(result, best wall time in ms) of ``function()``."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return result, best * 1000


def sem_codec(grid: int | None):
    def run(label_map: np.ndarray):
        data = encode_code(SemanticCode(label_map, ""), grid=grid)
        return len(data), decode_code(data).label_map
    return run


def pillow_codec(image_format: str, mode: str, **options):
    def run(label_map: np.ndarray):
        buffer = io.BytesIO()
        image = label_map_to_pil(label_map) if mode == "P" else Image.fromarray(label_map, mode="L")
        image.save(buffer, format=image_format, **options)
        with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
            decoded = decoded.convert(mode) if decoded.mode != mode else decoded
            return buffer.tell(), np.array(decoded)
    return run


def codecs(grids: list[int]) -> dict[str, object]:
    table = {"sem lossless": sem_codec(None)}
    table.update({f"sem compact grid {grid}": sem_codec(grid) for grid in grids})
    table["palette PNG (optimize)"] = pillow_codec("PNG", "P", optimize=True)
    table["WebP lossless (method 6)"] = pillow_codec("WEBP", "L", lossless=True, quality=100,
                                                     method=6)
    try:
        import pillow_jxl  # noqa: F401, PLC0415 (registers JPEG XL with Pillow)
        table["JPEG XL lossless (effort 9)"] = pillow_codec("JXL", "L", lossless=True, effort=9)
    except ImportError:
        pass
    return table


def measure(run, label_maps: list[np.ndarray], repeats: int) -> tuple[float, float, float, float]:
    """Mean bytes, mean bpp, mean agreement, mean ms over ``label_maps``."""
    sizes, rates, agreements, times = [], [], [], []
    for label_map in label_maps:
        run(label_map)  # warm-up (numba compilation, caches)
        (size, decoded), ms = timed(lambda: run(label_map), repeats)
        valid = label_map != VOID_LABEL
        sizes.append(size)
        rates.append(bits_per_pixel(size, label_map.shape[1], label_map.shape[0]))
        agreements.append(float(np.mean(decoded[valid] == label_map[valid])))
        times.append(ms)
    return tuple(float(np.mean(values)) for values in (sizes, rates, agreements, times))


def print_table(title: str, label_maps: list[np.ndarray], grids: list[int], repeats: int) -> None:
    print(f"\n{title}\n")
    print("| mode | bytes | bpp | agreement | ms |")
    print("|---|---:|---:|---:|---:|")
    for name, run in codecs(grids).items():
        size, rate, agreement, ms = measure(run, label_maps, repeats)
        print(f"| {name} | {size:.1f} | {rate:.4f} | {agreement:.4f} | {ms:.1f} |")


def compact_map_bytes(label_maps: list[np.ndarray], grids: list[int]) -> None:
    """The map part alone of compact files (what the grid costs without header and CRC)."""
    parts = []
    for grid in grids:
        sizes = [inspect_code(encode_code(SemanticCode(m, ""), grid)).map_bytes for m in label_maps]
        parts.append(f"grid {grid}: {np.mean(sizes):.1f}")
    print("\nCompact mode, map part only (mean bytes):", ", ".join(parts))


def caption_sizes(captions: list[str]) -> None:
    coded = [len(encode_caption(caption)[1]) for caption in captions]
    utf8 = [len(caption.encode("utf-8")) for caption in captions]
    print(f"\nCaptions ({len(captions)}): median {np.median(coded):.1f} bytes coded "
          f"(mean {np.mean(coded):.1f}, max {max(coded)}) vs {np.median(utf8):.1f} bytes UTF-8")


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
    large = Image.open(Path(args.masks) / args.large_mask).resize((512, 512), Image.NEAREST)
    print_table(f"One 512x512 map ({args.large_mask} stretched, nearest)", [np.array(large)],
                grids, args.repeats)
    caption_sizes(Path(args.captions).read_text(encoding="utf-8").splitlines())
    return 0


if __name__ == "__main__":
    sys.exit(main())
