"""Tokenizer: fixed ids, round trips, soft-mask, IUPAC, reverse complement on numpy and torch, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from titans_dna.data import (
    CLS_ID,
    N_ID,
    PAD_ID,
    SEP_ID,
    DNATokenizer,
    InvalidSequenceError,
    decode,
    encode,
    reverse_complement,
    reverse_complement_ids,
)
from titans_dna.data.fasta import iter_records


def test_ids_match_hyenadna_caduceus():
    ids, mask = encode("ACGTN")
    assert ids.tolist() == [7, 8, 9, 10, 11] and ids.dtype == np.uint8
    assert not mask.any()
    assert (CLS_ID, SEP_ID, PAD_ID, N_ID) == (0, 1, 4, 11)


def test_soft_mask_and_iupac():
    ids, mask = encode("acgtRYswKMbdhvN")
    assert ids[:4].tolist() == [7, 8, 9, 10]
    assert (ids[4:] == N_ID).all()
    assert mask.tolist() == [c.islower() for c in "acgtRYswKMbdhvN"]
    assert encode(b"ACgt")[0].tolist() == encode("ACgt")[0].tolist()


@pytest.mark.parametrize("bad, position", [("ACGU", 4), ("AC GT", 3), ("ACG-", 4), ("A\u00e9", 2)])
def test_invalid_character_names_source_record_position(bad, position):
    with pytest.raises(InvalidSequenceError) as err:
        encode(bad, source="reads.fa", record="chr7")
    assert err.value.position == position
    assert (
        "reads.fa" in str(err.value) and "chr7" in str(err.value) and f"position {position}" in str(err.value)
    )
    assert isinstance(err.value, ValueError)


def test_round_trip_real_softmasked_genome(data_dir):
    """hg18 piece: 596,285 lowercase bases and 8,000 N survive encode/decode."""
    records = dict(iter_records(data_dir / "genomes/hg18_chrM_chr20first1Mb_softmasked.fa.gz"))
    lower = n_count = 0
    for name, seq in records.items():
        ids, mask = encode(seq, "hg18", name)
        assert decode(ids, mask) == seq
        lower += int(mask.sum())
        n_count += int((ids == N_ID).sum())
    assert (lower, n_count) == (596_285, 8_000)


def test_reverse_complement_involution_numpy_and_torch(seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 12, size=(3, 5, 257)).astype(np.uint8)
    rc = reverse_complement_ids(ids)
    assert rc.dtype == np.uint8 and rc.shape == ids.shape
    np.testing.assert_array_equal(reverse_complement_ids(rc), ids)
    specials = ids < 7
    np.testing.assert_array_equal(rc[..., ::-1][specials], ids[specials])
    tensor = torch.from_numpy(ids.astype(np.int64))
    rc_t = reverse_complement_ids(tensor)
    assert rc_t.dtype == torch.int64
    np.testing.assert_array_equal(rc_t.numpy(), rc)
    assert torch.equal(reverse_complement_ids(rc_t), tensor)


def test_reverse_complement_string_matches_ids(seed):
    rng = np.random.default_rng(seed)
    seq = "".join(rng.choice(list("ACGTNacgtn"), size=500))
    assert reverse_complement(reverse_complement(seq)) == seq
    ids, mask = encode(seq)
    rc_ids, rc_mask = encode(reverse_complement(seq))
    np.testing.assert_array_equal(rc_ids, reverse_complement_ids(ids))
    np.testing.assert_array_equal(rc_mask, mask[::-1])
    assert reverse_complement("ARYKMBVDHSWN") == "NWSDHBVKMRYT"


def test_decode_specials():
    assert decode([CLS_ID, 7, 8, SEP_ID, PAD_ID]) == "[CLS]AC[SEP][PAD]"
    assert decode(torch.tensor([CLS_ID, 7, 8, SEP_ID]), skip_special_tokens=True) == "AC"
    with pytest.raises(ValueError, match="token ids"):
        decode([3, 12])


def test_batch_encode_padding_truncation_specials():
    tok = DNATokenizer()
    out = tok.batch_encode(["ACGTa", "CC"], add_special_tokens=True)
    assert out["input_ids"].dtype == torch.long and out["input_ids"].shape == (2, 7)
    assert out["input_ids"][1].tolist() == [CLS_ID, 8, 8, SEP_ID, PAD_ID, PAD_ID, PAD_ID]
    assert out["attention_mask"].sum(1).tolist() == [7, 4]
    assert out["soft_mask"][0].tolist() == [False, False, False, False, False, True, False]
    cut = tok.batch_encode(["ACGTACGT", "A"], max_length=4, truncation=True)
    assert cut["input_ids"].tolist() == [[7, 8, 9, 10], [7, PAD_ID, PAD_ID, PAD_ID]]
    with pytest.raises(ValueError, match="truncation"):
        tok.batch_encode(["ACGTACGT"], max_length=4)
    assert tok.decode(cut["input_ids"][0]) == "ACGT"
