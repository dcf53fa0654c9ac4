"""The caption code: a static English word model over the binary range coder.

A caption is split into tokens (space, vocabulary word, capital mark, escaped character, end);
each token is coded through a static binary tree chosen by the previous token's kind, and an
escaped character as its UTF-8 bytes (``docs/bitstream.md``, "Caption code"). The vocabulary and
its weights come from ``wordfreq``'s English frequency list; the format names that list by its
CRC-32 (``WORD_MODEL_FINGERPRINT``), so a different installed list never decodes a caption
wrongly. ``encode_caption`` stores the word code only when it is shorter than plain UTF-8.
"""

from __future__ import annotations

import decimal
import functools
import re
import zlib

import numpy as np

from models.bitstream.errors import BitstreamError
from models.bitstream.range_coder import BitReader, BitWriter, check_code_end

CAPTION_NONE, CAPTION_UTF8, CAPTION_WORDS = 0, 1, 2  # caption coder ids (flags bits 2-3)
MAX_CAPTION_BYTES = 65_535  # longest caption, in UTF-8 bytes
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
    """Which of the five token trees codes the token after ``token``."""
    return {SPACE: AFTER_SPACE, CAPITAL: AFTER_CAPITAL, ESCAPE: AFTER_ESCAPE}.get(token, AFTER_WORD)


def encode_caption_words(caption: str) -> bytes:
    """Code ``caption`` with the static word model (any text; unknown parts are escaped)."""
    trees, lead = _token_trees(), _lead_byte_tree()
    writer, state = BitWriter(), AFTER_START
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


def _read_character(reader: BitReader) -> str:
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
    reader, state, pieces, size = BitReader(payload), AFTER_START, [], 0
    while True:
        token = reader.symbol(trees[state], TOKEN_BITS)
        if token == END:
            check_code_end(reader.data, reader.state, "caption code")
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
    """Inverse of ``encode_caption``; a word code must be the one ``encode_caption`` writes."""
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
    caption = decode_caption_words(payload)
    if encode_caption(caption) != (CAPTION_WORDS, payload):  # other tokens, or not shorter than UTF-8
        raise BitstreamError("non-canonical caption code (the encoder codes this caption otherwise)")
    return caption
