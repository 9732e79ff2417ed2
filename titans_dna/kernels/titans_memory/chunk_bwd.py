"""Triton backward of the chunked Titans memory (reverse recurrence from checkpoints).

One program per (batch, head) chain walks the checkpoint segments backwards. For each segment it first
recomputes the chunk-start states from the segment's checkpoint into a scratch buffer (the forward step
without retrieval), then runs the chunks of the segment in reverse, carrying the adjoint (dW, dS) of the
state after the chunk. With W' = A W + G S - U_c(W) and S' = E S - U_m(W) for a chunk:
    dS = E dS' + G dW',   dW = A dW' + (local gradient of <dW', -U_c> + <dS', -U_m> + <do, M_W(q)>),
where U_c = sum_i c_i u_i and U_m = sum_i m_i theta_i u_i are sums of outer products of the explicit
inner-gradient factors; their derivative through the MLP needs act''. The gate coefficients get
dc_i, d(m theta)_i and dA, dE, dG, which a last small kernel turns into dtheta, deta, dalpha.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .chunk_fwd import (
    TINY,
    _act,
    _chain_ptrs,
    _chunk_span,
    _gate_terms,
    _load_coeffs,
    _load_cols,
    _load_gates,
    _load_rows,
    _matrix_fwd_step,
    _mlp_fwd_step,
    _mm,
    _state_ptrs,
    _store_cols,
    _store_rows,
    _tile_offs,
    build_switches,
    checkpoint_every,
    interpreting,
    kernel_config,
)


def exact_backward(cfg: dict) -> dict:
    """XB, XPREC: the dot mode of the depth-2 backward's passes C and D on state tiles and of their weight
    gradients. tuning "bwd_exact" runs them on float32 operands where the inputs are bf16, at the dot
    precision it names (1: bf16x3; ieee in the CPU interpreter): those 12 dots hold most of the bf16 error of
    dL/dW_0 on the active-memory check (BENCHMARKS.md, CPU interpreter at 8k tokens: 1.70e-2, 8.6e-3 with
    them exact). The other dots stay as the inputs are."""
    mode = cfg.get("bwd_exact")
    if mode and cfg["BF16"]:
        return dict(XB=0, XPREC="ieee" if interpreting() else "bf16x3" if mode == 1 else mode)
    return dict(XB=cfg["BF16"], XPREC=cfg["PREC"])


@triton.jit
def _matrix_bwd_step(p_w, p_s, p_dw, p_ds, b_q, b_k, p_v, p_do, p_dv, stride, n, c, wm, A, E, G,
                     D: tl.constexpr, BE: tl.constexpr, BT: tl.constexpr, BF16: tl.constexpr,
                     PREC: tl.constexpr):
    """Depth 1 reverse step over row tiles of W (e = k W^T - v, u_i = e_i k_i^T); writes dv and the
    adjoint of the chunk-start state in place. Returns dq, dk [BT, D], dc, dwm [BT], dA, dE, dG."""
    dq = tl.zeros([BT, D], dtype=tl.float32)
    dk = tl.zeros([BT, D], dtype=tl.float32)
    dc = tl.zeros([BT], dtype=tl.float32)
    dwm = tl.zeros([BT], dtype=tl.float32)
    dA = tl.full([], 0.0, tl.float32)
    dE = tl.full([], 0.0, tl.float32)
    dG = tl.full([], 0.0, tl.float32)
    for j in range(0, D, BE):
        o_w = _tile_offs(j, D, BE, D, True)
        b_w = tl.load(p_w + o_w)
        b_s = tl.load(p_s + o_w)
        b_dw = tl.load(p_dw + o_w)
        b_ds = tl.load(p_ds + o_w)
        b_do = _load_cols(p_do, j, n, BT, BE, stride)
        e = _mm(b_k, tl.trans(b_w), BF16, PREC) - _load_cols(p_v, j, n, BT, BE, stride)
        r = _mm(b_k, tl.trans(b_dw), BF16, PREC)
        rs = _mm(b_k, tl.trans(b_ds), BF16, PREC)
        dc -= tl.sum(e * r, axis=1)
        dwm -= tl.sum(e * rs, axis=1)
        de = -(c[:, None] * r + wm[:, None] * rs)
        dk += (_mm(de, b_w, BF16, PREC) - _mm(c[:, None] * e, b_dw, BF16, PREC)
               - _mm(wm[:, None] * e, b_ds, BF16, PREC))
        dq += _mm(b_do, b_w, BF16, PREC)
        _store_cols(p_dv, -de, j, n, BT, BE, stride)
        g_w = _mm(tl.trans(de), b_k, BF16, PREC) + _mm(tl.trans(b_do), b_q, BF16, PREC)
        dA += tl.sum(b_dw * b_w)
        dG += tl.sum(b_dw * b_s)
        dE += tl.sum(b_ds * b_s)
        tl.store(p_dw + o_w, A * b_dw + g_w)
        tl.store(p_ds + o_w, E * b_ds + G * b_dw)
    return dq, dk, dc, dwm, dA, dE, dG


@triton.jit
def _y_pass(p_w1, p_w2, b_k, j_lo, j_hi, D: tl.constexpr, HID: tl.constexpr, BE: tl.constexpr,
            BT: tl.constexpr, ACT: tl.constexpr, BF16: tl.constexpr, PREC: tl.constexpr):
    """Depth-2 reverse step, pass A over hidden units j_lo..j_hi: their share of y = act(k W1^T) W2^T, which
    gives the error e = k + y - v."""
    acc_y = tl.zeros([BT, D], dtype=tl.float32)
    for j in range(j_lo, j_hi, BE):
        b_w1 = tl.load(p_w1 + _tile_offs(j, D, BE, D, True))
        b_w2 = tl.load(p_w2 + _tile_offs(j, HID, D, BE, False))
        hk, _, _ = _act(_mm(b_k, tl.trans(b_w1), BF16, PREC), ACT)
        acc_y += _mm(hk, tl.trans(b_w2), BF16, PREC)
    return acc_y


@triton.jit
def _de_pass(p_w1, p_w2, p_dw1, p_dw2, p_ds1, p_ds2, b_k, e, c, wm, j_lo, j_hi, D: tl.constexpr,
             HID: tl.constexpr, BE: tl.constexpr, BT: tl.constexpr, ACT: tl.constexpr, BF16: tl.constexpr,
             PREC: tl.constexpr):
    """Pass B over hidden units j_lo..j_hi: their shares of everything that feeds de (its full sum is needed
    before dh) and of dL/dc, dL/d(m theta). Each tile's terms are applied as they come, so only de is carried
    over the tiles (the pass spilled more with r2, r2s and dk carried too). Returns de [BT, D], dc, dwm
    [BT]."""
    de = tl.zeros([BT, D], dtype=tl.float32)
    dc = tl.zeros([BT], dtype=tl.float32)
    dwm = tl.zeros([BT], dtype=tl.float32)
    for j in range(j_lo, j_hi, BE):
        o_1 = _tile_offs(j, D, BE, D, True)
        o_2 = _tile_offs(j, HID, D, BE, False)
        b_w1 = tl.load(p_w1 + o_1)
        b_w2 = tl.load(p_w2 + o_2)
        hk, d1, d2 = _act(_mm(b_k, tl.trans(b_w1), BF16, PREC), ACT)
        g1 = _mm(e, b_w2, BF16, PREC) * d1
        r1 = _mm(b_k, tl.trans(tl.load(p_dw1 + o_1)), BF16, PREC)
        r1s = _mm(b_k, tl.trans(tl.load(p_ds1 + o_1)), BF16, PREC)
        dc -= tl.sum(g1 * r1, axis=1)
        dwm -= tl.sum(g1 * r1s, axis=1)
        # d(g1) = -(c r1 + wm r1s); through g1 = (e W2) * act'(z): d(e W2) = d(g1) act'(z)
        dp = -(c[:, None] * r1 + wm[:, None] * r1s) * d1
        de += _mm(dp, tl.trans(b_w2), BF16, PREC)
        # h = act(z) feeds u2 = e h^T: r2 = h dW2^T, r2s = h dS2^T reach e through the c and m theta sums
        r2 = _mm(hk, tl.trans(tl.load(p_dw2 + o_2)), BF16, PREC)
        r2s = _mm(hk, tl.trans(tl.load(p_ds2 + o_2)), BF16, PREC)
        de -= c[:, None] * r2 + wm[:, None] * r2s
        dc -= tl.sum(e * r2, axis=1)
        dwm -= tl.sum(e * r2s, axis=1)
    return de, dc, dwm


@triton.jit
def _update_pass(p_w1, p_w2, p_s1, p_s2, p_dw1, p_dw2, p_ds1, p_ds2, b_k, e, de, c, wm, A, E, G, j_lo, j_hi,
                 D: tl.constexpr, HID: tl.constexpr, BE: tl.constexpr, BT: tl.constexpr, ACT: tl.constexpr,
                 BF16: tl.constexpr, PREC: tl.constexpr, XB: tl.constexpr, XPREC: tl.constexpr):
    """Pass C over hidden units j_lo..j_hi: dh, dz, the local weight gradients and the adjoint update, in
    place, and the keys' gradient through u1 = (c g1)^T k, (m theta g1)^T k (from the adjoint before the
    update, which this pass holds anyway). Returns their share of dk and of dA, dE, dG."""
    dk = tl.zeros([BT, D], dtype=tl.float32)
    dA = tl.full([], 0.0, tl.float32)
    dE = tl.full([], 0.0, tl.float32)
    dG = tl.full([], 0.0, tl.float32)
    for j in range(j_lo, j_hi, BE):
        o_1 = _tile_offs(j, D, BE, D, True)
        o_2 = _tile_offs(j, HID, D, BE, False)
        b_w1 = tl.load(p_w1 + o_1)
        b_w2 = tl.load(p_w2 + o_2)
        b_dw1 = tl.load(p_dw1 + o_1)
        b_ds1 = tl.load(p_ds1 + o_1)
        b_dw2 = tl.load(p_dw2 + o_2)
        b_ds2 = tl.load(p_ds2 + o_2)
        z = _mm(b_k, tl.trans(b_w1), XB, XPREC)
        hk, d1, d2 = _act(z, ACT)
        dg1 = -(c[:, None] * _mm(b_k, tl.trans(b_dw1), BF16, PREC)
                + wm[:, None] * _mm(b_k, tl.trans(b_ds1), BF16, PREC))
        # h = act(z) feeds y = k + h W2^T (de) and u2 = e h^T (the c and m theta sums)
        dh = (_mm(de, b_w2, XB, XPREC) - _mm(c[:, None] * e, b_dw2, BF16, PREC)
              - _mm(wm[:, None] * e, b_ds2, BF16, PREC))
        ew2 = _mm(e, b_w2, XB, XPREC)
        dz = dh * d1 + dg1 * ew2 * d2
        g1 = ew2 * d1
        dk += (_mm(dz, b_w1, XB, XPREC) - _mm(c[:, None] * g1, b_dw1, BF16, PREC)
               - _mm(wm[:, None] * g1, b_ds1, BF16, PREC))
        g_w1 = tl.trans(_mm(tl.trans(b_k), dz, XB, XPREC))  # a tall dot: see _mm
        g_w2 = _mm(tl.trans(de), hk, XB, XPREC) + _mm(tl.trans(e), dg1 * d1, XB, XPREC)
        b_s1 = tl.load(p_s1 + o_1)
        b_s2 = tl.load(p_s2 + o_2)
        dA += tl.sum(b_dw1 * b_w1) + tl.sum(b_dw2 * b_w2)
        dG += tl.sum(b_dw1 * b_s1) + tl.sum(b_dw2 * b_s2)
        dE += tl.sum(b_ds1 * b_s1) + tl.sum(b_ds2 * b_s2)
        tl.store(p_dw1 + o_1, A * b_dw1 + g_w1)
        tl.store(p_ds1 + o_1, E * b_ds1 + G * b_dw1)
        tl.store(p_dw2 + o_2, A * b_dw2 + g_w2)
        tl.store(p_ds2 + o_2, E * b_ds2 + G * b_dw2)
    return dk, dA, dE, dG


@triton.jit
def _retrieval_pass(p_w1, p_w2, p_dw1, p_dw2, b_q, b_do, j_lo, j_hi, D: tl.constexpr, HID: tl.constexpr,
                    BE: tl.constexpr, BT: tl.constexpr, ACT: tl.constexpr, BF16: tl.constexpr,
                    PREC: tl.constexpr, XB: tl.constexpr, XPREC: tl.constexpr):
    """Pass D over hidden units j_lo..j_hi: the retrieval o = q + act(q W1^T) W2^T. Its weight gradients add
    onto the updated adjoint (kept out of pass C so fewer [BT, D] blocks are live at once); returns their
    share of dq (without the identity path)."""
    dq = tl.zeros([BT, D], dtype=tl.float32)
    for j in range(j_lo, j_hi, BE):
        o_1 = _tile_offs(j, D, BE, D, True)
        o_2 = _tile_offs(j, HID, D, BE, False)
        b_w1 = tl.load(p_w1 + o_1)
        b_w2 = tl.load(p_w2 + o_2)
        hq, dq1, _ = _act(_mm(b_q, tl.trans(b_w1), XB, XPREC), ACT)
        dzq = _mm(b_do, b_w2, XB, XPREC) * dq1
        dq += _mm(dzq, b_w1, XB, XPREC)
        # a tall dot: see _mm
        tl.store(p_dw1 + o_1, tl.load(p_dw1 + o_1) + tl.trans(_mm(tl.trans(b_q), dzq, XB, XPREC)))
        tl.store(p_dw2 + o_2, tl.load(p_dw2 + o_2) + _mm(tl.trans(b_do), hq, XB, XPREC))
    return dq


@triton.jit
def _mlp_bwd_step(p_w1, p_w2, p_s1, p_s2, p_dw1, p_dw2, p_ds1, p_ds2, b_q, b_k, b_v, b_do, n,
                  c, wm, A, E, G, D: tl.constexpr, HID: tl.constexpr, BE: tl.constexpr, BT: tl.constexpr,
                  ACT: tl.constexpr, BF16: tl.constexpr, PREC: tl.constexpr, XB: tl.constexpr,
                  XPREC: tl.constexpr):
    """Depth 2 reverse step (M(x) = x + W2 act(W1 x)) in four passes over hidden tiles:
    A) the error e; B) everything that feeds de; C) dh, dz, the local weight gradients and the adjoint update,
    in place; D) the retrieval's gradients. Returns dq, dk, dv [BT, D], dc, dwm [BT], dA, dE, dG."""
    o_t = tl.arange(0, BT)
    acc_y = _y_pass(p_w1, p_w2, b_k, 0, HID, D, HID, BE, BT, ACT, BF16, PREC)
    e = tl.where((o_t < n)[:, None], b_k.to(tl.float32) + acc_y - b_v.to(tl.float32), 0.0)
    de, dc, dwm = _de_pass(p_w1, p_w2, p_dw1, p_dw2, p_ds1, p_ds2, b_k, e, c, wm, 0, HID, D, HID, BE, BT, ACT,
                           BF16, PREC)
    # C overwrites adjoint tiles that other threads read in B, and D re-reads what C wrote
    tl.debug_barrier()
    dk, dA, dE, dG = _update_pass(p_w1, p_w2, p_s1, p_s2, p_dw1, p_dw2, p_ds1, p_ds2, b_k, e, de, c, wm, A, E,
                                  G, 0, HID, D, HID, BE, BT, ACT, BF16, PREC, XB, XPREC)
    tl.debug_barrier()
    dq = _retrieval_pass(p_w1, p_w2, p_dw1, p_dw2, b_q, b_do, 0, HID, D, HID, BE, BT, ACT, BF16, PREC, XB,
                         XPREC)
    return b_do.to(tl.float32) + dq, dk + de, -de, dc, dwm, dA, dE, dG


@triton.jit
def _reverse_segment(i_r, N_CK, CK_EVERY, NC):
    """The i_r-th checkpoint segment from the end: its index, first chunk and number of chunks."""
    i_s = N_CK - 1 - i_r
    c_lo = i_s * CK_EVERY
    return i_s, c_lo, tl.minimum(CK_EVERY, NC - c_lo)


@triton.jit
def _chunk_start_ptrs(ck_w1, ck_w2, ck_s1, ck_s2, sc_w1, sc_w2, sc_s1, sc_s2, i_bh, i_s, l, N_CK, n_sc,
                      SIZE: tl.constexpr):
    """The state at the start of chunk l of segment i_s: its checkpoint for l = 0, else scratch slot l - 1."""
    if l == 0:
        p_w1, p_w2, p_s1, p_s2 = _state_ptrs(ck_w1, ck_w2, ck_s1, ck_s2, i_bh, i_s, N_CK, SIZE)
    else:
        p_w1, p_w2, p_s1, p_s2 = _state_ptrs(sc_w1, sc_w2, sc_s1, sc_s2, i_bh, l - 1, n_sc, SIZE)
    return p_w1, p_w2, p_s1, p_s2


@triton.jit(do_not_specialize=["T", "CK_EVERY", "N_CK"])
def titans_memory_bwd_kernel(
    q, k, v, cw, aeg, do, dq, dk, dv, dcw, dsc,
    ck_w1, ck_w2, ck_s1, ck_s2, sc_w1, sc_w2, sc_s1, sc_s2, dw1, dw2, ds1, ds2, T, CK_EVERY, N_CK,
    H: tl.constexpr, D: tl.constexpr, HID: tl.constexpr, CS: tl.constexpr, BT: tl.constexpr,
    BE_F: tl.constexpr, BE: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr, BF16: tl.constexpr,
    PREC: tl.constexpr, XB: tl.constexpr, XPREC: tl.constexpr,
):
    """Reverse walk of one chain. dw*/ds* [B*H, out, in] hold the gradient of the final state on entry
    and that of the initial state on exit. The scratch sc_* has CK_EVERY - 1 slots per chain: the
    chunk-start states of a segment after its first chunk (whose state is the checkpoint itself).
    dcw [B*H, 2, T] gets dL/dc and dL/d(m theta) per token, dsc [B*H, NC, 4] dL/dA, dL/dE, dL/dG."""
    i_bh = tl.program_id(0)
    i_b = i_bh // H
    i_h = i_bh % H
    SIZE: tl.constexpr = HID * D
    NC = tl.cdiv(T, CS)
    n_sc = CK_EVERY - 1
    p_dw1, p_dw2, p_ds1, p_ds2 = _state_ptrs(dw1, dw2, ds1, ds2, i_bh, 0, 1, SIZE)
    o_t = tl.arange(0, BT)
    for i_r in range(0, N_CK):
        i_s, c_lo, n_l = _reverse_segment(i_r, N_CK, CK_EVERY, NC)
        # recompute the chunk-start states of this segment into the scratch
        for l in range(0, n_l - 1):
            i_c = c_lo + l
            t0, n, tok = _chunk_span(i_c, i_b, i_h, T, CS, H)
            p_w1, p_w2, p_s1, p_s2 = _chunk_start_ptrs(ck_w1, ck_w2, ck_s1, ck_s2, sc_w1, sc_w2, sc_s1, sc_s2,
                                                       i_bh, i_s, l, N_CK, n_sc, SIZE)
            c, wm, A, E, G = _load_coeffs(cw, aeg, i_bh, i_c, t0, n, T, BT, CS)
            b_k = _load_rows(k + tok * D, n, D, BT, H * D)
            if DEPTH == 1:
                _matrix_fwd_step(p_w1, p_s1, _chain_ptrs(sc_w1, i_bh, l, n_sc, SIZE),
                                 _chain_ptrs(sc_s1, i_bh, l, n_sc, SIZE), b_k, b_k, v + tok * D,
                                 v + tok * D, H * D, n, c, wm, A, E, G, D, BE_F, BT, BF16, PREC, False)
            else:
                b_v = _load_rows(v + tok * D, n, D, BT, H * D)
                _mlp_fwd_step(p_w1, p_w2, p_s1, p_s2, _chain_ptrs(sc_w1, i_bh, l, n_sc, SIZE),
                              _chain_ptrs(sc_w2, i_bh, l, n_sc, SIZE),
                              _chain_ptrs(sc_s1, i_bh, l, n_sc, SIZE),
                              _chain_ptrs(sc_s2, i_bh, l, n_sc, SIZE),
                              b_k, b_k, b_v, v + tok * D, H * D, n, c, wm, A, E, G, D, HID, BE_F, BT, ACT,
                              BF16, PREC, False)
            tl.debug_barrier()
        # reverse through the segment
        for r in range(0, n_l):
            l = n_l - 1 - r
            i_c = c_lo + l
            t0, n, tok = _chunk_span(i_c, i_b, i_h, T, CS, H)
            p_w1, p_w2, p_s1, p_s2 = _chunk_start_ptrs(ck_w1, ck_w2, ck_s1, ck_s2, sc_w1, sc_w2, sc_s1, sc_s2,
                                                       i_bh, i_s, l, N_CK, n_sc, SIZE)
            c, wm, A, E, G = _load_coeffs(cw, aeg, i_bh, i_c, t0, n, T, BT, CS)
            b_q = _load_rows(q + tok * D, n, D, BT, H * D)
            b_k = _load_rows(k + tok * D, n, D, BT, H * D)
            if DEPTH == 1:
                b_dq, b_dk, b_dc, b_dwm, dA, dE, dG = _matrix_bwd_step(
                    p_w1, p_s1, p_dw1, p_ds1, b_q, b_k, v + tok * D, do + tok * D, dv + tok * D, H * D, n,
                    c, wm, A, E, G, D, BE, BT, BF16, PREC)
            else:
                b_v = _load_rows(v + tok * D, n, D, BT, H * D)
                b_do = _load_rows(do + tok * D, n, D, BT, H * D)
                b_dq, b_dk, b_dv, b_dc, b_dwm, dA, dE, dG = _mlp_bwd_step(
                    p_w1, p_w2, p_s1, p_s2, p_dw1, p_dw2, p_ds1, p_ds2, b_q, b_k, b_v, b_do, n,
                    c, wm, A, E, G, D, HID, BE, BT, ACT, BF16, PREC, XB, XPREC)
                _store_rows(dv + tok * D, b_dv, n, D, BT, H * D)
            _store_rows(dq + tok * D, b_dq, n, D, BT, H * D)
            _store_rows(dk + tok * D, b_dk, n, D, BT, H * D)
            p_dc = dcw + i_bh.to(tl.int64) * 2 * T + t0 + o_t
            tl.store(p_dc, b_dc, mask=o_t < n)
            tl.store(p_dc + T, b_dwm, mask=o_t < n)
            p_sc = dsc + (i_bh.to(tl.int64) * NC + i_c) * 4
            tl.store(p_sc, dA)
            tl.store(p_sc + 1, dE)
            tl.store(p_sc + 2, dG)
            tl.debug_barrier()


@triton.jit(do_not_specialize=["T"])
def titans_memory_gate_bwd_kernel(theta, eta, alpha, dcw, dsc, dtheta, deta, dalpha, T,
                                  H: tl.constexpr, CS: tl.constexpr, BT: tl.constexpr):
    """dL/dtheta, dL/deta, dL/dalpha of one chunk from dL/dc, dL/d(m theta), dL/dA, dL/dE, dL/dG.

    With f, g, m of _gate_terms and w = dc * theta: d/dlog a_j collects A, sum_{t<j} g_t and
    sum_{t<j} sum_i w_i f[i, t]; d/dlog eta_j collects E, sum_{t>=j} g_t, sum_{i<j} dwm_i theta_i m_i and
    sum_{i<j<=t} w_i f[i, t]. Chunks are independent: grid (NC, B*H)."""
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    NC = tl.cdiv(T, CS)
    t0, n, tok = _chunk_span(i_c, i_b, i_h, T, CS, H)
    th, et, al, log_a, log_e = _load_gates(theta + tok, eta + tok, alpha + tok, H, n, BT)
    f, m, g, A, E = _gate_terms(log_a, log_e, n, BT)
    o_t = tl.arange(0, BT)
    m_t = o_t < n
    p_dc = dcw + i_bh.to(tl.int64) * 2 * T + t0 + o_t
    dc = tl.load(p_dc, mask=m_t, other=0.0)
    dwm = tl.load(p_dc + T, mask=m_t, other=0.0)
    p_sc = dsc + (i_bh.to(tl.int64) * NC + i_c) * 4
    dA = tl.load(p_sc)
    dE = tl.load(p_sc + 1)
    dG = tl.load(p_sc + 2)
    row = o_t[:, None]
    col = o_t[None, :]
    fw = (dc * th)[:, None] * f
    # rows j, columns t: t < j
    dla = dA * A + tl.sum(tl.where(col < row, (dG * g + tl.sum(fw, axis=0))[None, :], 0.0), axis=1)
    # x_j = sum_{i<j} sum_{t>=j} fw[i, t], whose terms all hold eta_j. The prefix sums down the columns run
    # over the previous rows' terms, fw[i - 1, t] = (dc theta)_{i-1} eta_i f[i, t] for t >= i: an inclusive
    # prefix sum less fw itself cancels O(1) terms to an O(eta_j) rest (deta 1e-3 off where eta_j = 3e-8).
    # (A float32 dot here made ptxas spill the whole kernel to local memory.)
    m_p = m_t & (o_t >= 1)
    w_p = tl.load(p_dc - 1, mask=m_p, other=0.0) * tl.load(theta + tok + (o_t - 1) * H, mask=m_p,
                                                           other=0.0).to(tl.float32)
    pre = tl.cumsum((w_p * et)[:, None] * f, axis=0)
    x = tl.sum(tl.where(col >= row, pre, 0.0), axis=1)
    dle = (dE * E + dG * tl.sum(tl.where(col >= row, g[None, :], 0.0), axis=1)
           + tl.sum(tl.where(col < row, (dwm * th * m)[None, :], 0.0), axis=1) + x)
    d_th = dc * tl.sum(f, axis=1) + dwm * m
    # log(max(x, TINY)): the clamp passes no gradient below TINY (as torch.clamp)
    d_et = tl.where(et >= TINY, dle / tl.maximum(et, TINY), 0.0)
    d_al = tl.where(1.0 - al >= TINY, -dla / tl.maximum(1.0 - al, TINY), 0.0)
    tl.store(dtheta + tok + o_t * H, d_th.to(dtheta.dtype.element_ty), mask=m_t)
    tl.store(deta + tok + o_t * H, d_et.to(deta.dtype.element_ty), mask=m_t)
    tl.store(dalpha + tok + o_t * H, d_al.to(dalpha.dtype.element_ty), mask=m_t)


def titans_memory_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, theta: torch.Tensor,
                      eta: torch.Tensor, alpha: torch.Tensor, coeffs: tuple[torch.Tensor, torch.Tensor],
                      do: torch.Tensor, ckpts: list[torch.Tensor], dws: list[torch.Tensor],
                      dss: list[torch.Tensor], chunk_size: int, activation: str) -> tuple[torch.Tensor, ...]:
    """Launch the backward. coeffs and ckpts as titans_memory_fwd used and returned them; dws, dss per layer
    [B, H, out, in] float32 contiguous: the gradient of the final state on entry, that of the initial state
    on exit.

    Returns dq, dk, dv (q's dtype) and dtheta, deta, dalpha (the gates' dtype).
    """
    B, T, H, D = q.shape
    depth = len(dws)
    hidden = dws[0].shape[-2] if depth == 2 else D
    cfg = kernel_config(q, hidden, chunk_size)
    n_chunks = triton.cdiv(T, chunk_size)
    every = checkpoint_every(n_chunks)
    n_ck = triton.cdiv(n_chunks, every)
    scratch = [torch.empty(B * H, max(every - 1, 1), *x.shape[2:], device=q.device, dtype=torch.float32)
               for x in dws + dss]
    if depth == 1:
        scratch = [scratch[0], scratch[0], scratch[1], scratch[1]]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dcw = torch.empty(B * H, 2, T, device=q.device, dtype=torch.float32)
    dsc = torch.empty(B * H, n_chunks, 4, device=q.device, dtype=torch.float32)
    # imported here: the split kernel module builds on this one's helpers
    from .chunk_bwd_split import bwd_split_per_sm, titans_memory_bwd_split
    from .chunk_fwd_split import split_programs

    grads = (dq, dk, dv, dcw, dsc)
    with build_switches(cfg):
        P = split_programs(q, depth, hidden, chunk_size, cfg, lambda P: bwd_split_per_sm(
            q, k, v, coeffs, do, grads, ckpts, scratch, dws, dss, every, n_ck, P, chunk_size, activation,
            cfg)) if cfg.get("split_bwd", 1) else 0
        if P:
            titans_memory_bwd_split(q, k, v, coeffs, do, grads, ckpts, scratch, dws, dss, every, n_ck, P,
                                    chunk_size, activation, cfg)
        else:
            titans_memory_bwd_kernel[(B * H,)](
                q, k, v, *coeffs, do, dq, dk, dv, dcw, dsc, *ckpts, *scratch,
                dws[0], dws[-1], dss[0], dss[-1], T, every, n_ck,
                H=H, D=D, HID=hidden, CS=chunk_size, BT=cfg["BT"], BE_F=cfg["BE_F"], BE=cfg["BE"],
                DEPTH=depth, ACT=0 if activation == "silu" else 1, BF16=cfg["BF16"], PREC=cfg["PREC"],
                **exact_backward(cfg), num_warps=cfg["num_warps_bwd"], num_stages=cfg["num_stages_bwd"],
            )
    dtheta, deta, dalpha = torch.empty_like(theta), torch.empty_like(eta), torch.empty_like(alpha)
    titans_memory_gate_bwd_kernel[(n_chunks, B * H)](
        theta, eta, alpha, dcw, dsc, dtheta, deta, dalpha, T, H=H, CS=chunk_size, BT=cfg["BT"], num_warps=8,
    )
    return dq, dk, dv, dtheta, deta, dalpha
