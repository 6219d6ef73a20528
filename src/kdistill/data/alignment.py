"""Two tokenisations of the same text, aligned on byte offsets.

A teacher and a student with different tokenizers predict different tokens, but both predict the
same *bytes*. Where one run of teacher tokens and one run of student tokens cover exactly the
same bytes (a "chunk"), the two models' probabilities of that chunk are comparable: each is the
product of the model's next-token probabilities over its tokens of the chunk (the chain rule).
This is the alignment of GOLD (TRL's cross-tokenizer trainer, which aligns on byte offsets) and
of approximate likelihood matching (Minixhofer, Vulić, Ponti, "Universal Cross-Tokenizer
Distillation via Approximate Likelihood Matching", NeurIPS 2025, arXiv:2503.20083).

Byte spans come from the tokens' own bytes for byte-level BPE vocabularies (GPT-2, Llama 3,
SmolLM2, and any ``tokenizers`` BPE with a ``ByteLevel`` decoder): exact, also for a character
split over several tokens, whose character offsets would overlap. Other tokenizers give their
character offsets, converted to bytes; whitespace a tokenizer leaves out of every token is given
to the token after it (byte-level tokenizers also put the space in front of the word). Special
tokens (BOS, EOS, padding) cover no bytes and are never aligned, so a BOS on one side only
shifts nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from itertools import accumulate

from kdistill.errors import DataError

Span = tuple[int, int]  # [start, end) in bytes of the UTF-8 text
UNALIGNED = -1


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The printable character that stands for each byte in byte-level BPE vocabularies (the
    GPT-2 table, Radford et al. 2019), inverted: character → byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    characters, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, characters)}


def is_byte_level(tokenizer) -> bool:
    """Whether ``tokenizer`` (a ``tokenizers.Tokenizer``) spells its tokens in byte-level
    characters (its decoder is ``ByteLevel``)."""
    decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders", [])]
    return "ByteLevel" in kinds


def _special_ids(tokenizer) -> set[int]:
    return {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}


def _byte_level_spans(tokenizer, ids: Sequence[int]) -> tuple[list[Span], bytes]:
    table, special = byte_decoder(), _special_ids(tokenizer)
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    pieces = [b""] * (max(vocab.values(), default=-1) + 1)
    for token, i in vocab.items():  # once per vocabulary entry, not per token of the text
        if i not in special:
            pieces[i] = bytes(table[c] for c in token if c in table)
    chosen = [pieces[i] for i in ids]
    ends = list(accumulate(map(len, chosen)))
    return list(zip([0, *ends[:-1]], ends)), b"".join(chosen)


def _offset_spans(text: str, encoding, special: set[int]) -> list[Span]:
    starts = [0] * (len(text) + 1)  # the byte where each character starts
    for k, character in enumerate(text):
        starts[k + 1] = starts[k] + len(character.encode("utf-8"))
    spans, previous_end = [], 0
    for token_id, (start, end) in zip(encoding.ids, encoding.offsets):
        if token_id in special or end <= start:
            spans.append((previous_end, previous_end))
            continue
        start, end = starts[start], starts[end]
        if start < previous_end:  # a character split over tokens: the last one takes it whole
            begin = spans[-1][0]
            spans[-1] = (begin, begin)  # the others cover no byte, so they are never aligned
            spans.append((begin, end))
        else:
            spans.append((previous_end, end))  # leading whitespace belongs to this token
        previous_end = end
    return spans


def encode_with_spans(tokenizer, text: str, *, field: str = "tokenizer") -> tuple[list, list]:
    """``text``'s token ids (no special tokens added) and each token's byte span.

    Raises ``DataError`` naming ``field`` when the tokenizer cannot give ``text`` back (it
    normalises, lower-cases or maps characters to an unknown token): what it drops could not
    be aligned, and a model scored on it would be scored on another text.
    """
    encoding = tokenizer.encode(text, add_special_tokens=False)
    data = text.encode("utf-8")
    if is_byte_level(tokenizer):
        spans, spelled = _byte_level_spans(tokenizer, encoding.ids)
    else:
        spans = _offset_spans(text, encoding, _special_ids(tokenizer))
        spelled = tokenizer.decode(encoding.ids, skip_special_tokens=True).encode("utf-8")
    if spelled != data:
        at = next((k for k, (a, b) in enumerate(zip(spelled, data)) if a != b), None)
        at = min(len(spelled), len(data)) if at is None else at
        shown = data[max(at - 10, 0) : at + 10].decode("utf-8", errors="replace")
        raise DataError(
            f"data.options.{field}: the tokenizer does not give the text back (first difference "
            f"at byte {at:,}, near {shown!r}); use a lossless tokenizer, e.g. a byte-level BPE "
            "(tokenizers' ByteLevel pre-tokenizer and decoder)"
        )
    return list(encoding.ids), spans


def align_spans(
    teacher_spans: Sequence[Span], student_spans: Sequence[Span]
) -> tuple[list[int], list[int]]:
    """Chunk id of every teacher and student token (``UNALIGNED`` = -1 where none).

    A chunk is a run of consecutive teacher tokens and a run of consecutive student tokens that
    start at the same byte and end at the same byte, with no shorter such pair inside: one
    token on each side where the tokenizers agree, several where one side merges what the other
    splits (``" world"`` ↔ ``" wor" + "ld"``). Chunks are numbered 0, 1, ... in text order.
    Tokens of no bytes (special tokens) and tokens in a stretch where the runs never meet
    (a gap in the spans) stay unaligned.
    """
    teacher_chunk = [UNALIGNED] * len(teacher_spans)
    student_chunk = [UNALIGNED] * len(student_spans)
    i = j = chunk = 0

    def run(spans, k, end):
        """Extend a run of ``spans`` ending at token ``k`` (byte ``end``) by one token."""
        k += 1
        if k >= len(spans) or spans[k][0] != end or spans[k][1] <= spans[k][0]:
            return None, None
        return k, spans[k][1]

    while i < len(teacher_spans) and j < len(student_spans):
        (t_start, t_end), (s_start, s_end) = teacher_spans[i], student_spans[j]
        if t_end <= t_start or t_start < s_start:
            i += 1
            continue
        if s_end <= s_start or s_start < t_start:
            j += 1
            continue
        first_i, first_j = i, j
        while t_end != s_end and i is not None and j is not None:
            if t_end < s_end:
                i, t_end = run(teacher_spans, i, t_end)
            else:
                j, s_end = run(student_spans, j, s_end)
        if i is None or j is None:  # a gap or a special token inside: start again past it
            i, j = first_i + 1, first_j + 1
            continue
        teacher_chunk[first_i : i + 1] = [chunk] * (i + 1 - first_i)
        student_chunk[first_j : j + 1] = [chunk] * (j + 1 - first_j)
        chunk, i, j = chunk + 1, i + 1, j + 1
    return teacher_chunk, student_chunk


def aligned_bytes(spans: Sequence[Span], chunks: Sequence[int]) -> int:
    """How many bytes the aligned tokens of one side cover."""
    return sum(end - start for (start, end), c in zip(spans, chunks) if c != UNALIGNED)


__all__ = [
    "UNALIGNED",
    "align_spans",
    "aligned_bytes",
    "byte_decoder",
    "encode_with_spans",
    "is_byte_level",
]
