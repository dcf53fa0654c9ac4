"""The ``.sem`` file: one image's label map, caption and seed in a compact, exact, versioned format.

The size of this file is the rate we report (``models.rate.bits_per_pixel``). The byte layout,
the context model and the upsampling rule of compact mode are specified in ``docs/bitstream.md``;
this module is the reference implementation. Everything here is integer arithmetic, so a file
decodes identically on every machine.

- The label map is coded with a binary adaptive range coder driven by our context model: each
  pixel is compared with the distinct labels of its causal neighbours in a fixed order, one
  binary decision each ("same as the left pixel?", "same as the one above?", ...), and only a
  pixel that matches none of them (a new region) spells out its label. Every decision is
  predicted by several context models mixed logistically and refined by an adaptive
  probability map (context mixing, M. Mahoney, "Adaptive weighing of context models for
  lossless data compression", 2005; the coder is a carry-propagating range coder,
  G. N. N. Martin, 1979). The per-decision loop runs in numba: decoding is adaptive, so each
  decision depends on the previous one, and per-symbol calls into a library coder from Python
  would cost several seconds for a 512x512 map.
- Compact mode codes the map on a reduced grid, with a deterministic upsampling rule back to
  full size (bilinear vote of the four nearest grid cells).
- The caption is coded with a static word model (English word frequencies from ``wordfreq``)
  over the same binary range coder, with an escape to UTF-8 bytes for anything else.

Command line::

    python -m models.bitstream encode MAP.png OUT.sem [--caption TEXT] [--seed N] [--grid G]
    python -m models.bitstream decode IN.sem MAP.png
    python -m models.bitstream info IN.sem
"""

from __future__ import annotations

import argparse
import decimal
import functools
import json
import os
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from models.imageio import atomic_write_bytes
from models.palettes import NUM_VOC_CLASSES, VOID_LABEL
from models.rate import bits_per_pixel
from models.semantic_code import SemanticCode

MAGIC = b"SEM"
VERSION = 1
SEM_SUFFIX = ".sem"  # the file extension of semantic codes
UPSAMPLE_STRIP_PIXELS = 1 << 20  # compact-mode upsampling works on strips of about this many pixels
MAX_SIDE = 65_535  # largest width or height a file may declare
MAX_PIXELS = 50_000_000  # largest width * height a file may declare (same as image reading)
MAX_CAPTION_BYTES = 65_535  # longest caption, in UTF-8 bytes
MAX_SEED = 2**64 - 1

LABEL_SETS = {0: "voc", 1: "uint8"}  # label set id -> name; "voc": ids 0..20 and 255 (void)
CAPTION_NONE, CAPTION_UTF8, CAPTION_WORDS = 0, 1, 2  # caption coder ids


class BitstreamError(ValueError):
    """A ``.sem`` file is invalid (truncated, corrupted, hostile or from an unknown version)."""


# ---------------------------------------------------------------------------------------------
# Binary range coder (integer, byte-oriented; probabilities are P(bit = 1) in 1..65535 / 65536)
# ---------------------------------------------------------------------------------------------

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
def _encode_bit(state: np.ndarray, out: np.ndarray, p1: int, bit: int) -> np.ndarray:
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
def _finish(state: np.ndarray, out: np.ndarray) -> np.ndarray:
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
def _new_encoder() -> tuple:
    """Encoder state [low, range, cache, cache_size, bytes written, skip first] and buffer."""
    state = np.zeros(6, dtype=np.int64)
    state[1], state[3], state[5] = 0xFFFFFFFF, 1, 1
    return state, np.zeros(256, dtype=np.uint8)


@njit(cache=True)
def _next_byte(state: np.ndarray, data: np.ndarray) -> int:
    position = state[2]
    state[2] += 1
    return data[position] if position < data.shape[0] else 0


@njit(cache=True)
def _start_decoder(data: np.ndarray) -> np.ndarray:
    """Decoder state [code, range, read position]."""
    state = np.zeros(3, dtype=np.int64)
    state[1] = 0xFFFFFFFF
    for _ in range(4):
        state[0] = (state[0] << 8) | _next_byte(state, data)
    return state


@njit(cache=True)
def _decode_bit(state: np.ndarray, data: np.ndarray, p1: int) -> int:
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


# ---------------------------------------------------------------------------------------------
# Logistic domain tables (built with exact decimal arithmetic, identical on every platform)
# ---------------------------------------------------------------------------------------------

STRETCH_MAX = 3071  # logit domain in units of 1/256: logits up to +-12


@functools.cache
def _logistic_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """squash[d + 3071] = 65536 / (1 + e^(-d/256)), its inverse stretch[p], count reciprocals."""
    context = decimal.Context(prec=28, rounding=decimal.ROUND_HALF_EVEN)
    squash = np.empty(2 * STRETCH_MAX + 1, dtype=np.int64)
    for index, d in enumerate(range(-STRETCH_MAX, STRETCH_MAX + 1)):
        exp = context.exp(context.divide(decimal.Decimal(-d), decimal.Decimal(256)))
        value = context.divide(decimal.Decimal(65536), 1 + exp).to_integral_value(context=context)
        squash[index] = min(65535, max(1, int(value)))
    stretch = np.searchsorted(squash, np.arange(65536), side="left") - STRETCH_MAX
    stretch = np.clip(stretch, -STRETCH_MAX, STRETCH_MAX).astype(np.int64)
    reciprocal = np.array([(2 << 16) // (2 * n + 3) for n in range(1024)], dtype=np.int64)
    return squash, stretch, reciprocal


# ---------------------------------------------------------------------------------------------
# Label-map context model (format version 1; every constant here is part of the format)
# ---------------------------------------------------------------------------------------------

NUM_MODELS = 7  # context models mixed per decision
TABLE_BITS = 16  # each context model hashes into 2^16 adaptive probabilities
COUNT_LIMIT = 127  # adaptation rate 1 / (n + 1.5) stops falling at n = 127
MIXER_RATE = 24  # mixer learning rate (weights are 16.16 fixed point)
MIXER_CONTEXTS = 1024
APM_CONTEXTS = 4096
APM_RATE = 6
EDGE_REACH = 6  # how far along a row above the model looks for the edge of a region
PAD = 8  # columns of padding on each side of the working array (>= EDGE_REACH + 2)


@njit(cache=True)
def _hash(a: int, b: int) -> int:
    h = (a * 0x9E3779B1 + b * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x2C1B3C6D) & 0xFFFFFFFF
    return h ^ (h >> 12)


@njit(cache=True)
def _edge_offset(grid: np.ndarray, row: int, column: int, label: int) -> int:
    """Signed distance from ``column`` to the edge of the ``label`` region in ``row``."""
    if grid[row, column] == label:
        for d in range(1, EDGE_REACH + 1):
            if grid[row, column + d] != label:
                return d
        return EDGE_REACH + 1
    for d in range(1, EDGE_REACH + 1):
        if grid[row, column - d] == label:
            return -d
    return -(EDGE_REACH + 1)


@njit(cache=True)
def _candidates(grid: np.ndarray, r: int, c: int, out: np.ndarray) -> int:
    """Distinct labels of the causal neighbours, in the order W N NE NW WW NN NNE NEE NWW NNW."""
    count = 0
    for dr, dc in ((0, -1), (-1, 0), (-1, 1), (-1, -1), (0, -2), (-2, 0), (-2, 1), (-1, 2),
                   (-1, -2), (-2, -1)):
        value = grid[r + dr, c + dc]
        if value < 0:
            continue
        seen = False
        for q in range(count):
            if out[q] == value:
                seen = True
        if not seen:
            out[count] = value
            count += 1
    return count


@njit(cache=True)
def _contexts(grid: np.ndarray, r: int, c: int, label: int, rank: int, run: int,
              ctx: np.ndarray) -> tuple:
    """Fill ``ctx`` with the hashed contexts of "pixel == label"; return (mixer, apm) contexts."""
    g = grid
    w, n, nw, ne = g[r, c - 1], g[r - 1, c], g[r - 1, c - 1], g[r - 1, c + 1]
    ww, nn, nne, nee = g[r, c - 2], g[r - 2, c], g[r - 2, c + 1], g[r - 1, c + 2]
    same = ((n == label) | ((nw == label) << 1) | ((ne == label) << 2) | ((ww == label) << 3)
            | ((nn == label) << 4) | ((nne == label) << 5) | ((nee == label) << 6)
            | ((g[r - 1, c - 2] == label) << 7) | ((g[r - 2, c - 1] == label) << 8)
            | ((g[r - 2, c + 2] == label) << 9) | ((g[r - 2, c - 2] == label) << 10)
            | ((w == label) << 11))
    pairs = ((w == n) | ((n == ne) << 1) | ((nw == n) << 2) | ((w == nw) << 3)
             | ((ne == nee) << 4) | ((n == nn) << 5) | ((ne == nne) << 6) | ((ww == w) << 7))
    edge1 = _edge_offset(g, r - 1, c, label)
    edge2 = _edge_offset(g, r - 2, c, label)
    run_q = min(run, 15)
    ctx[0] = _hash(rank, same & 0x3F)
    ctx[1] = _hash(rank + 8, same)
    ctx[2] = _hash(rank + 16, pairs * 64 + (same & 0x3F))
    ctx[3] = _hash(rank + 24, (edge1 + 8) * 32 + (edge2 - edge1 + 16) + 1024 * (w == label)
                   + 2048 * (n == label))
    ctx[4] = _hash(rank + 32, label * 65536 + (w + 1) * 256 + (n + 1) + (run_q << 20))
    ctx[5] = _hash(rank + 40, (same & 0x7) + 8 * run_q + 256 * (edge1 + 8) + label * 8192)
    ctx[6] = _hash(rank + 48, label * 512 + (w + 1) * 2 + (same & 1))
    mixer = (rank * 256 + (same & 0xF) * 16 + (pairs & 0xF)) % MIXER_CONTEXTS
    apm = (rank * 1024 + (same & 0x3FF)) % APM_CONTEXTS
    return mixer, apm


@njit(cache=True)
def _predict(ctx, probs, weights, apm, mixer, apm_ctx, inputs, squash, stretch) -> tuple:
    """P(decision = 1) in 1..65535 and what the update needs (mixer output, APM bucket)."""
    mask = (1 << TABLE_BITS) - 1
    for m in range(NUM_MODELS):
        inputs[m] = stretch[min(max(probs[m, ctx[m] & mask] >> 16, 1), 65535)]
    inputs[NUM_MODELS] = 256  # bias input
    dot = 0
    for m in range(NUM_MODELS + 1):
        dot += weights[mixer, m] * inputs[m]
    dot = min(max(dot >> 16, -STRETCH_MAX), STRETCH_MAX)
    p_mix = squash[dot + STRETCH_MAX]
    bucket = min((dot + 3072) // 192, 31)  # 33 APM knots across the logit domain
    frac = dot + 3072 - bucket * 192
    p_apm = (apm[apm_ctx, bucket] * (192 - frac) + apm[apm_ctx, bucket + 1] * frac) // (192 * 16)
    return min(max((p_mix + 3 * p_apm) // 4, 1), 65535), p_mix, bucket, frac


@njit(cache=True)
def _update(bit, ctx, probs, counts, weights, apm, mixer, apm_ctx, inputs, p_mix, bucket, frac,
            reciprocal) -> None:
    """Adapt the mixer weights, the APM knot nearest to the prediction, and every context."""
    error = (bit << 16) - p_mix
    for m in range(NUM_MODELS + 1):
        weights[mixer, m] += (inputs[m] * error * MIXER_RATE) >> 20
    knot = bucket if frac < 96 else bucket + 1
    apm[apm_ctx, knot] += ((bit << 20) - apm[apm_ctx, knot]) >> APM_RATE
    mask = (1 << TABLE_BITS) - 1
    for m in range(NUM_MODELS):
        i = ctx[m] & mask
        n = counts[m, i]
        probs[m, i] += (((bit << 32) - probs[m, i]) * reciprocal[n]) >> 16
        if n < COUNT_LIMIT:
            counts[m, i] = n + 1


@njit(cache=True)
def _new_model(squash: np.ndarray) -> tuple:
    """Fresh model state: context tables, mixer weights, APM (identity), escape tree."""
    probs = np.full((NUM_MODELS, 1 << TABLE_BITS), 1 << 31, dtype=np.int64)
    counts = np.zeros((NUM_MODELS, 1 << TABLE_BITS), dtype=np.int32)
    weights = np.full((MIXER_CONTEXTS, NUM_MODELS + 1), (1 << 16) // 3, dtype=np.int64)
    apm = np.empty((APM_CONTEXTS, 33), dtype=np.int64)
    for knot in range(33):
        apm[:, knot] = squash[min(max((knot - 16) * 192, -STRETCH_MAX), STRETCH_MAX)
                              + STRETCH_MAX] * 16
    escape = np.full(512, 32768, dtype=np.int64)
    return probs, counts, weights, apm, escape


@njit(cache=True)
def _code_escape(value, depth, escape, decoding, enc, out, dec, data) -> tuple:
    """A label index that no neighbour has, MSB first through an adaptive binary tree."""
    node = 1
    for level in range(depth - 1, -1, -1):
        p = min(max(escape[node], 1), 65535)
        if decoding:
            bit = _decode_bit(dec, data, p)
        else:
            bit = (value >> level) & 1
            out = _encode_bit(enc, out, p, bit)
        escape[node] += ((bit << 16) - escape[node]) >> 4
        node = 2 * node + bit
    return node - (1 << depth), out


@njit(cache=True)
def _code_labels(grid, num_labels, decoding, data, squash, stretch, reciprocal) -> tuple:
    """Encode the label indices in the padded ``grid``, or decode ``data`` into it.

    Returns (payload, status); status 1 means the data decoded to an impossible label.
    """
    rows, cols = grid.shape[0] - 2, grid.shape[1] - 2 * PAD
    probs, counts, weights, apm, escape = _new_model(squash)
    depth = 0
    while (1 << depth) < num_labels:
        depth += 1
    ctx = np.zeros(NUM_MODELS, dtype=np.int64)
    inputs = np.zeros(NUM_MODELS + 1, dtype=np.int64)
    cands = np.zeros(16, dtype=np.int64)
    enc, out = _new_encoder()
    dec = _start_decoder(data) if decoding else enc
    for y in range(rows):
        r, run = y + 2, 0
        for x in range(cols):
            c = x + PAD
            value = grid[r, c]
            found = -1
            count = _candidates(grid, r, c, cands)
            for k in range(count):
                label = cands[k]
                mixer, apm_ctx = _contexts(grid, r, c, label, min(k, 3), run, ctx)
                p, p_mix, bucket, frac = _predict(ctx, probs, weights, apm, mixer, apm_ctx,
                                                  inputs, squash, stretch)
                if decoding:
                    bit = _decode_bit(dec, data, p)
                else:
                    bit = 1 if value == label else 0
                    out = _encode_bit(enc, out, p, bit)
                _update(bit, ctx, probs, counts, weights, apm, mixer, apm_ctx, inputs, p_mix,
                        bucket, frac, reciprocal)
                if bit:
                    found = label
                    break
            if found < 0:
                found, out = _code_escape(value, depth, escape, decoding, enc, out, dec, data)
                if decoding and (found >= num_labels or found in cands[:count]):
                    return out[:0], 1  # an escape never names a neighbour's label
            grid[r, c] = found
            run = run + 1 if grid[r, c - 1] == found else 0
    return (out[:0] if decoding else _finish(enc, out)), 0


def _padded(height: int, width: int) -> np.ndarray:
    """The working array: two rows above and ``PAD`` columns each side hold -1 (outside)."""
    return np.full((height + 2, width + 2 * PAD), -1, dtype=np.int16)


def encode_indices(indices: np.ndarray, num_labels: int) -> bytes:
    """Code an (H, W) map of label indices in 0..num_labels-1 (empty when only one label)."""
    if num_labels <= 1:
        return b""
    grid = _padded(*indices.shape)
    grid[2:, PAD:-PAD] = indices
    payload, _ = _code_labels(grid, num_labels, False, np.zeros(0, dtype=np.uint8),
                              *_logistic_tables())
    return payload.tobytes()


def decode_indices(payload: bytes, height: int, width: int, num_labels: int) -> np.ndarray:
    """Inverse of ``encode_indices``: the (H, W) uint8 index map."""
    if num_labels <= 1:
        return np.zeros((height, width), dtype=np.uint8)
    grid = _padded(height, width)
    data = np.frombuffer(payload, dtype=np.uint8)
    _, status = _code_labels(grid, num_labels, True, data, *_logistic_tables())
    if status:
        raise BitstreamError("corrupted label map data (decodes to an impossible label)")
    return grid[2:, PAD:-PAD].astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Compact mode: the map on a reduced grid, and the normative upsampling rule
# ---------------------------------------------------------------------------------------------


def grid_shape(width: int, height: int, grid: int) -> tuple[int, int]:
    """(grid width, grid height): ``grid`` cells on the long side, the short side rounded."""
    if grid < 1:
        raise ValueError(f"grid must be at least 1, got {grid}")
    long_side, short_side = max(width, height), min(width, height)
    cells_long = min(grid, long_side)
    cells_short = max(1, min(short_side, (cells_long * short_side + long_side // 2) // long_side))
    return (cells_long, cells_short) if width >= height else (cells_short, cells_long)


def _sample_positions(size: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel centre: the grid cells before and after it and the weight of the latter.

    The centre of pixel i lies at (2i + 1) * cells / (2 * size) - 1/2 in grid cells; weights are
    integers out of 2 * size.
    """
    scaled = (2 * np.arange(size, dtype=np.int64) + 1) * cells - size  # position * 2 * size
    before = np.clip(scaled // (2 * size), 0, cells - 1)
    weight = np.where(scaled < 0, 0, scaled - before * 2 * size)
    after = np.minimum(before + 1, cells - 1)
    return before, after, np.minimum(weight, 2 * size)


def upsample_label_map(grid_map: np.ndarray, width: int, height: int) -> np.ndarray:
    """Full-size label map from a grid map: a bilinear vote of the four nearest cells.

    Each of the four cells around a pixel centre votes for its label with its bilinear weight
    (exact integers); the label with the largest total wins, ties going to the earliest cell in
    the order top-left, top-right, bottom-left, bottom-right. Pixels are independent, so rows are
    computed in strips of about a million pixels: memory stays bounded whatever the size.
    """
    grid_map = np.asarray(grid_map)
    rows_before, rows_after, row_weight = _sample_positions(height, grid_map.shape[0])
    cols_before, cols_after, col_weight = _sample_positions(width, grid_map.shape[1])
    output = np.empty((height, width), dtype=grid_map.dtype)
    strip = max(1, UPSAMPLE_STRIP_PIXELS // width)
    for top in range(0, height, strip):
        rows = slice(top, min(height, top + strip))
        output[rows] = _vote(grid_map, rows_before[rows], rows_after[rows], row_weight[rows],
                             cols_before, cols_after, col_weight, height, width)
    return output


def _vote(grid_map: np.ndarray, rows_before: np.ndarray, rows_after: np.ndarray, row_weight: np.ndarray,
          cols_before: np.ndarray, cols_after: np.ndarray, col_weight: np.ndarray,
          height: int, width: int) -> np.ndarray:
    """The upsampling vote for a strip of rows (see ``upsample_label_map``)."""
    wy1, wx1 = row_weight[:, None], col_weight[None, :]
    wy0, wx0 = 2 * height - wy1, 2 * width - wx1
    labels = np.stack([grid_map[rows_before][:, cols_before], grid_map[rows_before][:, cols_after],
                       grid_map[rows_after][:, cols_before], grid_map[rows_after][:, cols_after]])
    weights = np.stack(np.broadcast_arrays(wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1))
    votes = np.zeros(labels.shape, dtype=np.int64)  # (4, h, W): total weight of each corner's label
    for corner in range(4):
        votes += (labels == labels[corner][None]) * weights[corner][None]
    best = np.argmax(votes, axis=0)  # first maximum: the tie-break order above
    return np.take_along_axis(labels, best[None], axis=0)[0]


def downsample_label_map(label_map: np.ndarray, grid_width: int, grid_height: int,
                         void_label: int | None = VOID_LABEL) -> np.ndarray:
    """The most frequent label of each grid cell, ignoring void unless a cell is all void."""
    height, width = label_map.shape
    cell_rows = (np.arange(height) * grid_height) // height
    cell_cols = (np.arange(width) * grid_width) // width
    cells = (cell_rows[:, None] * grid_width + cell_cols[None, :]).ravel()
    values = label_map.ravel().astype(np.int64)
    weights = np.ones(values.shape) if void_label is None else (values != void_label) * 1.0
    counts = np.bincount(cells * 256 + values, weights=weights + 1e-6,
                         minlength=grid_width * grid_height * 256)
    return np.argmax(counts.reshape(grid_height, grid_width, 256), axis=2).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Caption coder: a static word model over the binary range coder, UTF-8 escapes for the rest
# ---------------------------------------------------------------------------------------------

VOCABULARY_SIZE = 32_763  # most frequent all-lowercase ASCII English words (wordfreq "en")
END, SPACE, CAPITAL, ESCAPE = 0, 1, 2, 3  # special tokens; word i is token 4 + i
NUM_SPECIALS = 4
TOKEN_BITS = 15  # tokens are coded as 15-bit indices through a static binary tree
# Token class weights (per mille) after each kind of token: [END, SPACE, CAPITAL, ESCAPE, words].
AFTER_START, AFTER_WORD, AFTER_SPACE, AFTER_ESCAPE, AFTER_CAPITAL = range(5)
CLASS_WEIGHTS = (
    (2, 2, 300, 96, 600),
    (80, 800, 5, 100, 15),
    (5, 5, 40, 50, 900),
    (200, 450, 10, 190, 150),
    (1, 1, 1, 1, 996),
)
WORD_PATTERN = re.compile(r"[a-z]+")
LETTERS = re.compile(r"[A-Za-z]+")


@functools.cache
def _vocabulary() -> tuple[dict[str, int], tuple[str, ...], np.ndarray]:
    """Word -> index, the words, and integer weights (frequency * 2^32, at least 1)."""
    import wordfreq  # noqa: PLC0415 (only the caption coder needs it)

    context = decimal.Context(prec=28)
    words: list[str] = []
    weights: list[int] = []
    for centibels, bucket in enumerate(wordfreq.get_frequency_list("en")):
        weight = max(1, int(context.power(10, decimal.Decimal(-centibels) / 100) * 2**32))
        for word in bucket:
            if WORD_PATTERN.fullmatch(word) and len(words) < VOCABULARY_SIZE:
                words.append(word)
                weights.append(weight)
    return {word: i for i, word in enumerate(words)}, tuple(words), np.array(weights, np.int64)


def vocabulary_fingerprint() -> int:
    """CRC-32 of the word list and weights; files name the model by the constant below."""
    _, words, weights = _vocabulary()
    return zlib.crc32(weights.tobytes(), zlib.crc32("\n".join(words).encode("ascii")))


WORD_MODEL_FINGERPRINT = 0xD88D3F68  # wordfreq 3.x "en"; files name the model by this list


def _tree(leaf_weights: np.ndarray, bits: int) -> np.ndarray:
    """Static binary tree over 2^bits leaves: P(next bit = 1) * 65536 at each inner node."""
    levels = [np.zeros(1 << bits, dtype=np.int64)]
    levels[0][: leaf_weights.shape[0]] = leaf_weights
    while levels[-1].shape[0] > 1:
        levels.append(levels[-1].reshape(-1, 2).sum(axis=1))
    nodes = np.full(1 << bits, 32768, dtype=np.int64)
    for depth in range(bits):  # nodes 2^depth .. 2^(depth+1)-1 split the sums of level bits-depth
        parents, children = levels[bits - depth], levels[bits - depth - 1].reshape(-1, 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            p1 = np.where(parents > 0, (children[:, 1] << 16) // np.maximum(parents, 1), 32768)
        nodes[1 << depth: 2 << depth] = np.clip(p1, 1, 65535)
    return nodes


@functools.cache
def _token_trees() -> np.ndarray:
    """(5, 2^15) node probabilities: one static token distribution per preceding token kind."""
    _, _, word_weights = _vocabulary()
    total = int(word_weights.sum())
    trees = []
    for end, space, capital, escape, words in CLASS_WEIGHTS:
        specials = np.array([end, space, capital, escape], dtype=np.int64) * total
        trees.append(_tree(np.concatenate([specials, word_weights * words]), TOKEN_BITS))
    return np.stack(trees)


@functools.cache
def _lead_byte_tree() -> np.ndarray:
    """Static distribution of the first UTF-8 byte of an escaped character."""
    weights = np.ones(256, dtype=np.int64)
    weights[0x20:0x7F] = 8
    weights[[ord(ch) for ch in ",.'-"]] = 60
    weights[ord("0"):ord("9") + 1] = 20
    weights[ord("a"):ord("z") + 1] = 10
    weights[0xC2:0xF5] = 3
    return _tree(weights, 8)


class _BitWriter:
    """Python-side access to the range encoder, for the few symbols of a caption."""

    def __init__(self):
        self.state, self.out = _new_encoder()

    def bit(self, bit: int, p1: int) -> None:
        self.out = _encode_bit(self.state, self.out, int(p1), bit)

    def symbol(self, value: int, tree: np.ndarray, bits: int) -> None:
        node = 1
        for level in range(bits - 1, -1, -1):
            bit = (value >> level) & 1
            self.bit(bit, tree[node])
            node = 2 * node + bit

    def finish(self) -> bytes:
        return _finish(self.state, self.out).tobytes()


class _BitReader:
    """Python-side access to the range decoder."""

    def __init__(self, payload: bytes):
        self.data = np.frombuffer(payload, dtype=np.uint8)
        self.state = _start_decoder(self.data)

    def bit(self, p1: int) -> int:
        return _decode_bit(self.state, self.data, int(p1))

    def symbol(self, tree: np.ndarray, bits: int) -> int:
        node = 1
        for _ in range(bits):
            node = 2 * node + self.bit(tree[node])
        return node - (1 << bits)


def _known_prefix(run: str, index: dict[str, int]) -> str:
    """The longest prefix of a run of letters that is a vocabulary word (possibly capitalised)."""
    body = run[0].lower() + run[1:]
    upper = next((i for i, ch in enumerate(body) if ch.isupper()), len(body))
    for length in range(min(upper, 32), 0, -1):
        if body[:length] in index:
            return run[:length]
    return ""


def _caption_tokens(caption: str) -> list[tuple[int, str]]:
    """(token, escaped character or "") pairs; concatenating their texts gives the caption."""
    index, _, _ = _vocabulary()
    tokens: list[tuple[int, str]] = []
    position = 0
    while position < len(caption):
        letters = LETTERS.match(caption, position)
        word = _known_prefix(letters.group(), index) if letters else ""
        if caption[position] == " ":
            tokens.append((SPACE, ""))
        elif word:
            if word[0].isupper():
                tokens.append((CAPITAL, ""))
            tokens.append((NUM_SPECIALS + index[word.lower()], ""))
        else:
            tokens.append((ESCAPE, caption[position]))
        position += max(1, len(word)) if caption[position] != " " else 1
    return tokens + [(END, "")]


def _next_state(token: int) -> int:
    return {SPACE: AFTER_SPACE, CAPITAL: AFTER_CAPITAL, ESCAPE: AFTER_ESCAPE}.get(token, AFTER_WORD)


def encode_caption_words(caption: str) -> bytes:
    """Code ``caption`` with the static word model (any text; unknown parts are escaped)."""
    trees, lead = _token_trees(), _lead_byte_tree()
    writer, state = _BitWriter(), AFTER_START
    for token, character in _caption_tokens(caption):
        writer.symbol(token, trees[state], TOKEN_BITS)
        if token == ESCAPE:
            utf8 = character.encode("utf-8")
            writer.symbol(utf8[0], lead, 8)
            for byte in utf8[1:]:
                for level in range(5, -1, -1):
                    writer.bit((byte >> level) & 1, 32768)
        state = _next_state(token)
    return writer.finish()


def _read_character(reader: _BitReader) -> str:
    """One escaped character: its UTF-8 lead byte, then 6 payload bits per continuation byte."""
    lead = reader.symbol(_lead_byte_tree(), 8)
    length = 1 if lead < 0x80 else 2 if 0xC2 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 \
        else 4 if 0xF0 <= lead < 0xF5 else 0
    if not length:
        raise BitstreamError("corrupted caption (invalid UTF-8 lead byte)")
    utf8 = bytearray([lead])
    for _ in range(length - 1):
        payload = 0
        for _ in range(6):
            payload = 2 * payload + reader.bit(32768)
        utf8.append(0x80 | payload)
    try:
        return utf8.decode("utf-8")
    except UnicodeDecodeError:
        raise BitstreamError("corrupted caption (invalid UTF-8 sequence)") from None


def decode_caption_words(payload: bytes) -> str:
    """Inverse of ``encode_caption_words``."""
    trees, (_, words, _) = _token_trees(), _vocabulary()
    reader, state, pieces, size = _BitReader(payload), AFTER_START, [], 0
    while True:
        token = reader.symbol(trees[state], TOKEN_BITS)
        if token == END:
            return "".join(pieces)
        if state == AFTER_CAPITAL and token < NUM_SPECIALS:
            raise BitstreamError("corrupted caption (a capital mark not followed by a word)")
        if token - NUM_SPECIALS >= len(words):
            raise BitstreamError("corrupted caption (a word index outside the vocabulary)")
        if token == SPACE:
            piece = " "
        elif token == CAPITAL:
            piece = ""
        elif token == ESCAPE:
            piece = _read_character(reader)
        else:
            piece = words[token - NUM_SPECIALS]
            piece = piece[0].upper() + piece[1:] if state == AFTER_CAPITAL else piece
        size += len(piece.encode("utf-8"))
        if size > MAX_CAPTION_BYTES:
            raise BitstreamError(f"corrupted caption (longer than {MAX_CAPTION_BYTES} bytes)")
        pieces.append(piece)
        state = _next_state(token)


@functools.cache
def word_model_available() -> bool:
    """Whether the installed word list is the one that caption coder 2 was defined with."""
    try:
        return vocabulary_fingerprint() == WORD_MODEL_FINGERPRINT
    except ImportError:
        return False


def encode_caption(caption: str) -> tuple[int, bytes]:
    """(caption coder id, payload): the word model when it is smaller, else plain UTF-8."""
    try:
        utf8 = caption.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"the caption is not valid Unicode text ({error.reason})") from None
    if not utf8:
        return CAPTION_NONE, b""
    if len(utf8) > MAX_CAPTION_BYTES:
        raise ValueError(f"the caption has {len(utf8)} UTF-8 bytes; at most {MAX_CAPTION_BYTES}")
    if word_model_available() and len(utf8) <= 4096:  # longer text is not a caption
        words = encode_caption_words(caption)
        if len(words) < len(utf8):
            return CAPTION_WORDS, words
    return CAPTION_UTF8, utf8


def decode_caption(coder: int, payload: bytes) -> str:
    """Inverse of ``encode_caption``."""
    if coder == CAPTION_NONE:
        return ""
    if coder == CAPTION_UTF8:
        try:
            return payload.decode("utf-8")
        except UnicodeDecodeError:
            raise BitstreamError("corrupted caption (invalid UTF-8)") from None
    if not word_model_available():
        raise BitstreamError("the caption uses the wordfreq English word model, but the installed "
                             "wordfreq data differs; install wordfreq 3.1")
    return decode_caption_words(payload)


# ---------------------------------------------------------------------------------------------
# The file: header, caption, map payload, CRC-32
# ---------------------------------------------------------------------------------------------

FLAG_COMPACT, FLAG_SEED = 0x01, 0x02
HEADER_MIN = len(MAGIC) + 1 + 1 + 1 + 1 + 1 + 1 + 4  # magic, version, flags, w, h, labels, crc


@dataclass(frozen=True)
class SemInfo:
    """What a ``.sem`` file holds, without the decoded map."""

    width: int
    height: int
    grid: int | None  # cells on the long side in compact mode; None: lossless
    grid_width: int
    grid_height: int
    label_set: str
    labels: tuple[int, ...]  # the labels that occur in the coded map, ascending
    caption: str
    caption_coder: int
    seed: int | None
    num_bytes: int  # the whole file
    caption_bytes: int
    map_bytes: int

    @property
    def mode(self) -> str:
        return "lossless" if self.grid is None else "compact"

    @property
    def bits_per_pixel(self) -> float:
        return bits_per_pixel(self.num_bytes, self.width, self.height)

    def to_dict(self) -> dict:
        """The fields ``python -m models.bitstream info`` prints."""
        return {"width": self.width, "height": self.height, "mode": self.mode, "grid": self.grid,
                "bytes": self.num_bytes, "bits_per_pixel": self.bits_per_pixel,
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

    def __init__(self, data: bytes, end: int):
        self.data, self.position, self.end = data, 0, end

    def take(self, count: int, what: str) -> bytes:
        if count > self.end - self.position:
            raise BitstreamError(f"truncated file (it ends inside the {what})")
        self.position += count
        return self.data[self.position - count: self.position]

    def varint(self, what: str, low: int, high: int) -> int:
        value = 0
        for shift in range(0, 70, 7):
            byte = self.take(1, what)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
        else:
            raise BitstreamError(f"invalid {what} (a number longer than 10 bytes)")
        if not low <= value <= high:
            raise BitstreamError(f"invalid {what} {value} (allowed: {low}..{high})")
        return value


def _label_set_id(labels: np.ndarray, label_set: str | None) -> int:
    """The label set that holds ``labels`` (VOC when possible unless one is named)."""
    voc = bool(np.all((labels < NUM_VOC_CLASSES) | (labels == VOID_LABEL)))
    name = label_set or ("voc" if voc else "uint8")
    ids = {value: key for key, value in LABEL_SETS.items()}
    if name not in ids:
        raise ValueError(f"unknown label set {name!r}; choose one of {sorted(ids)}")
    if name == "voc" and not voc:
        raise ValueError(f"labels {labels.tolist()} are not all VOC ids (0..20, 255 = void)")
    return ids[name]


def _label_allowed(label_set: int, label: int) -> bool:
    return label_set != 0 or label < NUM_VOC_CLASSES or label == VOID_LABEL


def encode_code(code: SemanticCode, grid: int | None = None, label_set: str | None = None) -> bytes:
    """The ``.sem`` bytes of ``code``: lossless, or compact with ``grid`` cells on the long side."""
    height, width = code.label_map.shape
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE and width * height <= MAX_PIXELS):
        raise ValueError(f"label map of {width}x{height} is outside the format's limits "
                         f"(sides 1..{MAX_SIDE}, at most {MAX_PIXELS} pixels)")
    if code.seed is not None and not 0 <= code.seed <= MAX_SEED:
        raise ValueError(f"seed {code.seed} is outside 0..2^64-1")
    set_id = _label_set_id(np.unique(code.label_map), label_set)
    coded_map = code.label_map
    if grid is not None:
        grid = min(int(grid), max(width, height))
        grid_width, grid_height = grid_shape(width, height, grid)
        coded_map = downsample_label_map(code.label_map, grid_width, grid_height,
                                         VOID_LABEL if set_id == 0 else None)
    labels = np.unique(coded_map)
    caption_coder, caption_payload = encode_caption(code.caption)
    flags = (FLAG_COMPACT if grid is not None else 0) | (FLAG_SEED if code.seed is not None else 0)
    header = bytearray(MAGIC + bytes([VERSION, flags | caption_coder << 2 | set_id << 4]))
    header += _varint(width) + _varint(height)
    if grid is not None:
        header += _varint(grid)
    header += bytes([len(labels) - 1]) + labels.astype(np.uint8).tobytes()
    if code.seed is not None:
        header += _varint(code.seed)
    if caption_coder != CAPTION_NONE:
        header += _varint(len(caption_payload)) + caption_payload
    indices = np.searchsorted(labels, coded_map).astype(np.uint8)
    body = bytes(header) + encode_indices(indices, len(labels))
    return body + zlib.crc32(body).to_bytes(4, "big")


def _check_envelope(data: bytes) -> None:
    """Magic, version and CRC-32, checked before any field is trusted."""
    if len(data) < len(MAGIC) + 1 or data[: len(MAGIC)] != MAGIC:
        raise BitstreamError("not a .sem file (wrong magic bytes)")
    if data[len(MAGIC)] != VERSION:
        raise BitstreamError(f"unknown format version {data[len(MAGIC)]} "
                             f"(this build reads version {VERSION})")
    if len(data) < HEADER_MIN:
        raise BitstreamError(f"truncated file ({len(data)} bytes)")
    if zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "big"):
        raise BitstreamError("integrity check failed (CRC-32 mismatch): the file is corrupted "
                             "or truncated")


def _parse(data: bytes) -> tuple[SemInfo, bytes]:
    """The header fields and caption of a file, and its label-map payload."""
    _check_envelope(data)
    reader = _Reader(data, len(data) - 4)
    reader.take(len(MAGIC) + 1, "magic")
    flags = reader.take(1, "flags")[0]
    caption_coder, set_id = (flags >> 2) & 0x3, flags >> 4
    if set_id not in LABEL_SETS or caption_coder > CAPTION_WORDS:
        raise BitstreamError(f"invalid flags byte 0x{flags:02x} "
                             f"(unknown label set or caption coder)")
    width = reader.varint("width", 1, MAX_SIDE)
    height = reader.varint("height", 1, MAX_SIDE)
    if width * height > MAX_PIXELS:
        raise BitstreamError(f"declared size {width}x{height} exceeds {MAX_PIXELS} pixels")
    grid = reader.varint("grid size", 1, max(width, height)) if flags & FLAG_COMPACT else None
    grid_width, grid_height = grid_shape(width, height, grid) if grid else (width, height)
    labels = tuple(reader.take(reader.take(1, "label count")[0] + 1, "label list"))
    if any(a >= b for a, b in zip(labels, labels[1:])) or \
            not all(_label_allowed(set_id, label) for label in labels):
        raise BitstreamError(f"invalid label list {list(labels)} "
                             f"for label set {LABEL_SETS[set_id]}")
    seed = reader.varint("seed", 0, MAX_SEED) if flags & FLAG_SEED else None
    caption_payload = b""
    if caption_coder != CAPTION_NONE:
        length = reader.varint("caption length", 1, MAX_CAPTION_BYTES)
        caption_payload = reader.take(length, "caption")
    map_payload = data[reader.position: reader.end]
    if len(labels) == 1 and map_payload:
        raise BitstreamError("invalid file (map data after a single-label map)")
    info = SemInfo(width=width, height=height, grid=grid, grid_width=grid_width,
                   grid_height=grid_height, label_set=LABEL_SETS[set_id], labels=labels,
                   caption=decode_caption(caption_coder, caption_payload),
                   caption_coder=caption_coder, seed=seed, num_bytes=len(data),
                   caption_bytes=len(caption_payload), map_bytes=len(map_payload))
    return info, map_payload


def inspect_code(data: bytes) -> SemInfo:
    """The header and caption of a ``.sem`` file, checked, without decoding the map."""
    return _parse(bytes(data))[0]


def decode_code(data: bytes) -> SemanticCode:
    """The semantic code stored in ``data``; compact maps are upsampled to full size."""
    info, map_payload = _parse(bytes(data))
    indices = decode_indices(map_payload, info.grid_height, info.grid_width, len(info.labels))
    label_map = np.asarray(info.labels, dtype=np.uint8)[indices]
    if info.grid is not None:
        label_map = upsample_label_map(label_map, info.width, info.height)
    return SemanticCode(label_map=label_map, caption=info.caption, seed=info.seed)


MAX_FILE_BYTES = 256 * 2**20  # a .sem file larger than this is refused before reading it


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


def write_sem(path: str | os.PathLike, code: SemanticCode, grid: int | None = None) -> int:
    """Write ``code`` to ``path`` atomically; returns the file size in bytes."""
    data = encode_code(code, grid=grid)
    atomic_write_bytes(path, data)
    return len(data)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m models.bitstream",
                                     description="Encode, decode and inspect .sem files.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    encode = commands.add_parser("encode", help="label map PNG (+ caption) -> .sem",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    encode.add_argument("label_map", help="palette or gray PNG whose pixel values are class ids")
    encode.add_argument("output", help="the .sem file to write")
    encode.add_argument("--caption", default="", help="caption text")
    encode.add_argument("--seed", type=int, default=None, help="decoding seed to store")
    encode.add_argument("--grid", type=int, default=None,
                        help="compact mode: grid cells on the long side; None: lossless")
    decode = commands.add_parser("decode", help=".sem -> label map PNG; prints the caption",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    decode.add_argument("input", help="the .sem file")
    decode.add_argument("label_map", help="the palette PNG to write (full size)")
    info = commands.add_parser("info", help="print a .sem file's fields as JSON",
                               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    info.add_argument("input", help="the .sem file")
    return parser.parse_args(argv)


def _read_label_map(path: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    from models.palettes import label_map_from_pil  # noqa: PLC0415

    try:
        with Image.open(path) as image:
            return label_map_from_pil(image)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"{path}: cannot read a label map ({error})") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "encode":
            code = SemanticCode(_read_label_map(args.label_map), args.caption, args.seed)
            size = write_sem(args.output, code, grid=args.grid)
            print(f"{args.output}: {size} bytes, "
                  f"{bits_per_pixel(size, code.width, code.height):.5f} bits per pixel")
        elif args.command == "decode":
            from models.imageio import atomic_save_image  # noqa: PLC0415
            from models.palettes import label_map_to_pil  # noqa: PLC0415

            code = read_sem(args.input)
            atomic_save_image(label_map_to_pil(code.label_map), args.label_map)
            print(code.caption)
        else:
            data = read_sem_bytes(args.input)
            try:
                print(json.dumps(inspect_code(data).to_dict(), ensure_ascii=False))
            except BitstreamError as error:
                raise BitstreamError(f"{args.input}: {error}") from None
    except (BitstreamError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
