"""A folder that mixes good images of every awkward kind with broken files."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import VOC_IMAGES

# name -> (width, height) of the upright image the encoder must see
GOOD = {
    "photo.jpg": (500, 281),
    "gray.png": (40, 30),
    "rgba.png": (41, 29),
    "palette_transparent.png": (33, 35),
    "gray16.png": (37, 31),
    "rgb16.png": (24, 20),
    "cmyk.jpg": (30, 20),
    "exif_rotated.jpg": (20, 48),  # stored 48x20 with orientation 6 (rotate 90 degrees)
    "sub/dir/nested.webp": (26, 22),
    "float.tif": (16, 12),
}
BAD = {
    "corrupt.jpg": "not an image",
    "truncated.jpg": "corrupt or truncated",
    "empty.png": "empty file",
    "text_named.png": "not an image",
    "huge.png": "exceeds the limit",
}
IGNORED = ["notes.txt"]
MAX_PIXELS = 150_000  # the photo has 140500 pixels, huge.png 400x400 = 160000


def write_png16_rgb(path: Path, values: np.ndarray) -> None:
    """A 16-bit RGB PNG, written by hand (Pillow cannot write this mode)."""
    height, width, _ = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def make_mixed_folder(root: Path) -> Path:
    """Create the mixed folder under ``root`` and return it."""
    rng = np.random.RandomState(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub" / "dir").mkdir(parents=True)
    photo = sorted(VOC_IMAGES.glob("*.jpg"))[0]
    shutil.copy(photo, root / "photo.jpg")
    Image.fromarray(rng.randint(0, 255, (30, 40), dtype=np.uint8), "L").save(root / "gray.png")
    Image.fromarray(rng.randint(0, 255, (29, 41, 4), dtype=np.uint8), "RGBA").save(root / "rgba.png")
    palette_image = Image.fromarray(rng.randint(0, 16, (35, 33), dtype=np.uint8), "P")
    palette_image.putpalette(list(rng.randint(0, 255, 48)))
    palette_image.save(root / "palette_transparent.png", transparency=3)
    gray16 = (rng.randint(0, 65535, (31, 37))).astype(np.uint16)
    Image.fromarray(gray16).save(root / "gray16.png")
    write_png16_rgb(root / "rgb16.png", rng.randint(0, 65535, (20, 24, 3)).astype(np.uint16))
    Image.new("CMYK", (30, 20), (10, 200, 30, 40)).save(root / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.randint(0, 255, (20, 48, 3), dtype=np.uint8)).save(root / "exif_rotated.jpg", exif=exif)
    Image.fromarray(rng.randint(0, 255, (22, 26, 3), dtype=np.uint8)).save(root / "sub" / "dir" / "nested.webp")
    Image.fromarray(rng.rand(12, 16).astype(np.float32), "F").save(root / "float.tif")
    (root / "corrupt.jpg").write_bytes(bytes(rng.randint(0, 256, 2000, dtype=np.uint8)))
    data = photo.read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text_named.png").write_text("this is not a picture\n")
    Image.new("RGB", (400, 400), (10, 20, 30)).save(root / "huge.png")
    (root / "notes.txt").write_text("a text file next to the images\n")
    return root
