"""What the browser demo does, without the page: one photo through encoder, ``.sem`` file,
decoder, the classic codecs at the same byte budget, and the scores under each picture.

``DemoService`` holds the loaded models and a private temporary folder; every file it writes
(the ``.sem`` downloads) goes there. Its methods raise ``AppError`` with a message fit for the
page when an upload is bad; the page shows it and keeps serving.
"""

from __future__ import annotations

import html
import itertools
import math
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.baselines.codecs import compress_to_size, decode as decode_codec
from models.bitstream import BitstreamError, decode_code, encode_code, inspect_code
from models.config import Config
from models.evaluation.metrics import (ImagePair, MetricSkipped, PSNRMetric, SSIMMetric, confusion_matrix,
                                       mean_iou)
from models.imageio import ImageReadError, read_rgb
from models.palettes import LabelSet, colorize, get_label_set
from models.rate import bits_per_pixel
from models.semantic_code import SemanticCode

PAGE_CODECS = ("jpeg", "webp", "avif")  # shown beside ours at the same byte budget
MAX_UPLOAD_PIXELS = 16_000_000  # photos above this are refused before decoding (the CLI's limit is 50 M)
MAX_SEM_BYTES = 1 << 20  # a .sem file is a few hundred bytes; anything near a megabyte is not one
DISPLAY_SIDE = 256  # label maps and small images are shown at least this large (nearest neighbour)


class AppError(ValueError):
    """A bad upload or setting, in words for the page."""


@dataclass(frozen=True)
class Settings:
    """The page's controls: map grid (None: lossless), decoding seed, sampler steps, guidance."""

    grid: int | None = None
    seed: int = 0
    steps: int = 20
    guidance: float = 1.0


@dataclass
class Scores:
    """PSNR (dB), SSIM and semantic mIoU of one picture against the photo and the transmitted map."""

    psnr: float
    ssim: float
    miou: float

    def text(self) -> str:
        return f"PSNR {self.psnr:.2f} dB · SSIM {self.ssim:.3f} · semantic mIoU {self.miou:.3f}"


@dataclass
class CodecResult:
    """A classic codec at the ``.sem`` file's byte budget."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8, decoded and scaled back to the photo's size
    num_bytes: int
    fits: bool
    quality: int
    scale: float
    scores: Scores | None = None

    def caption(self) -> str:
        fit = "fits" if self.fits else "does not fit even at its lowest setting"
        shrunk = f", shrunk to {self.scale:.2f}" if self.scale < 1 else ""
        return f"{self.name.upper()}: {self.num_bytes} bytes ({fit}; quality {self.quality}{shrunk})"


@dataclass
class Encoded:
    """A photo's semantic code and its ``.sem`` file on disk."""

    code: SemanticCode  # as transmitted: the label map the file decodes to
    sem_path: Path
    num_bytes: int
    grid: int | None

    @property
    def bits_per_pixel(self) -> float:
        return bits_per_pixel(self.num_bytes, self.code.width, self.code.height)

    def size_text(self) -> str:
        return f"{self.num_bytes} bytes · {self.bits_per_pixel:.4f} bits per pixel"


class DemoService:
    """The encoder, decoder and re-segmenter of one config, and a temporary folder for downloads."""

    def __init__(self, config: Config, temp_dir: str | Path | None = None,
                 display_names: dict[int, str] | None = None):
        from models.decode.decoder import ControlNetDecoder
        from models.encode.encoder import SemanticEncoder

        self.config = config
        self.encoder = SemanticEncoder.from_config(config)
        self.decoder = ControlNetDecoder.from_config(config)
        self.label_set: LabelSet = self.encoder.segmenter.label_set
        self.display_names = display_names or {}  # legend names in place of the label set's (shapes: circle, ...)
        self.temp_dir = Path(temp_dir or tempfile.mkdtemp(prefix="semantic-compression-app-"))
        self.lock = threading.Lock()  # the models serve one request at a time
        self._count = 0

    # ----- inputs ---------------------------------------------------------------------------------

    def read_photo(self, path: str | Path | None) -> np.ndarray:
        """(H, W, 3) uint8 of an uploaded photo, or ``AppError`` saying what is wrong with it."""
        if not path:
            raise AppError("upload a photo or pick an example first")
        try:
            return np.asarray(read_rgb(path, max_pixels=MAX_UPLOAD_PIXELS))
        except ImageReadError as error:  # the command lines' hint names a flag the page does not have
            reason = error.reason.replace("(raise it with --max_pixels)", "on this page")
            raise AppError(f"{Path(path).name}: {reason}") from None

    def read_sem(self, path: str | Path | None) -> Encoded:
        """A ``.sem`` upload, checked and decoded, or ``AppError``."""
        if not path:
            raise AppError("upload a .sem file first")
        name, size = Path(path).name, Path(path).stat().st_size
        if size > MAX_SEM_BYTES:
            raise AppError(f"{name}: {size} bytes is no .sem file (they are a few hundred bytes)")
        data = Path(path).read_bytes()
        try:
            code = decode_code(data)
        except (BitstreamError, ValueError) as error:
            raise AppError(f"{name}: not a valid .sem file ({error})") from None
        return Encoded(code, self._store(data), len(data), inspect_code(data).grid)

    # ----- the chain ------------------------------------------------------------------------------

    def encode(self, photo: np.ndarray, settings: Settings, caption: str | None = None) -> Encoded:
        """Label map and caption (``caption`` replaces the captioner's), coded into a ``.sem`` file."""
        with self.lock:
            code = self.encoder.encode([photo])[0]
        if caption is not None:
            code = replace(code, caption=caption.strip())
        return self.recode(code, settings.grid)

    def recode(self, code: SemanticCode, grid: int | None) -> Encoded:
        """``code`` written as a ``.sem`` file (on a ``grid``-cell grid, or lossless) and read back."""
        if grid is not None and not 1 <= grid <= max(code.width, code.height):
            raise AppError(f"the grid must have 1 to {max(code.width, code.height)} cells for this image")
        try:
            data = encode_code(replace(code, seed=None), grid=grid)
        except (BitstreamError, ValueError) as error:
            raise AppError(f"cannot code this map and caption: {error}") from None
        return Encoded(decode_code(data), self._store(data), len(data), grid)

    def decode(self, encoded: Encoded, settings: Settings, on_step: Callable[[int], None] | None = None) -> np.ndarray:
        """(H, W, 3) uint8: the picture the decoder draws from the transmitted code (with the seed
        the file stores, as ``process_decoding.py``, else the page's); ``on_step(n)`` after step n."""
        from models.decode.decoder import SamplerSettings

        sampler = replace(SamplerSettings.from_config(self.config.decode),
                          num_inference_steps=settings.steps, guidance_scale=settings.guidance)
        steps_done = itertools.count(1)
        with self.lock:
            self.decoder.sampler = sampler
            self.decoder.on_step = (lambda: on_step(next(steps_done))) if on_step else None
            seed = settings.seed if encoded.code.seed is None else encoded.code.seed  # a file's own seed wins
            try:
                return self.decoder.decode([encoded.code], [seed], batch_size=1)[0]
            finally:
                self.decoder.on_step = None

    def codecs(self, photo: np.ndarray, num_bytes: int, names: tuple[str, ...] = PAGE_CODECS) -> list[CodecResult]:
        """Each codec's best file within ``num_bytes`` (shrinking the photo when needed)."""
        image, results = Image.fromarray(photo), []
        for name in names:
            compressed = compress_to_size(image, name, num_bytes, allow_downscale=True)
            decoded = np.asarray(decode_codec(compressed.data, image.size))
            results.append(CodecResult(name, decoded, compressed.num_bytes, compressed.fits,
                                       compressed.quality, compressed.scale))
        return results

    def scores(self, photo: np.ndarray, picture: np.ndarray, label_map: np.ndarray) -> Scores:
        """PSNR and SSIM against the photo; mIoU of the picture re-segmented against ``label_map``."""
        pair = ImagePair(photo, picture, torch.device("cpu"))
        try:
            ssim = SSIMMetric("ssim")(pair)["ssim"]
        except MetricSkipped:
            ssim = math.nan
        with self.lock:
            predicted = self.encoder.segmenter.predict([picture])[0]
        confusion = confusion_matrix(label_map, predicted, self.label_set.num_classes, self.label_set.ignored)
        return Scores(PSNRMetric()(pair)["psnr"], ssim, mean_iou(confusion))

    # ----- display --------------------------------------------------------------------------------

    def label_map_image(self, code: SemanticCode) -> np.ndarray:
        """(H, W, 3) uint8: the label map in its label set's colours, enlarged for the page."""
        return enlarge(colorize(code.label_map, get_label_set(code.label_set)))

    def legend(self, code: SemanticCode) -> str:
        """HTML: a colour swatch and the name of every class present in the map."""
        label_set = get_label_set(code.label_set)
        items = []
        for value in np.unique(code.label_map):
            name = label_set.class_names[value] if value < label_set.num_classes else "void"
            name = self.display_names.get(int(value), name)
            red, green, blue = (int(c) for c in label_set.colors[value])
            items.append(f'<span class="legend-item"><span class="swatch" style="background:rgb({red},{green},'
                         f'{blue})"></span>{html.escape(name)}</span>')
        return '<div class="legend">' + " ".join(items) + "</div>"

    def _store(self, data: bytes) -> Path:
        """``data`` as a fresh ``.sem`` file in the temporary folder (one name per result)."""
        self._count += 1
        folder = self.temp_dir / f"{self._count:06d}"
        folder.mkdir(parents=True)
        path = folder / "image.sem"
        path.write_bytes(data)
        return path


def enlarge(image: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """``image`` scaled up by a whole factor (nearest neighbour) until its long side reaches ``side``."""
    factor = max(1, side // max(image.shape[:2]))
    return image.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else image
