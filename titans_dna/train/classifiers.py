"""The three classifier kinds behind `titans-dna finetune` (Titans-DNA + head, the GenomicBenchmarks CNN, the
k-mer logistic regression): building them from a model config, batched class probabilities with optional
reverse-complement conjoining, and saving / loading a fitted one as a folder that `predict` reads.

A fitted classifier folder holds ``classifier.json`` (kind, classes, pooling, task) and the weights:
``backbone/`` (TitansDNA.save_pretrained) + ``head.safetensors``, or ``model.safetensors`` (CNN), or
``kmer_logreg.npz``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from titans_dna.data.atomic import atomic_path, atomic_write_text
from titans_dna.data.tokenizer import PAD_ID, encode
from titans_dna.model import SequenceClassifier, TitansConfig, TitansDNA
from titans_dna.model.heads import reverse_complement_batch
from titans_dna.train.baselines import GenomicBenchmarksCNN, KmerLogReg

# Hydra `model._target_` -> classifier kind (a plain mapping, so a config value greps to its class).
KINDS = {
    "titans_dna.model.TitansConfig": "titans",
    "titans_dna.train.baselines.cnn.GenomicBenchmarksCNN": "cnn_baseline",
    "titans_dna.train.baselines.kmer.KmerLogReg": "kmer_logreg",
}
META_NAME = "classifier.json"


def model_kind(model_cfg: Mapping) -> str:
    """The classifier kind a ``model`` config builds (``titans``, ``cnn_baseline`` or ``kmer_logreg``)."""
    target = model_cfg.get("_target_")
    if target not in KINDS:
        raise ValueError(
            f"model._target_ {target!r} is not a classifier kind; expected one of {sorted(KINDS)}"
        )
    return KINDS[target]


def autocast(device: torch.device, precision: str, cache_enabled: bool = True,
             ) -> contextlib.AbstractContextManager:
    """Mixed precision for ``precision`` in auto | bf16 | fp16 | fp32 (auto = bf16 on CUDA, fp32 on CPU).

    ``cache_enabled=False`` inside CUDA graph capture (model/graphed.py): the graph must cast the weights
    itself, not read a cast cached outside it, nor one that the cache frees when the context exits.
    """
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache_enabled)


@dataclass
class EncodedSeqs:
    """Token ids of n sequences, right-padded: ``ids`` uint8 [n, L_max] (PAD after the end) and
    ``lengths`` [n]."""

    ids: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def from_seqs(cls, seqs: Sequence[str], names: Sequence[str] | None = None) -> EncodedSeqs:
        width = max((len(s) for s in seqs), default=0)
        ids = np.full((len(seqs), width), PAD_ID, dtype=np.uint8)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = encode(seq, "<sequences>", names[row] if names else f"#{row + 1}")[0]
        return cls(torch.from_numpy(ids), torch.tensor([len(s) for s in seqs], dtype=torch.int64))

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    def batch(
        self, index: torch.Tensor, device: torch.device, reverse_complement: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids long [b, l], attention_mask bool [b, l])`` cut to the batch's longest sequence;
        with ``reverse_complement`` each row is its own reverse complement, still left-aligned."""
        lengths = self.lengths[index]
        width = max(int(lengths.max()), 1)
        ids = self.ids[index, :width].long()
        mask = torch.arange(width)[None, :] < lengths[:, None]
        if reverse_complement:
            ids = reverse_complement_batch(ids, mask)
        return ids.to(device), mask.to(device)


def build_classifier(
    kind: str,
    model_cfg: Mapping,
    num_classes: int,
    input_len: int,
    init: str | os.PathLike | None = None,
    pooling: str = "mean",
) -> nn.Module | KmerLogReg:
    """A fresh classifier: Titans-DNA (pretrained from ``init``, else random with ``model_cfg``) + head,
    the CNN sized for ``input_len``, or an unfitted k-mer model."""
    fields = {k: v for k, v in model_cfg.items() if k != "_target_"}
    if kind == "titans":
        backbone = TitansDNA.from_pretrained(init) if init else TitansDNA(TitansConfig(**fields))
        return SequenceClassifier(backbone.float(), num_classes, pooling=pooling)
    if kind == "cnn_baseline":
        return GenomicBenchmarksCNN(num_classes, input_len, **fields)
    if kind == "kmer_logreg":
        return KmerLogReg(**fields)
    raise ValueError(f"unknown classifier kind {kind!r}")


def iter_batches(n: int, batch_size: int, progress: bool = False, desc: str = "") -> Iterator[torch.Tensor]:
    """Index tensors of consecutive batches over ``n`` items, with an optional tqdm bar."""
    starts = range(0, n, batch_size)
    for lo in tqdm(starts, desc=desc, disable=not progress, leave=False):
        yield torch.arange(lo, min(lo + batch_size, n))


@torch.no_grad()
def predict_proba(
    model: nn.Module | KmerLogReg,
    seqs: Sequence[str] | EncodedSeqs,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    rc_conjoin: bool = False,
    progress: bool = False,
    raw_seqs: Sequence[str] | None = None,
) -> np.ndarray:
    """Class probabilities float64 [n, C].

    Args:
        model: a torch classifier (``forward(ids, mask) -> logits [B, C]``) or a fitted ``KmerLogReg``.
        seqs: sequences, or their ``EncodedSeqs`` (then ``raw_seqs`` must give the strings for k-mers).
        rc_conjoin: average the probabilities of each sequence and of its reverse complement (no effect on
            the k-mer model, whose canonical features are the same for both strands).
    """
    if isinstance(model, KmerLogReg):
        return model.predict_proba(raw_seqs if isinstance(seqs, EncodedSeqs) else seqs)
    device = torch.device(device)
    enc = seqs if isinstance(seqs, EncodedSeqs) else EncodedSeqs.from_seqs(seqs)
    was_training = model.training
    model.eval()
    out = []
    for index in iter_batches(len(enc), batch_size, progress, "predict"):
        strands = (False, True) if rc_conjoin else (False,)
        probs = 0.0
        for rc in strands:
            ids, mask = enc.batch(index, device, reverse_complement=rc)
            with autocast(device, precision):
                logits = model(ids, mask)
            probs = probs + torch.softmax(logits.float(), dim=-1)
        out.append((probs / len(strands)).double().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


def save_classifier(model: nn.Module | KmerLogReg, folder: str | os.PathLike, meta: dict) -> None:
    """Write a fitted classifier into ``folder`` (see the module docstring); ``meta`` must hold ``kind``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kind = meta["kind"]
    if kind == "titans":
        model.backbone.save_pretrained(folder / "backbone")
        head = {
            k: v.detach().cpu().contiguous()
            for k, v in model.state_dict().items()
            if not k.startswith("backbone.")
        }
        with atomic_path(folder / "head.safetensors") as tmp:
            save_file(head, str(tmp))
    elif kind == "cnn_baseline":
        meta = {**meta, "config": model.config()}
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with atomic_path(folder / "model.safetensors") as tmp:
            save_file(state, str(tmp))
    else:
        model.save(folder / "kmer_logreg.npz")
    atomic_write_text(folder / META_NAME, json.dumps(meta, indent=2) + "\n")


def model_dir(checkpoint: str | os.PathLike) -> Path:
    """The fine-tuned model folder behind a path: the folder itself, or the ``model/`` inside a seed
    folder."""
    path = Path(checkpoint)
    for candidate in (path, path / "model"):
        if (candidate / META_NAME).is_file():
            return candidate
    raise FileNotFoundError(
        f"{path}: not a fine-tuned model (no {META_NAME} in it or in {path / 'model'}); "
        "pass a finetune run's seed_<n> folder"
    )


def load_classifier(
    folder: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module | KmerLogReg, dict]:
    """Read a classifier written by :func:`save_classifier`; returns ``(model, meta)``."""
    folder = Path(folder)
    if not (folder / META_NAME).is_file():
        raise FileNotFoundError(
            f"{folder}: no {META_NAME}; expected a fine-tuned model folder (a finetune run's seed_<n>/model)"
        )
    meta = json.loads((folder / META_NAME).read_text())
    kind = meta["kind"]
    if kind == "titans":
        backbone = TitansDNA.from_pretrained(folder / "backbone", device=device).float()
        model = SequenceClassifier(backbone, meta["num_classes"], pooling=meta.get("pooling", "mean"))
        missing, unexpected = model.load_state_dict(load_file(str(folder / "head.safetensors")), strict=False)
        if unexpected or any(not k.startswith("backbone.") for k in missing):
            raise ValueError(
                f"{folder}/head.safetensors does not fit the classifier: missing {missing}, "
                f"unexpected {unexpected}"
            )
    elif kind == "cnn_baseline":
        model = GenomicBenchmarksCNN(**meta["config"])
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
    elif kind == "kmer_logreg":
        return KmerLogReg.load(folder / "kmer_logreg.npz"), meta
    else:
        raise ValueError(f"{folder}/{META_NAME}: unknown classifier kind {kind!r}")
    return model.to(device).eval(), meta
