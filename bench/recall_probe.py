"""Can the memory learn recall beyond the attention segment when it is trained for exactly that? (issue 6)

A mechanism probe on synthetic DNA, apart from genomic data: uniform random ACGT background, an L-base random
insert at position p and again at p + D, the causal loss on every position. The background is unpredictable
(ln 4 = 1.386 nats per base); only the second copy can be learned, and only by carrying the first one over D
tokens. With D inside one MAC segment attention can copy it (the positive control); with D several segments
away only the long-term memory can. The log reports the loss on both copies (bases 2..L-1) as training goes.

    python bench/recall_probe.py --distance 160 --steps 1500 --out OUT   # 2-3 segments past attention
    python bench/recall_probe.py --distance 32 --steps 600 --out OUT     # control: inside one segment
    python bench/recall_probe.py --one-pass --out OUT                    # what one pass of the write stores
Before training it reports, per layer, the gradient norms of the memory's q, k and v projections from the
second copy's loss (k and v act only through the write); after it, the loss on both copies of that batch with
the memory carried and with it reset after every segment (`memory_ablation`). Writes recall_probe.json (those,
the loss curve and the settings) to --out (default $OUT, else ./bench_out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from titans_dna.data.atomic import atomic_write_text
from titans_dna.data.tokenizer import BASE_IDS
from titans_dna.model import TitansConfig, TitansDNA
from titans_dna.model.titans_memory import MemoryInputs, TitansMemory
from titans_dna.train.streaming import stream_logliks


def make_batch(batch: int, length: int, insert: int, distance: int, gen: torch.Generator, period: int = 0):
    """ids [batch, length] of random bases with an insert at p and its copy at p + distance; p [batch].
    period > 0: the background repeats a random unit of that many bases (its own per sequence), so it is
    predictable from context and only the insert surprises."""
    bases = torch.tensor(BASE_IDS)
    if period:
        unit = torch.randint(0, 4, (batch, period), generator=gen)
        ids = bases[unit.repeat(1, -(-length // period))[:, :length]]
    else:
        ids = bases[torch.randint(0, 4, (batch, length), generator=gen)]
    starts = torch.randint(8, length - distance - insert - 1, (batch,), generator=gen)
    copy = bases[torch.randint(0, 4, (batch, insert), generator=gen)]
    span = torch.arange(insert)
    rows = torch.arange(batch)[:, None]
    ids[rows, starts[:, None] + span] = copy
    ids[rows, starts[:, None] + distance + span] = copy
    return ids, starts


def next_base_logp(model: TitansDNA, ids: torch.Tensor) -> torch.Tensor:
    """logp [B, T - 1] with logp[:, t] = log p(ids[t + 1] | ids[:t + 1]) under the causal model."""
    logits = model(ids[:, :-1]).logits
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]


def copy_loss(logp: torch.Tensor, starts: torch.Tensor, offset: int, insert: int) -> torch.Tensor:
    """Mean loss on bases 2..insert-1 of the copy at starts + offset (logp from `next_base_logp`)."""
    span = torch.arange(1, insert - 1, device=logp.device)
    rows = torch.arange(logp.shape[0], device=logp.device)[:, None]
    return -logp[rows, starts[:, None] + offset + span].mean()


def memory_ablation(model: TitansDNA, ids: torch.Tensor, starts: torch.Tensor, distance: int,
                    insert: int) -> dict:
    """Loss on both copies of a batch, each sequence streamed with the memory carried across segments and with
    it reset after every segment (`stream_logliks`): what the long-term memory itself contributes."""
    was_training = model.training
    model.eval()
    result = {}
    for name, reset in (("carried", False), ("reset", True)):
        logp = torch.stack([stream_logliks(model, row, reset_memory=reset)[1:] for row in ids])
        result[name] = {"first_copy": copy_loss(logp, starts.cpu(), 0, insert).item(),
                        "second_copy": copy_loss(logp, starts.cpu(), distance, insert).item()}
    model.train(was_training)
    return result


def write_signal(model: TitansDNA, ids: torch.Tensor, starts: torch.Tensor, distance: int,
                 insert: int) -> list[dict]:
    """Gradient norms, per layer, of the memory's q, k and v projections from the second copy's loss alone.
    q acts through the read, k and v only through the write: their share is how much the outer loop sees of
    what the memory stores."""
    logp = next_base_logp(model, ids)
    model.zero_grad(set_to_none=True)
    copy_loss(logp, starts, distance, insert).backward()
    norms = [{name: float(getattr(layer.block.memory, f"{name}_proj").weight.grad.norm()) for name in "qkv"}
             for layer in model.layers]
    model.zero_grad(set_to_none=True)
    return norms


def one_pass_recall(theta_max: float, theta_share: float, eta_share: float, chunk: int = 16,
                    inner_step: str = "chunk_sum", tokens: int = 32, seed: int = 0) -> dict:
    """What one pass stores. The probe's memory (2 heads x 32, W_0 at init) writes `tokens` random unit
    (key, value) pairs once, with the inner-step gate at `theta_share` of its bound (the layer's `inner_step`
    rule turns it into per-token steps) and eta = eta_max * eta_share, no forgetting; then each key is read
    back. Returns the mean cosine and distance between the answer and its value, before the pass (W_0's
    answer) and after it, and the mean per-token step."""
    torch.manual_seed(seed)
    config = TitansConfig(d_model=64, n_layers=1, n_heads=2, head_dim=32, segment_len=64, chunk_size=chunk,
                          theta_max=theta_max, inner_step=inner_step, memory_backend="naive")
    memory = TitansMemory(config)
    shape = (1, tokens, config.n_heads, config.head_dim)
    keys, values = (torch.nn.functional.normalize(torch.randn(shape), dim=-1) for _ in range(2))
    gate = torch.ones(1, tokens, config.n_heads)
    eta = gate * config.eta_max * eta_share
    theta = memory.inner_step(gate * theta_share, eta, keys, torch.ones(1, tokens, dtype=torch.bool))
    with torch.no_grad():
        _, written = memory.write(MemoryInputs(keys, keys, values, theta, eta, gate * 0.0), None)
        answers = {"before": memory.read(keys, None), "after": memory.read(keys, written)}
    cosine = {f"cos_{when}": torch.nn.functional.cosine_similarity(a, values, dim=-1)[0]
              for when, a in answers.items()}
    distance = {f"dist_{when}": float((a - values).norm(dim=-1).mean()) for when, a in answers.items()}
    return {"chunk": chunk, "inner_step": inner_step, "theta_max": theta_max, "theta_share": theta_share,
            "eta": config.eta_max * eta_share, "tokens": tokens, "theta_mean": float(theta.mean()),
            **{key: float(c.mean()) for key, c in cosine.items()}, **distance,
            # the first 32 pairs, written before all the others: what is left of them after `tokens` writes
            "cos_after_first32": float(cosine["cos_after"][:32].mean())}


def start_gates(model: TitansDNA, theta: float | None, eta: float | None) -> None:
    """Start the inner-step and momentum gates at these shares of their bounds (None: as the model does). The
    gate biases are [theta per head, eta per head, alpha per head] (TitansMemory.gates)."""
    heads = model.config.n_heads
    with torch.no_grad():
        for layer in model.layers:
            bias = layer.block.memory.gates.bias
            for index, share in enumerate((theta, eta)):
                if share is not None:
                    bias[index * heads:(index + 1) * heads] = math.log(share / (1 - share))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--distance", type=int, default=160, help="D, tokens from the first copy to the second")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    p.add_argument("--length", type=int, default=384, help="tokens per sequence")
    p.add_argument("--insert", type=int, default=24, help="bases in the repeated insert")
    p.add_argument("--batch", type=int, default=16, help="sequences per step")
    p.add_argument("--period", type=int, default=0,
                   help="background: a random unit of this many bases repeated (0: uniform random bases)")
    p.add_argument("--block", default="mac", help="mac | mag | mal | lmm")
    p.add_argument("--alpha-max", type=float, default=1e-3, help="forgetting-gate bound per token")
    p.add_argument("--theta-max", type=float, default=0.1, help="inner-step bound summed over a chunk")
    p.add_argument("--depth", type=int, default=2, help="memory depth (1: matrix memory)")
    p.add_argument("--inner-step", default="chunk_sum", help="chunk_sum | key_normalized (TitansConfig)")
    p.add_argument("--chunk", type=int, default=16, help="memory chunk (1: the exact per-token recurrence)")
    p.add_argument("--theta-start", type=float, default=None,
                   help="share of --theta-max the inner-step gate starts at (default: the model's 0.1)")
    p.add_argument("--eta-start", type=float, default=None,
                   help="share of eta_max the momentum gate starts at (default: the model's 0.9)")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    p.add_argument("--log-every", type=int, default=25, help="steps between log rows")
    p.add_argument("--seed", type=int, default=0, help="model init and data")
    p.add_argument("--device", default="cpu", help="torch device (batches are drawn on the CPU)")
    p.add_argument("--one-pass", action="store_true",
                   help="only measure what one pass over 32 random (key, value) pairs stores, per gate")
    p.add_argument("--out", default=None, help="output folder (default: $OUT, else ./bench_out)")
    args = p.parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or "bench_out")
    if args.one_pass:
        grid = [(theta_max, share, eta, 16) for theta_max in (0.1, 1.0) for share in (0.1, 0.5, 0.9)
                for eta in (0.0, 0.9)]
        grid += [(1.0, share, 0.0, 1) for share in (0.5, 0.9)]  # chunk 1: the exact per-token recurrence
        grid += [(1.0, 0.9, eta, chunk, "key_normalized") for chunk in (4, 16, 64) for eta in (0.0, 0.9)]
        # capacity: 32 pairs followed by more writes, as an insert followed by background
        grid += [(1.0, 0.9, 0.0, chunk, inner, tokens)
                 for chunk, inner in ((1, "chunk_sum"), (4, "key_normalized")) for tokens in (128, 512)]
        rows = [one_pass_recall(*setting) for setting in grid]
        for row in rows:
            print(json.dumps(row), flush=True)
        atomic_write_text(out / "one_pass.json", json.dumps(rows, indent=1))
        return 0
    if args.length < args.distance + args.insert + 10:
        p.error("--length must hold both copies: >= distance + insert + 10")
    torch.manual_seed(args.seed)
    # A tiny model: 64-token segments and windows, so D = 160 is 2-3 segments past attention's reach.
    config = TitansConfig(d_model=64, n_layers=2, n_heads=2, head_dim=32, segment_len=64,
                          chunk_size=args.chunk, window=64, n_persistent=4, alpha_max=args.alpha_max,
                          theta_max=args.theta_max, block=args.block, inner_step=args.inner_step,
                          memory_depth=args.depth,
                          memory_backend="naive")
    model = TitansDNA(config).to(args.device)
    start_gates(model, args.theta_start, args.eta_start)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 1)
    report = {"config": vars(args), "model": {"parameters": model.num_parameters(), "segment_len": 64},
              "environment": {"python": platform.python_version(), "torch": torch.__version__}, "log": []}
    # on a batch of its own, so the training batches stay those of a run without it
    probe_batch = make_batch(args.batch, args.length, args.insert, args.distance,
                             torch.Generator().manual_seed(args.seed + 2), args.period)
    probe_batch = tuple(t.to(args.device) for t in probe_batch)
    report["write_signal_at_init"] = write_signal(model, *probe_batch, args.distance, args.insert)
    print(json.dumps({"write_signal_at_init": report["write_signal_at_init"]}), flush=True)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        ids, starts = (t.to(args.device) for t in make_batch(args.batch, args.length, args.insert,
                                                            args.distance, gen, args.period))
        logp = next_base_logp(model, ids)
        loss = -logp.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.log_every == 0 or step == args.steps:
            logp = logp.detach()
            row = {"step": step, "loss": loss.item(),
                   "first_copy": copy_loss(logp, starts, 0, args.insert).item(),
                   "second_copy": copy_loss(logp, starts, args.distance, args.insert).item(),
                   "seconds": time.perf_counter() - start}
            report["log"].append(row)
            print(json.dumps(row), flush=True)
            atomic_write_text(out / "recall_probe.json", json.dumps(report, indent=1))
    report["memory_ablation"] = memory_ablation(model, *probe_batch, args.distance, args.insert)
    print(json.dumps({"memory_ablation": report["memory_ablation"]}), flush=True)
    atomic_write_text(out / "recall_probe.json", json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
