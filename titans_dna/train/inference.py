"""Inference over sequence files: embeddings (HDF5), class probabilities (TSV) and per-record log-likelihoods
under the causal model (TSV). Inputs are FASTA/GenBank/EMBL records or BED regions of a reference, read as a
stream and processed in chunks, so a large file never sits in memory whole; outputs are written atomically.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from titans_dna.data.atomic import atomic_path
from titans_dna.data.bed import check_intervals, read_bed
from titans_dna.data.fasta import iter_records
from titans_dna.data.genome import Genome
from titans_dna.data.tokenizer import TOKENIZER_VERSION, DNATokenizer
from titans_dna.model import TitansDNA
from titans_dna.model.embed import embed_sequences
from titans_dna.train.classifiers import autocast, load_classifier, model_dir, predict_proba
from titans_dna.train.objectives import causal_batch

COORD_COLUMNS = ("chrom", "start", "end", "strand")
PIECE_SEGMENTS = 16  # MAC segments per streamed piece when scoring long records
T = TypeVar("T")


@dataclass
class SeqRecord:
    """One input sequence; ``chrom/start/end/strand`` (0-based half-open) when it came from a BED region."""

    name: str
    seq: str
    chrom: str | None = None
    start: int | None = None
    end: int | None = None
    strand: str | None = None


def read_records(
    fasta: str | os.PathLike | None = None,
    bed: str | os.PathLike | None = None,
    reference: str | os.PathLike | None = None,
    fmt: str | None = None,
) -> Iterator[SeqRecord]:
    """Stream the records of a sequence file, or the regions of a BED file cut from a reference FASTA.

    Args:
        fasta: FASTA/GenBank/EMBL path (gzip ok) or ``-`` for stdin; exclusive with ``bed``.
        bed: BED regions (``-`` strand regions are reverse-complemented); needs ``reference``.
        reference: the indexed reference FASTA for ``bed``.
        fmt: sequence format of ``fasta`` (None guesses).
    """
    if (fasta is None) == (bed is None):
        raise ValueError("give either a sequence file or --bed with --reference")
    if fasta is not None:
        for name, seq in iter_records(fasta, fmt):
            yield SeqRecord(name, seq)
        return
    if reference is None:
        raise ValueError("--bed needs --reference (the genome FASTA the regions refer to)")
    genome = Genome(reference)
    for iv in check_intervals(read_bed(bed), genome, bed_name=str(bed)):
        seq = genome.fetch(iv.chrom, iv.start, iv.end, iv.strand)
        yield SeqRecord(
            f"{iv.chrom}:{iv.start}-{iv.end}({iv.strand})", seq, iv.chrom, iv.start, iv.end, iv.strand
        )


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of at most ``size`` items (records, variants) from a stream."""
    it = iter(items)
    while block := list(islice(it, size)):
        yield block


@contextlib.contextmanager
def open_output(out: str | os.PathLike) -> Iterator[IO[str]]:
    """A text handle on ``out``, renamed into place only when complete; ``-`` is stdout."""
    if str(out) == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    with atomic_path(out) as tmp, open(tmp, "w") as fh:
        yield fh


def _coords(rec: SeqRecord) -> list[str]:
    return [str(v) if v is not None else "." for v in (rec.chrom, rec.start, rec.end, rec.strand)]


def load_backbone(checkpoint: str | os.PathLike, device: torch.device) -> TitansDNA:
    """A TitansDNA from a pretrained folder / shipped name, or the backbone of a fine-tuned model folder."""
    path = Path(checkpoint)
    if (path / "backbone").is_dir():
        path = path / "backbone"
    elif (path / "model" / "backbone").is_dir():
        path = path / "model" / "backbone"
    return TitansDNA.from_pretrained(path if path.exists() else str(checkpoint), device=device).float().eval()


def embed_file(
    model: TitansDNA,
    records: Iterable[SeqRecord],
    out: str | os.PathLike,
    pooling: str = "mean",
    per_token: bool = False,
    rc_average: bool = False,
    batch_size: int = 32,
    precision: str = "fp32",
    with_coords: bool = False,
    chunk_records: int = 256,
    progress: bool = True,
) -> int:
    """Embed every record into an HDF5 file.

    Layout: ``names`` [n] and, with ``with_coords`` (BED input), ``chrom/start/end/strand`` [n];
    pooled: ``embeddings`` float32 [n, d_model]; per token: ``tokens`` float32 [sum L_i, d_model] with
    ``offsets`` int64 [n + 1] (record i is ``tokens[offsets[i]:offsets[i + 1]]``). File attributes
    record the settings.

    Returns:
        The number of records written.
    """
    device = model.device
    d = model.config.d_model
    n = 0
    with atomic_path(out) as tmp:
        import h5py

        with h5py.File(tmp, "w") as h5:
            text = h5py.string_dtype()
            main = h5.create_dataset(
                "tokens" if per_token else "embeddings",
                (0, d),
                maxshape=(None, d),
                dtype="f4",
                chunks=(256, d),
            )
            names = h5.create_dataset("names", (0,), maxshape=(None,), dtype=text)
            kinds = {"chrom": text, "start": "i8", "end": "i8", "strand": text}
            coords = {
                c: h5.create_dataset(c, (0,), maxshape=(None,), dtype=kinds[c])
                for c in (COORD_COLUMNS if with_coords else ())
            }
            offsets = [0]
            bar = tqdm(desc="embed", unit=" records", disable=not progress)
            for block in chunks(records, chunk_records):
                with autocast(device, precision):
                    emb = embed_sequences(
                        model,
                        [r.seq for r in block],
                        pooling=pooling,
                        rc_average=rc_average,
                        batch_size=batch_size,
                        per_token=per_token,
                    )
                rows = torch.cat(emb) if per_token else emb
                start = main.shape[0]
                main.resize(start + rows.shape[0], axis=0)
                main[start:] = rows.float().numpy()
                if per_token:
                    offsets += list(offsets[-1] + np.cumsum([e.shape[0] for e in emb]))
                names.resize(n + len(block), axis=0)
                names[n:] = [r.name for r in block]
                for c, ds in coords.items():
                    ds.resize(n + len(block), axis=0)
                    ds[n:] = [getattr(r, c) for r in block]
                n += len(block)
                bar.update(len(block))
            bar.close()
            if per_token:
                h5.create_dataset("offsets", data=np.asarray(offsets, dtype=np.int64))
            h5.attrs.update(
                {
                    "pooling": "none" if per_token else pooling,
                    "rc_average": rc_average,
                    "d_model": d,
                    "tokenizer": TOKENIZER_VERSION,
                    "n_records": n,
                }
            )
    return n


def predict_file(
    checkpoint: str | os.PathLike,
    records: Iterable[SeqRecord],
    out: str | os.PathLike,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    rc_conjoin: bool | None = None,
    chunk_records: int = 4096,
    progress: bool = True,
) -> int:
    """Class probabilities of every record with a fine-tuned classifier, as a TSV (``-``: stdout).

    Columns: name, chrom, start, end, strand (``.`` for sequence-file input), prediction, prob_0..prob_{C-1}.

    Args:
        checkpoint: a fine-tuned model folder (``seed_<s>/model``, or the seed folder holding it).
        rc_conjoin: average both strands; None = as the model was validated in fine-tuning.

    Returns:
        The number of records written.
    """
    model, meta = load_classifier(model_dir(checkpoint), device)
    conjoin = meta.get("rc_conjoin", False) if rc_conjoin is None else rc_conjoin
    n_classes = int(meta["num_classes"])
    header = ["name", *COORD_COLUMNS, "prediction", *[f"prob_{c}" for c in range(n_classes)]]
    n = 0
    with open_output(out) as fh:
        fh.write("\t".join(header) + "\n")
        bar = tqdm(desc="predict", unit=" records", disable=not progress)
        for block in chunks(records, chunk_records):
            probs = predict_proba(model, [r.seq for r in block], batch_size, device, precision, conjoin)
            for rec, row in zip(block, probs, strict=True):
                fh.write(
                    "\t".join([rec.name, *_coords(rec), str(int(row.argmax())), *(f"{p:.6g}" for p in row)])
                    + "\n"
                )
            n += len(block)
            bar.update(len(block))
        bar.close()
    return n


@torch.no_grad()
def log_likelihood(
    model: TitansDNA, ids: torch.Tensor, mask: torch.Tensor, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal log-likelihood of each row: sum over t of log p(x_{t+1} | x_{<=t}), A/C/G/T targets only.

    The first base has no context and is not scored; N targets are skipped. Rows longer than a piece of
    ``PIECE_SEGMENTS`` MAC segments stream through the model with its state carried (exact in causal mode).

    Args:
        ids: [B, T] long token ids, right-padded; mask: [B, T] bool.

    Returns:
        ``(loglik float64 [B] in nats, scored int64 [B] number of targets counted)``.
    """
    if not model.config.causal:
        raise ValueError("scoring needs a causal (next-token) model; this checkpoint was trained with MLM")
    batch = causal_batch(ids)  # PAD, specials and N get weight 0: only bases are scored
    piece = PIECE_SEGMENTS * model.config.segment_len
    total = torch.zeros(ids.shape[0], dtype=torch.float64, device=ids.device)
    state, length = None, ids.shape[1]
    for start in range(0, length, piece):
        stop = min(start + piece, length)
        with autocast(ids.device, precision):
            out = model(ids[:, start:stop], mask[:, start:stop], state=state, return_state=stop < length)
        state = out.state
        logp = torch.log_softmax(out.logits.float(), dim=-1)
        targets = batch.targets[:, start:stop]
        picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        total += (picked * batch.weights[:, start:stop]).double().sum(1)
    return total, batch.weights.sum(1).long()


def score_records(
    model: TitansDNA, seqs: list[str], batch_size: int = 16, precision: str = "fp32"
) -> tuple[np.ndarray, np.ndarray]:
    """Log-likelihoods (nats) and scored-base counts of sequences, batched by length to limit padding."""
    tokenizer = DNATokenizer()
    ll, scored = np.zeros(len(seqs)), np.zeros(len(seqs), dtype=np.int64)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for b in range(0, len(order), batch_size):
        rows = order[b : b + batch_size]
        enc = tokenizer.batch_encode([seqs[i] for i in rows])
        total, count = log_likelihood(
            model, enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device), precision
        )
        ll[rows], scored[rows] = total.cpu().numpy(), count.cpu().numpy()
    return ll, scored


def score_file(
    model: TitansDNA,
    records: Iterable[SeqRecord],
    out: str | os.PathLike,
    batch_size: int = 16,
    precision: str = "fp32",
    chunk_records: int = 1024,
    progress: bool = True,
) -> int:
    """Per-record log-likelihood TSV: name, chrom, start, end, strand, length, scored_bases,
    log_likelihood (nats), log_likelihood_per_base (nats; minus the loss), perplexity
    (exp of minus the per-base value)."""
    header = [
        "name",
        *COORD_COLUMNS,
        "length",
        "scored_bases",
        "log_likelihood",
        "log_likelihood_per_base",
        "perplexity",
    ]
    n = 0
    with open_output(out) as fh:
        fh.write("\t".join(header) + "\n")
        bar = tqdm(desc="score", unit=" records", disable=not progress)
        for block in chunks(records, chunk_records):
            ll, scored = score_records(model, [r.seq for r in block], batch_size, precision)
            for rec, value, count in zip(block, ll, scored, strict=True):
                per_base = value / count if count else float("nan")
                fh.write(
                    "\t".join(
                        [
                            rec.name,
                            *_coords(rec),
                            str(len(rec.seq)),
                            str(int(count)),
                            f"{value:.6f}",
                            f"{per_base:.6f}",
                            f"{np.exp(-per_base):.6f}",
                        ]
                    )
                    + "\n"
                )
            n += len(block)
            bar.update(len(block))
        bar.close()
    return n
