"""`embed_sequences`: DNA strings or a sequence file -> embeddings, any length, batched by length.

Long sequences stream through the model in pieces of `PIECE_SEGMENTS` segments with the state carried, and
pooling accumulates over the pieces, so memory stays bounded by the piece, not the sequence.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from titans_dna.data.fasta import iter_records
from titans_dna.data.tokenizer import DNATokenizer, reverse_complement
from titans_dna.model.heads import check_pooling, pool

if TYPE_CHECKING:
    from titans_dna.model.titans_dna import TitansDNA

PIECE_SEGMENTS = 16  # segments per streamed piece: long enough to keep the device busy, short to bound memory


def read_sequences(seqs: str | os.PathLike | Sequence[str]) -> list[str]:
    """A list of sequences from one string, a list of strings, or a path to a FASTA/GenBank/EMBL file.

    A plain string is a path only if a file of that name exists; otherwise it is the sequence itself.
    """
    if isinstance(seqs, os.PathLike) or (isinstance(seqs, str) and _is_file(seqs)):
        return [seq for _, seq in iter_records(seqs)]
    if isinstance(seqs, str):
        return [seqs]
    return list(seqs)


def _is_file(name: str) -> bool:
    try:
        return Path(name).is_file()
    except OSError:  # a long sequence is not a valid file name (ENAMETOOLONG)
        return False


class _Pooler:
    """Running masked pooling over consecutive pieces of a right-padded batch."""

    def __init__(self, how: str, lengths: Tensor) -> None:
        self.how, self.lengths = how, lengths
        self.total: Tensor | None = None

    def add(self, hidden: Tensor, mask: Tensor) -> None:
        """hidden [B, t, d], mask [B, t]: the next piece."""
        part, count = pool(hidden, mask, self.how), mask.sum(1, keepdim=True)
        if self.total is None:  # the first piece decides "first"
            self.total = part * count if self.how == "mean" else part
        elif self.how == "mean":
            self.total = self.total + part * count
        elif self.how == "max":
            self.total = torch.maximum(self.total, part)
        elif self.how == "last":  # a row's last token is in the last piece where it has any token
            self.total = torch.where(count > 0, part, self.total)

    def result(self) -> Tensor:
        if self.how == "mean":
            return self.total / self.lengths.unsqueeze(-1).to(self.total.dtype)
        return self.total


@torch.no_grad()
def _embed_batch(model: TitansDNA, ids: Tensor, mask: Tensor, pooling: str, per_token: bool,
                 ) -> Tensor | list[Tensor]:
    lengths = mask.sum(1)
    piece = PIECE_SEGMENTS * model.config.segment_len  # a multiple of segment_len: exact in MLM mode too
    pooler, tokens, state = _Pooler(pooling, lengths), [], None
    for start in range(0, ids.shape[1], piece):
        stop = min(start + piece, ids.shape[1])
        out = model(ids[:, start:stop], mask[:, start:stop], state=state, return_state=stop < ids.shape[1])
        state = out.state
        if per_token:
            tokens.append(out.hidden_states.cpu())
        else:
            pooler.add(out.hidden_states, mask[:, start:stop])
    if per_token:
        hidden = torch.cat(tokens, dim=1)
        return [hidden[row, : int(n)] for row, n in enumerate(lengths)]
    return pooler.result().cpu()


def embed_sequences(model: TitansDNA, seqs: str | os.PathLike | Sequence[str], pooling: str = "mean",
                    rc_average: bool = False, batch_size: int = 32, per_token: bool = False,
                    ) -> Tensor | list[Tensor]:
    """Embed sequences with `model` (eval mode, no_grad, on the model's device).

    Args:
        seqs: a sequence, a list of sequences, or a sequence-file path (see `read_sequences`).
        pooling: "mean", "max", "first" or "last" over each sequence's tokens.
        rc_average: average with the embedding of the reverse complement (per_token: position-aligned, so
            token i of the strand meets its own base on the other strand).
        batch_size: sequences per forward; sequences are sorted by length so batches carry little padding.
        per_token: return the token states instead of a pooled vector.
    Returns:
        [n, d_model] on the CPU, in input order; per_token: a list of n tensors [L_i, d_model].
    """
    check_pooling(pooling)
    sequences = read_sequences(seqs)
    empty = [i for i, s in enumerate(sequences) if not s]
    if empty:
        raise ValueError(f"cannot embed empty sequences (indices {empty[:5]})")
    n = len(sequences)
    if rc_average:
        sequences = sequences + [reverse_complement(s) for s in sequences]
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    tokenizer, results = DNATokenizer(), [None] * len(sequences)
    was_training = model.training
    model.eval()
    try:
        for b in range(0, len(order), batch_size):
            rows = order[b:b + batch_size]
            batch = tokenizer.batch_encode([sequences[i] for i in rows])
            ids, mask = batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)
            for i, emb in zip(rows, _embed_batch(model, ids, mask, pooling, per_token), strict=True):
                results[i] = emb
    finally:
        model.train(was_training)
    if rc_average:
        reverse = results[n:]
        results = [(fwd + (rev.flip(0) if per_token else rev)) / 2
                   for fwd, rev in zip(results[:n], reverse, strict=True)]
    return results if per_token else torch.stack(results)
