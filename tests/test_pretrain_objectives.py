"""Objectives, schedules and checkpoint I/O of the pretraining loop (no model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from titans_dna.data.tokenizer import BASE_IDS, MASK_ID, N_ID, PAD_ID, encode
from titans_dna.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from titans_dna.train.distributed import DistInfo, ShardedSampler
from titans_dna.train.objectives import IGNORE_INDEX, causal_batch, mlm_batch, weighted_lm_loss
from titans_dna.train.schedule import seq_len_at, split_windows, warmup_cosine


def _random_ids(shape, generator):
    return torch.tensor(BASE_IDS)[torch.randint(0, 4, shape, generator=generator)]


def test_mlm_masking_proportions(seed):
    g = torch.Generator().manual_seed(seed)
    ids = _random_ids((64, 1024), g)
    ids[:, -100:] = PAD_ID  # padding is never chosen
    batch = mlm_batch(ids, mask_prob=0.15, generator=g)
    chosen = batch.targets != IGNORE_INDEX
    eligible = ids != PAD_ID
    n = eligible.sum().item()
    assert not chosen[~eligible].any()
    assert abs(chosen.sum().item() / n - 0.15) < 0.01
    masked = (batch.inputs == MASK_ID) & chosen
    replaced = (batch.inputs != ids) & (batch.inputs != MASK_ID) & chosen
    kept = (batch.inputs == ids) & chosen
    n_chosen = chosen.sum().item()
    # Random replacements hit the original base 1/4 of the time, so "kept" is 10% + 10%/4.
    assert abs(masked.sum().item() / n_chosen - 0.8) < 0.02
    assert abs(replaced.sum().item() / n_chosen - 0.075) < 0.015
    assert abs(kept.sum().item() / n_chosen - 0.125) < 0.015
    assert torch.isin(batch.inputs[replaced], torch.tensor(BASE_IDS)).all()
    assert torch.equal(batch.targets[chosen], ids[chosen])
    assert torch.equal(batch.inputs[~chosen], ids[~chosen])
    assert torch.equal(batch.weights > 0, chosen)


def test_causal_targets_ignore_pad_and_n(data_dir):
    # A real soft-masked piece with lowercase repeats; add an N run and padding.
    ids, soft = encode(
        open(data_dir / "genomes/hg19_chr17_part40kb_softmasked.fa")
        .read()
        .split("\n", 1)[1]
        .replace("\n", "")[:512]
    )
    ids, soft = torch.from_numpy(ids.astype(np.int64))[None], torch.from_numpy(soft)[None]
    ids[0, 100:110] = N_ID
    ids[0, -20:] = PAD_ID
    batch = causal_batch(ids, soft, ignore_n=True, soft_mask_weight=0.25)
    assert torch.equal(batch.inputs, ids)
    counted = batch.targets != IGNORE_INDEX
    assert torch.equal(batch.targets[0, :-1][counted[0, :-1]], ids[0, 1:][counted[0, :-1]])
    assert not counted[0, 99:109].any() and counted[0, 98]  # positions whose next token is N
    assert not counted[0, -21:].any()  # next token is PAD, and the last position has no target
    w = batch.weights[0, :-21]
    next_soft = soft[0, 1:-20]
    assert soft.any() and (~soft).any()
    assert torch.all(w[next_soft & counted[0, :-21]] == 0.25)
    assert torch.all(w[~next_soft & counted[0, :-21]] == 1.0)
    with_n = causal_batch(ids, soft, ignore_n=False)
    assert (with_n.targets[0, 99:109] == N_ID).all() and (with_n.weights[0, 99:109] == 1).all()


def test_weighted_loss_matches_manual(seed):
    g = torch.Generator().manual_seed(seed)
    ids = _random_ids((3, 40), g)
    soft = torch.rand(3, 40, generator=g) < 0.3
    batch = causal_batch(ids, soft, soft_mask_weight=0.5)
    logits = torch.randn(3, 40, 16, generator=g)
    loss, weight_sum = weighted_lm_loss(logits, batch)
    logp = torch.log_softmax(logits, -1)
    manual, total = 0.0, 0.0
    for b in range(3):
        for t in range(39):
            w = 0.5 if soft[b, t + 1] else 1.0
            manual -= w * logp[b, t, ids[b, t + 1]].item()
            total += w
    assert weight_sum.item() == pytest.approx(total)
    assert loss.item() == pytest.approx(manual / total, rel=1e-5)
    # Uniform logits give log(V) whatever the weights.
    uniform, _ = weighted_lm_loss(torch.zeros(3, 40, 16), batch)
    assert uniform.item() == pytest.approx(math.log(16), rel=1e-6)


def test_schedules():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, min_ratio=0.1) == pytest.approx(0.55)
    assert warmup_cosine(100, 10, 100, min_ratio=0.1) == pytest.approx(0.1)
    lengths = [seq_len_at(s, 8192, 1024, 300) for s in (0, 99, 100, 250, 299, 300, 10_000)]
    assert lengths == [1024, 1024, 2048, 4096, 4096, 8192, 8192]
    assert seq_len_at(5, 512, 1024, 100) == 512  # window shorter than the first stage: no warm-up
    x = torch.arange(2 * 10).reshape(2, 10)
    assert torch.equal(
        split_windows(x, 4), torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [10, 11, 12, 13], [14, 15, 16, 17]])
    )


def test_sharded_sampler_resumes_and_partitions():
    take = lambda it, n: [next(it)[1] for _ in range(n)]  # noqa: E731
    ranks = [take(iter(ShardedSampler(10, rank=r, world_size=2, seed=3)), 5) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == list(range(10))  # one epoch split between the two ranks
    full = take(iter(ShardedSampler(10, seed=3)), 25)
    assert take(iter(ShardedSampler(10, seed=3, start=13)), 12) == full[13:]
    assert sorted(full[10:20]) == list(range(10)) and full[10:20] != full[:10]
    stream = iter(ShardedSampler(10, start=19))
    assert [next(stream)[0], next(stream)[0]] == [1, 2]  # positions 19 and 20 lie in epochs 1 and 2


def test_checkpoint_roundtrip_restores_everything(tmp_path, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, 2, 10))
    gen = torch.Generator().manual_seed(seed + 1)

    def train_step():
        loss = model(torch.randn(5, 4)).pow(2).mean() + torch.rand(1, generator=gen).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return loss.item()

    for _ in range(3):
        train_step()
    path = tmp_path / "ckpt" / "train_state.pt"
    save_checkpoint(
        path, model, opt, sched, step=3, info=DistInfo(), generators={"mask": gen}, extra={"samples": 15}
    )
    expected = [train_step() for _ in range(3)]
    for p in model.parameters():  # scramble everything the checkpoint must restore
        p.data.normal_()
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: warmup_cosine(s, 2, 10))
    opt, sched = opt2, sched2
    gen.manual_seed(12345)
    torch.manual_seed(999)
    meta = load_checkpoint(path, model, opt, sched, DistInfo(), generators={"mask": gen})
    assert meta == {"step": 3, "samples": 15}
    assert [train_step() for _ in range(3)] == expected
    assert not list(path.parent.glob(".*.tmp"))  # atomic write left no temporary file


def test_rng_state_roundtrip():
    state = rng_state()
    a = (np.random.rand(), torch.rand(2))
    set_rng_state(state)
    b = (np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and torch.equal(a[1], b[1])
