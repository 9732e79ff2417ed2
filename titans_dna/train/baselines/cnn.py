"""The GenomicBenchmarks baseline CNN, rebuilt from its published definition.

Architecture as in ML-Bioinfo-CEITEC/genomic_benchmarks (src/genomic_benchmarks/models/torch.py; Gresova et
al. 2023, BMC Genomic Data): token embedding (dim 100, as in their torch_cnn_experiments) -> three blocks of
Conv1d(kernel 8, valid padding) + BatchNorm + ReLU + MaxPool(2) with 16, 8 and 4 channels -> flatten ->
Linear(512) -> Linear(classes); their recipe trains it with Adam (lr 1e-3), batch 32.
Two deliberate differences: the head returns logits for a softmax cross-entropy over all classes (theirs
applies a sigmoid and then `binary_cross_entropy_with_logits`, i.e. a sigmoid twice, and supports only two
classes), and inputs are padded or cut to the fixed length the flatten layer was sized for.
"""

from __future__ import annotations

import torch
from torch import nn

from titans_dna.data.tokenizer import EMBED_ROWS, PAD_ID


class GenomicBenchmarksCNN(nn.Module):
    """Fixed-length CNN classifier.

    Args:
        num_classes: output classes.
        input_len: the sequence length the model is built for (at least 57); shorter inputs are
            right-padded with [PAD], longer ones cut (``forward`` does both).
        embedding_dim: token embedding width (100 in the reference experiments).
        vocab_size: embedding rows (the package tokenizer's 16).
    """

    def __init__(
        self, num_classes: int, input_len: int, embedding_dim: int = 100, vocab_size: int = EMBED_ROWS
    ):
        super().__init__()
        # Three valid width-8 convolutions with pooling need 57 positions to leave one: pad shorter tasks.
        input_len = max(int(input_len), 57)
        self.num_classes, self.input_len, self.embedding_dim = num_classes, input_len, embedding_dim
        self.embeddings = nn.Embedding(vocab_size, embedding_dim)
        layers: list[nn.Module] = []
        channels = embedding_dim
        for out in (16, 8, 4):
            layers += [
                nn.Conv1d(channels, out, kernel_size=8),
                nn.BatchNorm1d(out),
                nn.ReLU(),
                nn.MaxPool1d(2),
            ]
            channels = out
        self.features = nn.Sequential(*layers, nn.Flatten())
        length = input_len
        for _ in range(3):
            length = (length - 7) // 2
        self.lin1 = nn.Linear(channels * length, 512)
        self.lin2 = nn.Linear(512, num_classes)

    def config(self) -> dict:
        """Constructor arguments, for saving next to the weights."""
        return {
            "num_classes": self.num_classes,
            "input_len": self.input_len,
            "embedding_dim": self.embedding_dim,
            "vocab_size": self.embeddings.num_embeddings,
        }

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, num_classes] for token ids [B, T] (padding positions must hold PAD_ID)."""
        del attention_mask  # padding is a token of its own here, as in the reference model
        t = input_ids.shape[1]
        if t < self.input_len:
            input_ids = nn.functional.pad(input_ids, (0, self.input_len - t), value=PAD_ID)
        elif t > self.input_len:
            input_ids = input_ids[:, : self.input_len]
        x = self.embeddings(input_ids).transpose(1, 2)  # [B, E, T]
        return self.lin2(self.lin1(self.features(x)))  # no activation between them, as in the reference
