"""The label-map code: context mixing over the binary range coder (``docs/bitstream.md``).

Each pixel, in raster order, is compared with the distinct labels of its causal neighbours in a
fixed order, one binary decision each ("same as the left pixel?", "same as the one above?",
...); only a pixel that matches none of them (a new region) spells out its label index through
an adaptive binary tree. Every decision is predicted by seven context models mixed logistically
and refined by an adaptive probability map (context mixing: M. Mahoney, "Adaptive weighing of
context models for lossless data compression", 2005). Every constant here is part of format
version 1, and all of it is integer arithmetic (the logistic tables are built with exact decimal
arithmetic), so a map decodes identically on every machine.

The per-decision loop runs in numba: decoding is adaptive, so each decision depends on the
previous one, and per-symbol calls into a coder from Python would cost several seconds for a
512x512 map.
"""

from __future__ import annotations

import decimal
import functools

import numpy as np
from numba import njit

from models.bitstream.errors import BitstreamError
from models.bitstream.range_coder import (check_code_end, decode_bit, encode_bit, finish_encoder, new_encoder,
                                          start_decoder)

STRETCH_MAX = 3071  # logit domain in units of 1/256: logits up to +-12
NUM_MODELS = 7  # context models mixed per decision
TABLE_BITS = 16  # each context model hashes into 2^16 adaptive probabilities
COUNT_LIMIT = 127  # adaptation rate 1 / (n + 1.5) stops falling at n = 127
MIXER_RATE = 24  # mixer learning rate (weights are 16.16 fixed point)
MIXER_CONTEXTS = 1024
APM_CONTEXTS = 4096
APM_RATE = 6
EDGE_REACH = 6  # how far along a row above the model looks for the edge of a region
PAD = 8  # columns of padding on each side of the working array (>= EDGE_REACH + 2)


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


@njit(cache=True)
def _hash(a: int, b: int) -> int:
    """32-bit integer hash of a (model, context) pair."""
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
def _predict(ctx: np.ndarray, probs: np.ndarray, weights: np.ndarray, apm: np.ndarray,
             mixer: int, apm_ctx: int, inputs: np.ndarray, squash: np.ndarray,
             stretch: np.ndarray) -> tuple:
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
def _update(bit: int, ctx: np.ndarray, probs: np.ndarray, counts: np.ndarray,
            weights: np.ndarray, apm: np.ndarray, mixer: int, apm_ctx: int, inputs: np.ndarray,
            p_mix: int, bucket: int, frac: int, reciprocal: np.ndarray) -> None:
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
def _code_escape(value: int, depth: int, escape: np.ndarray, decoding: bool, enc: np.ndarray,
                 out: np.ndarray, dec: np.ndarray, data: np.ndarray) -> tuple:
    """A label index that no neighbour has, MSB first through an adaptive binary tree."""
    node = 1
    for level in range(depth - 1, -1, -1):
        p = min(max(escape[node], 1), 65535)
        if decoding:
            bit = decode_bit(dec, data, p)
        else:
            bit = (value >> level) & 1
            out = encode_bit(enc, out, p, bit)
        escape[node] += ((bit << 16) - escape[node]) >> 4
        node = 2 * node + bit
    return node - (1 << depth), out


@njit(cache=True)
def _code_labels(grid: np.ndarray, num_labels: int, decoding: bool, data: np.ndarray,
                 squash: np.ndarray, stretch: np.ndarray, reciprocal: np.ndarray) -> tuple:
    """Encode the label indices in the padded ``grid``, or decode ``data`` into it.

    Returns (payload, status, coder state); status 1 means the data decoded to an impossible
    label; the state is the decoder's after the last pixel (``range_coder.check_code_end``).
    """
    rows, cols = grid.shape[0] - 2, grid.shape[1] - 2 * PAD
    probs, counts, weights, apm, escape = _new_model(squash)
    depth = 0
    while (1 << depth) < num_labels:
        depth += 1
    ctx = np.zeros(NUM_MODELS, dtype=np.int64)
    inputs = np.zeros(NUM_MODELS + 1, dtype=np.int64)
    cands = np.zeros(16, dtype=np.int64)
    enc, out = new_encoder()
    dec = start_decoder(data) if decoding else enc
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
                    bit = decode_bit(dec, data, p)
                else:
                    bit = 1 if value == label else 0
                    out = encode_bit(enc, out, p, bit)
                _update(bit, ctx, probs, counts, weights, apm, mixer, apm_ctx, inputs, p_mix,
                        bucket, frac, reciprocal)
                if bit:
                    found = label
                    break
            if found < 0:
                found, out = _code_escape(value, depth, escape, decoding, enc, out, dec, data)
                if decoding and (found >= num_labels or found in cands[:count]):
                    return out[:0], 1, dec  # an escape never names a neighbour's label
            grid[r, c] = found
            run = run + 1 if grid[r, c - 1] == found else 0
    return (out[:0] if decoding else finish_encoder(enc, out)), 0, dec


def _padded(height: int, width: int) -> np.ndarray:
    """The working array: two rows above and ``PAD`` columns each side hold -1 (outside)."""
    return np.full((height + 2, width + 2 * PAD), -1, dtype=np.int16)


def encode_indices(indices: np.ndarray, num_labels: int) -> bytes:
    """Code an (H, W) map of label indices in 0..num_labels-1 (empty when only one label)."""
    if num_labels <= 1:
        return b""
    grid = _padded(*indices.shape)
    grid[2:, PAD:-PAD] = indices
    payload, _, _ = _code_labels(grid, num_labels, False, np.zeros(0, dtype=np.uint8),
                                 *_logistic_tables())
    return payload.tobytes()


def decode_indices(payload: bytes, height: int, width: int, num_labels: int) -> np.ndarray:
    """Inverse of ``encode_indices``: the (H, W) uint8 index map of a payload it could have written."""
    if num_labels <= 1:
        return np.zeros((height, width), dtype=np.uint8)
    grid = _padded(height, width)
    data = np.frombuffer(payload, dtype=np.uint8)
    _, status, decoder = _code_labels(grid, num_labels, True, data, *_logistic_tables())
    if status:
        raise BitstreamError("corrupted label map data (decodes to an impossible label)")
    check_code_end(data, decoder, "label map code")
    return grid[2:, PAD:-PAD].astype(np.uint8)
