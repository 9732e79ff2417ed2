"""Keeping labelled sequences out of pretraining: exact 32-mer matches on both strands."""

from __future__ import annotations

import json

import numpy as np

from titans_dna.cli import main
from titans_dna.data.decontaminate import canonical_kmers, labelled_kmers, overlap_mask
from titans_dna.data.fasta import iter_records
from titans_dna.data.token_store import TokenStore
from titans_dna.data.tokenizer import N_ID, encode, reverse_complement

LAMBDA = "genomes/phage_lambda_NC_001416.fa"


def test_canonical_kmers_equal_on_both_strands(seed):
    rng = np.random.default_rng(seed)
    seq = "".join(rng.choice(list("ACGT"), 200))
    fwd, valid = canonical_kmers(encode(seq)[0], 32)
    rev, _ = canonical_kmers(encode(reverse_complement(seq))[0], 32)
    assert valid.all() and fwd.size == 169
    np.testing.assert_array_equal(fwd, rev[::-1])


def test_kmers_spanning_n_are_invalid():
    ids = encode("ACGT" * 10 + "N" + "ACGT" * 10)[0]
    _, valid = canonical_kmers(ids, 32)
    assert not valid[9:41].any() and valid[:9].all() and valid[41:].all()


def test_overlap_mask_covers_exactly_the_shared_bases(data_dir, seed):
    genome = next(iter_records(data_dir / LAMBDA))[1]
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, len(genome) - 100))
    # a labelled sequence taken from the reverse strand, flanked by random bases
    piece = reverse_complement(genome[start : start + 60])
    labelled = "".join(rng.choice(list("ACGT"), 20)) + piece + "".join(rng.choice(list("ACGT"), 20))
    mask, matched = overlap_mask(encode(genome)[0], labelled_kmers([labelled]))
    assert mask[start : start + 60].all()
    # a random flank base may extend the match by chance, but nothing far away is masked
    hits = np.flatnonzero(mask)
    assert hits.min() >= start - 20 and hits.max() < start + 80 and matched.size >= 29


def test_preprocess_exclude_overlaps_masks_and_reports(data_dir, tmp_path, seed):
    genome = next(iter_records(data_dir / LAMBDA))[1]
    rng = np.random.default_rng(seed)
    starts = sorted(int(s) for s in rng.choice(len(genome) - 200, 3, replace=False))
    rows = [genome[s : s + 100] for s in starts] + ["".join(rng.choice(list("ACGT"), 100))]
    table = tmp_path / "labelled.csv"
    table.write_text("sequence,label\n" + "".join(f"{r},{i % 2}\n" for i, r in enumerate(rows)))
    out = tmp_path / "store.npy"
    argv = ["preprocess", str(data_dir / LAMBDA), "--out", str(out), "--exclude-overlaps", str(table)]
    assert main(argv) == 0
    report = json.loads(out.with_suffix(".json").read_text())["decontamination"]
    assert report["labelled_sequences"] == 4 and report["sequences_hit"] == 3
    store = TokenStore(out)
    ids = store.data & 0x7F
    for s in starts:
        assert (ids[s : s + 100] == N_ID).all()
    assert report["masked_bases"] == int((ids == N_ID).sum()) <= 300
