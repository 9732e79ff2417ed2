"""Masked pooling, batch reverse complement and the sequence classifier's RC conjoining."""

from __future__ import annotations

import pytest
import torch

from titans_dna.data.tokenizer import DNATokenizer, reverse_complement
from titans_dna.model import SequenceClassifier, TitansConfig, TitansDNA, pool
from titans_dna.model.heads import reverse_complement_batch


def test_pool_uses_only_valid_positions(seed):
    hidden = torch.randn(2, 5, 3)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    for row, n in ((0, 5), (1, 3)):
        valid = hidden[row, :n]
        torch.testing.assert_close(pool(hidden, mask, "mean")[row], valid.mean(0))
        torch.testing.assert_close(pool(hidden, mask, "max")[row], valid.amax(0))
        torch.testing.assert_close(pool(hidden, mask, "first")[row], valid[0])
        torch.testing.assert_close(pool(hidden, mask, "last")[row], valid[-1])
    torch.testing.assert_close(pool(hidden, None, "mean"), hidden.mean(1))
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool(hidden, mask, "median")


def test_reverse_complement_batch_keeps_padding_on_the_right():
    seqs = ["ACGTTN", "GGA", "TTTTC"]
    batch = DNATokenizer().batch_encode(seqs)
    rc = reverse_complement_batch(batch["input_ids"], batch["attention_mask"])
    want = DNATokenizer().batch_encode([reverse_complement(s) for s in seqs])["input_ids"]
    assert torch.equal(rc, want)


@pytest.mark.parametrize("block, causal", [("mac", True), ("mag", False)])
def test_classifier_rc_conjoin_is_strand_symmetric(block, causal, seed):
    config = TitansConfig(d_model=32, n_layers=1, n_heads=2, head_dim=16, block=block, chunk_size=4,
                          segment_len=8, n_persistent=2, window=8, causal=causal)
    classifier = SequenceClassifier(TitansDNA(config).double(), num_classes=3, pooling="max", rc_conjoin=True)
    seqs = ["ACGTTGCAAGCTTAGC", "GGATCCA"]
    tokenizer = DNATokenizer()
    fwd = tokenizer.batch_encode(seqs)
    rev = tokenizer.batch_encode([reverse_complement(s) for s in seqs])
    logits = classifier(fwd["input_ids"], fwd["attention_mask"])
    assert logits.shape == (2, 3)
    torch.testing.assert_close(classifier(rev["input_ids"], rev["attention_mask"]), logits,
                               rtol=0.0, atol=1e-12)
    logits.sum().backward()
    assert classifier.head.weight.grad is not None
    assert classifier.backbone.embedding.weight.grad.abs().max() > 0
