#!/usr/bin/env python3
"""The error that bf16 dot operands alone cause on a check case of bench/memory_check.py (issue 4's bf16
target).

Runs our float64 reference twice on the same bf16-rounded inputs: as it is, and with every matmul operand
rounded to bf16, both in the forward and in autograd's backward (the incoming gradient of each product too),
as the Triton kernels' dots take them. Everything else stays float64. The relative error between the two runs
is a floor for any kernel that feeds its dots bf16 operands: no fused code can get under it except by making
some dots exact (chunk_bwd.exact_backward). CPU by default, float64:

    python bench/memory_bf16_floor.py --case "32k, active memory" --seeds 1007,1008,1009 \
        --out bench/results/memory_bf16_floor_2026-11-26.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("BENCH_DEVICE", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from memory_check import FULL_CHECKS, check_inputs_for, grads_of  # noqa: E402

from titans_dna.kernels.titans_memory import common, naive  # noqa: E402


class _RoundOperand(torch.autograd.Function):
    """To bf16 (nearest, ties to even) and back in the forward; the gradient passes through unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.bfloat16).to(x.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g


class _RoundCotangent(torch.autograd.Function):
    """Identity in the forward; rounds the incoming gradient, the left operand of the backward's products."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return g.to(torch.bfloat16).to(g.dtype)


def _rounded_einsum(equation: str):
    def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = torch.einsum(equation, _RoundOperand.apply(a), _RoundOperand.apply(b))
        return _RoundCotangent.apply(out)
    return product


def _rounded_outer_sum(g: torch.Tensor, h: torch.Tensor, coeff: torch.Tensor) -> torch.Tensor:
    return _rounded_einsum("...no,...ni->...oi")(g * coeff.unsqueeze(-1), h)


@contextlib.contextmanager
def bf16_operands():
    """The reference's three products (common._linear, common._backprop, weighted_outer_sum as naive.py
    imported it) with bf16 operands, for the duration of the block."""
    saved = common._linear, common._backprop, naive.weighted_outer_sum
    common._linear = _rounded_einsum("...ni,...oi->...no")
    common._backprop = _rounded_einsum("...no,...oi->...ni")
    naive.weighted_outer_sum = _rounded_outer_sum
    try:
        yield
    finally:
        common._linear, common._backprop, naive.weighted_outer_sum = saved


def floor_of(cfg: tuple, seed: int) -> dict:
    """Relative error of every output and gradient, bf16 operands against float64, for one draw. The heads
    are independent and run one at a time (the whole 32k case would hold ~25 GiB of autograd graph); the
    squared norms add up over them, so the figures are those of the whole tensors."""
    xs, ws, state = check_inputs_for(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(xs[0].shape, dtype=torch.float64, generator=g)
    dstate = [torch.randn(cfg[1], *w.shape, dtype=torch.float64, generator=g) for w in ws] * 2
    xs = [x.to(torch.bfloat16).double() for x in xs]
    ws = [w.to(torch.bfloat16).double() for w in ws]
    kw = dict(chunk_size=cfg[7], activation=cfg[8])
    err2: dict[str, float] = {}
    ref2: dict[str, float] = {}
    t0 = time.time()
    for h in range(cfg[3]):
        xs_h = [x[:, :, h:h + 1] for x in xs]
        ws_h = [w[h:h + 1] for w in ws]
        state_h = None if state is None else tuple(tuple(s[:, h:h + 1] for s in part) for part in state)
        args = (xs_h, ws_h, state_h, torch.float64, do[:, :, h:h + 1], [d[:, h:h + 1] for d in dstate])
        ref = grads_of(naive.naive_chunk_titans_memory, *args, **kw)
        with bf16_operands():
            got = grads_of(naive.naive_chunk_titans_memory, *args, **kw)
        for n, r in ref.items():
            err2[n] = err2.get(n, 0.0) + (got[n] - r).norm().item() ** 2
            ref2[n] = ref2.get(n, 0.0) + r.norm().item() ** 2
    errs = {n: (err2[n] / max(ref2[n], 1e-60)) ** 0.5 for n in err2}
    worst = max(errs, key=errs.get)
    return dict(case=cfg[0], T=cfg[2], seed=seed, worst=worst, error=errs[worst], errors=errs,
                seconds=time.time() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default="32k, active memory",
                   help="a check case of bench/memory_check.py, at the size the GPU check runs it")
    p.add_argument("--length", type=int, default=0, help="tokens (default: the case's own)")
    p.add_argument("--seeds", default="1007", help="comma list of draws")
    p.add_argument("--out", help="JSON file for the rows")
    a = p.parse_args(argv)
    named = {c[0]: c for c in FULL_CHECKS}
    if a.case not in named:
        p.error(f"unknown case {a.case!r}; known: {list(named)}")
    cfg = list(named[a.case])
    cfg[2] = a.length or cfg[2]
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        rows.append(floor_of(tuple(cfg), seed))
        r = rows[-1]
        print(f"{r['case']} T={r['T']} seed {seed}: worst {r['worst']} {r['error']:.3e} "
              f"({r['seconds']:.0f} s)", flush=True)
    if a.out:
        tmp = Path(a.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(date=time.strftime("%Y-%m-%d"), torch=torch.__version__, rows=rows),
                                  indent=1))
        tmp.replace(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
