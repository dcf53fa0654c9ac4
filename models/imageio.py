"""Robust image reading, atomic writes and input-folder walking.

Every script reads user images through ``read_rgb``: it applies the EXIF orientation, turns
every Pillow mode (gray, palette, RGBA, 16-bit, CMYK, ...) into 8-bit RGB, refuses images above
a pixel limit before decoding them, and reports any failure as one ``ImageReadError`` that names
the file and the reason; label maps are read the same way by ``read_label_map``. Outputs are
written to a temporary file in the same folder, flushed to disk and renamed into place, so an
interrupted job never leaves a half-written file behind; a write that fails because of where it
goes (a full disk, a read-only folder, no permission) raises ``OutputError`` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.palettes import label_map_from_pil

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
     ".pbm", ".pnm", ".jp2", ".avif", ".jxl", ".tga", ".ico"}
)
DEFAULT_MAX_PIXELS = 50_000_000  # refuse larger images before decoding (decompression bombs)
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are composited onto white
RESIZE_FILTERS = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC,
                  "bilinear": Image.Resampling.BILINEAR}  # by the names configs use


# Errors of the destination, not of the data: the next output would fail the same way.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                           errno.EFBIG, errno.ENOENT, errno.ENOTDIR})


class OutputError(OSError):
    """An output could not be written because of its destination (full disk, read-only folder,
    no permission); ``filename`` is the output's path. Jobs stop on it instead of failing file
    after file."""

    def __init__(self, path: str | os.PathLike, error: OSError):
        super().__init__(error.errno, error.strerror or str(error), str(path))

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"

    def __reduce__(self):  # from a pool worker to its parent, as itself
        return _output_error, (self.filename, self.errno, self.strerror)


def _output_error(filename: str, number: int, strerror: str) -> OutputError:
    return OutputError(filename, OSError(number, strerror))


@contextlib.contextmanager
def output_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn an ``OSError`` of the destination (``OUTPUT_ERRNOS``) while writing ``path`` into ``OutputError``."""
    try:
        yield
    except OutputError:
        raise
    except OSError as error:
        if error.errno in OUTPUT_ERRNOS:
            raise OutputError(path, error) from error
        raise


class ImageReadError(Exception):
    """An input image could not be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def read_rgb(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load ``path`` as an 8-bit RGB image, upright, or raise ``ImageReadError``."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageReadError(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_size(path, image.size, max_pixels)
                image.load()
                image = ImageOps.exif_transpose(image)
                return to_rgb(image)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image, or a format Pillow cannot read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(path, f"refused as a possible decompression bomb ({error})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(path, f"corrupt or truncated image ({error})") from None


def read_label_map(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                   what: str = "label map") -> np.ndarray:
    """The (H, W) uint8 class ids of a label-map image (palette or gray PNG, pixel value = class
    id), or ``ImageReadError`` naming the file (``what`` names the kind of file in messages)."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_size(path, image.size, max_pixels)
                return label_map_from_pil(image)
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(path, f"{what} not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, f"unreadable {what} (not an image Pillow can read)") from None
    except ValueError as error:  # a colour image, or 16-bit values beyond 255
        raise ImageReadError(path, str(error)) from None
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(path, f"unreadable {what} ({error})") from None


def _check_size(path: Path, size: tuple[int, int], max_pixels: int | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageReadError(path, f"invalid size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            path, f"{width}x{height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels} (raise it with --max_pixels)"
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited onto ``ALPHA_BACKGROUND``)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_high_depth_to_uint8(image), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_uint8(image: Image.Image) -> np.ndarray:
    """Scale a 16/32-bit integer or float gray image to 0..255."""
    values = np.asarray(image)
    if image.mode == "F":
        if values.size and (np.nanmin(values) < 0 or np.nanmax(values) > 1):
            raise ValueError("float image with values outside [0, 1]")
        return np.round(np.nan_to_num(values) * 255).astype(np.uint8)
    values = values.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError("32-bit image with values outside the 16-bit range")
    if image.mode == "I" and (not values.size or values.max() <= 255):
        return values.astype(np.uint8)
    return ((values + 128) // 257).astype(np.uint8)


def thumbnail(image: Image.Image | np.ndarray, height: int) -> np.ndarray:
    """(height, w, 3) uint8 RGB with the aspect ratio kept, for grids of pictures: enlarged without
    smoothing (small images keep visible pixels), reduced with Lanczos."""
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    size = (max(1, round(image.width * height / image.height)), height)
    resample = Image.Resampling.LANCZOS if image.height > height else Image.Resampling.NEAREST
    return np.asarray(image.convert("RGB").resize(size, resample))


@dataclass(frozen=True)
class InputFile:
    """One file found under an input folder."""

    path: Path  # absolute path
    relpath: str  # path relative to the input folder, with "/" separators


def walk_files(root: str | os.PathLike) -> Iterator[InputFile]:
    """Every non-hidden file under ``root``, recursively, in sorted order."""
    root = Path(root)
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            yield InputFile(path=path.resolve(), relpath=path.relative_to(root).as_posix())


def file_fingerprint(path: str | os.PathLike, content: bool = False) -> str:
    """What identifies a file's version: size and modification time, plus a SHA-256 of its bytes
    when ``content`` (small files such as ``.sem``, whose rewrites can keep size and time). Taken
    before a file is read at planning and after it is read at work, equal values mean both reads
    saw the same version."""
    stat = os.stat(path)
    text = f"{stat.st_size}:{stat.st_mtime_ns}"
    if content:
        text += ":" + hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return text


CHANGED_SINCE_PLANNED = "changed since the run was planned (size, time or content); run again to use its new content"


def is_image_name(name: str) -> bool:
    """Whether the file name has an image extension we try to read."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def check_output_not_inside_input(input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                                  input_flag: str = "--input_dir") -> None:
    """Refuse an output folder equal to or inside the input folder (it would mix with inputs)."""
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    if output_dir == input_dir or input_dir in output_dir.parents:
        raise ValueError(
            f"--output_dir {output_dir} is inside {input_flag} {input_dir}; choose an output "
            f"folder outside the input folder so that inputs are never touched"
        )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (``.<name>.<random><suffix>.tmp``, see
    ``remove_partial_writes``); once the caller has written it, flush it to disk and rename it onto
    ``path``. Errors of the destination raise ``OutputError``."""
    path = Path(path)
    with output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix + PARTIAL_SUFFIX
        )
        os.close(descriptor)
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual permissions
        with output_errors(path):  # a full disk shows in the caller's writes
            yield Path(temporary)
            _flush_to_disk(temporary)
            os.replace(temporary, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


PARTIAL_SUFFIX = ".tmp"  # what the temporary files of atomic writes end with


def _flush_to_disk(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_partial_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that atomic writes killed mid-way left under ``folder`` (hidden
    files ending in ``.tmp``); call it only while no other job writes there (``output_lock``)."""
    removed = []
    for current, subfolders, files in os.walk(folder):
        for name in files:
            if name.startswith(".") and name.endswith(PARTIAL_SUFFIX):
                path = Path(current) / name
                with contextlib.suppress(FileNotFoundError), output_errors(path):
                    path.unlink()
                    removed.append(path)
    return sorted(removed)


def give_usual_permissions(path: str | os.PathLike) -> None:
    """Permissions as a plain ``open``/``mkdir`` would give under the umask (``mkstemp`` and
    ``mkdtemp`` make files 0600 and folders 0700, private to their owner)."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    """Write ``value`` as indented UTF-8 JSON to ``path`` atomically."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_image(image: Image.Image, path: str | os.PathLike, **save_kwargs: Any) -> None:
    """Save a Pillow image atomically; the format follows ``path``'s extension."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    with atomic_path(path) as temporary:
        image.save(temporary, format=image_format, **save_kwargs)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Load a JSON file, or ``default`` when it does not exist."""
    path = Path(path)
    if not path.exists():
        return default
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
