"""k-mer baseline: canonical k-mer counts (vectorised, scipy sparse) + scikit-learn logistic regression.

A k-mer and its reverse complement are one feature (the lexicographically smaller 2-bit code names it), so
the features are the same for a sequence and its reverse complement. Windows that touch anything but
A/C/G/T (N, IUPAC codes) are skipped; case is ignored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from titans_dna.data.atomic import atomic_path

_CODE_LUT = np.full(256, 4, dtype=np.int64)  # 4 = not a base
for _i, _b in enumerate("ACGT"):
    _CODE_LUT[ord(_b)] = _CODE_LUT[ord(_b.lower())] = _i
_SEPARATOR = b"#"  # between sequences, so that no window spans two of them


def canonical_kmer_index(k: int) -> tuple[np.ndarray, int]:
    """Column of each k-mer code in the canonical feature space.

    Returns:
        ``(column, n_features)``: int64 [4**k] mapping every 2-bit k-mer code to the column of its
        canonical form, and the number of canonical k-mers ((4**k + 4**(k/2)) / 2 for even k).
    """
    codes = np.arange(4**k, dtype=np.int64)
    digits = (codes[:, None] >> (2 * np.arange(k - 1, -1, -1))) & 3  # [4**k, k], most significant first
    rc = ((3 - digits) * (4 ** np.arange(k))).sum(axis=1)  # complement, read backwards
    canonical = np.minimum(codes, rc)
    uniq, column = np.unique(canonical, return_inverse=True)
    return column.astype(np.int64), int(uniq.size)


def canonical_kmer_counts(seqs: Sequence[str], k: int = 6, chunk: int = 8192) -> sp.csr_matrix:
    """Count canonical k-mers per sequence.

    Args:
        seqs: n DNA strings (any lengths, any case).
        k: k-mer length (1..12).
        chunk: sequences processed per vectorised pass (bounds the temporary arrays).

    Returns:
        float32 CSR [n, n_canonical(k)] of counts.
    """
    if not 1 <= k <= 12:
        raise ValueError(f"k must be in 1..12, got {k}")
    column, n_features = canonical_kmer_index(k)
    weights = 4 ** np.arange(k - 1, -1, -1, dtype=np.int64)
    blocks = []
    for lo in range(0, len(seqs), chunk):
        part = seqs[lo : lo + chunk]
        joined = _SEPARATOR.join(s.encode("ascii", "replace") for s in part) + _SEPARATOR
        codes = _CODE_LUT[np.frombuffer(joined, dtype=np.uint8)]
        row_of_pos = np.repeat(np.arange(len(part)), [len(s) + 1 for s in part])
        if codes.size < k:
            blocks.append(sp.csr_matrix((len(part), n_features), dtype=np.float32))
            continue
        windows = np.lib.stride_tricks.sliding_window_view(codes, k)  # [P, k] views, no copy
        bad = np.lib.stride_tricks.sliding_window_view(codes == 4, k).any(axis=1)
        keep = ~bad
        kmer = (windows[keep] * weights).sum(axis=1)
        rows = row_of_pos[: windows.shape[0]][keep]
        counts = sp.coo_matrix(
            (np.ones(rows.size, dtype=np.float32), (rows, column[kmer])), shape=(len(part), n_features)
        )
        blocks.append(counts.tocsr())  # duplicates are summed here
    if not blocks:
        return sp.csr_matrix((0, n_features), dtype=np.float32)
    return sp.vstack(blocks, format="csr")


@dataclass
class KmerLogReg:
    """Logistic regression on canonical k-mer frequencies, C chosen on validation MCC.

    Attributes:
        k: k-mer length.
        C: inverse regularisation strength of the fitted model (set by ``fit``).
        coef, intercept: the fitted weights, [n_classes or 1, n_features] and [n_classes or 1].
        n_classes: number of classes.
        search: validation MCC per C tried.
    """

    k: int = 6
    C: float = 1.0
    coef: np.ndarray | None = None
    intercept: np.ndarray | None = None
    n_classes: int = 2
    search: dict[float, float] | None = None

    def features(self, seqs: Sequence[str]) -> sp.csr_matrix:
        """Canonical k-mer frequencies [n, n_features] (counts / row total), so length does not dominate."""
        counts = canonical_kmer_counts(seqs, self.k)
        totals = np.asarray(counts.sum(axis=1)).ravel()
        return sp.diags(1.0 / np.maximum(totals, 1.0)) @ counts

    def fit(
        self,
        train_seqs: Sequence[str],
        train_labels: Sequence[int],
        valid_seqs: Sequence[str],
        valid_labels: Sequence[int],
        n_classes: int,
        c_grid: Sequence[float] = (0.01, 0.1, 1.0, 10.0, 100.0),
        seed: int = 0,
    ) -> KmerLogReg:
        """Fit one model per C on train and keep the one with the best validation MCC."""
        # Imported here, not at module level: inference commands never fit and skip the slow import.
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import matthews_corrcoef

        x_train, x_valid = self.features(train_seqs), self.features(valid_seqs)
        y_train, y_valid = np.asarray(train_labels), np.asarray(valid_labels)
        # Frequencies are tiny (~1/n_features); scaling by n_features puts them near 1 for the solver.
        scale = x_train.shape[1]
        best, self.search = None, {}
        for c in c_grid:
            clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
            clf.fit(x_train * scale, y_train)
            score = float(matthews_corrcoef(y_valid, clf.predict(x_valid * scale)))
            self.search[float(c)] = score
            if best is None or score > best[0]:
                best = (score, float(c), clf)
        _, self.C, clf = best
        self.coef, self.intercept = clf.coef_ * scale, clf.intercept_
        self.n_classes = n_classes
        return self

    def predict_proba(self, seqs: Sequence[str]) -> np.ndarray:
        """Class probabilities float [n, n_classes]."""
        if self.coef is None:
            raise RuntimeError("KmerLogReg.predict_proba called before fit/load")
        z = np.asarray(self.features(seqs) @ self.coef.T, dtype=np.float64) + self.intercept
        if self.coef.shape[0] == 1:  # binary: scikit-learn keeps one row, for class 1
            z = np.concatenate([np.zeros_like(z), z], axis=1)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights and settings as one .npz file (atomic; no pickle)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh, k=self.k, C=self.C, coef=self.coef, intercept=self.intercept, n_classes=self.n_classes
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> KmerLogReg:
        """Read a model written by ``save``."""
        with np.load(path) as z:
            return cls(
                k=int(z["k"]),
                C=float(z["C"]),
                coef=z["coef"],
                intercept=z["intercept"],
                n_classes=int(z["n_classes"]),
            )
