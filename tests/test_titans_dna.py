"""One harness for every block (MAC, MAG, MAL, LMM): gradients, causality, streaming, padding, save/load,
embed. Tiny float64 models, so exactness is asserted to 1e-10 and the file runs in seconds."""

from __future__ import annotations

import random

import pytest
import torch

from titans_dna.data.tokenizer import reverse_complement
from titans_dna.model import TitansConfig, TitansDNA

BLOCKS = ("mac", "mag", "mal", "lmm")
EXACT = dict(rtol=0.0, atol=1e-10)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tiny float64 tensors: extra threads only add synchronisation (10x slower on a busy 2-core machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(block: str, causal: bool = True, **overrides) -> TitansDNA:
    # window < segment_len, so sliding attention reaches across segment and piece boundaries
    config = TitansConfig(**{**dict(d_model=32, n_layers=2, n_heads=2, head_dim=16, block=block, chunk_size=4,
                                    segment_len=16, n_persistent=2, window=12, causal=causal), **overrides})
    return TitansDNA(config).double()


def random_ids(batch: int, length: int) -> torch.Tensor:
    return torch.randint(7, 12, (batch, length))  # A, C, G, T, N


def random_dna(length: int) -> str:
    return "".join(random.choice("ACGT") for _ in range(length))


def stream(model: TitansDNA, ids: torch.Tensor, mask: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    """Logits of ids fed in pieces split at `cuts`, state carried."""
    state, logits = None, []
    bounds = [0, *cuts, ids.shape[1]]
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        out = model(ids[:, start:stop], mask[:, start:stop], state=state, return_state=stop < ids.shape[1])
        state = out.state
        logits.append(out.logits)
    return torch.cat(logits, dim=1)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("block", BLOCKS)
def test_every_parameter_gets_a_gradient(block, causal, seed):
    model = make_model(block, causal)
    ids = random_ids(2, 45)
    out = model(ids)
    assert out.logits.shape == (2, 45, 16) and out.hidden_states.shape == (2, 45, 32) and out.state is None
    (out.logits * torch.randn_like(out.logits)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, f"{name} gets a zero gradient"


@pytest.mark.parametrize("block", BLOCKS)
def test_causal_at_every_position(block, seed):
    """Row j + 1 changes token j only; its outputs before j must equal row 0's, and change at j."""
    model = make_model(block)
    T = 53  # three segments and a partial one, chunk 4 does not divide it
    base = random_ids(1, T)
    ids = base.repeat(T + 1, 1)
    for j in range(T):
        ids[j + 1, j] = 7 + (ids[j + 1, j] - 7 + 1) % 4
    with torch.no_grad():
        out = model(ids)
    for j in range(T):
        torch.testing.assert_close(out.logits[j + 1, :j], out.logits[0, :j], **EXACT)
        torch.testing.assert_close(out.hidden_states[j + 1, :j], out.hidden_states[0, :j], **EXACT)
        assert (out.logits[j + 1, j] - out.logits[0, j]).abs().max() > 1e-6, f"token {j} has no effect"


@pytest.mark.parametrize("block", BLOCKS)
def test_causal_streaming_in_random_pieces_equals_whole(block, seed):
    model = make_model(block)
    T = 97
    ids = random_ids(2, T)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, 80:] = False  # the second row is right-padded
    with torch.no_grad():
        whole = model(ids, mask).logits
        for _ in range(3):
            cuts = sorted(random.sample(range(1, T), random.randint(1, 12)))
            torch.testing.assert_close(stream(model, ids, mask, cuts)[mask], whole[mask], **EXACT)
        one_by_one = stream(model, ids[:, :40], mask[:, :40], list(range(1, 40)))  # token by token
        torch.testing.assert_close(one_by_one, whole[:, :40], **EXACT)


@pytest.mark.parametrize("block", BLOCKS)
def test_mlm_streaming_in_segment_aligned_pieces_equals_whole(block, seed):
    model = make_model(block, causal=False)
    T = 16 * 6 + 5
    ids = random_ids(2, T)
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        whole = model(ids, mask).logits
        cuts = sorted(random.sample([16 * k for k in range(1, 7)], 3))
        torch.testing.assert_close(stream(model, ids, mask, cuts), whole, **EXACT)
        state = model(ids[:, :20], return_state=True).state
        with pytest.raises(ValueError, match="segment"):
            model(ids[:, 20:], state=state)


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("length", [1, 3, 15, 17, 38])
def test_lengths_not_multiples_of_chunk_or_segment(block, length, seed):
    model = make_model(block)
    ids = random_ids(2, 40)
    with torch.no_grad():
        full = model(ids).logits
        short = model(ids[:, :length]).logits
    assert torch.isfinite(short).all()
    torch.testing.assert_close(short, full[:, :length], **EXACT)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("block", BLOCKS)
def test_padding_does_not_change_embeddings(block, causal, seed):
    model = make_model(block, causal)
    seqs = [random_dna(23), random_dna(70), random_dna(16)]
    alone = torch.cat([model.embed(s) for s in seqs])
    batched = model.embed(seqs, batch_size=3)
    torch.testing.assert_close(batched, alone, **EXACT)
    per_token = model.embed(seqs, per_token=True, batch_size=3)
    assert [t.shape for t in per_token] == [(23, 32), (70, 32), (16, 32)]
    torch.testing.assert_close(per_token[0].mean(0), alone[0], **EXACT)


@pytest.mark.parametrize("block", BLOCKS)
def test_save_load_round_trip_is_exact(block, tmp_path, seed):
    model = make_model(block, memory_depth=3, memory_activation="gelu")
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    loaded = TitansDNA.from_pretrained(tmp_path / "ckpt")
    assert loaded.config == model.config and loaded.dtype == torch.float64
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ids = random_ids(2, 37)
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, **EXACT)
    assert all(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("pooling", ["mean", "max", "first", "last"])
@pytest.mark.parametrize("block", BLOCKS)
def test_embed_rc_average_is_strand_symmetric(block, pooling, seed):
    model = make_model(block, causal=block != "mac")  # both modes across the blocks
    seq = random_dna(41)
    emb = model.embed([seq, reverse_complement(seq)], pooling=pooling, rc_average=True)
    assert emb.shape == (2, 32)
    torch.testing.assert_close(emb[0], emb[1], **EXACT)


@pytest.mark.parametrize("block", BLOCKS)
def test_embed_streams_long_sequences_and_reads_fasta(block, tmp_path, seed):
    """Sequences longer than one streamed piece (16 segments = 256 tokens) pool exactly as one forward."""
    model = make_model(block, causal=block in ("mac", "mal"))
    seqs = [random_dna(300), random_dna(90)]
    fasta = tmp_path / "x.fa"
    fasta.write_text("".join(f">r{i}\n{s[:60]}\n{s[60:]}\n" for i, s in enumerate(seqs)))
    for pooling in ("mean", "last"):
        emb = model.embed(fasta, pooling=pooling)
        for i, s in enumerate(seqs):
            ids = torch.tensor([[{"A": 7, "C": 8, "G": 9, "T": 10}[c] for c in s]])
            hidden = model(ids).hidden_states[0].detach()
            want = hidden.mean(0) if pooling == "mean" else hidden[-1]
            torch.testing.assert_close(emb[i], want, **EXACT)
    torch.testing.assert_close(model.embed(seqs[0], pooling="last"), emb[:1], **EXACT)  # a plain string


@pytest.mark.parametrize("block", BLOCKS)
def test_gradient_checkpointing_matches(block, seed):
    model = make_model(block)
    ids = random_ids(2, 45)
    weights = torch.randn(2, 45, 16, dtype=torch.float64)
    grads = []
    for flag in (False, True):
        model.config.gradient_checkpointing = flag
        model.zero_grad()
        (model(ids).logits * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, **EXACT)
