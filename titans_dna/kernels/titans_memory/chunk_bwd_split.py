"""Split-chain backward of the chunked Titans memory (depth 2): P programs share one (batch, head) chain.

The reverse walk of chunk_bwd.py with the chain's hidden units cut as in chunk_fwd_split.py: program p owns
hidden units E_p (rows of W1, S1 and columns of W2, S2) and the same slices of the adjoint, which it updates
in place in the gradient buffers. Per checkpoint segment, the programs first recompute the chunk-start
states (each its slices, into the scratch; two barriers per chunk for the shared error e), then walk the
segment's chunks backwards with chunk_bwd.py's passes restricted to E_p, in tiles of BE units (state tiles
read from L2 as the persistent kernel does: holding the slices and their adjoint in registers spilled 10-12
KiB per thread). Only [BT, D] blocks that sum over the hidden units cross programs:

1. the shares of y = act(k W1^T) W2^T, for the error e, reduce-scattered as in the forward: barrier; each
   program sums its rows p BT / P .. (p + 1) BT / P of the shares into its rows of e, which it parks in
   `errs`; barrier; all read e. The recompute forms e for every chunk of the segment but its last, so the
   reverse walk exchanges y only for that last chunk;
2. the shares of de (the gradient reaching e through dg1, r2 = act(z) dW2^T and r2s = act(z) dS2^T),
   reduce-scattered the same way (two barriers). At 128k x 1 (16 programs per chain), reduce-scattering
   both took fwd+bwd from 94.8 to 82.0 ms on an H200: each program reads 1 / P of the shares;
3. the partial dq, dk, dL/dc, dL/d(m theta) and dA, dE, dG, which are parked in the scratch and summed
   after the next chunk's first de barrier (program p writes rows p BT / P .. (p + 1) BT / P; program 0
   the per-chunk scalars).

Everything else (dg1, dh, dz, the local weight gradients, the adjoint update and the retrieval's gradients)
is the program's own. Scratch slots alternate by chunk parity, as in the forward: a block is read between
the barrier that publishes it and the program's next barrier, and the next write to the same slot comes
after a barrier that every reader has passed. Sums run in a fixed program order: results do not depend on
timing. The interpreter runs it with P = 1 (see chunk_fwd_split.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from .chunk_bwd import (
    _chunk_start_ptrs,
    _de_pass,
    _retrieval_pass,
    _reverse_segment,
    _update_pass,
    _y_pass,
    exact_backward,
)
from .chunk_fwd import _chunk_span, _load_rows, _mlp_update_tiles, _state_ptrs
from .chunk_fwd_split import (
    _barrier,
    _chunk_keys,
    _gather_rows,
    _k_minus_v_rows,
    _publish_rows,
    _sum_shares,
    _token_rows,
    barrier_flags,
    cached_per_sm,
    launched_programs,
    packed,
    register_cap,
)


@triton.jit
def _flush(p_part, i_c, i_p, i_b, i_h, i_bh, T, NC, dq, dk, dcw, dsc, H: tl.constexpr, D: tl.constexpr,
           CS: tl.constexpr, BT: tl.constexpr, P: tl.constexpr, SLOT: tl.constexpr):
    """Write chunk i_c's rows p BT / P .. (p + 1) BT / P of dq, dk and dL/dc, dL/d(m theta), and (program 0)
    its dA, dE, dG: the sums of the P programs' partials parked at p_part (that chunk's parity; slot layout
    in the kernel)."""
    DQ: tl.constexpr = 2 * BT * D
    DK: tl.constexpr = 3 * BT * D
    VEC: tl.constexpr = 5 * BT * D
    SCAL: tl.constexpr = 5 * BT * D + 2 * BT
    R: tl.constexpr = BT // P
    t0, n, tok = _chunk_span(i_c, i_b, i_h, T, CS, H)
    o_r = i_p * R + tl.arange(0, R)
    p_rows, m_rows = _token_rows(tok, n, o_r, H, D)
    tl.store(dq + p_rows, _sum_shares(p_part + DQ, i_p * R, R, D, P, SLOT).to(dq.dtype.element_ty),
             mask=m_rows)
    tl.store(dk + p_rows, _sum_shares(p_part + DK, i_p * R, R, D, P, SLOT).to(dk.dtype.element_ty),
             mask=m_rows)
    m_r = o_r < n
    acc_c = tl.zeros([R], dtype=tl.float32)
    acc_m = tl.zeros([R], dtype=tl.float32)
    for r in tl.static_range(P):
        acc_c += tl.load(p_part + r * SLOT + VEC + o_r, cache_modifier=".cg")
        acc_m += tl.load(p_part + r * SLOT + VEC + BT + o_r, cache_modifier=".cg")
    p_dc = dcw + i_bh.to(tl.int64) * 2 * T + t0 + o_r
    tl.store(p_dc, acc_c, mask=m_r)
    tl.store(p_dc + T, acc_m, mask=m_r)
    if i_p == 0:
        o_s = tl.arange(0, 4)
        acc_s = tl.zeros([4], dtype=tl.float32)
        for r in tl.static_range(P):
            acc_s += tl.load(p_part + r * SLOT + SCAL + o_s, cache_modifier=".cg")
        tl.store(dsc + (i_bh.to(tl.int64) * NC + i_c) * 4 + o_s, acc_s)


@triton.jit
def _chain_error(p_w1, p_w2, b_k, k, v, tok, n, p_slots, p_err, i_p, sync, flag, target, j_lo, j_hi,
                 H: tl.constexpr, D: tl.constexpr, HID: tl.constexpr, BE: tl.constexpr, BT: tl.constexpr,
                 P: tl.constexpr, SLOT: tl.constexpr, ACT: tl.constexpr, BF16: tl.constexpr,
                 PREC: tl.constexpr):
    """The chain's error e = k + y - v [BT, D] (0 past row n) and, at p_err, its parked copy: this program
    stores its share of y (hidden units j_lo..j_hi) in its slot at p_slots, meets the chain's programs at the
    barrier (`target` arrivals), sums its rows of the P shares into its rows of e at p_err and meets them
    again (`target` + P) to read all of e."""
    o_t = tl.arange(0, BT)
    o_td = o_t[:, None] * D + tl.arange(0, D)[None, :]
    R: tl.constexpr = BT // P
    o_r = i_p * R + tl.arange(0, R)
    kv_r = _k_minus_v_rows(k, v, tok, n, o_r, H, D)  # issued first: its latency hides behind the pass
    y_share = _y_pass(p_w1, p_w2, b_k, j_lo, j_hi, D, HID, BE, BT, ACT, BF16, PREC)
    tl.store(p_slots + i_p * SLOT + o_td, y_share)
    _barrier(sync, flag, target)
    e_r = tl.where((o_r < n)[:, None], kv_r + _sum_shares(p_slots, i_p * R, R, D, P, SLOT), 0.0)
    tl.store(p_err + o_r[:, None] * D + tl.arange(0, D)[None, :], e_r)
    _barrier(sync, flag, target + P)
    return tl.load(p_err + o_td, cache_modifier=".cg")


@triton.jit(do_not_specialize=["T", "CK_EVERY", "N_CK"])
def titans_memory_bwd_split_kernel(
    q, k, v, cw, aeg, do, dq, dk, dv, dcw, dsc,
    ck_w1, ck_w2, ck_s1, ck_s2, sc_w1, sc_w2, sc_s1, sc_s2, dw1, dw2, ds1, ds2, errs, part, sync, flag,
    T, CK_EVERY, N_CK,
    H: tl.constexpr, D: tl.constexpr, HID: tl.constexpr, CS: tl.constexpr, BT: tl.constexpr,
    EP: tl.constexpr, BE: tl.constexpr, P: tl.constexpr, ACT: tl.constexpr, BF16: tl.constexpr,
    PREC: tl.constexpr, XB: tl.constexpr, XPREC: tl.constexpr,
):
    """Grid (B * H * P,): program p of chain i_bh owns hidden units p EP .. (p + 1) EP (module docstring),
    which the reverse step's passes walk in tiles of BE.
    Buffers as titans_memory_bwd_kernel's, plus errs [B*H, CK_EVERY, BT, D] and part [B*H, 2, P, slot]
    float32 scratch, sync [B*H] int32 zeros and flag [1] int32 (set to 1 if a barrier timed out)."""
    pid = tl.program_id(0)
    i_bh = pid // P
    i_p = pid % P
    i_b = i_bh // H
    i_h = i_bh % H
    # one program's scratch slot: its shares of y, de, dq, dk ([BT, D] each), its recompute's y share,
    # dL/dc and dL/d(m theta) ([BT] each), dA, dE, dG (4 floats)
    Y: tl.constexpr = 0
    DE: tl.constexpr = BT * D
    DQ: tl.constexpr = 2 * BT * D
    DK: tl.constexpr = 3 * BT * D
    RY: tl.constexpr = 4 * BT * D
    VEC: tl.constexpr = 5 * BT * D
    SCAL: tl.constexpr = 5 * BT * D + 2 * BT
    SLOT: tl.constexpr = SCAL + 4
    SIZE: tl.constexpr = HID * D
    R: tl.constexpr = BT // P
    NC = tl.cdiv(T, CS)
    n_sc = CK_EVERY - 1
    j_lo = i_p * EP
    j_hi = j_lo + EP
    o_t = tl.arange(0, BT)
    o_td = o_t[:, None] * D + tl.arange(0, D)[None, :]
    o_s = tl.arange(0, 4)
    p_dw1, p_dw2, p_ds1, p_ds2 = _state_ptrs(dw1, dw2, ds1, ds2, i_bh, 0, 1, SIZE)
    p_chain = part + i_bh.to(tl.int64) * 2 * P * SLOT
    p_errs = errs + i_bh.to(tl.int64) * CK_EVERY * BT * D
    mine = ((o_t // R) == i_p)[:, None]  # this program's rows of a chunk, whose dv it stores
    n_bar = tl.full([], 0, tl.int32)
    for i_r in range(0, N_CK):
        i_s, c_lo, n_l = _reverse_segment(i_r, N_CK, CK_EVERY, NC)
        # recompute the chunk-start states of this segment's later chunks into the scratch
        for l in range(0, n_l - 1):
            i_c = c_lo + l
            n, tok, c, wm, A, E, G, b_k = _chunk_keys(k, cw, aeg, i_c, i_b, i_h, i_bh, T, H, D, CS, BT)
            p_w1, p_w2, p_s1, p_s2 = _chunk_start_ptrs(ck_w1, ck_w2, ck_s1, ck_s2, sc_w1, sc_w2, sc_s1, sc_s2,
                                                       i_bh, i_s, l, N_CK, n_sc, SIZE)
            e = _chain_error(p_w1, p_w2, b_k, k, v, tok, n, p_chain + (l % 2) * P * SLOT + RY,
                             p_errs + l * BT * D, i_p, sync + i_bh, flag, (n_bar + 1) * P, j_lo, j_hi, H, D,
                             HID, BE, BT, P, SLOT, ACT, BF16, PREC)
            n_bar += 2
            _mlp_update_tiles(p_w1, p_w2, p_s1, p_s2,
                              *_state_ptrs(sc_w1, sc_w2, sc_s1, sc_s2, i_bh, l, n_sc, SIZE),
                              b_k, e, c, wm, A, E, G, j_lo, j_hi, D, HID, BE, ACT, BF16, PREC)
            tl.debug_barrier()  # the next chunk reads what other threads of this program stored
        tl.debug_barrier()  # the reverse walk reads what other threads of this program stored
        # reverse through the segment; the adjoint slices are updated in place in dw*, ds*
        for r in range(0, n_l):
            l = n_l - 1 - r
            i_c = c_lo + l
            n, tok, c, wm, A, E, G, b_k = _chunk_keys(k, cw, aeg, i_c, i_b, i_h, i_bh, T, H, D, CS, BT)
            p_w1, p_w2, p_s1, p_s2 = _chunk_start_ptrs(ck_w1, ck_w2, ck_s1, ck_s2, sc_w1, sc_w2, sc_s1, sc_s2,
                                                       i_bh, i_s, l, N_CK, n_sc, SIZE)
            p_part = p_chain + (i_c % 2) * P * SLOT
            p_own = p_part + i_p * SLOT
            if l < n_l - 1:  # parked by the recompute, published by the barriers since
                e = tl.load(p_errs + l * BT * D + o_td, cache_modifier=".cg")
            else:
                e = _chain_error(p_w1, p_w2, b_k, k, v, tok, n, p_part + Y,
                                 p_errs + l * BT * D, i_p, sync + i_bh, flag, (n_bar + 1) * P, j_lo, j_hi, H,
                                 D, HID, BE, BT, P, SLOT, ACT, BF16, PREC)
                n_bar += 2
            de_p, dc, dwm = _de_pass(p_w1, p_w2, p_dw1, p_dw2, p_ds1, p_ds2, b_k, e, c, wm, j_lo, j_hi, D,
                                     HID, BE, BT, ACT, BF16, PREC)
            tl.store(p_own + DE + o_td, de_p)
            n_bar += 1
            _barrier(sync + i_bh, flag, n_bar * P)
            # reduce-scattered as the forward's error; the flush of the last chunk's partials (published by
            # the barrier just passed) runs while the others arrive
            _publish_rows(p_part + DE, _sum_shares(p_part + DE, i_p * R, R, D, P, SLOT), i_p, sync + i_bh, BT,
                          D, P, SLOT)
            if i_c + 1 < NC:
                _flush(p_chain + ((i_c + 1) % 2) * P * SLOT, i_c + 1, i_p, i_b, i_h, i_bh, T, NC, dq, dk,
                       dcw, dsc, H, D, CS, BT, P, SLOT)
            n_bar += 1
            de = _gather_rows(p_part + DE, sync + i_bh, flag, n_bar * P, BT, D, P, SLOT)
            p_dv = dv + (tok + o_t[:, None].to(tl.int64) * H) * D + tl.arange(0, D)[None, :]
            tl.store(p_dv, (-de).to(dv.dtype.element_ty), mask=mine & (o_t < n)[:, None])
            # stored as soon as they are known: fewer blocks stay live through the later passes
            tl.store(p_own + VEC + o_t, dc)
            tl.store(p_own + VEC + BT + o_t, dwm)
            dk_p, dA, dE, dG = _update_pass(p_w1, p_w2, p_s1, p_s2, p_dw1, p_dw2, p_ds1, p_ds2, b_k, e, de, c,
                                            wm, A, E, G, j_lo, j_hi, D, HID, BE, BT, ACT, BF16, PREC, XB,
                                            XPREC)
            if i_p == 0:  # the identity paths, counted once
                dk_p += de
            tl.store(p_own + DK + o_td, dk_p)
            tl.debug_barrier()  # the retrieval pass adds onto the adjoint tiles just written
            b_q = _load_rows(q + tok * D, n, D, BT, H * D)
            b_do = _load_rows(do + tok * D, n, D, BT, H * D)
            dq_p = _retrieval_pass(p_w1, p_w2, p_dw1, p_dw2, b_q, b_do, j_lo, j_hi, D, HID, BE, BT, ACT, BF16,
                                   PREC, XB, XPREC)
            if i_p == 0:
                dq_p += b_do.to(tl.float32)
            tl.store(p_own + DQ + o_td, dq_p)
            tl.store(p_own + SCAL + o_s, tl.where(o_s == 0, dA, tl.where(o_s == 1, dE,
                                                                           tl.where(o_s == 2, dG, 0.0))))
    n_bar += 1
    _barrier(sync + i_bh, flag, n_bar * P)
    _flush(p_chain, 0, i_p, i_b, i_h, i_bh, T, NC, dq, dk, dcw, dsc, H, D, CS, BT, P, SLOT)


def _bwd_split_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      coeffs: tuple[torch.Tensor, torch.Tensor], do: torch.Tensor,
                      grads: tuple[torch.Tensor, ...], ckpts: list[torch.Tensor], scratch: list[torch.Tensor],
                      dws: list[torch.Tensor], dss: list[torch.Tensor], every: int, n_ck: int, P: int,
                      chunk_size: int, activation: str, cfg: dict) -> tuple[dict, Callable[[], tuple]]:
    """The split backward's compile-time arguments and launch options, and a builder of its grid and runtime
    arguments (with fresh exchange and barrier buffers)."""
    B, T, H, D = q.shape
    hidden = dws[0].shape[-2]
    BT = cfg["BT"]
    warps = cfg.get("split_warps_bwd", 4 if packed(q, P) else 8)
    # tiles of 16 units spill less at 4 warps (H200, 4 x 32k, P = 8: 53.5 against 60.2 ms fwd+bwd), 32 do
    # better at 8 (1 x 128k: 126.8 against 139.2)
    tile = cfg.get("split_tile_bwd", 16 if warps == 4 else cfg["BE"])
    options = dict(H=H, D=D, HID=hidden, CS=chunk_size, BT=BT, EP=hidden // P, BE=min(tile, hidden // P), P=P,
                   ACT=0 if activation == "silu" else 1, BF16=cfg["BF16"], PREC=cfg["PREC"], num_warps=warps,
                   num_stages=1, **exact_backward(cfg), **register_cap(cfg))

    def build() -> tuple:
        part = torch.empty(B * H, 2, P, 5 * BT * D + 2 * BT + 4, device=q.device, dtype=torch.float32)
        errs = torch.empty(B * H, every, BT, D, device=q.device, dtype=torch.float32)
        sync = torch.zeros(B * H + 1, device=q.device, dtype=torch.int32)  # the last entry is the error flag
        args = (q, k, v, *coeffs, do, *grads, *ckpts, *scratch, dws[0], dws[1], dss[0], dss[1], errs, part,
                sync, sync[B * H:], T, every, n_ck)
        return (B * H * P,), args

    return options, build


def bwd_split_per_sm(*call) -> int:
    """`programs_per_sm` of the split backward built for titans_memory_bwd_split's arguments `call`."""
    options, build = _bwd_split_launch(*call)
    return cached_per_sm(titans_memory_bwd_split_kernel, options, call[0], build)


def titans_memory_bwd_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            coeffs: tuple[torch.Tensor, torch.Tensor], do: torch.Tensor,
                            grads: tuple[torch.Tensor, ...], ckpts: list[torch.Tensor],
                            scratch: list[torch.Tensor], dws: list[torch.Tensor], dss: list[torch.Tensor],
                            every: int, n_ck: int, P: int, chunk_size: int, activation: str, cfg: dict,
                            ) -> None:
    """Launch the split backward (arguments as titans_memory_bwd's, with `grads` its (dq, dk, dv, dcw, dsc)
    outputs and `scratch` its chunk-start state buffers); fills grads, and dws, dss in place."""
    options, build = _bwd_split_launch(q, k, v, coeffs, do, grads, ckpts, scratch, dws, dss, every, n_ck, P,
                                       chunk_size, activation, cfg)
    grid, args = build()
    barrier_flags["bwd"] = args[-4]  # the error flag, sync[B * H:]
    launched_programs["bwd"] = P
    titans_memory_bwd_split_kernel[grid](*args, **options)
