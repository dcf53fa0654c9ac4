"""Bad .sem files: every one raises BitstreamError with a clear message, quickly."""

import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.bitstream import BitstreamError, decode_code, encode_code, inspect_code, label_map_coder
from models.bitstream.sem_file import MAX_SIDE, _varint
from models.semantic_code import SemanticCode


# The label sets of the small files: VOC (version 1), ADE20K and a named set (version 2), each with
# a third label that the set allows (VOC: void).
THIRD_LABEL = {"voc": 255, "ade20k": 150, "room-v2": 201}


def small_file(grid=None, label_set="voc") -> bytes:
    """A real file small enough to mutate exhaustively: two regions, a third label (VOC: void), a
    caption, a seed; version 1 for VOC, version 2 for the other sets."""
    label_map = np.zeros((12, 20), dtype=np.uint8)
    label_map[3:9, 5:14] = 15
    label_map[2, 4:15] = THIRD_LABEL[label_set]
    return encode_code(SemanticCode(label_map, "a person in a room", seed=9, label_set=label_set), grid=grid)


def with_crc(body: bytes) -> bytes:
    """A hostile file: arbitrary content with a valid integrity check."""
    return body + zlib.crc32(body).to_bytes(4, "big")


def header(width: int, height: int, labels=(0, 15), flags: int = 0, grid=None, version: int = 1) -> bytes:
    """The fields of a file up to the label list, as a hostile writer would put them."""
    sizes = _varint(width) + _varint(height)
    sizes += _varint(grid) if grid is not None else b""
    return b"SEM" + bytes([version, flags]) + sizes + bytes([len(labels) - 1, *labels])


def named(name: bytes, labels=(0, 200)) -> bytes:
    """A version-2 header of a named label set, up to the name (length byte first)."""
    return header(10, 10, labels=labels, flags=0x30, version=2) + bytes([len(name)]) + name


def test_wrong_magic_and_unknown_version():
    data = small_file()
    with pytest.raises(BitstreamError, match="not a .sem file"):
        decode_code(b"\x89PNG" + data[4:])
    with pytest.raises(BitstreamError, match="unknown format version 3"):
        decode_code(data[:3] + b"\x03" + data[4:])
    with pytest.raises(BitstreamError, match="unknown format version 0"):
        decode_code(data[:3] + b"\x00" + data[4:])
    with pytest.raises(BitstreamError, match="not a .sem file"):
        decode_code(b"")


def test_version_2_reads_every_version_1_file():
    """Version 2 is version 1 plus label sets: a version-1 file marked as version 2 means the same."""
    data = small_file(grid=6)
    relabelled = decode_code(with_crc(data[:3] + b"\x02" + data[4:-4]))
    original = decode_code(data)
    assert np.array_equal(relabelled.label_map, original.label_map)
    assert (relabelled.caption, relabelled.seed, relabelled.label_set) == ("a person in a room", 9, "voc")


@pytest.mark.parametrize("label_set", list(THIRD_LABEL))
def test_every_truncation_is_refused(label_set):
    data = small_file(label_set=label_set)
    for length in range(len(data)):
        with pytest.raises(BitstreamError):
            decode_code(data[:length])


@pytest.mark.parametrize("grid, label_set", [(None, "voc"), (8, "voc"), (None, "ade20k"), (8, "room-v2")])
def test_every_single_bit_flip_is_caught(grid, label_set):
    data = small_file(grid, label_set)
    for position in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[position // 8] ^= 1 << (position % 8)
        with pytest.raises(BitstreamError):
            decode_code(bytes(flipped))


@pytest.mark.parametrize("body, message", [
    (header(MAX_SIDE + 1, 10), "invalid width"),
    (header(10, 0), "invalid height"),
    (header(60_000, 60_000), "exceeds"),
    (header(10, 10, labels=(15, 0)), "invalid label list"),
    (header(10, 10, labels=(0, 21)), "invalid label list"),
    (header(10, 10, flags=0xF0), "invalid flags"),
    (header(10, 10, flags=0x0C), "invalid flags"),
    (header(10, 10, flags=0x01, grid=0), "invalid grid size 0"),
    (header(10, 10, flags=0x01, grid=11), "invalid grid size 11"),
    (header(10, 10, flags=0x04) + b"\x05ab", "truncated file"),
    (b"SEM\x01\x00" + b"\xff" * 12, "longer than 10 bytes"),
    (header(10, 10, labels=(3,)) + b"\x01", "map data after a single-label map"),
    (header(10, 10, flags=0x04) + b"\x02\xff\xfe", "invalid UTF-8"),
    # Version 2: the ADE20K set (id 2) and named sets (id 3) exist only from version 2 on.
    (header(10, 10, flags=0x20), "invalid flags"),
    (header(10, 10, labels=(0, 200), flags=0x30) + b"\x03abc", "invalid flags"),
    (header(10, 10, flags=0x40, version=2), "invalid flags"),
    (header(10, 10, labels=(0, 21), version=2), "invalid label list"),
    (header(10, 10, labels=(0, 151), flags=0x20, version=2), "invalid label list .*151"),
    (header(10, 10, labels=(0, 255), flags=0x20, version=2), "invalid label list .*255"),
    (header(10, 10, labels=(7, 3), flags=0x30, version=2) + b"\x01a", "invalid label list"),
    (named(b""), "invalid label set name"),
    (named(b"bad name"), "invalid label set name"),
    (named(b"ade20k"), "invalid label set name"),
    (named(b"caf\xc3\xa9"), "invalid label set name"),
    (named(b"x" * 65), "invalid label set name"),
    (named(b"x" * 64)[:-10], "truncated file \\(it ends inside the label set name\\)"),
    (header(10, 10, labels=(0, 200), flags=0x30, version=2), "truncated file"),
])
def test_hostile_headers_with_a_valid_crc(body, message):
    with pytest.raises(BitstreamError, match=message):
        decode_code(with_crc(body))


def test_absurd_sizes_are_refused_before_allocating(monkeypatch):
    def no_allocation(*args, **kwargs):
        raise AssertionError("the decoder allocated a map for an absurd size")

    monkeypatch.setattr(label_map_coder, "_padded", no_allocation)
    with pytest.raises(BitstreamError, match="exceeds"):
        decode_code(with_crc(header(65_535, 65_535) + b"\x00" * 8))


def test_label_map_data_that_decodes_to_an_impossible_label():
    # Three labels need a 2-bit escape tree; zero bytes drive the first escape to index 3.
    with pytest.raises(BitstreamError, match="impossible label"):
        decode_code(with_crc(header(4, 4, labels=(0, 1, 2)) + b"\x01" + b"\x00" * 15))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_files_with_a_valid_crc(data):
    """Mutated content that passes the CRC: decoding either works or raises BitstreamError."""
    label_set = data.draw(st.sampled_from(list(THIRD_LABEL)))
    original = bytearray(small_file(grid=data.draw(st.sampled_from([None, 6])), label_set=label_set))[:-4]
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(original) - 1))
        action = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set":
            original[position] = data.draw(st.integers(0, 255))
        elif action == "insert":
            original.insert(position, data.draw(st.integers(0, 255)))
        elif len(original) > 1:
            del original[position]
    try:
        code = decode_code(with_crc(bytes(original)))
    except BitstreamError as error:
        assert str(error)
        return
    info = inspect_code(with_crc(bytes(original)))
    assert code.label_map.shape == (info.height, info.width)
    assert set(np.unique(code.label_map)) <= set(info.labels)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_random_bytes(data):
    with pytest.raises(BitstreamError):
        decode_code(data)
    with pytest.raises(BitstreamError):
        decode_code(b"SEM\x01" + data)
    with pytest.raises(BitstreamError):
        decode_code(b"SEM\x02" + data)
