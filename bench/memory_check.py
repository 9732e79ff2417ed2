#!/usr/bin/env python3
"""Correctness side of the memory-op benchmark (issue 4): the Triton path against the float64 reference,
and a 1M-token stability run. Used by bench/memory_kernels.py, which runs each task in a subprocess.

Relative error ||ours - ref|| / ||ref|| over the output, the final state and every gradient, with the same
bf16-rounded inputs and weights for both paths; targets: float32 < 1e-4, bf16 < 2e-2, never NaN.
BENCH_DEVICE=cpu with TRITON_INTERPRET=1 runs it on tiny shapes (a smoke test of the script).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

HEADS, DH, HIDDEN, CHUNK = 8, 64, 256, 64
GiB = 1024 ** 3
DEVICE = os.environ.get("BENCH_DEVICE", "cuda")


def sync() -> None:
    import torch
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def peak_gib() -> float:
    import torch
    return torch.cuda.max_memory_allocated() / GiB if DEVICE == "cuda" else 0.0


def reset_peak() -> None:
    import torch
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def finite(*ts) -> bool:
    import torch
    return all(bool(torch.isfinite(t.float()).all()) for t in ts if t is not None)


def memory_inputs(B, T, dtype, grad, seed=0, device=DEVICE):
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


def activate(xs: list, seed: int) -> list:
    """Inputs under which the memory stays in use: v = k R + noise (R orthogonal per head), theta x 5
    (~0.05), alpha x 0.1 (~0.001). With memory_inputs as they are, the reference itself decays W to exactly
    0 within ~300k tokens (uncorrelated k, v: W = 0 is an attractor), which would test nothing; with these,
    it stays near max|W| 0.4 over 1M tokens (CPU, float32, 8 heads of 64 -> 256 -> 64, chunk 64)."""
    import torch
    q, k, v, theta, eta, alpha = xs
    H, D = k.shape[-2:]
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    rot = torch.linalg.qr(torch.randn(H, D, D, device=DEVICE, generator=g, dtype=torch.float64))[0]
    v = torch.einsum("bthd,hde->bthe", k.double(), rot).to(k.dtype) + 0.1 * v
    return [q, k, v, 5 * theta, eta, 0.1 * alpha]


BOTH, HALF = ("float32", "bfloat16"), ("bfloat16",)  # float32 supports smaller chunk tiles (triton_supports)
FULL_CHECKS = [  # name, B, T, H, D, expansion, depth, chunk, activation, initial state, dtypes[, active]
    ("bench shape", 2, 4096, 8, 64, 4, 2, 64, "silu", False, BOTH),
    ("tail, gelu, state", 2, 1000, 4, 64, 2, 2, 16, "gelu", True, BOTH),
    ("depth 1", 2, 777, 4, 64, 1, 1, 32, "silu", True, BOTH),
    ("D=128 x4, chunk 32", 1, 700, 2, 128, 4, 2, 32, "silu", False, BOTH),
    ("D=128, chunk 64", 1, 700, 2, 128, 2, 2, 64, "silu", False, HALF),
    ("chunk 128", 1, 700, 2, 64, 2, 2, 128, "silu", False, HALF),
    ("D=32, chunk 48", 2, 500, 4, 32, 4, 2, 48, "gelu", False, BOTH),
    ("32k, active memory", 1, 32768, 8, 64, 4, 2, 64, "silu", False, BOTH, True),
]
CHECKS = FULL_CHECKS
if DEVICE == "cpu":
    CHECKS = [(c[0], 1, 2 * c[7] + 5, 2, min(c[4], 32), c[5], c[6], min(c[7], 32), *c[8:]) for c in CHECKS]
    CHECKS[-1] = (*CHECKS[-1][:2], 256, 2, 64, *CHECKS[-1][5:])  # active memory needs D = 64 (activate)
    HEADS, DH, HIDDEN, CHUNK = 2, 16, 32, 16
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}


def check_inputs_for(cfg, seed):
    import torch
    import torch.nn.functional as F
    _, B, T, H, D, expansion, depth, _, _, with_state, _, *active = cfg
    g = torch.Generator(device=DEVICE).manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return scale * torch.randn(*shape, device=DEVICE, generator=g, dtype=torch.float64)
    E = D * expansion
    shapes = [(H, D, D)] if depth == 1 else [(H, E, D), (H, D, E)]
    # gates as memory_inputs (the model's initialisation): large theta / small eta make the inner
    # recurrence itself ill-conditioned, which would measure the problem rather than the kernel
    xs = [F.normalize(rnd(B, T, H, D), dim=-1), F.normalize(rnd(B, T, H, D), dim=-1), rnd(B, T, H, D),
          0.02 * torch.sigmoid(rnd(B, T, H)), torch.sigmoid(2.2 + 0.5 * rnd(B, T, H)),
          torch.sigmoid(-4.6 + 0.5 * rnd(B, T, H))]
    if active:
        xs = activate(xs, seed)
    ws = [rnd(*s) / s[-1] ** 0.5 for s in shapes]
    state = None
    if with_state:
        state = (tuple(rnd(B, *s, scale=0.3) for s in shapes), tuple(rnd(B, *s, scale=0.05) for s in shapes))
    return xs, ws, state


def grads_of(op, xs, ws, state, dtype, do, dstate, **kw):
    """Outputs, final state and the gradients of <o, do> + <state, dstate> w.r.t. every input."""
    import torch
    xs = [x.detach().to(dtype).requires_grad_() for x in xs]
    ws = [w.detach().to(dtype).requires_grad_() for w in ws]
    if state is not None:
        state = tuple(tuple(s.detach().float().requires_grad_() if dtype != torch.float64 else
                            s.detach().clone().requires_grad_() for s in part) for part in state)
    o, (fw, fs) = op(*xs, ws, state, **kw)
    finals = [*fw, *fs]
    loss = (o.double() * do).sum() + sum((f.double() * d).sum() for f, d in zip(finals, dstate, strict=True))
    loss.backward()
    leaves = xs + (ws if state is None else [*state[0], *state[1]])
    names = ["q", "k", "v", "theta", "eta", "alpha"] + [f"{'W0' if state is None else 'state'}_{i}"
                                                          for i in range(len(leaves) - 6)]
    out = {"o": o, **{f"final_{i}": f for i, f in enumerate(finals)}}
    out.update({f"d{n}": t.grad for n, t in zip(names, leaves, strict=True)})
    return out


def checks_named(names: str) -> list[int]:
    """Indices of the CHECKS whose names are in `names`, separated by ";" (names hold commas); all of them for
    an empty string."""
    wanted = [n.strip() for n in names.split(";") if n.strip()]
    unknown = set(wanted) - {c[0] for c in CHECKS}
    if unknown:
        raise SystemExit(f"unknown check cases {sorted(unknown)}; known: {[c[0] for c in CHECKS]}")
    return [i for i, c in enumerate(CHECKS) if not wanted or c[0] in wanted]


def run_check(path: Path, names: str = "") -> None:
    """Relative error ||ours - ref|| / ||ref|| of every output and gradient vs the float64 reference, for the
    CHECKS named in `names` (all by default)."""
    import torch

    from titans_dna.kernels.titans_memory.chunk import chunk_titans_memory
    from titans_dna.kernels.titans_memory.naive import naive_chunk_titans_memory
    rows = []
    for i in checks_named(names):
        cfg = CHECKS[i]
        xs, ws, state = check_inputs_for(cfg, seed=1000 + i)
        kw = dict(chunk_size=cfg[7], activation=cfg[8])
        # seeded too, so that runs of one commit agree and runs of two commits compare
        g = torch.Generator(device=DEVICE).manual_seed(2000 + i)
        do = torch.randn(xs[0].shape, device=DEVICE, dtype=torch.float64, generator=g)
        dstate = [torch.randn(cfg[1], *w.shape, device=DEVICE, dtype=torch.float64, generator=g)
                  for w in ws] * 2
        for dtype in (getattr(torch, d) for d in cfg[10]):
            # both paths see the same rounded inputs and weights
            rounded = [x.to(dtype).double() for x in xs]
            wr = [w.to(dtype).double() for w in ws]
            t0 = time.time()
            ref = grads_of(naive_chunk_titans_memory, rounded, wr, state, torch.float64, do, dstate, **kw)
            t1 = time.time()
            try:
                got = grads_of(chunk_titans_memory, rounded, wr, state, dtype, do, dstate, **kw)
                sync()
            except Exception as e:  # noqa: BLE001 - one failing configuration must not hide the others
                rows.append(dict(name=cfg[0], cfg=cfg[1:], dtype=str(dtype), passed=False,
                                 error=f"{type(e).__name__}: {e}"[:500]))
                print(f"[check] {cfg[0]:18s} {dtype}: {rows[-1]['error']}", flush=True)
                path.write_text(json.dumps(rows, indent=1))
                continue
            errs = {n: ((got[n].double() - r).norm() / r.norm().clamp_min(1e-30)).item()
                    for n, r in ref.items()}
            nan = [n for n, t in got.items() if not finite(t)]
            tol = TOLERANCE[str(dtype).split(".")[1]]
            worst = max(errs, key=errs.get)
            row = dict(name=cfg[0], cfg=cfg[1:], dtype=str(dtype), tol=tol, errors=errs, nan=nan,
                       worst=worst, passed=not nan and errs[worst] < tol, ref_s=t1 - t0,
                       ours_s=time.time() - t1)
            rows.append(row)
            print(f"[check] {cfg[0]:18s} {row['dtype']:15s} worst {worst} {errs[worst]:.2e} (tol {tol:.0e}) "
                  f"{'PASS' if row['passed'] else 'FAIL'} nan={nan}", flush=True)
            path.write_text(json.dumps(rows, indent=1))


def run_compile(i: int, dtype_name: str, variant: dict) -> None:
    """Compile one CHECKS configuration's kernels through a tiny call (fills the on-disk Triton cache)."""
    import torch

    from titans_dna.kernels.titans_memory import chunk_fwd
    from titans_dna.kernels.titans_memory.chunk import chunk_titans_memory
    os.environ.update(variant.pop("env", {}))  # compile-time switches such as DISABLE_MMA_V3
    chunk_fwd.TUNING.update(variant)
    cfg = list(CHECKS[i])
    cfg[2] = cfg[7] * 3
    xs, ws, state = check_inputs_for(tuple(cfg), seed=i)
    dtype = getattr(torch, dtype_name)
    xs = [x.to(dtype).requires_grad_() for x in xs]
    o, _ = chunk_titans_memory(*xs, [w.float() for w in ws], chunk_size=cfg[7], activation=cfg[8])
    o.float().sum().backward()
    sync()


def _carried(op, xs: list, ws: list, dtype, step: int) -> tuple[list[float], tuple, bool]:
    """Run the memory op `op` over xs in calls of `step` tokens with the state carried (the same as one
    call): max|W| after each call, the final state, and whether every output and state stayed finite."""
    import torch
    state, trace, ok = None, [], True
    with torch.no_grad():
        for i in range(xs[0].shape[1] // step):
            piece = [x[:, i * step:(i + 1) * step].to(dtype) for x in xs]
            o, state = op(*piece, ws, state, chunk_size=CHUNK)
            ok = ok and finite(o, *state[0], *state[1])
            trace.append(max(w.abs().max().item() for w in state[0]))
    return trace, state, ok


def run_stability(path: Path, T: int = 1 << 20 if DEVICE == "cuda" else 512, pieces: int = 16,
                  probe_chunks: int = 64 if DEVICE == "cuda" else 8) -> None:
    """1M tokens at batch 1 through the streaming kernel in `pieces` calls, bf16 and float32, under two
    regimes: "default", memory_inputs' default-like gates (issue 4 asks that these stay finite; W decays
    towards 0 there), and "active", `activate`d inputs that keep the memory in use.

    A fixed-step gradient descent on an MLP diverges once its weights grow past the step's stable range, and
    in the active regime bf16 dot operands can push the weights there. So a probe runs its first
    `probe_chunks` chunks one call per chunk through the kernel (bf16) and through the float64 reference on
    the same bf16-rounded inputs, as it is and with every matmul operand rounded to bf16
    (memory_bf16_floor.bf16_operands): whether a divergence is the kernel's or bf16's own."""
    import torch
    from memory_bf16_floor import bf16_operands  # imported here: it imports this module

    from titans_dna.kernels.titans_memory.fused_recurrent import fused_recurrent_titans_memory
    from titans_dna.kernels.titans_memory.naive import naive_chunk_titans_memory
    base, ws = memory_inputs(1, T, torch.float32, False, seed=7)
    active = activate(base, seed=8)
    rec: dict = dict(T=T, pieces=pieces)
    for regime, xs in (("default", base), ("active", active)):
        rec[regime], finals = {}, {}
        for dtype in (torch.bfloat16, torch.float32):
            t0 = time.time()
            trace, state, ok = _carried(fused_recurrent_titans_memory, xs, ws, dtype, T // pieces)
            sync()
            finals[dtype] = state[0]
            rec[regime][str(dtype)] = dict(seconds=time.time() - t0, finite=ok, max_abs_W_per_piece=trace,
                                           max_abs_S=[s.abs().max().item() for s in state[1]])
        rec[regime]["W_bf16_vs_fp32"] = [((a - b).norm() / b.norm()).item() for a, b in
                                         zip(finals[torch.bfloat16], finals[torch.float32], strict=True)]
    rounded = [x[:, :probe_chunks * CHUNK].to(torch.bfloat16).double() for x in active]
    w64 = [w.double() for w in ws]
    probe = {"kernel, bf16": _carried(fused_recurrent_titans_memory, rounded, ws, torch.bfloat16, CHUNK)[0],
             "reference, float64": _carried(naive_chunk_titans_memory, rounded, w64, torch.float64, CHUNK)[0]}
    with bf16_operands():
        probe["reference, bf16 operands"] = _carried(naive_chunk_titans_memory, rounded, w64, torch.float64,
                                                     CHUNK)[0]
    rec["active_probe"] = {name: dict(max_abs_W_per_chunk=trace, first_chunk_over_10=next(
        (i for i, w in enumerate(trace) if not w < 10), None)) for name, trace in probe.items()}
    rec["finite"] = all(rec["default"][str(d)]["finite"] for d in (torch.bfloat16, torch.float32))
    print(f"[stability] {json.dumps(rec)}", flush=True)
    path.write_text(json.dumps(rec, indent=1))
