"""Classic codecs at a byte budget: JPEG, WebP, PNG, AVIF and JPEG XL through Pillow.

For one image, one codec and a budget of ``max_bytes``, ``compress_to_size`` returns the highest
quality whose file fits, found by bisection over the codec's integer quality scale. Its promise,
kept whether or not sizes grow with quality: the file at the answer ``q`` fits and the file at
``q + 1`` does not (or ``q`` is the top of the scale). The bisection starts from a quality that
fits: the lowest one, or if that is over budget the first that fits among the next
``LOW_END_SCAN`` qualities, because sizes are not monotone there (JPEG's quality 2 can be a byte
smaller than its quality 1, AVIF's 3 smaller than its 0). Only when none of those fits does the
search give up. Where sizes do grow with quality above that start, ``q`` is the highest fitting
quality; elsewhere it is a local one, still with the promise.

When no quality fits the image is shrunk: scales ``2 ** (-k / 8)`` are searched the same way for
the largest one at which one of the lowest qualities fits, and then the quality at that scale.
PNG always does this (its "quality" is the palette size, 2 to 256 colours, after median-cut
quantisation); the lossy codecs only with ``allow_downscale``. A result that does not fit even
then says so (``fits=False``) and holds the smallest file found.

The decoder gets back the reduced image; ``decode`` scales it to the original size with
Lanczos, as a viewer would (the original size itself is not counted in the bytes).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

import pillow_jxl  # noqa: F401  (registers the JPEG XL plugin with Pillow)

from models.rate import LOW_END_SCAN, first_fitting, last_fitting  # noqa: F401  (shared with the .sem grid search)

SCALE_STEPS_PER_HALVING = 8  # downscaling ladder: scale_k = 2 ** (-k / 8)
MIN_SIDE = 8  # never shrink an image below 8 pixels on its shorter side


@dataclass(frozen=True)
class Codec:
    """A lossy (or palette) codec with an integer quality scale, low to high."""

    name: str
    extension: str
    min_quality: int
    max_quality: int
    save: Callable[[Image.Image, int, io.BytesIO], None]  # writes the image at a quality
    always_downscale: bool = False  # shrink when no quality fits, even unasked


def _save_jpeg(image: Image.Image, quality: int, buffer: io.BytesIO) -> None:
    image.save(buffer, format="JPEG", quality=quality, optimize=True)  # 4:2:0, Huffman-optimised


def _save_webp(image: Image.Image, quality: int, buffer: io.BytesIO) -> None:
    image.save(buffer, format="WEBP", quality=quality, method=6)  # method 6: best compression


def _save_avif(image: Image.Image, quality: int, buffer: io.BytesIO) -> None:
    image.save(buffer, format="AVIF", quality=quality, speed=6)  # libavif's default speed


def _save_jxl(image: Image.Image, quality: int, buffer: io.BytesIO) -> None:
    # libjxl's quality 100 is distance 0, i.e. lossless; the plugin wants that spelled out.
    image.save(buffer, format="JXL", quality=quality, lossless=quality == 100, effort=7)


def _save_png(image: Image.Image, colors: int, buffer: io.BytesIO) -> None:
    # No dithering: dither noise costs more bytes in PNG's filters than it buys in quality.
    palette = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette.save(buffer, format="PNG", optimize=True)


CODECS: dict[str, Codec] = {
    "jpeg": Codec("jpeg", ".jpg", 1, 100, _save_jpeg),
    "webp": Codec("webp", ".webp", 0, 100, _save_webp),
    "png": Codec("png", ".png", 2, 256, _save_png, always_downscale=True),
    "avif": Codec("avif", ".avif", 0, 100, _save_avif),
    "jxl": Codec("jxl", ".jxl", 0, 100, _save_jxl),
}


def get_codec(name: str) -> Codec:
    """The codec called ``name`` (jpeg, webp, png, avif, jxl)."""
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose from {', '.join(CODECS)}")
    return CODECS[name]


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The (width, height) of an image shrunk by ``scale`` (each side at least 1 pixel)."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def scale_ladder(width: int, height: int) -> list[float]:
    """Scales 1, 2^(-1/8), 2^(-2/8), ... down to the last one that keeps ``MIN_SIDE`` pixels."""
    shortest = min(width, height)
    if shortest <= MIN_SIDE:
        return [1.0]
    steps = math.floor(SCALE_STEPS_PER_HALVING * math.log2(shortest / MIN_SIDE))
    return [2.0 ** (-k / SCALE_STEPS_PER_HALVING) for k in range(steps + 1)]


def encode(codec: Codec, image: Image.Image, quality: int, scale: float = 1.0) -> bytes:
    """The file ``codec`` writes for ``image`` (RGB) at ``quality``, shrunk by ``scale``."""
    if not codec.min_quality <= quality <= codec.max_quality:
        raise ValueError(f"{codec.name} quality must be in {codec.min_quality}..{codec.max_quality}")
    # A fresh image carries no EXIF/ICC metadata, which would otherwise count against the budget.
    clean = Image.fromarray(np.asarray(image.convert("RGB")))
    if scale != 1.0:
        clean = clean.resize(scaled_size(*clean.size, scale), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    codec.save(clean, quality, buffer)
    return buffer.getvalue()


def decode(data: bytes, size: tuple[int, int] | None = None) -> Image.Image:
    """Decode a file written by ``encode`` to RGB, scaled to ``size`` (Lanczos) if given."""
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.LANCZOS)
    return image


@dataclass(frozen=True)
class Compressed:
    """The outcome of fitting one image into a budget with one codec."""

    codec: str
    quality: int
    scale: float  # 1.0, or the downscaling factor of each side
    data: bytes  # the file
    max_bytes: int  # the budget
    fits: bool  # len(data) <= max_bytes

    @property
    def num_bytes(self) -> int:
        return len(self.data)


def highest_fitting(size_of: Callable[[int], int], low: int, high: int, max_bytes: int,
                    scan: int = LOW_END_SCAN) -> int | None:
    """``last_fitting`` for ``size_of(x) <= max_bytes``: the highest ``x`` that fits where sizes grow with ``x``."""
    return last_fitting(lambda x: size_of(x) <= max_bytes, low, high, scan)


def compress_to_size(image: Image.Image, codec: Codec | str, max_bytes: int,
                     allow_downscale: bool = False) -> Compressed:
    """The highest-quality file of ``codec`` within ``max_bytes`` (see the module docstring)."""
    codec = get_codec(codec) if isinstance(codec, str) else codec
    files: dict[tuple[int, float], bytes] = {}

    def fits_at(scale: float) -> Callable[[int], bool]:
        def fits(quality: int) -> bool:  # encodes each (quality, scale) once
            if (quality, scale) not in files:
                files[(quality, scale)] = encode(codec, image, quality, scale)
            return len(files[(quality, scale)]) <= max_bytes
        return fits

    low, high = codec.min_quality, codec.max_quality
    scale = 1.0
    quality = last_fitting(fits_at(scale), low, high)
    if quality is None and (allow_downscale or codec.always_downscale):
        scales = scale_ladder(*image.size)[::-1]  # smallest first: file sizes grow along the list
        index = last_fitting(lambda i: first_fitting(fits_at(scales[i]), low, high) is not None,
                             0, len(scales) - 1, scan=0)
        scale = scales[index if index is not None else 0]
        quality = last_fitting(fits_at(scale), low, high)
    if quality is None:  # nothing fits: report the smallest file we made
        quality, scale = min(files, key=lambda key: (len(files[key]), -key[1]))
        return Compressed(codec.name, quality, scale, files[(quality, scale)], max_bytes, False)
    return Compressed(codec.name, quality, scale, files[(quality, scale)], max_bytes, True)
