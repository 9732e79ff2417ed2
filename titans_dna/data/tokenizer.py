"""Character-level DNA tokenizer with ids compatible with HyenaDNA / Caduceus.

Ids: [CLS]=0 [SEP]=1 [BOS]=2 [MASK]=3 [PAD]=4 [RESERVED]=5 [UNK]=6 A=7 C=8 G=9 T=10 N=11; the embedding has 16
rows. Input is upper-cased and a parallel boolean soft-mask keeps where it was lowercase (repeat-masked).
Everything runs through 256-entry byte lookup tables, never a Python loop per base.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

CLS_ID, SEP_ID, BOS_ID, MASK_ID, PAD_ID, RESERVED_ID, UNK_ID = 0, 1, 2, 3, 4, 5, 6
A_ID, C_ID, G_ID, T_ID, N_ID = 7, 8, 9, 10, 11
BASE_IDS = (A_ID, C_ID, G_ID, T_ID)
VOCAB_SIZE = 12
EMBED_ROWS = 16  # padded to a multiple of 8 for tensor cores
TOKENIZER_VERSION = "titans-dna-char-1"

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
VOCAB: dict[str, int] = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, "A", "C", "G", "T", "N"))}
IUPAC_AMBIGUOUS = "RYSWKMBDHV"

_INVALID = 255
_ENCODE_LUT = np.full(256, _INVALID, dtype=np.uint8)
for _char, _id in (("A", A_ID), ("C", C_ID), ("G", G_ID), ("T", T_ID), ("N", N_ID)):
    _ENCODE_LUT[ord(_char)] = _ENCODE_LUT[ord(_char.lower())] = _id
for _char in IUPAC_AMBIGUOUS:
    _ENCODE_LUT[ord(_char)] = _ENCODE_LUT[ord(_char.lower())] = N_ID
_ENCODE_TABLE = _ENCODE_LUT.tobytes()
_INVALID_BYTE = bytes([_INVALID])

_DECODE_LUT = np.frombuffer(b"???????ACGTN????", dtype=np.uint8)  # specials handled separately
_RC_LUT = np.arange(EMBED_ROWS, dtype=np.uint8)
_RC_LUT[[A_ID, C_ID, G_ID, T_ID]] = [T_ID, G_ID, C_ID, A_ID]
_RC_LUT_TORCH = torch.from_numpy(_RC_LUT.astype(np.int64))
# Complement with IUPAC codes, case kept: R(AG)<->Y(CT), K(GT)<->M(AC), B<->V, D<->H; S, W, N self.
_COMPLEMENT = str.maketrans("ACGTRYKMBVDHSWNacgtrykmbvdhswn", "TGCAYRMKVBHDSWNtgcayrmkvbhdswn")


class InvalidSequenceError(ValueError):
    """A character outside ACGTN / IUPAC; names the source, record and 1-based position."""

    def __init__(self, source: str, record: str, position: int, char: str):
        self.source, self.record, self.position, self.char = source, record, position, char
        where = f"{source}, record '{record}'" if record else source
        super().__init__(
            f"{where}: invalid character {char!r} at position {position} (1-based); "
            f"allowed are A C G T N and the IUPAC codes {IUPAC_AMBIGUOUS}, either case"
        )


def _as_bytes(
    seq: str | bytes | bytearray | memoryview, source: str, record: str, offset: int
) -> bytes | bytearray:
    if isinstance(seq, str):
        try:
            return bytearray(seq, "ascii")  # a bytearray translates into a bytearray: writable, no copy
        except UnicodeEncodeError as err:
            raise InvalidSequenceError(source, record, offset + err.start + 1, seq[err.start]) from None
    return bytes(seq)


def encode(
    seq: str | bytes, source: str = "<string>", record: str = "", *, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise one sequence.

    Args:
        seq: DNA letters (str or ASCII bytes), any case.
        source, record: named in the error message of an invalid character.
        offset: added to reported positions when ``seq`` is a slice of a longer record.

    Returns:
        ``(ids, soft_mask)``: uint8 [L] token ids and bool [L], True where the input was lowercase.

    Raises:
        InvalidSequenceError: on any character other than ACGTN / IUPAC ambiguity codes.
    """
    raw = _as_bytes(seq, source, record, offset)
    # bytes.translate applies the 256-entry tables in C at memory speed (several times numpy fancy indexing).
    translated = raw.translate(_ENCODE_TABLE)
    first = translated.find(_INVALID_BYTE)
    if first >= 0:
        raise InvalidSequenceError(source, record, offset + first + 1, chr(raw[first]))
    ids = np.frombuffer(translated, dtype=np.uint8)
    if not ids.flags.writeable:  # bytes input: copy, callers may edit ids in place
        ids = ids.copy()
    # Every byte is valid here, and the valid lowercase letters are exactly the bytes >= 'a'.
    return ids, np.frombuffer(raw, dtype=np.uint8) >= ord("a")


def decode(
    ids: np.ndarray | torch.Tensor | Sequence[int],
    soft_mask: np.ndarray | None = None,
    skip_special_tokens: bool = False,
) -> str:
    """Turn ids [L] back into letters; specials become ``[CLS]`` etc. (dropped with ``skip_special_tokens``).

    ``soft_mask`` [L] (optional) lower-cases the masked positions, so ``decode(*encode(s)) == s`` for ACGTN
    input.
    """
    arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
        raise ValueError(f"token ids must lie in [0, {VOCAB_SIZE}); got range [{arr.min()}, {arr.max()}]")
    letters = _DECODE_LUT[np.minimum(arr, EMBED_ROWS - 1)]
    if soft_mask is not None:
        lower = np.asarray(soft_mask, dtype=bool).reshape(-1) & (arr >= A_ID)
        letters = np.where(lower, letters | 0x20, letters)  # ASCII upper -> lower is bit 5
    special = arr < A_ID
    if not special.any():
        return letters.astype(np.uint8).tobytes().decode("ascii")
    parts = []
    for i, tok in enumerate(arr):
        if tok >= A_ID:
            parts.append(chr(letters[i]))
        elif not skip_special_tokens:
            parts.append(SPECIAL_TOKENS[tok])
    return "".join(parts)


def reverse_complement_ids(ids: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Reverse complement along the last axis: A<->T, C<->G, N->N, special ids unchanged.

    Works on numpy arrays and torch tensors of any shape and integer dtype; returns the same type and dtype.
    """
    if isinstance(ids, torch.Tensor):
        lut = _RC_LUT_TORCH.to(ids.device)
        return lut[ids.long()].flip(-1).to(ids.dtype)
    arr = np.asarray(ids)
    return _RC_LUT[arr][..., ::-1].astype(arr.dtype, copy=False)


def reverse_complement(seq: str) -> str:
    """Reverse complement of a DNA string; case and IUPAC codes are kept (R<->Y, K<->M, B<->V, D<->H)."""
    return seq.translate(_COMPLEMENT)[::-1]


class DNATokenizer:
    """Object wrapper over :func:`encode` / :func:`decode` with batch encoding to padded torch tensors."""

    vocab = VOCAB
    vocab_size = VOCAB_SIZE
    pad_token_id = PAD_ID
    version = TOKENIZER_VERSION

    def encode(
        self, seq: str | bytes, source: str = "<string>", record: str = ""
    ) -> tuple[np.ndarray, np.ndarray]:
        """See :func:`encode`."""
        return encode(seq, source, record)

    def decode(
        self,
        ids: np.ndarray | torch.Tensor | Sequence[int],
        soft_mask: np.ndarray | None = None,
        skip_special_tokens: bool = False,
    ) -> str:
        """See :func:`decode`."""
        return decode(ids, soft_mask, skip_special_tokens)

    def batch_encode(
        self,
        seqs: Sequence[str],
        max_length: int | None = None,
        truncation: bool = False,
        add_special_tokens: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Encode and right-pad a batch.

        Args:
            seqs: n sequences.
            max_length: L, the padded length (tokens, specials included); None pads to the longest.
            truncation: cut sequences longer than ``max_length`` (from the right); otherwise such a sequence
                raises ``ValueError``.
            add_special_tokens: wrap each sequence as ``[CLS] seq [SEP]`` (HyenaDNA's convention).

        Returns:
            ``input_ids`` [n, L] long (PAD_ID after the end), ``attention_mask`` [n, L] bool,
            ``soft_mask`` [n, L] bool (False on specials and padding).
        """
        extra = 2 if add_special_tokens else 0
        if max_length is not None and max_length < extra + 1:
            raise ValueError(f"max_length={max_length} leaves no room for sequence tokens")
        encoded = []
        for i, seq in enumerate(seqs):
            ids, mask = encode(seq, "<batch>", f"#{i}")
            if max_length is not None and ids.size + extra > max_length:
                if not truncation:
                    raise ValueError(
                        f"sequence #{i} has {ids.size} tokens (+{extra} special) > max_length={max_length}; "
                        "pass truncation=True or a larger max_length"
                    )
                ids, mask = ids[: max_length - extra], mask[: max_length - extra]
            encoded.append((ids, mask))
        longest = max((ids.size + extra for ids, _ in encoded), default=0)
        width = max_length if max_length is not None else longest
        input_ids = np.full((len(encoded), width), PAD_ID, dtype=np.int64)
        soft = np.zeros((len(encoded), width), dtype=bool)
        attention = np.zeros((len(encoded), width), dtype=bool)
        start = 1 if add_special_tokens else 0
        for row, (ids, mask) in enumerate(encoded):
            stop = start + ids.size
            input_ids[row, start:stop] = ids
            soft[row, start:stop] = mask
            if add_special_tokens:
                input_ids[row, 0], input_ids[row, stop] = CLS_ID, SEP_ID
            attention[row, : stop + (1 if add_special_tokens else 0)] = True
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "soft_mask": torch.from_numpy(soft),
        }
