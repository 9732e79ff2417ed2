"""Genome (pyfaidx) and the streaming reader on real files: plain, BGZF, plain gzip, stdin, GenBank/EMBL,
read-only folders, coordinates and strands."""

from __future__ import annotations

import io
import os
import pickle
import sys

import numpy as np
import pytest
from Bio import SeqIO
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord
from data_helpers import copy_shared, isolated_cache, listing, write_text  # noqa: F401

from titans_dna.data import N_ID, encode, reverse_complement, reverse_complement_ids
from titans_dna.data.fasta import compression, iter_records
from titans_dna.data.genome import Genome
from titans_dna.data.paths import cache_dir

pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_ecoli_one_record_and_fetch_matches_stream(data_dir, seed):
    path = data_dir / "genomes/ecoli_K12_MG1655.fa.gz"
    before = listing(path.parent)
    genome = Genome(path)
    assert genome.records == {"K-12-MG1655": 4_639_675}
    assert listing(path.parent) == before  # read-only shared folder: the index went to the cache
    ((name, seq),) = iter_records(path)
    rng = np.random.default_rng(seed)
    for start in rng.integers(0, len(seq) - 5000, size=20):
        end = int(start) + int(rng.integers(0, 5000))
        assert genome.fetch(name, int(start), end) == seq[start:end]
        assert genome.fetch(name, int(start), end, "-") == reverse_complement(seq[start:end])
    assert genome.fetch(name, len(seq) - 3, len(seq)) == seq[-3:]
    with pytest.raises(ValueError, match="outside the record"):
        genome.fetch(name, len(seq) - 3, len(seq) + 1)


def test_hg18_softmask_and_n_counts_through_fetch_ids(data_dir):
    genome = Genome(data_dir / "genomes/hg18_chrM_chr20first1Mb_softmasked.fa.gz")
    assert genome.records == {"chrM": 16_571, "chr20": 1_000_000}
    lower = n_count = 0
    for name, length in genome.records.items():
        ids, mask = genome.fetch_ids(name, 0, length)
        lower += int(mask.sum())
        n_count += int((ids == N_ID).sum())
    assert (lower, n_count) == (596_285, 8_000)
    ids, mask = genome.fetch_ids("chr20", 1000, 1100, "-")
    fwd_ids, fwd_mask = genome.fetch_ids("chr20", 1000, 1100)
    np.testing.assert_array_equal(mask, fwd_mask[::-1])
    np.testing.assert_array_equal(ids, reverse_complement_ids(fwd_ids))


def test_plain_bgzf_and_plain_gzip_agree(data_dir, tmp_path):
    text = (data_dir / "genomes/sacCer3_first10kb_17chrom.fa").read_text()
    files = {
        kind: write_text(tmp_path / (f"y.{kind}.fa" + (".gz" if kind else "")), text, kind)
        for kind in (None, "bgzf", "gzip")
    }
    assert [compression(p) for p in files.values()] == [None, "bgzf", "gzip"]
    genomes = {kind: Genome(p) for kind, p in files.items()}
    assert len(genomes[None].records) == 17
    for kind, genome in genomes.items():
        assert genome.records == genomes[None].records, kind
        assert genome.fetch("chrIV", 9_000, 10_000, "-") == genomes[None].fetch("chrIV", 9_000, 10_000, "-")
    # Plain gzip is decompressed once into the cache; indexes sit beside writable inputs.
    assert any(p.name.endswith("y.gzip.fa") for p in cache_dir("decompressed").iterdir())
    assert (tmp_path / "y.None.fa.fai").exists() and (tmp_path / "y.bgzf.fa.gz.gzi").exists()


def test_read_only_folder_puts_index_in_cache(data_dir, tmp_path):
    folder = tmp_path / "ro"
    path = copy_shared(data_dir / "genomes/phage_lambda_NC_001416.fa", folder)
    os.chmod(folder, 0o555)
    try:
        genome = Genome(path)
        assert listing(folder) == [path.name]
        assert [p.suffix for p in cache_dir("fai").iterdir()] == [".fai"]
        assert genome.fetch("gi|9626243|ref|NC_001416.1|", 0, 12) == "GGGCGGCGACCT"
    finally:
        os.chmod(folder, 0o755)


def test_aliases_pickling_and_memory_source(data_dir):
    genome = Genome(data_dir / "genomes/GRCh37_chr20_chr21_10.0-10.2Mb.fa.gz")
    assert genome.resolve("chr21") == "21" and genome.resolve("20") == "20"
    with pytest.raises(KeyError, match="no record named 'chrX'"):
        genome.resolve("chrX")
    clone = pickle.loads(pickle.dumps(genome))  # what a DataLoader worker receives
    assert clone.fetch("chr20", 5, 50) == genome.fetch("20", 5, 50)
    small = Genome({"chrM": "ACGTacgtNN"})
    assert small.fetch("MT", 2, 6, "-") == "gtAC"
    ids, mask = small.fetch_ids("chrM", 0, 10)
    assert mask.sum() == 4 and (ids == N_ID).sum() == 2


def test_stdin_gzip_stream(data_dir, monkeypatch):
    raw = (data_dir / "genomes/hg18_chrM_chr20first1Mb_softmasked.fa.gz").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert [(name, len(seq)) for name, seq in iter_records("-")] == [("chrM", 16_571), ("chr20", 1_000_000)]


@pytest.mark.parametrize("fmt, suffix", [("genbank", ".gbk"), ("embl", ".embl")])
def test_genbank_and_embl(data_dir, tmp_path, fmt, suffix):
    ((name, seq),) = iter_records(data_dir / "genomes/phage_lambda_NC_001416.fa")
    record = SeqRecord(Seq(seq), id="NC_001416.1", name="LAMBDA", annotations={"molecule_type": "DNA"})
    path = tmp_path / f"lambda{suffix}"
    SeqIO.write([record], path, fmt)
    assert list(iter_records(path)) == [("NC_001416.1", seq)]
    plain = tmp_path / "lambda.txt"
    plain.write_bytes(path.read_bytes())
    assert list(iter_records(plain, fmt=fmt)) == [("NC_001416.1", seq)]  # no telling suffix: --format


def test_crlf_and_lowercase_accepted(tmp_path):
    path = write_text(tmp_path / "crlf.fa", ">a desc\r\nACGTac\r\nGTN\r\n>b\r\nttTT\r\n")
    assert list(iter_records(path)) == [("a", "ACGTacGTN"), ("b", "ttTT")]
    genome = Genome(path)
    assert genome.records == {"a": 9, "b": 4}
    assert genome.fetch("a", 4, 8) == "acGT"
    assert encode(genome.fetch("b", 0, 4))[1].tolist() == [True, True, False, False]
