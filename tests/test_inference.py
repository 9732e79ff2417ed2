"""Inference commands on generated FASTA/BED/VCF files with a tiny random-init model saved by save_pretrained:
embed (HDF5), predict (TSV), score (causal log-likelihood, streamed), score-variants (TSV / VCF), and the
errors a user meets (REF allele not in the reference, an MLM checkpoint asked for likelihoods)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from titans_dna.cli import main
from titans_dna.data.tokenizer import DNATokenizer, reverse_complement
from titans_dna.model import SequenceClassifier, TitansConfig, TitansDNA
from titans_dna.train.classifiers import predict_proba, save_classifier
from titans_dna.train.inference import PIECE_SEGMENTS, log_likelihood, score_records

CONFIG = dict(
    d_model=32, n_heads=1, head_dim=32, n_layers=1, chunk_size=8, segment_len=32, n_persistent=2, window=32
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine run single-threaded (OpenMP spinning costs more than
    it gains)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = TitansDNA(TitansConfig(**CONFIG)).eval()
    folder = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(folder)
    return folder, model


def _dna(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(list("ACGT"), size=n))


def _write_fasta(path, records: dict[str, str]) -> None:
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records.items()))


def _tsv(path) -> list[dict[str, str]]:
    head, *rows = path.read_text().splitlines()
    return [dict(zip(head.split("\t"), row.split("\t"), strict=True)) for row in rows]


def _manual_log_likelihood(model: TitansDNA, seq: str) -> float:
    ids = DNATokenizer().batch_encode([seq])["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.double(), -1)[0, :-1]
    return float(logp.gather(-1, ids[0, 1:, None]).sum())


def test_log_likelihood_streams_long_records_exactly(checkpoint, seed):
    _, model = checkpoint
    rng = np.random.default_rng(seed)
    piece = PIECE_SEGMENTS * CONFIG["segment_len"]
    seqs = [_dna(rng, piece + 77), _dna(rng, 40), _dna(rng, 5) + "NN" + _dna(rng, 9)]
    ll, scored = score_records(model, seqs, batch_size=3)
    assert scored.tolist() == [len(seqs[0]) - 1, 39, 13]  # first base has no context; N targets skipped
    for seq, value in zip(seqs[:2], ll[:2], strict=True):
        assert value == pytest.approx(_manual_log_likelihood(model, seq), rel=1e-4)
    mlm = TitansDNA(TitansConfig(**CONFIG, causal=False))
    with pytest.raises(ValueError, match="causal"):
        log_likelihood(mlm, torch.full((1, 8), 7), torch.ones(1, 8, dtype=torch.bool))


def test_embed_and_score_a_fasta(checkpoint, tmp_path, seed):
    folder, model = checkpoint
    rng = np.random.default_rng(seed)
    records = {"short": _dna(rng, 30), "soft": _dna(rng, 50).lower(), "long": _dna(rng, 700)}
    fasta = tmp_path / "in.fa"
    _write_fasta(fasta, records)
    out = tmp_path / "emb.h5"
    assert main(["embed", str(fasta), "--checkpoint", str(folder), "--out", str(out), "--no-progress"]) == 0
    with h5py.File(out) as h5:
        assert [n.decode() for n in h5["names"][:]] == list(records) and "chrom" not in h5
        np.testing.assert_allclose(
            h5["embeddings"][:], model.embed(list(records.values())).numpy(), atol=1e-5
        )
    args = ["--per-token", "--rc-average", "--pooling", "max", "--batch-size", "2", "--no-progress"]
    assert main(["embed", str(fasta), "--checkpoint", str(folder), "--out", str(out), *args]) == 0
    with h5py.File(out) as h5:
        offsets = h5["offsets"][:]
        assert offsets.tolist() == [0, 30, 80, 780] and h5["tokens"].shape == (780, 32)
        expected = model.embed(records["soft"], per_token=True, rc_average=True)[0]
        np.testing.assert_allclose(h5["tokens"][30:80], expected.numpy(), atol=1e-5)
    scores = tmp_path / "scores.tsv"
    assert (
        main(["score", str(fasta), "--checkpoint", str(folder), "--out", str(scores), "--no-progress"]) == 0
    )
    rows = _tsv(scores)
    assert [r["name"] for r in rows] == list(records) and rows[0]["chrom"] == "."
    ll, _ = score_records(model, list(records.values()))
    np.testing.assert_allclose([float(r["log_likelihood"]) for r in rows], ll, rtol=1e-5)
    assert float(rows[2]["perplexity"]) == pytest.approx(np.exp(-ll[2] / 699), rel=1e-4)


def test_bed_regions_carry_coordinates(checkpoint, tmp_path, seed):
    folder, model = checkpoint
    rng = np.random.default_rng(seed)
    genome = {"chrA": _dna(rng, 400), "chrB": _dna(rng, 300)}
    ref = tmp_path / "ref.fa"
    _write_fasta(ref, genome)
    bed = tmp_path / "r.bed"
    bed.write_text("chrA\t10\t90\tr1\t0\t+\nchrB\t100\t160\tr2\t0\t-\n")
    out = tmp_path / "emb.h5"
    base = ["--bed", str(bed), "--reference", str(ref), "--checkpoint", str(folder), "--no-progress"]
    assert main(["embed", *base, "--out", str(out)]) == 0
    with h5py.File(out) as h5:
        assert [c.decode() for c in h5["chrom"][:]] == ["chrA", "chrB"]
        assert h5["start"][:].tolist() == [10, 100] and h5["end"][:].tolist() == [90, 160]
        assert [s.decode() for s in h5["strand"][:]] == ["+", "-"]
    scores = tmp_path / "s.tsv"
    assert main(["score", *base, "--out", str(scores)]) == 0
    rows = _tsv(scores)
    assert [(r["chrom"], r["start"], r["end"], r["strand"]) for r in rows] == [
        ("chrA", "10", "90", "+"),
        ("chrB", "100", "160", "-"),
    ]
    minus_strand = reverse_complement(genome["chrB"][100:160])
    assert float(rows[1]["log_likelihood"]) == pytest.approx(
        _manual_log_likelihood(model, minus_strand), rel=1e-4
    )


def test_predict_matches_the_classifier_and_rc_conjoining_is_strand_symmetric(checkpoint, tmp_path, seed):
    _, backbone = checkpoint
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    classifier = SequenceClassifier(backbone, num_classes=3, pooling="mean")
    model_dir = tmp_path / "seed_0" / "model"
    save_classifier(
        classifier, model_dir, {"kind": "titans", "num_classes": 3, "pooling": "mean", "rc_conjoin": True}
    )
    seqs = [_dna(rng, n) for n in (20, 64, 33)]
    fasta, fasta_rc = tmp_path / "a.fa", tmp_path / "b.fa"
    _write_fasta(fasta, {f"s{i}": s for i, s in enumerate(seqs)})
    _write_fasta(fasta_rc, {f"s{i}": reverse_complement(s) for i, s in enumerate(seqs)})
    probs = []
    for path in (fasta, fasta_rc):
        out = tmp_path / f"{path.stem}.tsv"
        argv = [
            "predict",
            str(path),
            "--checkpoint",
            str(tmp_path / "seed_0"),
            "--out",
            str(out),
            "--no-progress",
        ]
        assert main(argv) == 0
        rows = _tsv(out)
        assert list(rows[0])[-4:] == ["prediction", "prob_0", "prob_1", "prob_2"]
        probs.append(np.array([[float(r[f"prob_{c}"]) for c in range(3)] for r in rows]))
    expected = predict_proba(classifier, seqs, rc_conjoin=True)
    np.testing.assert_allclose(probs[0], expected, atol=1e-5)
    np.testing.assert_allclose(probs[0], probs[1], atol=1e-5)  # a sequence and its reverse complement agree
    np.testing.assert_allclose(probs[0].sum(1), 1.0, atol=1e-5)


VCF_HEADER = "##fileformat=VCFv4.2\n##contig=<ID=chr1>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"


def _score_variants(vcf, ref, folder, out, *options: str) -> int:
    argv = [
        "score-variants",
        str(vcf),
        "--reference",
        str(ref),
        "--checkpoint",
        str(folder),
        "--out",
        str(out),
    ]
    return main([*argv, "--no-progress", *options])


def test_score_variants_tsv_and_vcf(checkpoint, tmp_path, seed):
    folder, model = checkpoint
    rng = np.random.default_rng(seed)
    chrom = _dna(rng, 600)
    ref = tmp_path / "ref.fa"
    _write_fasta(ref, {"chr1": chrom})
    other = {"A": "C", "C": "G", "G": "T", "T": "A"}
    snv, dele, ins = 100, 300, 590  # 1-based positions; the insertion's window is clipped at the contig end
    lines = [
        f"chr1\t{snv}\trs1\t{chrom[snv - 1]}\t{other[chrom[snv - 1]]},<DEL>\t.\tPASS\tDP=3",
        f"chr1\t{dele}\t.\t{chrom[dele - 1 : dele + 2]}\t{chrom[dele - 1]}\t.\t.\t.",
        f"chr1\t{ins}\t.\t{chrom[ins - 1]}\t{chrom[ins - 1]}GGT\t.\t.\t.",
    ]
    vcf = tmp_path / "v.vcf"
    vcf.write_text(VCF_HEADER + "\n".join(lines) + "\n")
    out = tmp_path / "llr.tsv"
    assert _score_variants(vcf, ref, folder, out, "--window", "50") == 0
    rows = _tsv(out)
    assert [(r["pos"], r["alt"]) for r in rows][:2] == [
        (str(snv), other[chrom[snv - 1]]),
        (str(snv), "<DEL>"),
    ]
    assert rows[1]["llr"] == "." and len(rows) == 4
    ref_win = chrom[snv - 51 : snv + 50]
    alt_win = ref_win[:50] + other[chrom[snv - 1]] + ref_win[51:]
    ll, _ = score_records(model, [ref_win, alt_win, reverse_complement(ref_win), reverse_complement(alt_win)])
    expected = ((ll[1] - ll[0]) + (ll[3] - ll[2])) / 2
    assert float(rows[0]["llr"]) == pytest.approx(expected, abs=1e-4)
    assert float(rows[0]["llr_forward"]) == pytest.approx(ll[1] - ll[0], abs=1e-4)
    out_vcf = tmp_path / "llr.vcf"
    assert _score_variants(vcf, ref, folder, out_vcf, "--window", "50") == 0
    text = out_vcf.read_text().splitlines()
    assert any(t.startswith("##INFO=<ID=TITANS_LLR,Number=A") for t in text)
    data = [t for t in text if not t.startswith("#")]
    assert data[0].split("\t")[7] == f"DP=3;TITANS_LLR={float(rows[0]['llr']):.5f},."
    assert all("TITANS_LLR=" in t for t in data) and len(data) == 3


def test_score_variants_refuses_a_ref_allele_that_is_not_in_the_reference(checkpoint, tmp_path, capsys):
    folder, _ = checkpoint
    ref = tmp_path / "ref.fa"
    _write_fasta(ref, {"chr1": "ACGT" * 50})
    vcf = tmp_path / "bad.vcf"
    vcf.write_text(VCF_HEADER + "chr1\t2\t.\tC\tT\t.\t.\t.\nchr1\t5\t.\tG\tT\t.\t.\t.\n")
    assert _score_variants(vcf, ref, folder, tmp_path / "x.tsv") == 2
    err = capsys.readouterr().err
    assert "bad.vcf: line 5" in err and "REF 'G'" in err and "'A'" in err
    assert not (tmp_path / "x.tsv").exists()  # nothing half-written
