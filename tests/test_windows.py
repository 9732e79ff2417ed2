"""Pretraining windows: length weighting, determinism per (seed, epoch, index) across workers, N filter,
reverse-complement augmentation, BED splits and tiling, short regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import isolated_cache  # noqa: F401
from torch.utils.data import DataLoader

from titans_dna.data import N_ID, PAD_ID, reverse_complement_ids
from titans_dna.data.bed import check_intervals, read_bed
from titans_dna.data.genome import Genome
from titans_dna.data.windows import GenomeCollection, WindowDataset

pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture
def hg18(data_dir):
    return Genome(data_dir / "genomes/hg18_chrM_chr20first1Mb_softmasked.fa.gz")


def test_item_layout_and_forward_or_reverse_content(hg18, seed):
    ds = WindowDataset(hg18, 256, num_windows=64, rc_prob=0.5, seed=seed)
    strands = []
    for i in range(len(ds)):
        item = ds[i]
        assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (256,)
        assert item["soft_mask"].dtype == torch.bool and item["attention_mask"].all()
        fwd, mask = hg18.fetch_ids(item["chrom"], item["start"], item["start"] + 256)
        expect = fwd if item["strand"] == "+" else reverse_complement_ids(fwd)
        np.testing.assert_array_equal(item["input_ids"].numpy(), expect)
        np.testing.assert_array_equal(
            item["soft_mask"].numpy(), mask if item["strand"] == "+" else mask[::-1]
        )
        strands.append(item["strand"])
    assert 10 < strands.count("-") < 54  # p = 0.5 over 64 draws


def test_contigs_weighted_by_length(hg18, seed):
    ds = WindowDataset(hg18, 1000, num_windows=3000, rc_prob=0.0, seed=seed)
    chrm = sum(ds.window_arrays(i)[2] == "chrM" for i in range(len(ds)))
    expected = 3000 * (16_571 - 999) / (16_571 - 999 + 1_000_000 - 999)
    assert abs(chrm - expected) < 5 * np.sqrt(expected)


def test_deterministic_per_seed_epoch_index_whatever_the_workers(hg18, seed):
    ds = WindowDataset(hg18, 128, num_windows=24, seed=seed)
    one = [b["input_ids"] for b in DataLoader(ds, batch_size=8, num_workers=0)]
    two = [b["input_ids"] for b in DataLoader(ds, batch_size=8, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
    first = ds[3]["start"], ds[3]["strand"]
    assert (ds[3]["start"], ds[3]["strand"]) == first
    ds.set_epoch(1)
    assert [ds[i]["start"] for i in range(24)] != [
        WindowDataset(hg18, 128, num_windows=24, seed=seed)[i]["start"] for i in range(24)
    ]


def test_max_n_filter_on_real_n_run(data_dir, seed):
    genome = Genome(data_dir / "genomes/GRCh37_chr20_chr21_10.0-10.2Mb.fa.gz")  # chr21 has a 50 kb N run
    loose = WindowDataset(genome, 2000, num_windows=200, seed=seed)
    strict = WindowDataset(genome, 2000, num_windows=200, max_n=0.0, seed=seed)
    assert any((loose[i]["input_ids"] == N_ID).any() for i in range(len(loose)))
    assert not any((strict[i]["input_ids"] == N_ID).any() for i in range(len(strict)))
    only_n = Genome({"gap": "N" * 5000})
    with pytest.raises(RuntimeError, match="raise max_n"):
        WindowDataset(only_n, 100, num_windows=1, max_n=0.5, seed=seed)[0]


def test_bed_splits_tiling_and_short_regions(data_dir, seed):
    genome = Genome(data_dir / "genomes/sacCer3_chrIV.fa.gz")
    genes = check_intervals(read_bed(data_dir / "intervals/sacCer3_chrIV_50genes.bed12"), genome)
    assert len(genes) == 50 and any(g.strand == "-" for g in genes)
    window = 300
    tiled = WindowDataset(genome, window, regions=genes, random_offset=False, rc_prob=0.0, seed=seed)
    short = [g for g in genes if len(g) < window]
    assert tiled.num_short == len(short) > 0
    assert len(tiled) == sum(len(g) // window for g in genes if len(g) >= window)
    first = tiled[0]  # a '-' gene is read as the molecule: reverse complement of the forward strand
    gene = tiled.regions[0]
    fwd, _ = genome.fetch_ids(gene.chrom, first["start"], first["start"] + window)
    expect = reverse_complement_ids(fwd) if gene.strand == "-" else fwd
    np.testing.assert_array_equal(first["input_ids"].numpy(), expect)
    padded = WindowDataset(genome, window, regions=genes, short="pad", rc_prob=0.0, seed=seed)
    assert padded.num_short == len(short) and len(padded) == len(tiled) + len(short)
    item = padded[len(padded) - 1]
    size = int(item["attention_mask"].sum())
    assert size < window and (item["input_ids"][size:] == PAD_ID).all()
    with pytest.raises(ValueError, match="short='pad'"):
        WindowDataset(genome, 10_000_000, regions=genes)


def test_split_column_and_jittered_tiles(data_dir, seed):
    genome = Genome(data_dir / "genomes/hg18_chrM_chr20first1Mb_softmasked.fa.gz")
    bed = ["chr20\t0\t300000\ttrain\n", "chr20\t300000\t400000\tvalid\n", "chrM\t0\t16000\ttrain\n"]
    train = check_intervals(read_bed(bed, split="train"), genome)
    assert [(iv.chrom, iv.split) for iv in train] == [("chr20", "train"), ("chrM", "train")]
    ds = WindowDataset(genome, 7000, regions=train, rc_prob=0.0, seed=seed)
    starts = sorted(ds[i]["start"] for i in range(len(ds)) if ds[i]["chrom"] == "chr20")
    assert len(starts) == 300000 // 7000 and np.all(np.diff(starts) == 7000)  # adjacent, shifted tiles
    assert 0 <= starts[0] <= 300000 - 7000 * len(starts)


def test_collection_of_files(data_dir):
    parts = [
        Genome(data_dir / "genomes/human_chrM_MT-human.fa"),
        Genome(data_dir / "genomes/phage_lambda_NC_001416.fa"),
    ]
    both = GenomeCollection(parts)
    assert both.records == {"MT_human": 16_569, "gi|9626243|ref|NC_001416.1|": 48_502}
    ds = WindowDataset(both, 500, num_windows=50, seed=0)
    assert {ds[i]["chrom"] for i in range(50)} == set(both.records)
    with pytest.raises(ValueError, match="appears in both"):
        GenomeCollection([parts[0], parts[0]])
