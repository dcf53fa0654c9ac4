"""The ``.sem`` file, format versions 1 and 2: header, caption, label-map payload, CRC-32.

One file holds one image's label map (lossless, or on a reduced grid in compact mode), its
caption and optionally the decoding seed; its size is the rate we report
(``models.rate.bits_per_pixel``). The byte layout and the checks a reader makes, in order, are
specified in ``docs/bitstream.md``, "Layout"; the codes inside come from ``label_map_coder``,
``grid`` and ``caption_coder``. Version 2 is version 1 plus the ADE20K and named label sets; a
writer uses the lowest version that holds its code, so VOC and uint8 files are version 1.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.bitstream.caption_coder import (CAPTION_NONE, CAPTION_WORDS, MAX_CAPTION_BYTES, decode_caption,
                                            encode_caption)
from models.bitstream.errors import BitstreamError
from models.bitstream.grid import distinct_labels, downsample_label_map, grid_shape, upsample_label_map
from models.bitstream.label_map_coder import decode_indices, encode_indices
from models.imageio import DEFAULT_MAX_PIXELS, ImageReadError, atomic_write_bytes, read_label_map
from models.layout import SEM_SUFFIX, find_label_set
from models.palettes import ADE20K, LABEL_SET_NAME, LABEL_SETS, UINT8, VOC, LabelSet
from models.rate import bits_per_pixel
from models.semantic_code import SemanticCode

MAGIC = b"SEM"
VERSION = 2  # the newest format version; a writer uses the lowest one that holds its label set
VERSIONS = tuple(range(1, VERSION + 1))  # the versions this build reads
MAX_SIDE = 65_535  # largest width or height a file may declare
# Largest width * height a file may declare: the image readers' limit, so that any label map the
# project can read fits in a file. The number is part of the format (docs/bitstream.md).
MAX_PIXELS = DEFAULT_MAX_PIXELS
MAX_SEED = 2**64 - 1
MAX_FILE_BYTES = 256 * 2**20  # a .sem file larger than this is refused before reading it
SET_IDS = {VOC.name: 0, UINT8.name: 1, ADE20K.name: 2}  # built-in label set -> id (flags bits 4-7)
SET_NAMES = {set_id: name for name, set_id in SET_IDS.items()}
NAMED_SET_ID = 3  # a named (custom) set: its name follows the label list
SET_VERSIONS = {0: 1, 1: 1, 2: 2, NAMED_SET_ID: 2}  # label set id -> first format version that has it
FLAG_COMPACT, FLAG_SEED = 0x01, 0x02
HEADER_MIN = len(MAGIC) + 1 + 1 + 1 + 1 + 1 + 1 + 4  # magic, version, flags, w, h, labels, crc


@dataclass(frozen=True)
class SemInfo:
    """What a ``.sem`` file holds, without the decoded map."""

    version: int  # the format version of the file
    width: int
    height: int
    grid: int | None  # cells on the long side in compact mode; None: lossless
    grid_width: int
    grid_height: int
    label_set: str  # the name of the label set (models.palettes)
    labels: tuple[int, ...]  # the labels that occur in the coded map, ascending
    caption: str
    caption_coder: int
    seed: int | None
    num_bytes: int  # the whole file
    caption_bytes: int
    map_bytes: int

    @property
    def mode(self) -> str:
        """The coding mode: "lossless" or "compact"."""
        return "lossless" if self.grid is None else "compact"

    @property
    def bits_per_pixel(self) -> float:
        """The rate of the whole file relative to the original image's size."""
        return bits_per_pixel(self.num_bytes, self.width, self.height)

    def to_dict(self) -> dict:
        """The fields ``python -m models.bitstream info`` prints."""
        return {"version": self.version, "width": self.width, "height": self.height, "mode": self.mode,
                "grid": self.grid, "bytes": self.num_bytes, "bits_per_pixel": self.bits_per_pixel,
                "map_bytes": self.map_bytes, "caption_bytes": self.caption_bytes,
                "labels": list(self.labels), "label_set": self.label_set,
                "caption": self.caption, "seed": self.seed}


def _varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, low bits first, high bit set on all but the last."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


class _Reader:
    """Reads the fields of a file in order; running out of bytes is a BitstreamError."""

    def __init__(self, data: bytes, end: int) -> None:
        self.data, self.position, self.end = data, 0, end

    def take(self, count: int, what: str) -> bytes:
        """The next ``count`` bytes (``what`` names the field in the error)."""
        if count > self.end - self.position:
            raise BitstreamError(f"truncated file (it ends inside the {what})")
        self.position += count
        return self.data[self.position - count: self.position]

    def varint(self, what: str, low: int, high: int) -> int:
        """The next LEB128 number, which must lie in ``low..high``."""
        value = 0
        for shift in range(0, 70, 7):
            byte = self.take(1, what)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if shift and not byte:
                    raise BitstreamError(f"non-canonical {what} (an overlong number: it ends in a zero byte)")
                break
        else:
            raise BitstreamError(f"invalid {what} (a number longer than 10 bytes)")
        if not low <= value <= high:
            raise BitstreamError(f"invalid {what} {value} (allowed: {low}..{high})")
        return value


def _label_set_id(code: SemanticCode) -> tuple[int, LabelSet | None]:
    """The id of ``code``'s label set and that set if it is built in (None: a named set, whose
    values may be any byte); a built-in set must allow every value of the map."""
    name = code.label_set
    if name in LABEL_SETS:
        if name not in SET_IDS:
            raise ValueError(f"label set {name!r} has no id in .sem format version {VERSION}")
        LABEL_SETS[name].check(distinct_labels(code.label_map))  # not the map: check copies it to int64
        return SET_IDS[name], LABEL_SETS[name]
    if not isinstance(name, str) or not LABEL_SET_NAME.fullmatch(name):
        raise ValueError(f"label set name {name!r}: a built-in set ({', '.join(SET_IDS)}) or 1-64 "
                         f"letters, digits and . _ + - starting with a letter or digit")
    return NAMED_SET_ID, None


def _check_size_and_seed(code: SemanticCode) -> None:
    """The map's size and the seed must fit the format's fields."""
    if not (1 <= code.width <= MAX_SIDE and 1 <= code.height <= MAX_SIDE
            and code.width * code.height <= MAX_PIXELS):
        raise ValueError(f"label map of {code.width}x{code.height} is outside the format's limits "
                         f"(sides 1..{MAX_SIDE}, at most {MAX_PIXELS} pixels)")
    if code.seed is not None and not 0 <= code.seed <= MAX_SEED:
        raise ValueError(f"seed {code.seed} is outside 0..2^64-1")


def _header(code: SemanticCode, grid: int | None, set_id: int, labels: np.ndarray) -> bytes:
    """Every field before the label-map code (docs/bitstream.md, "Layout")."""
    caption_coder, caption_payload = encode_caption(code.caption)
    flags = (FLAG_COMPACT if grid is not None else 0) | (FLAG_SEED if code.seed is not None else 0)
    header = bytearray(MAGIC + bytes([SET_VERSIONS[set_id], flags | caption_coder << 2 | set_id << 4]))
    header += _varint(code.width) + _varint(code.height)
    if grid is not None:
        header += _varint(grid)
    header += bytes([len(labels) - 1]) + labels.astype(np.uint8).tobytes()
    if set_id == NAMED_SET_ID:
        name = code.label_set.encode("ascii")
        header += bytes([len(name)]) + name
    if code.seed is not None:
        header += _varint(code.seed)
    if caption_coder != CAPTION_NONE:
        header += _varint(len(caption_payload)) + caption_payload
    return bytes(header)


def encode_code(code: SemanticCode, grid: int | None = None) -> bytes:
    """The ``.sem`` bytes of ``code`` (its label set included): lossless, or compact with ``grid``
    cells on the long side. The file has the lowest format version that holds its label set."""
    _check_size_and_seed(code)
    set_id, label_set = _label_set_id(code)
    coded_map = code.label_map
    if grid is not None:
        grid = min(int(grid), max(code.width, code.height))
        grid_width, grid_height = grid_shape(code.width, code.height, grid)
        coded_map = downsample_label_map(code.label_map, grid_width, grid_height,
                                         label_set.void if label_set is not None else None)
    labels = distinct_labels(coded_map)
    label_index = np.zeros(256, dtype=np.uint8)
    label_index[labels] = np.arange(len(labels))
    indices = label_index[coded_map]  # (H, W) uint8: a byte per pixel, whatever the size
    body = _header(code, grid, set_id, labels) + encode_indices(indices, len(labels))
    return body + zlib.crc32(body).to_bytes(4, "big")


def _check_envelope(data: bytes) -> int:
    """Magic, version and CRC-32, checked before any field is trusted; returns the version."""
    if len(data) < len(MAGIC) + 1 or data[: len(MAGIC)] != MAGIC:
        raise BitstreamError("not a .sem file (wrong magic bytes)")
    version = data[len(MAGIC)]
    if version not in VERSIONS:
        raise BitstreamError(f"unknown format version {version} "
                             f"(this build reads versions {', '.join(map(str, VERSIONS))})")
    if len(data) < HEADER_MIN:
        raise BitstreamError(f"truncated file ({len(data)} bytes)")
    if zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "big"):
        raise BitstreamError("integrity check failed (CRC-32 mismatch): the file is corrupted "
                             "or truncated")
    return version


def _parse_flags(flags: int, version: int) -> tuple[int, int]:
    """(caption coder, label set id) of a flags byte; both must exist in the file's version."""
    caption_coder, set_id = (flags >> 2) & 0x3, flags >> 4
    if SET_VERSIONS.get(set_id, VERSION + 1) > version or caption_coder > CAPTION_WORDS:
        raise BitstreamError(f"invalid flags byte 0x{flags:02x} "
                             f"(unknown label set or caption coder in version {version})")
    if SET_VERSIONS[set_id] != version:
        raise BitstreamError(f"non-canonical version {version} (files of label set id {set_id} are "
                             f"version {SET_VERSIONS[set_id]})")
    return caption_coder, set_id


def _parse_labels(reader: _Reader, set_id: int) -> tuple[tuple[int, ...], str]:
    """The label list (strictly ascending, each allowed by the set) and the label set's name."""
    labels = tuple(reader.take(reader.take(1, "label count")[0] + 1, "label list"))
    if set_id == NAMED_SET_ID:
        name = reader.take(reader.take(1, "label set name length")[0], "label set name")
        text = name.decode("ascii", errors="replace")
        if not LABEL_SET_NAME.fullmatch(text) or text in LABEL_SETS:
            raise BitstreamError(f"invalid label set name {name!r} (1-64 letters, digits and . _ + -, "
                                 f"not a built-in name)")
        return _check_order(labels, text), text
    name = SET_NAMES[set_id]
    try:
        LABEL_SETS[name].check(np.asarray(labels, dtype=np.uint8))
    except ValueError as error:
        raise BitstreamError(f"invalid label list {list(labels)}: {error}") from None
    return _check_order(labels, name), name


def _check_order(labels: tuple[int, ...], name: str) -> tuple[int, ...]:
    """``labels``, which must be strictly ascending."""
    if any(a >= b for a, b in zip(labels, labels[1:])):
        raise BitstreamError(f"invalid label list {list(labels)} for label set {name} (not ascending)")
    return labels


def _parse(data: bytes) -> tuple[SemInfo, bytes]:
    """The header fields and caption of a file, and its label-map payload."""
    version = _check_envelope(data)
    reader = _Reader(data, len(data) - 4)
    reader.take(len(MAGIC) + 1, "magic")
    flags = reader.take(1, "flags")[0]
    caption_coder, set_id = _parse_flags(flags, version)
    width = reader.varint("width", 1, MAX_SIDE)
    height = reader.varint("height", 1, MAX_SIDE)
    if width * height > MAX_PIXELS:
        raise BitstreamError(f"declared size {width}x{height} exceeds {MAX_PIXELS} pixels")
    grid = reader.varint("grid size", 1, max(width, height)) if flags & FLAG_COMPACT else None
    grid_width, grid_height = grid_shape(width, height, grid) if grid else (width, height)
    labels, label_set = _parse_labels(reader, set_id)
    seed = reader.varint("seed", 0, MAX_SEED) if flags & FLAG_SEED else None
    caption_payload = b""
    if caption_coder != CAPTION_NONE:
        length = reader.varint("caption length", 1, MAX_CAPTION_BYTES)
        caption_payload = reader.take(length, "caption")
    map_payload = data[reader.position: reader.end]
    if len(labels) == 1 and map_payload:
        raise BitstreamError("invalid file (map data after a single-label map)")
    info = SemInfo(version=version, width=width, height=height, grid=grid, grid_width=grid_width,
                   grid_height=grid_height, label_set=label_set, labels=labels,
                   caption=decode_caption(caption_coder, caption_payload),
                   caption_coder=caption_coder, seed=seed, num_bytes=len(data),
                   caption_bytes=len(caption_payload), map_bytes=len(map_payload))
    return info, map_payload


def _check_labels_occur(indices: np.ndarray, labels: tuple[int, ...]) -> None:
    """Every label of the list must occur in the coded map (a writer lists exactly those)."""
    present = distinct_labels(indices)
    if len(present) < len(labels):
        missing = sorted(set(labels) - {labels[index] for index in present})
        raise BitstreamError(f"non-canonical label list (labels {missing} never occur in the coded map)")


def inspect_code(data: bytes) -> SemInfo:
    """The header and caption of a ``.sem`` file, checked, without decoding the map (nor checking it)."""
    return _parse(bytes(data))[0]


def decode_code(data: bytes) -> SemanticCode:
    """The semantic code stored in ``data``, with its label set's name; compact maps are
    upsampled to full size."""
    info, map_payload = _parse(bytes(data))
    indices = decode_indices(map_payload, info.grid_height, info.grid_width, len(info.labels))
    _check_labels_occur(indices, info.labels)
    label_map = np.asarray(info.labels, dtype=np.uint8)[indices]
    if info.grid is not None:
        label_map = upsample_label_map(label_map, info.width, info.height)
    return SemanticCode(label_map=label_map, caption=info.caption, seed=info.seed,
                        label_set=info.label_set)


def read_sem_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of a ``.sem`` file; an unreadable or absurdly large file is a BitstreamError."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise BitstreamError(f"{path}: file too large ({path.stat().st_size} bytes)")
        return path.read_bytes()
    except OSError as error:
        raise BitstreamError(f"{path}: cannot read ({error.strerror or error})") from None


def read_sem(path: str | os.PathLike) -> SemanticCode:
    """Decode the ``.sem`` file at ``path``; errors name the file."""
    data = read_sem_bytes(path)
    try:
        return decode_code(data)
    except BitstreamError as error:
        raise BitstreamError(f"{path}: {error}") from None


def read_code_file(path: str | os.PathLike) -> SemanticCode:
    """The semantic code a file holds: a ``.sem`` file, or a label-map image (palette or gray
    PNG, pixel value = class id) with an empty caption and its folder's label set
    (``layout.find_label_set``). Any problem is an ``ImageReadError`` naming the file, with the
    reason in ``reason``."""
    if Path(path).suffix.lower() != SEM_SUFFIX:
        label_map = read_label_map(path)
        try:
            label_set = find_label_set(path)
        except ValueError as error:
            raise ImageReadError(path, str(error)) from None
        return SemanticCode(label_map, "", label_set=label_set.name)
    try:
        return read_sem(path)
    except BitstreamError as error:
        raise ImageReadError(path, str(error).removeprefix(f"{path}: ")) from None


def write_sem(path: str | os.PathLike, code: SemanticCode, grid: int | None = None) -> int:
    """Write ``code`` to ``path`` atomically; returns the file size in bytes."""
    data = encode_code(code, grid=grid)
    atomic_write_bytes(path, data)
    return len(data)

