#!/usr/bin/env python3
"""Where a fine-tuning step's memory goes: one forward + backward of SequenceClassifier(TitansDNA(preset)).

Reports the bytes saved for backward that are still alive when the forward ends (unique storages), grouped
by the model line that saved them (`--group caller`: the block-level call, `line`: the innermost line), the
peak allocated during the step (CUDA: max_memory_allocated; CPU: the profiler's alloc/free events) and the
step time. Activation memory is linear in the batch, so a small batch scales.

    python bench/classifier_memory.py --batch 64 --length 101 --backend naive [--checkpointing]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import time
import traceback
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from titans_dna.model import SequenceClassifier, TitansConfig, TitansDNA  # noqa: E402

MiB = 2 ** 20


class _Saved:
    """What the saved-tensor hook keeps in the graph: the tensor and where it was saved."""

    __slots__ = ("tensor", "site", "__weakref__")

    def __init__(self, tensor: torch.Tensor, site: str) -> None:
        self.tensor, self.site = tensor, site


def _site(group: str) -> str:
    frames = [f for f in traceback.extract_stack()[:-2] if "/titans_dna/" in f.filename]
    if group == "caller":
        callers = ("model/blocks.py", "model/titans_dna.py")
        frames = [f for f in frames if f.filename.endswith(callers)] or frames
    if not frames:
        return "?"
    f = frames[-1]
    return f"{f.filename.split('/titans_dna/')[1]}:{f.lineno} {f.name}: {(f.line or '').strip()[:80]}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=101)
    p.add_argument("--backend", default="naive", choices=["auto", "naive", "triton"])
    p.add_argument("--checkpointing", action="store_true", help="TitansConfig.gradient_checkpointing")
    p.add_argument("--rc-conjoin", action="store_true")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (as fine-tuning on CUDA)")
    p.add_argument("--group", default="caller", choices=["caller", "line"])
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    config = TitansConfig.preset(args.preset, memory_backend=args.backend,
                                 gradient_checkpointing=args.checkpointing)
    model = SequenceClassifier(TitansDNA(config), 2, rc_conjoin=args.rc_conjoin).to(device).train()
    B, T = args.batch, args.length
    ids = (torch.randint(0, 4, (B, T)) + 7).to(device)
    lengths = torch.randint(min(70, T), T + 1, (B,))
    lengths[0] = T
    mask = (torch.arange(T)[None] < lengths[:, None]).to(device)
    labels = torch.randint(0, 2, (B,), device=device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext())

    def step(saved: dict | None = None) -> None:
        holders: weakref.WeakSet = weakref.WeakSet()

        def pack(t: torch.Tensor):
            if isinstance(t, torch.nn.Parameter):
                return t
            h = _Saved(t, _site(args.group))
            holders.add(h)
            return h

        def unpack(h):
            return h.tensor if isinstance(h, _Saved) else h

        hooks = (torch.autograd.graph.saved_tensors_hooks(pack, unpack) if saved is not None
                 else contextlib.nullcontext())
        with hooks, autocast:
            logits = model(ids, mask)
        loss = F.cross_entropy(logits.float(), labels)
        if saved is not None:  # alive now = kept for the backward (dead branches were freed already)
            seen = set()
            for h in list(holders):
                storage = h.tensor.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    saved[h.site] += storage.nbytes()
        loss.backward()
        model.zero_grad(set_to_none=True)

    saved: dict = collections.defaultdict(int)
    step(saved)
    total = sum(saved.values())
    print(f"{args.preset} B={B} T={T} backend={args.backend} checkpointing={args.checkpointing} "
          f"{'bf16' if args.bf16 else 'fp32'} on {device}")
    print(f"saved for backward at the end of forward: {total / MiB:.0f} MiB")
    for site, n in sorted(saved.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {n / MiB:8.1f} MiB {100 * n / total:5.1f}%  {site}")

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        live = peak = 0
        for e in sorted(events, key=lambda e: e.start_ns()):
            live += e.nbytes()
            peak = max(peak, live)
    print(f"peak allocated during one step, above the model: {peak / MiB:.0f} MiB")

    times = []
    for _ in range(args.reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if times:
        print(f"step time: min {min(times):.3f} s, median {sorted(times)[len(times) // 2]:.3f} s")


if __name__ == "__main__":
    main()
