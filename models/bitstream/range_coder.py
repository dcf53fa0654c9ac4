"""The binary adaptive range coder under every code of a ``.sem`` file (label map and caption).

A carry-propagating range coder (G. N. N. Martin, "Range encoding: an algorithm for removing
redundancy from a digitised message", 1979) in the byte-oriented form of LZMA's: 32-bit range,
64-bit low, renormalisation by bytes. Probabilities are P(bit = 1) in 1..65535 / 65536 and all
arithmetic is on integers, so a code decodes identically on every machine (``docs/bitstream.md``,
"Range coder"; every constant here is part of format version 1).

The per-bit functions run in numba because the label-map coder calls them from its own numba
loop; ``BitWriter`` and ``BitReader`` give Python code (the caption coder) the same coder.
numba's cache does not notice edits to this file in the cached code of callers in other modules
(``label_map_coder``): delete their ``__pycache__`` entries after changing anything here.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from models.bitstream.errors import BitstreamError

TOP = 1 << 24  # renormalise when the range falls below this
PROB_BITS = 16


@njit(cache=True)
def _put_byte(state: np.ndarray, out: np.ndarray, byte: int) -> np.ndarray:
    """Append one byte to ``out`` (grown when full); the first byte of a stream is always 0."""
    if state[5] == 1:  # skip it: the decoder implies it
        state[5] = 0
        return out
    if state[4] >= out.shape[0]:
        grown = np.zeros(out.shape[0] * 2, dtype=np.uint8)
        grown[: out.shape[0]] = out
        out = grown
    out[state[4]] = byte
    state[4] += 1
    return out


@njit(cache=True)
def _shift_low(state: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Move the top byte of ``low`` out, resolving a pending carry through 0xFF bytes."""
    low = state[0]
    if low < 0xFF000000 or low >= 0x100000000:
        carry = low >> 32
        byte = state[2]
        while True:
            out = _put_byte(state, out, (byte + carry) & 0xFF)
            byte = 0xFF
            state[3] -= 1
            if state[3] == 0:
                break
        state[2] = (low >> 24) & 0xFF
    state[3] += 1
    state[0] = (low & 0x00FFFFFF) << 8
    return out


@njit(cache=True)
def encode_bit(state: np.ndarray, out: np.ndarray, p1: int, bit: int) -> np.ndarray:
    """Encode ``bit`` with probability ``p1 / 65536`` of being 1."""
    bound = (state[1] >> PROB_BITS) * p1
    if bit:
        state[1] = bound
    else:
        state[0] += bound
        state[1] -= bound
    while state[1] < TOP:
        state[1] <<= 8
        out = _shift_low(state, out)
    return out


@njit(cache=True)
def finish_encoder(state: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Flush: pick the value in [low, low + range) with the most trailing zero bytes."""
    low, high = state[0], state[0] + state[1]
    for shift in (32, 24, 16, 8, 0):
        mask = (1 << shift) - 1
        value = (low + mask) & ~mask
        if value < high:
            state[0] = value
            break
    for _ in range(5):
        out = _shift_low(state, out)
    size = state[4]
    while size > 0 and out[size - 1] == 0:  # the decoder reads zeros past the end
        size -= 1
    return out[:size]


@njit(cache=True)
def new_encoder() -> tuple:
    """Encoder state [low, range, cache, cache_size, bytes written, skip first] and buffer."""
    state = np.zeros(6, dtype=np.int64)
    state[1], state[3], state[5] = 0xFFFFFFFF, 1, 1
    return state, np.zeros(256, dtype=np.uint8)


@njit(cache=True)
def _next_byte(state: np.ndarray, data: np.ndarray) -> int:
    """The next byte of ``data``, or 0 past its end (the encoder dropped trailing zeros)."""
    position = state[2]
    state[2] += 1
    return data[position] if position < data.shape[0] else 0


@njit(cache=True)
def start_decoder(data: np.ndarray) -> np.ndarray:
    """Decoder state [code, range, read position]."""
    state = np.zeros(3, dtype=np.int64)
    state[1] = 0xFFFFFFFF
    for _ in range(4):
        state[0] = (state[0] << 8) | _next_byte(state, data)
    return state


@njit(cache=True)
def decode_bit(state: np.ndarray, data: np.ndarray, p1: int) -> int:
    """Decode one bit coded with probability ``p1 / 65536`` of being 1."""
    bound = (state[1] >> PROB_BITS) * p1
    if state[0] < bound:
        state[1] = bound
        bit = 1
    else:
        state[0] -= bound
        state[1] -= bound
        bit = 0
    while state[1] < TOP:
        state[1] <<= 8
        state[0] = ((state[0] << 8) | _next_byte(state, data)) & 0xFFFFFFFF
    return bit


def check_code_end(data: np.ndarray, state: np.ndarray, what: str) -> None:
    """Refuse ``data`` unless it is exactly what ``finish_encoder`` writes for the bits decoded so far."""
    # Unless the first four bytes are all 0xFF (no encoder writes them), the decoder keeps
    # code = stream - low with 0 <= code < range in the window of the last four bytes it read. So
    # the stream equals the encoder's final value exactly when code is the distance from low to
    # the value finish_encoder picks; the data is then the encoder's code if it stops where the
    # decoder stopped reading and does not end in a zero byte (the encoder drops those).
    code, range_, position = (int(value) for value in state[:3])
    if data.shape[0] > position:
        raise BitstreamError(f"non-canonical {what} (bytes after its end)")
    if data.shape[0] and data[-1] == 0:
        raise BitstreamError(f"non-canonical {what} (it ends in a zero byte, which the encoder drops)")
    window = int.from_bytes(bytes(data[position - 4: position]).ljust(4, b"\0"), "big")
    low = (window - code) % (1 << 32)
    distance = next(-low % (1 << shift) for shift in (32, 24, 16, 8, 0) if -low % (1 << shift) < range_)
    if code != distance or bytes(data[:4]) == b"\xff" * 4:
        raise BitstreamError(f"non-canonical {what} (its last bytes are not the ones the encoder writes)")


class BitWriter:
    """Python-side access to the range encoder, for codes of a few symbols (a caption)."""

    def __init__(self) -> None:
        self.state, self.out = new_encoder()

    def bit(self, bit: int, p1: int) -> None:
        """Encode one bit with probability ``p1 / 65536`` of being 1."""
        self.out = encode_bit(self.state, self.out, int(p1), bit)

    def symbol(self, value: int, tree: np.ndarray, bits: int) -> None:
        """Encode a ``bits``-bit value MSB first through a static binary ``tree`` of P(1)."""
        node = 1
        for level in range(bits - 1, -1, -1):
            bit = (value >> level) & 1
            self.bit(bit, tree[node])
            node = 2 * node + bit

    def finish(self) -> bytes:
        """The code so far, flushed."""
        return finish_encoder(self.state, self.out).tobytes()


class BitReader:
    """Python-side access to the range decoder."""

    def __init__(self, payload: bytes) -> None:
        self.data = np.frombuffer(payload, dtype=np.uint8)
        self.state = start_decoder(self.data)

    def bit(self, p1: int) -> int:
        """Decode one bit coded with probability ``p1 / 65536`` of being 1."""
        return decode_bit(self.state, self.data, int(p1))

    def symbol(self, tree: np.ndarray, bits: int) -> int:
        """Decode a value written by ``BitWriter.symbol`` with the same ``tree``."""
        node = 1
        for _ in range(bits):
            node = 2 * node + self.bit(tree[node])
        return node - (1 << bits)
