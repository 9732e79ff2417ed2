"""Baselines: canonical k-mer counting (pairing, reverse-complement invariance, masking), the k-mer logistic
regression on a real GUE subsample, and the GenomicBenchmarks CNN's shapes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from titans_dna.data.tables import read_labelled
from titans_dna.data.tokenizer import PAD_ID, reverse_complement
from titans_dna.train.baselines import GenomicBenchmarksCNN, KmerLogReg, canonical_kmer_counts
from titans_dna.train.baselines.kmer import canonical_kmer_index


def _random_dna(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(list("ACGT"), size=n))


def _code(kmer: str) -> int:
    return int("".join(str("ACGT".index(c)) for c in kmer), 4)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_canonical_index_pairs_each_kmer_with_its_reverse_complement(k):
    column, n_features = canonical_kmer_index(k)
    palindromes = 4 ** (k // 2) if k % 2 == 0 else 0
    assert n_features == (4**k + palindromes) // 2
    for letters in itertools.islice(itertools.product("ACGT", repeat=k), 300):
        kmer = "".join(letters)
        assert column[_code(kmer)] == column[_code(reverse_complement(kmer))]


def test_counts_match_a_python_count_and_are_strand_symmetric(seed):
    rng = np.random.default_rng(seed)
    k = 3
    seqs = [_random_dna(rng, n) for n in (3, 17, 60)] + ["ACGNNACGTA", "acgtAC", "NN"]
    counts = canonical_kmer_counts(seqs, k=k).toarray()
    column, _ = canonical_kmer_index(k)
    for row, seq in enumerate(seqs):
        expected = np.zeros(counts.shape[1])
        s = seq.upper()
        for i in range(len(s) - k + 1):
            kmer = s[i : i + k]
            if set(kmer) <= set("ACGT"):
                expected[column[_code(kmer)]] += 1
        np.testing.assert_array_equal(counts[row], expected, err_msg=f"row {row}: {seq}")
    rc_counts = canonical_kmer_counts([reverse_complement(s) for s in seqs], k=k).toarray()
    np.testing.assert_array_equal(counts, rc_counts)
    assert counts[-1].sum() == 0  # all-N: no window counted


def test_kmer_logreg_learns_a_gue_task_and_round_trips(data_dir, tmp_path):
    folder = data_dir / "benchmarks/GUE/prom/prom_core_tata"
    seqs, labels, _ = read_labelled(folder / "train.csv.gz")
    vseqs, vlabels, _ = read_labelled(folder / "dev.csv.gz")
    model = KmerLogReg(k=4).fit(
        seqs[:600], labels[:600], vseqs[:300], vlabels[:300], n_classes=2, c_grid=(0.1, 1.0)
    )
    assert set(model.search) == {0.1, 1.0} and model.C in model.search
    probs = model.predict_proba(vseqs[:300])
    assert probs.shape == (300, 2)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert ((probs.argmax(1) == vlabels[:300]).mean()) > 0.6  # TATA promoters are easy for k-mers
    model.save(tmp_path / "k.npz")
    np.testing.assert_allclose(KmerLogReg.load(tmp_path / "k.npz").predict_proba(vseqs[:50]), probs[:50])


@pytest.mark.parametrize("num_classes, length", [(2, 70), (3, 251), (2, 20)])
def test_cnn_shapes_and_fixed_length(num_classes, length):
    model = GenomicBenchmarksCNN(num_classes, length).eval()
    ids = torch.randint(7, 11, (4, length))
    assert model(ids).shape == (4, num_classes)
    # Inputs are padded or cut to the built length, so other lengths work and padding is explicit.
    assert model(ids[:, : max(length - 5, 1)]).shape == (4, num_classes)
    assert model(torch.cat([ids, ids], 1)).shape == (4, num_classes)
    padded = torch.nn.functional.pad(ids[:, :10], (0, model.input_len - 10), value=PAD_ID)
    torch.testing.assert_close(model(ids[:, :10]), model(padded))
    assert GenomicBenchmarksCNN(**model.config()).lin1.in_features == model.lin1.in_features
