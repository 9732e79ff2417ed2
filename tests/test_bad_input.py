"""Bad input: each case gives a message naming the file and record/line/position, and leaves no output."""

from __future__ import annotations

import pytest
from data_helpers import isolated_cache, listing, write_text  # noqa: F401

from titans_dna.cli import main
from titans_dna.data.bed import BedError, check_intervals, read_bed
from titans_dna.data.fasta import FastaFormatError, iter_records
from titans_dna.data.genome import Genome
from titans_dna.data.tables import TableError, load_table

pytestmark = pytest.mark.usefixtures("isolated_cache")


def _preprocess_fails(tmp_path, capsys, fasta, *extra: str) -> str:
    """Run `preprocess` expecting a user error; assert nothing was written and return the message."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    assert main(["preprocess", str(fasta), "--out", str(out / "x.h5"), "--window", "100", *extra]) == 2
    assert listing(out) == []
    return capsys.readouterr().err


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("\n\n", "empty file"),
        ("ACGT\n>x\nACGT\n", "line 1: expected a '>' header"),
    ],
)
def test_empty_or_headerless_fasta(tmp_path, capsys, text, message):
    fasta = write_text(tmp_path / "bad.fa", text)
    with pytest.raises(FastaFormatError, match=message):
        list(iter_records(fasta))
    with pytest.raises(FastaFormatError, match=message):
        Genome(fasta)
    assert message in _preprocess_fails(tmp_path, capsys, fasta)
    assert listing(tmp_path) == ["bad.fa", "out"]  # no .fai either


def test_duplicate_record_names(tmp_path, capsys):
    fasta = write_text(tmp_path / "dup.fa", ">a\nACGT\n>b\nACGT\n>a other\nACGT\n")
    with pytest.raises(FastaFormatError, match="line 5: duplicate record name 'a' \\(first at line 1\\)"):
        list(iter_records(fasta))
    assert "duplicate record name" in _preprocess_fails(tmp_path, capsys, fasta)
    assert listing(tmp_path) == ["dup.fa", "out"]  # the half-built .fai was removed


def test_invalid_character_named_with_position(tmp_path, capsys):
    fasta = write_text(tmp_path / "bad.fa", ">chr1\n" + "ACGT" * 50 + "\n>chr2\nACGTAC?T\n")
    assert main(["info", str(fasta)]) == 2
    err = capsys.readouterr().err
    assert "bad.fa" in err and "record 'chr2'" in err and "'?' at position 7" in err
    err = _preprocess_fails(tmp_path, capsys, fasta)
    assert "record 'chr2'" in err and "position 7" in err


def test_ragged_lines_get_a_fix(tmp_path):
    fasta = write_text(tmp_path / "ragged.fa", ">a\nACGTACGT\nACG\nACGTACGT\n")
    with pytest.raises(FastaFormatError, match="equal-width.*seqkit"):
        Genome(fasta)
    assert list(iter_records(fasta)) == [("a", "ACGTACGTACGACGTACGT")]  # streaming still reads it


def test_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope.fa"
    assert main(["info", str(missing)]) == 2
    assert "nope.fa: no such file" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nope.fa"):
        Genome(missing)


def test_bed_bad_lines(data_dir, tmp_path):
    genome = Genome(data_dir / "genomes/hg18_chrM_chr20first1Mb_softmasked.fa.gz")
    unknown = ["chr20\t0\t100\ttrain\n", "chr7\t0\t100\ttrain\n"]
    with pytest.raises(BedError, match="line 2: contig .chr7. is not in the FASTA"):
        check_intervals(read_bed(unknown), genome)
    assert len(check_intervals(read_bed(unknown), genome, drop_missing=True)) == 1
    past_end = ["chrM\t0\t100\n", "#comment\n", "chrM\t16000\t16600\n"]
    with pytest.raises(BedError, match="line 3: chrM:16000-16600 runs past the end"):
        check_intervals(read_bed(past_end), genome)
    with pytest.raises(BedError, match="line 1: need 0 <= start < end"):
        read_bed(["chr20\t50\t10\n"])
    with pytest.raises(BedError, match="no interval with split \\['test'\\]"):
        read_bed(unknown, split="test")


def test_bed_from_another_assembly_is_refused(data_dir, tmp_path, capsys):
    """Borzoi hg38 intervals against GRCh37 chr20/21: refuse, naming the line, instead of fetching."""
    fasta = data_dir / "genomes/GRCh37_chr20_chr21_10.0-10.2Mb.fa.gz"
    bed = data_dir / "intervals/borzoi_sequences_human_hg38_folds.bed.gz"
    extra = ("--bed", str(bed), "--split", "fold3", "--drop-missing")
    err = _preprocess_fails(tmp_path, capsys, fasta, *extra)
    assert "runs past the end" in err and "another assembly" in err and "line " in err
    err = _preprocess_fails(tmp_path, capsys, fasta, "--bed", str(bed), "--split", "fold3")
    assert "name absent contigs" in err and "run past a contig end" in err and "another assembly" in err


def test_label_tables(tmp_path):
    no_label = write_text(tmp_path / "a.csv", "sequence,target\nACGT,1\n")
    with pytest.raises(TableError, match=r"a\.csv: needs columns \['seq\|sequence', 'label'\]"):
        load_table(no_label)
    unknown = write_text(tmp_path / "b.tsv", "seq\tlabel\nACGT\tnegative\nACGT\tmaybe\n")
    with pytest.raises(TableError, match=r"b\.tsv: line 3: unknown label 'maybe'"):
        load_table(unknown, classes=["negative", "positive"])
    bad = write_text(tmp_path / "c.csv.gz", "seq,label\nACGT,0\nACGU,1\n", "gzip")
    with pytest.raises(ValueError, match=r"c\.csv\.gz, record 'line 3': invalid character 'U' at position 4"):
        load_table(bad)


def test_short_sequences_skip_or_pad(tmp_path, capsys):
    fasta = write_text(tmp_path / "short.fa", ">long\n" + "ACGT" * 100 + "\n>tiny\nACGTAC\n")
    out = tmp_path / "o.h5"
    assert main(["preprocess", str(fasta), "--out", str(out), "--window", "100"]) == 0
    assert "1 regions shorter than the window skipped" in capsys.readouterr().out
    assert main(["preprocess", str(fasta), "--out", str(out), "--window", "100", "--short", "pad"]) == 0
    assert "0 regions shorter" in capsys.readouterr().out
    only_short = write_text(tmp_path / "only.fa", ">tiny\nACGTAC\n")
    assert "short='pad'" in _preprocess_fails(tmp_path, capsys, only_short, "--num-windows", "5")
