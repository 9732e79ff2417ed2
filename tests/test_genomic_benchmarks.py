"""GenomicBenchmarks and label tables: official layout, tables (GB exports, GUE, janggu), coordinates against
a local reference, downloads through a local HTTP server, and the registry of the 8 tasks."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading

import numpy as np
import pytest
from data_helpers import isolated_cache, listing, write_text  # noqa: F401

from titans_dna.data import reverse_complement
from titans_dna.data.genome import Genome
from titans_dna.data.genomic_benchmarks import (
    DownloadError,
    download_gb_task,
    gb_registry,
    load_gb_coordinates,
    load_gb_folder,
    task_info,
)
from titans_dna.data.tables import TableError, load_table, read_labelled

pytestmark = pytest.mark.usefixtures("isolated_cache")
COHN_TEST = "genomic_benchmarks/sequences/human_enhancers_cohn.test.csv.gz"


@pytest.fixture(scope="module")
def registry(data_dir):
    return gb_registry(str(data_dir / "genomic_benchmarks/coordinates"))


def test_registry_of_the_8_tasks(registry):
    assert len(registry) == 8
    cohn = registry["human_enhancers_cohn"]
    assert cohn.classes == ("negative", "positive") and cohn.fixed_length == 500
    assert cohn.counts["test"] == {"negative": 3474, "positive": 3474}
    assert registry["human_nontata_promoters"].counts["train"] == {"negative": 12355, "positive": 14742}
    assert registry["human_ensembl_regulatory"].classes == ("enhancer", "ocr", "promoter")
    assert registry["demo_human_or_worm"].references["worm"].endswith("WBcel235.dna.toplevel.fa.gz")
    assert registry["dummy_mouse_enhancers_ensembl"].fixed_length is None


def test_cohn_table_in_official_class_order(data_dir, registry):
    table = load_table(data_dir / COHN_TEST, classes=registry["human_enhancers_cohn"].classes)
    assert len(table) == 6948 and table.class_counts() == {"negative": 3474, "positive": 3474}
    seq, label = table[0]
    assert len(seq) == 500 and label in (0, 1)


def test_gue_and_janggu_tables(data_dir):
    gue = load_table(data_dir / "benchmarks/GUE/prom/prom_core_tata/dev.csv.gz")
    assert gue.classes == ("0", "1") and {len(s) for s in gue.sequences} == {70}
    janggu = load_table(data_dir / "benchmarks/janggu_Oct4_vs_MafK/test.csv.gz")
    assert janggu.class_counts() == {"0": 100, "1": 100}
    assert any(c.islower() for c in janggu.sequences[0]) and janggu.ids[0].startswith("chr")
    seqs, labels, names = read_labelled(data_dir / "benchmarks/iEnhancer_Liu2016/test.csv.gz")
    assert len(seqs) == 400 and labels.dtype == np.int64 and np.bincount(labels).tolist() == [200, 200]
    assert names[0] == "Chr11_6627824_6628024"  # the table's id column
    assert read_labelled(data_dir / "benchmarks/GUE/tf/0/dev.csv.gz")[2][:2] == ["0", "1"]  # row numbers


def test_official_folder_layout(data_dir, tmp_path, registry):
    table = load_table(data_dir / COHN_TEST, classes=registry["human_enhancers_cohn"].classes)
    root = tmp_path / "gb"
    kept = {0: [], 1: []}
    for seq, label in table:
        if len(kept[label]) < 12:
            folder = root / "human_enhancers_cohn/test" / table.classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{len(kept[label])}.txt").write_text(seq)
            kept[label].append(seq)
    loaded = load_gb_folder(root, "human_enhancers_cohn", "test")
    assert loaded.classes == ("negative", "positive")
    assert loaded.sequences == kept[0] + kept[1] and loaded.labels.tolist() == [0] * 12 + [1] * 12


def test_coordinates_against_local_reference(data_dir, tmp_path):
    task = tmp_path / "human_enhancers_cohn"
    (task / "test").mkdir(parents=True)
    shutil.copy(data_dir / "genomic_benchmarks/coordinates/human_enhancers_cohn/metadata.yaml", task)
    rows = {
        "negative": "n0,chr20,100,160,+\nn1,chr21,5000,5070,-\n",
        "positive": "p0,chr20,150000,150200,-\n",
    }
    for name, body in rows.items():
        write_text(task / "test" / f"{name}.csv.gz", "id,region,start,end,strand\n" + body, "gzip")
    fasta = data_dir / "genomes/GRCh37_chr20_chr21_10.0-10.2Mb.fa.gz"  # Ensembl names: 20, 21
    loaded = load_gb_coordinates(task, "test", fasta)
    genome = Genome(fasta)
    assert loaded.ids == ["n0", "n1", "p0"] and loaded.labels.tolist() == [0, 0, 1]
    assert loaded.sequences[0] == genome.fetch("20", 100, 160)
    assert loaded.sequences[1] == reverse_complement(genome.fetch("21", 5000, 5070))
    assert loaded.sequences[2] == reverse_complement(genome.fetch("20", 150000, 150200))


def test_real_coordinates_need_their_reference(data_dir):
    task = data_dir / "genomic_benchmarks/coordinates/human_enhancers_cohn"
    with pytest.raises(TableError, match=r"negative\.csv\.gz: line 2: chr1:.*GRCh38"):
        load_gb_coordinates(task, "test", data_dir / "genomes/GRCh37_chr20_chr21_10.0-10.2Mb.fa.gz")


def test_download_into_cache_and_offline_error(data_dir, tmp_path):
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(data_dir / "genomic_benchmarks/coordinates")
    )
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        task_dir = download_gb_task("dummy_mouse_enhancers_ensembl", url, tmp_path / "cache")
    finally:
        server.shutdown()
        server.server_close()
    info = task_info(task_dir)
    assert info.counts == {
        "train": {"negative": 484, "positive": 484},
        "test": {"negative": 121, "positive": 121},
    }
    assert download_gb_task("dummy_mouse_enhancers_ensembl", url, tmp_path / "cache") == task_dir  # cached
    with pytest.raises(DownloadError, match="offline.*by hand"):
        download_gb_task("human_enhancers_cohn", url, tmp_path / "cache")
    assert listing(tmp_path / "cache") == ["dummy_mouse_enhancers_ensembl"]  # no partial download left


def test_labelled_fasta(tmp_path):
    path = write_text(tmp_path / "train.fa", ">s1|0\nACGT\n>s2|1\nGGcc\n")
    seqs, labels, names = read_labelled(path)
    assert seqs == ["ACGT", "GGcc"] and labels.tolist() == [0, 1] and names == ["s1", "s2"]
