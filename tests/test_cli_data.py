"""`titans-dna info` and `titans-dna preprocess` on real genomes."""

from __future__ import annotations

import io
import json
import sys

import pytest
from data_helpers import isolated_cache, listing  # noqa: F401

from titans_dna.cli import main
from titans_dna.data.store import H5WindowDataset
from titans_dna.data.token_store import TokenStore

pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_help_lists_data_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "info" in out and "preprocess" in out


def test_info_table_ecoli(data_dir, capsys):
    assert main(["info", "--no-progress", str(data_dir / "genomes/ecoli_K12_MG1655.fa.gz")]) == 0
    out = capsys.readouterr().out
    assert "K-12-MG1655" in out and "4,639,675" in out
    assert out.strip().splitlines()[-1].split()[:2] == ["total", "4,639,675"]


def test_info_json_totals_over_files(data_dir, capsys):
    files = [
        data_dir / "genomes/hg18_chrM_chr20first1Mb_softmasked.fa.gz",
        data_dir / "genomes/human_chrM_MT-human.fa",
    ]
    assert main(["info", "--json", *map(str, files)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in report["records"]] == ["chrM", "chr20", "MT_human"]
    total = report["total"]
    assert total["length"] == 16_571 + 1_000_000 + 16_569
    assert total["n"] == 8_000 and total["soft_masked"] == 596_285 + 1
    chr20 = report["records"][1]
    assert chr20["n_percent"] == 0.8 and 0 < chr20["gc_percent"] < 100


def test_info_stdin(data_dir, capsys, monkeypatch):
    raw = (data_dir / "genomes/phage_lambda_NC_001416.fa").read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert main(["info", "--json", "-"]) == 0
    (record,) = json.loads(capsys.readouterr().out)["records"]
    assert record["file"] == "<stdin>" and record["length"] == 48_502


def test_preprocess_h5_and_npy(data_dir, tmp_path, capsys):
    fasta = str(data_dir / "genomes/sacCer3_chrIV.fa.gz")
    h5 = tmp_path / "yeast.h5"
    assert main(["preprocess", fasta, "--out", str(h5), "--window", "4096", "--stride", "2048"]) == 0
    assert "windows of 4096 tokens" in capsys.readouterr().out
    assert len(H5WindowDataset(h5)) == (1_531_933 - 4096) // 2048 + 1
    assert main(["preprocess", fasta, "--out", str(tmp_path / "yeast.npy")]) == 0
    assert TokenStore(tmp_path / "yeast.npy").records == {"chrIV": 1_531_933}
    assert listing(tmp_path) == ["yeast.h5", "yeast.json", "yeast.npy"]
    assert main(["preprocess", fasta, "--out", str(tmp_path / "no_window.h5")]) == 2
    assert "--window is required" in capsys.readouterr().err
