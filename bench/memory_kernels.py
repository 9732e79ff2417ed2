#!/usr/bin/env python3
"""GPU benchmark and correctness check of the Titans memory op (issue 4, "Benchmark").

Setting: 8 heads x 64, memory 64 -> 256 -> 64 (depth 2, expansion 4), chunk 64, 128k tokens per call
(2k x 64, 8k x 16, 32k x 4, 128k x 1), forward and forward+backward, tokens/s and peak memory, for
  ours        chunk_titans_memory (fwd+bwd) / fused_recurrent_titans_memory (fwd), bf16 inputs
  naive       our PyTorch reference naive_chunk_titans_memory, bf16 inputs (float32 state)
  titans_pytorch, titans_pytorch_b64   lucidrains' NeuralMemory layer (d_model 512), default / batch_size=64
  fla_gdn     fla chunk_gated_delta_rule (Gated DeltaNet), called as its layer calls it
  sdpa        torch SDPA causal attention (flash backend)
each in its own subprocess under a time cap; then batch-1 forwards at 256k, 1M, 4M tokens, the measured
bf16 matmul peak, a correctness check against the float64 reference and a 1M-token stability run.

    python bench/memory_kernels.py --out $OUT                    # everything
    python bench/memory_kernels.py --check --peers ours,naive --lengths 32768,131072 --out $OUT
Writes results.json and results.md to --out. Peers that do not import are reported as missing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HEADS, DH, HIDDEN, CHUNK, DMODEL = 8, 64, 256, 64, 512
TOKENS = 131072
LENGTHS = [2048, 8192, 32768, 131072]
LONG = [262144, 1048576, 4194304]
CAPS = {"ours": 240, "naive": 150, "titans_pytorch": 120, "titans_pytorch_b64": 60, "fla_gdn": 150, "sdpa": 60}
GiB = 1024 ** 3


def timed(fn, pre=None, target_s=0.4, lo=3, hi=30) -> dict:
    """Median of CUDA-event times per call after one probe (the caller's first call is the warm-up)."""
    import torch

    def once():
        if pre is not None:
            pre()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        return s.elapsed_time(e)
    probe = once()
    n = int(max(lo, min(hi, target_s * 1e3 / max(probe, 1e-3))))
    ts = sorted(once() for _ in range(n))
    return dict(median_ms=ts[n // 2], min_ms=ts[0], max_ms=ts[-1], reps=n)


def finite(*ts) -> bool:
    import torch
    return all(bool(torch.isfinite(t.float()).all()) for t in ts if t is not None)


# ---------------------------------------------------------------------------------------------------- cases
def memory_inputs(B, T, dtype, grad, seed=0, device="cuda"):
    """Op inputs with the model's default-like gates: theta ~ 0.01, eta ~ 0.9, alpha ~ 0.01."""
    import torch
    import torch.nn.functional as F
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, device=device, generator=g)
    q = F.normalize(rnd(B, T, HEADS, DH), dim=-1)
    k = F.normalize(rnd(B, T, HEADS, DH), dim=-1)
    v = rnd(B, T, HEADS, DH)
    theta = 0.02 * torch.sigmoid(rnd(B, T, HEADS))
    eta = torch.sigmoid(2.2 + 0.5 * rnd(B, T, HEADS))
    alpha = torch.sigmoid(-4.6 + 0.5 * rnd(B, T, HEADS))
    weights = [rnd(HEADS, HIDDEN, DH) / DH ** 0.5, rnd(HEADS, DH, HIDDEN) / HIDDEN ** 0.5]
    xs = [x.to(dtype).requires_grad_(grad) for x in (q, k, v, theta, eta, alpha)]
    return xs, [w.requires_grad_(grad) for w in weights]


def case_memory(op_name, B, T, mode):
    """(fn, pre, check) for our op or our reference, bf16 inputs."""
    import torch
    from titans_dna.kernels.titans_memory.chunk import chunk_titans_memory
    from titans_dna.kernels.titans_memory.fused_recurrent import fused_recurrent_titans_memory
    from titans_dna.kernels.titans_memory.naive import naive_chunk_titans_memory
    grad = mode == "fwdbwd"
    xs, ws = memory_inputs(B, T, torch.bfloat16, grad)
    if op_name == "ours":
        op = chunk_titans_memory if grad else fused_recurrent_titans_memory
    else:
        op = naive_chunk_titans_memory
    if not grad:
        def fn():
            with torch.no_grad():
                return op(*xs, ws, chunk_size=CHUNK, output_final_state=True)[0]
        return fn, None, lambda: finite(fn())
    do = torch.randn_like(xs[0])
    leaves = xs + ws

    def pre():
        for t in leaves:
            t.grad = None

    def fn():
        o, _ = op(*xs, ws, chunk_size=CHUNK)
        o.backward(do)

    def check():
        pre()
        fn()
        return finite(*(t.grad for t in leaves))
    return fn, pre, check


def case_titans_pytorch(B, T, mode, batch_size):
    import torch
    from titans_pytorch import NeuralMemory
    kw = {} if batch_size is None else dict(batch_size=batch_size, default_step_transform_max_lr=0.01)
    if batch_size is not None:  # its jit-scripted scan fails to compile under CUDA 13 with the texpr fuser
        torch._C._jit_set_texpr_fuser_enabled(False)
    mem = NeuralMemory(dim=DMODEL, chunk_size=CHUNK, heads=HEADS, dim_head=DH, **kw).cuda()
    x = torch.randn(B, T, DMODEL, device="cuda", requires_grad=mode == "fwdbwd")
    ac = dict(device_type="cuda", dtype=torch.bfloat16)
    if mode == "fwd":
        def fn():
            with torch.no_grad(), torch.autocast(**ac):
                return mem(x)[0]
        return fn, None, lambda: finite(fn())
    dy = torch.randn(B, T, DMODEL, device="cuda")

    def pre():
        mem.zero_grad(set_to_none=True)
        x.grad = None

    def fn():
        with torch.autocast(**ac):
            y, _ = mem(x)
        y.backward(dy)

    def check():
        pre()
        fn()
        return finite(x.grad, *(p.grad for p in mem.parameters()))
    return fn, pre, check


def case_op(call, leaves, like, mode):
    import torch
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return call()
        return fn, None, lambda: finite(fn())
    dy = torch.randn_like(like)

    def pre():
        for t in leaves:
            t.grad = None

    def fn():
        call().backward(dy)

    def check():
        pre()
        fn()
        return finite(*(t.grad for t in leaves))
    return fn, pre, check


def case_fla_gdn(B, T, mode):
    """As fla's GatedDeltaNet layer calls the op. fla 0.6.0 refuses the backward on Hopper with
    Triton < 3.7.1 (fla #640, dk/dg miscompiled); --allow-gdn-bwd lifts that guard for timing only."""
    import torch
    import fla.ops.common.chunk_o as chunk_o
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    if "--allow-gdn-bwd" in sys.argv and getattr(chunk_o, "TRITON_ABOVE_3_7_1", True) is False:
        chunk_o.TRITON_ABOVE_3_7_1 = True
    rg = mode == "fwdbwd"
    bf = torch.bfloat16
    q, k, v = (torch.randn(B, T, HEADS, DH, device="cuda", dtype=bf, requires_grad=rg) for _ in range(3))
    g, beta = (torch.randn(B, T, HEADS, device="cuda", dtype=bf, requires_grad=rg) for _ in range(2))
    A_log = torch.log(torch.empty(HEADS, device="cuda").uniform_(1, 16)).requires_grad_(rg)
    dt = torch.exp(torch.rand(HEADS, device="cuda") * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
    dt_bias = (dt + torch.log(-torch.expm1(-dt))).requires_grad_(rg)

    def call():
        return chunk_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True,
                                      use_beta_sigmoid_in_kernel=True, state_v_first=True,
                                      use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias)[0]
    return case_op(call, [q, k, v, g, beta, A_log, dt_bias], v, mode)


def case_sdpa(B, T, mode):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    rg = mode == "fwdbwd"
    q, k, v = (torch.randn(B, HEADS, T, DH, device="cuda", dtype=torch.bfloat16, requires_grad=rg)
               for _ in range(3))

    def call():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return case_op(call, [q, k, v], q, mode)


def make_case(peer, B, T, mode):
    if peer in ("ours", "naive"):
        return case_memory(peer, B, T, mode)
    if peer.startswith("titans_pytorch"):
        return case_titans_pytorch(B, T, mode, 64 if peer.endswith("b64") else None)
    return {"fla_gdn": case_fla_gdn, "sdpa": case_sdpa}[peer](B, T, mode)
