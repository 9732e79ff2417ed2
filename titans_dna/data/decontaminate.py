"""Keep labelled sequences out of pretraining: exact k-mer matches (k = 32, both strands) between a genome
and the sequences of labelled sets.

A k-mer of A/C/G/T packs into one uint64 (2 bits a base, k <= 32). Both strands are covered by the
canonical form min(k-mer, reverse complement). Genome bases covered by a k-mer that also occurs in a
labelled sequence are masked (set to N by the token store), so a model pretrained on the store never saw
them; the counts are reported for the results tables.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from titans_dna.data.tokenizer import BASE_IDS, encode

KMER = 32
_CODE = np.full(256, 4, dtype=np.uint8)  # 4 = not A/C/G/T: k-mers holding it are never matched
_CODE[np.asarray(BASE_IDS)] = np.arange(4, dtype=np.uint8)


def canonical_kmers(ids: np.ndarray, k: int = KMER) -> tuple[np.ndarray, np.ndarray]:
    """Canonical k-mers of a token id array.

    Args:
        ids: uint8 [n] token ids (tokenizer ids; N and specials break k-mers).
        k: 1..32.

    Returns:
        ``(kmers uint64 [n - k + 1], valid bool [n - k + 1])``; k-mer i starts at base i; ``valid`` is False
        where the k-mer holds anything but A/C/G/T.
    """
    if not 1 <= k <= 32:
        raise ValueError(f"k must be in 1..32, got {k}")
    n = ids.shape[0] - k + 1
    if n <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, bool)
    code = _CODE[ids]
    bad = np.concatenate([[0], np.cumsum(code == 4)])
    valid = (bad[k:] - bad[:-k]) == 0
    c = np.where(code == 4, 0, code).astype(np.uint64)
    fwd = np.zeros(n, np.uint64)
    rev = np.zeros(n, np.uint64)
    for j in range(k):  # k passes over the array; each is one vectorised shift-or
        fwd |= c[j : j + n] << np.uint64(2 * (k - 1 - j))
        rev |= (np.uint64(3) - c[j : j + n]) << np.uint64(2 * j)
    return np.minimum(fwd, rev), valid


def _joined_kmers(sequences: Iterable[str], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Canonical k-mers of all sequences in one vectorised pass: the sequences are joined by N, so no
    valid k-mer spans two. Returns ``(kmers, valid, owner)``, owner = index of the sequence of each k-mer."""
    seqs = list(sequences)
    kmers, valid = canonical_kmers(encode("N".join(seqs))[0], k)
    starts = np.cumsum([0] + [len(s) + 1 for s in seqs[:-1]])
    owner = np.searchsorted(starts, np.arange(kmers.size), side="right") - 1
    return kmers, valid, owner


def labelled_kmers(sequences: Iterable[str], k: int = KMER) -> np.ndarray:
    """Sorted unique canonical k-mers of every sequence (both strands), as uint64."""
    kmers, valid, _ = _joined_kmers(sequences, k)
    return np.unique(kmers[valid])


def _contains(sorted_set: np.ndarray, values: np.ndarray) -> np.ndarray:
    if sorted_set.size == 0:
        return np.zeros(values.shape, bool)
    pos = np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)
    return sorted_set[pos] == values


def overlap_mask(ids: np.ndarray, kmer_set: np.ndarray, k: int = KMER) -> tuple[np.ndarray, np.ndarray]:
    """Bases covered by a k-mer found in ``kmer_set`` (sorted uint64).

    Returns:
        ``(mask bool [n], matched)``: ``matched`` is the sorted unique k-mers that were found.
    """
    kmers, valid = canonical_kmers(ids, k)
    hits = np.flatnonzero(valid & _contains(kmer_set, kmers))
    cover = np.zeros(ids.shape[0] + 1, np.int32)
    np.add.at(cover, hits, 1)
    np.add.at(cover, hits + k, -1)
    return np.cumsum(cover[:-1]) > 0, np.unique(kmers[hits])


@dataclass
class OverlapReport:
    """What decontamination removed."""

    masked_bases: int  # genome bases set to N
    labelled_sequences: int  # labelled sequences checked
    sequences_hit: int  # of those, how many share at least one k-mer with the genome
    k: int = KMER


def sequences_sharing_kmers(sequences: Iterable[str], kmer_set: np.ndarray, k: int = KMER) -> int:
    """How many of ``sequences`` hold at least one canonical k-mer of ``kmer_set`` (sorted uint64)."""
    kmers, valid, owner = _joined_kmers(sequences, k)
    return int(np.unique(owner[valid & _contains(kmer_set, kmers)]).size)
