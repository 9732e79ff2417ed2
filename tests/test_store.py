"""Token stores: the HDF5 window store (layout, attributes, atomic writes, dataset), the flat memmap store."""

from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest
import torch
from data_helpers import isolated_cache, listing, write_text  # noqa: F401
from torch.utils.data import DataLoader

from titans_dna.data import N_ID, PAD_ID, TOKENIZER_VERSION, InvalidSequenceError, decode
from titans_dna.data.genome import Genome
from titans_dna.data.store import H5WindowDataset, preprocess
from titans_dna.data.token_store import TokenStore, build_token_store
from titans_dna.data.windows import WindowDataset

pytestmark = pytest.mark.usefixtures("isolated_cache")
HG18 = "genomes/hg18_chrM_chr20first1Mb_softmasked.fa.gz"
HG18_SHA256 = "4fd1b9a3ca383c6cd423cbcb6128cbbc334f83d483eb182761ebf8aa5e8c3bd8"  # SOURCES.md


def test_preprocess_layout_attributes_and_round_trip(data_dir, tmp_path):
    fasta = data_dir / HG18
    out = tmp_path / "hg18.h5"
    summary = preprocess([fasta], out, window=1000, max_n=0.1)
    genome = Genome(fasta)
    tiles = sum(length // 1000 for length in genome.records.values())
    assert summary.windows + summary.dropped_n == tiles and summary.dropped_n >= 8  # the 8 kb N run
    assert listing(tmp_path) == ["hg18.h5"]
    with h5py.File(out) as h5:
        assert h5["input_ids"].dtype == np.uint8 and h5["input_ids"].shape == (summary.windows, 1000)
        assert h5["input_ids"].compression == "gzip" and h5["input_ids"].chunks[1] == 1000
        assert h5.attrs["tokenizer_version"] == TOKENIZER_VERSION
        assert json.loads(h5.attrs["sources"]) == {str(fasta): HG18_SHA256}
        assert json.loads(h5.attrs["config"])["max_n"] == 0.1 and h5.attrs["dropped_n"] == summary.dropped_n
        lower = int(h5["soft_mask"][:].sum())
    assert 0.5 < lower / (summary.windows * 1000) < 0.65  # hg18 piece is ~59% soft-masked
    ds = H5WindowDataset(out)
    for index in (0, 17, len(ds) - 1):
        item = ds[index]
        expect = genome.fetch(item["chrom"], item["start"], item["start"] + 1000)
        assert decode(item["input_ids"], item["soft_mask"].numpy()) == expect
        assert (item["input_ids"] == N_ID).float().mean() <= 0.1


def test_h5_dataset_workers_rc_and_pickle(data_dir, tmp_path, seed):
    out = tmp_path / "w.h5"
    preprocess([data_dir / "genomes/phage_lambda_NC_001416.fa"], out, window=500, stride=250)
    ds = H5WindowDataset(out, rc_prob=0.5, seed=seed)
    assert len(ds) == (48_502 - 500) // 250 + 1
    batches = [b for b in DataLoader(ds, batch_size=16, num_workers=2)]
    again = [b for b in DataLoader(pickle.loads(pickle.dumps(ds)), batch_size=16, num_workers=0)]
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again, strict=True))
    picks = [40, 3, 40, 177]  # unsorted, repeated: the batched read must keep order and duplicates
    for one, many in zip((ds[i] for i in picks), ds.__getitems__(picks), strict=True):
        assert torch.equal(one["input_ids"], many["input_ids"]) and one["strand"] == many["strand"]
    strands = [s for b in batches for s in b["strand"]]
    assert 0.3 < strands.count("-") / len(strands) < 0.7


def test_preprocess_random_windows_bed_and_padding(data_dir, tmp_path, seed):
    fasta = data_dir / "genomes/sacCer3_chrIV.fa.gz"
    random_out = preprocess([fasta], tmp_path / "r.h5", window=256, num_windows=300, seed=seed)
    assert random_out.windows == 300
    bed = data_dir / "intervals/sacCer3_chrIV_50genes.bed12"
    skipped = preprocess([fasta], tmp_path / "s.h5", window=400, bed=bed, split_column=99)
    padded = preprocess([fasta], tmp_path / "p.h5", window=400, bed=bed, split_column=99, short="pad")
    assert skipped.skipped_short > 0 and padded.skipped_short == 0
    assert padded.windows == skipped.windows + skipped.skipped_short
    item = H5WindowDataset(tmp_path / "p.h5")[padded.windows - 1]
    assert (item["input_ids"][~item["attention_mask"]] == PAD_ID).all()


def test_failed_preprocess_leaves_nothing(tmp_path):
    fasta = write_text(tmp_path / "bad.fa", ">ok\n" + "ACGT" * 500 + "\n>broken\nACGTACGTXACGT\n")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(InvalidSequenceError, match=r"record 'broken'.*position 9"):
        preprocess([fasta], out_dir / "x.h5", window=100)
    assert listing(out_dir) == []
    with pytest.raises(InvalidSequenceError, match="position 9"):
        build_token_store([fasta], out_dir / "flat.npy")
    assert listing(out_dir) == []


def test_token_store_matches_genome_and_samples_fast_path(data_dir, tmp_path, seed):
    fasta = data_dir / HG18
    store = build_token_store([fasta], tmp_path / "hg18.npy")
    assert listing(tmp_path) == ["hg18.json", "hg18.npy"]
    genome = Genome(fasta)
    assert store.records == genome.records
    for strand in "+-":
        for got, want in zip(
            store.fetch_ids("chr20", 500, 9000, strand),
            genome.fetch_ids("chr20", 500, 9000, strand),
            strict=True,
        ):
            np.testing.assert_array_equal(got, want)
    # The same dataset over either source yields the same windows.
    a, b = (WindowDataset(src, 300, num_windows=20, seed=seed) for src in (store, genome))
    assert all(torch.equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(20))
    batch = store.sample(64, 300, np.random.default_rng(seed))
    names = list(store.records)
    for row in range(0, 64, 9):
        chrom, start = names[batch["record"][row]], int(batch["start"][row])
        ids, mask = genome.fetch_ids(chrom, start, start + 300)
        np.testing.assert_array_equal(batch["input_ids"][row], ids)
        np.testing.assert_array_equal(batch["soft_mask"][row], mask)
    reopened = pickle.loads(pickle.dumps(TokenStore(tmp_path / "hg18.npy")))
    assert reopened.fetch_ids("chrM", 0, 5)[0].tolist() == genome.fetch_ids("chrM", 0, 5)[0].tolist()
