"""Triton forward of the chunked Titans memory: shared in-kernel helpers, the chunk step, and the
persistent kernel that walks one (batch, head) chain over its chunks.

Per chain the state (W_l and S_l, float32) lives in global memory, where it stays L2-resident between
chunks: 64 -> 256 -> 64 is 256 KiB per chain, more than one SM holds (DESIGN.md "Kernels"). Each chunk
step streams the state through registers in tiles of BE hidden units (rows of W1, columns of W2):
pass 1 reads the state once for the retrieval o = M_{W_c}(q) and the error e = M_{W_c}(k) - v, pass 2
reads it again with S and writes the updated state in place:
    W_{c+1} = A W_c + G S_c - (c * g)^T h,    S_{c+1} = E S_c - (m theta * g)^T h
with (g, h) the per-token gradient factors of each layer (README.md). The gate coefficients of all
chunks are computed beforehand by a fully parallel kernel (log space, the clamp of
common.chunk_gate_coefficients), which keeps them off the sequential chunk walk.
"""

from __future__ import annotations

import contextlib
import json
import math
import os

import torch
import triton
import triton.language as tl

# smallest normal float32, the clamp of common.chunk_gate_coefficients for float32 gates
TINY = tl.constexpr(1.1754943508222875e-38)
INV_SQRT2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _round_bf16(x):
    """float32 x rounded to the nearest bf16 (ties to even), kept in float32. The CPU interpreter's own
    conversion to bf16 truncates, which biases every rounded value by -2^-9 on average, where the GPU rounds
    to nearest; over a long recurrence that bias grew the interpreter's errors to several times the GPU's."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _mm(a, b, BF16: tl.constexpr, PREC: tl.constexpr):
    """a @ b with float32 accumulation. BF16 = 0: float32 operands at PREC; 1: bf16 operands (the fast
    path); 2: operands rounded to bf16 as the GPU rounds them (`_round_bf16`), in a float32 dot: the same
    numbers, for the CPU interpreter, whose bf16 dot is wrong.

    Callers keep every dot at least as tall as it is wide (a wide one, such as (c g1)^T k, is written
    (k^T (c g1))^T). Triton gives a chain of mma.sync dots the warp layout of the first it places, and a
    wide dot gets its warps across the columns, which makes each warp hold whole [BT, D] left operands;
    with the rows split instead, the split forward at 128k x 1 went from 21.2 to 15.5 ms (H200, same run)."""
    if BF16 == 1:
        out = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif BF16 == 2:
        out = tl.dot(_round_bf16(a.to(tl.float32)), _round_bf16(b.to(tl.float32)), input_precision=PREC)
    else:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC)
    return out


@triton.jit
def _act(z, ACT: tl.constexpr):
    """act(z), act'(z), act''(z); ACT 0 = silu, 1 = exact (erf) gelu."""
    if ACT == 0:
        s = tl.sigmoid(z)
        h = z * s
        d1 = s * (1.0 + z * (1.0 - s))
        d2 = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    else:
        cdf = 0.5 * (1.0 + tl.math.erf(z * INV_SQRT2))
        pdf = tl.exp(-0.5 * z * z) * INV_SQRT_2PI
        h = z * cdf
        d1 = cdf + z * pdf
        d2 = pdf * (2.0 - z * z)
    return h, d1, d2


@triton.jit
def _load_gates(p_theta, p_eta, p_alpha, stride, n, BT: tl.constexpr):
    """theta and the log gates of one chunk, [BT]; rows >= n (tail padding) get theta = 0, logs = 0."""
    o_t = tl.arange(0, BT)
    m_t = o_t < n
    theta = tl.load(p_theta + o_t * stride, mask=m_t, other=0.0).to(tl.float32)
    eta = tl.load(p_eta + o_t * stride, mask=m_t, other=1.0).to(tl.float32)
    alpha = tl.load(p_alpha + o_t * stride, mask=m_t, other=0.0).to(tl.float32)
    log_a = tl.where(m_t, tl.log(tl.maximum(1.0 - alpha, TINY)), 0.0)
    log_e = tl.where(m_t, tl.log(tl.maximum(eta, TINY)), 0.0)
    return theta, eta, alpha, log_a, log_e


@triton.jit
def _gate_terms(log_a, log_e, n, BT: tl.constexpr):
    """Products of DESIGN.md for one chunk, each from a masked sum (no difference of prefix sums).

    Returns f [BT, BT] with f[i, t] = prod_{j>t} a_j prod_{i<j<=t} eta_j for i <= t < n (else 0),
    m[i] = prod_{j>i} eta_j, g[t] = prod_{j>t} a_j prod_{j<=t} eta_j (0 for t >= n), A, E.
    """
    o_t = tl.arange(0, BT)
    row = o_t[:, None]
    col = o_t[None, :]
    after = col > row
    suf_a = tl.sum(tl.where(after, log_a[None, :], 0.0), axis=1)
    suf_e = tl.sum(tl.where(after, log_e[None, :], 0.0), axis=1)
    pre_e = tl.sum(tl.where(after, 0.0, log_e[None, :]), axis=1)
    seg_e = tl.cumsum(tl.where(after, log_e[None, :], 0.0), axis=1)
    m_f = (col >= row) & (col < n)
    f = tl.where(m_f, tl.exp(suf_a[None, :] + seg_e), 0.0)
    m = tl.exp(suf_e)
    g = tl.where(o_t < n, tl.exp(suf_a + pre_e), 0.0)
    A = tl.exp(tl.sum(log_a, axis=0))
    E = tl.exp(tl.sum(log_e, axis=0))
    return f, m, g, A, E


@triton.jit
def _chunk_coeffs(p_theta, p_eta, p_alpha, stride, n, BT: tl.constexpr):
    """(c, m theta) per token [BT] and A, E, G for one chunk (DESIGN.md)."""
    theta, eta, alpha, log_a, log_e = _load_gates(p_theta, p_eta, p_alpha, stride, n, BT)
    f, m, g, A, E = _gate_terms(log_a, log_e, n, BT)
    return theta * tl.sum(f, axis=1), theta * m, A, E, tl.sum(g, axis=0)


@triton.jit(do_not_specialize=["T"])
def titans_memory_coeff_kernel(theta, eta, alpha, cw, aeg, T, H: tl.constexpr, CS: tl.constexpr,
                               BT: tl.constexpr):
    """Gate coefficients of every chunk at once (grid (NC, B*H)), off the sequential chunk walk:
    cw [B*H, 2, T] gets c and m theta per token, aeg [B*H, NC, 4] gets A, E, G per chunk."""
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1)
    t0, n, tok = _chunk_span(i_c, i_bh // H, i_bh % H, T, CS, H)
    c, wm, A, E, G = _chunk_coeffs(theta + tok, eta + tok, alpha + tok, H, n, BT)
    o_t = tl.arange(0, BT)
    p_c = cw + i_bh.to(tl.int64) * 2 * T + t0 + o_t
    tl.store(p_c, c, mask=o_t < n)
    tl.store(p_c + T, wm, mask=o_t < n)
    p_a = aeg + (i_bh.to(tl.int64) * tl.cdiv(T, CS) + i_c) * 4
    tl.store(p_a, A)
    tl.store(p_a + 1, E)
    tl.store(p_a + 2, G)


@triton.jit
def _load_coeffs(cw, aeg, i_bh, i_c, t0, n, T, BT: tl.constexpr, CS: tl.constexpr):
    """c, m theta [BT] (0 past row n) and A, E, G of one chunk, as titans_memory_coeff_kernel stored them."""
    o_t = tl.arange(0, BT)
    p_c = cw + i_bh.to(tl.int64) * 2 * T + t0 + o_t
    c = tl.load(p_c, mask=o_t < n, other=0.0)
    wm = tl.load(p_c + T, mask=o_t < n, other=0.0)
    p_a = aeg + (i_bh.to(tl.int64) * tl.cdiv(T, CS) + i_c) * 4
    return c, wm, tl.load(p_a), tl.load(p_a + 1), tl.load(p_a + 2)


@triton.jit
def _load_rows(p, n, D: tl.constexpr, BT: tl.constexpr, stride):
    """[BT, D] block of token rows (row stride `stride`) in the input dtype, zeros past row n."""
    o_t = tl.arange(0, BT)
    o_d = tl.arange(0, D)
    ptrs = p + o_t[:, None].to(tl.int64) * stride + o_d[None, :]
    return tl.load(ptrs, mask=(o_t < n)[:, None], other=0.0)


@triton.jit
def _store_rows(p, x, n, D: tl.constexpr, BT: tl.constexpr, stride):
    o_t = tl.arange(0, BT)
    o_d = tl.arange(0, D)
    ptrs = p + o_t[:, None].to(tl.int64) * stride + o_d[None, :]
    tl.store(ptrs, x.to(p.dtype.element_ty), mask=(o_t < n)[:, None])


@triton.jit
def _tile_offs(j, C: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, ROWS: tl.constexpr):
    """Offsets of a [BR, BC] tile of a row-major matrix with C columns: rows j..j+BR if ROWS, else
    columns j..j+BC (W1 [HID, D] is tiled by rows, W2 [D, HID] by columns)."""
    if ROWS:
        o_r = j + tl.arange(0, BR)
        o_c = tl.arange(0, BC)
    else:
        o_r = tl.arange(0, BR)
        o_c = j + tl.arange(0, BC)
    return o_r[:, None] * C + o_c[None, :]


@triton.jit
def _copy_state(p_w1, p_w2, p_s1, p_s2, p_c1, p_c2, p_cs1, p_cs2,
                D: tl.constexpr, HID: tl.constexpr, BE: tl.constexpr, DEPTH: tl.constexpr):
    """Checkpoint: copy W and S of one chain (depth 1: W1 and S1 only)."""
    for j in range(0, HID, BE):
        o_1 = _tile_offs(j, D, BE, D, True)
        tl.store(p_c1 + o_1, tl.load(p_w1 + o_1))
        tl.store(p_cs1 + o_1, tl.load(p_s1 + o_1))
        if DEPTH == 2:
            o_2 = _tile_offs(j, HID, D, BE, False)
            tl.store(p_c2 + o_2, tl.load(p_w2 + o_2))
            tl.store(p_cs2 + o_2, tl.load(p_s2 + o_2))


@triton.jit
def _load_cols(p, j, n, BT: tl.constexpr, BE: tl.constexpr, stride):
    """[BT, BE] float32 block of token rows, columns j..j+BE, zeros past row n."""
    o_t = tl.arange(0, BT)
    o_e = j + tl.arange(0, BE)
    ptrs = p + o_t[:, None].to(tl.int64) * stride + o_e[None, :]
    return tl.load(ptrs, mask=(o_t < n)[:, None], other=0.0).to(tl.float32)


@triton.jit
def _store_cols(p, x, j, n, BT: tl.constexpr, BE: tl.constexpr, stride):
    o_t = tl.arange(0, BT)
    o_e = j + tl.arange(0, BE)
    ptrs = p + o_t[:, None].to(tl.int64) * stride + o_e[None, :]
    tl.store(ptrs, x.to(p.dtype.element_ty), mask=(o_t < n)[:, None])


@triton.jit
def _matrix_fwd_step(p_w, p_s, p_wn, p_sn, b_q, b_k, p_v, p_o, stride, n, c, wm, A, E, G,
                     D: tl.constexpr, BE: tl.constexpr, BT: tl.constexpr, BF16: tl.constexpr,
                     PREC: tl.constexpr, RETRIEVE: tl.constexpr):
    """Depth 1 (M(x) = W x): the output rows of W are independent, so one pass over row tiles.

    Writes o = q W^T (when RETRIEVE) and moves the state from (p_w, p_s) to (p_wn, p_sn).
    """
    for j in range(0, D, BE):
        o_w = _tile_offs(j, D, BE, D, True)
        b_w = tl.load(p_w + o_w)
        b_s = tl.load(p_s + o_w)
        if RETRIEVE:
            _store_cols(p_o, _mm(b_q, tl.trans(b_w), BF16, PREC), j, n, BT, BE, stride)
        e = _mm(b_k, tl.trans(b_w), BF16, PREC) - _load_cols(p_v, j, n, BT, BE, stride)
        u_c = _mm(tl.trans(c[:, None] * e), b_k, BF16, PREC)
        u_m = _mm(tl.trans(wm[:, None] * e), b_k, BF16, PREC)
        tl.store(p_wn + o_w, A * b_w + G * b_s - u_c)
        tl.store(p_sn + o_w, E * b_s - u_m)


@triton.jit
def _mlp_fwd_step(p_w1, p_w2, p_s1, p_s2, p_w1n, p_w2n, p_s1n, p_s2n, b_q, b_k, b_v, p_o, stride, n,
                  c, wm, A, E, G, D: tl.constexpr, HID: tl.constexpr, BE: tl.constexpr, BT: tl.constexpr,
                  ACT: tl.constexpr, BF16: tl.constexpr, PREC: tl.constexpr, RETRIEVE: tl.constexpr):
    """Depth 2 (M(x) = x + W2 act(W1 x)) over hidden tiles j of BE units: W1 rows, W2 columns.

    Pass 1 gives o = q + act(q W1^T) W2^T (written when RETRIEVE) and the error e = M(k) - v; pass 2
    the gradient factors g2 = e, h2 = act(z), g1 = (e W2) * act'(z), h1 = k, and the update.
    """
    acc_o = tl.zeros([BT, D], dtype=tl.float32)
    acc_y = tl.zeros([BT, D], dtype=tl.float32)
    for j in range(0, HID, BE):
        b_w1 = tl.load(p_w1 + _tile_offs(j, D, BE, D, True))
        b_w2 = tl.load(p_w2 + _tile_offs(j, HID, D, BE, False))
        if RETRIEVE:
            hq, _, _ = _act(_mm(b_q, tl.trans(b_w1), BF16, PREC), ACT)
            acc_o += _mm(hq, tl.trans(b_w2), BF16, PREC)
        hk, _, _ = _act(_mm(b_k, tl.trans(b_w1), BF16, PREC), ACT)
        acc_y += _mm(hk, tl.trans(b_w2), BF16, PREC)
    if RETRIEVE:
        _store_rows(p_o, b_q.to(tl.float32) + acc_o, n, D, BT, stride)
    o_t = tl.arange(0, BT)
    e = tl.where((o_t < n)[:, None], b_k.to(tl.float32) + acc_y - b_v.to(tl.float32), 0.0)
    # pass 2 overwrites tiles that other threads read in pass 1 (in-place update)
    tl.debug_barrier()
    _mlp_update_tiles(p_w1, p_w2, p_s1, p_s2, p_w1n, p_w2n, p_s1n, p_s2n, b_k, e, c, wm, A, E, G, 0, HID, D,
                      HID, BE, ACT, BF16, PREC)


@triton.jit
def _slice_update(b_w1, b_w2, b_s1, b_s2, e, b_k, hk, d1, c, wm, A, E, G, BF16: tl.constexpr,
                  PREC: tl.constexpr):
    """One chunk's depth-2 update of a block E_p of hidden units (a tile of _mlp_update_tiles, or a split
    program's slices: rows E_p of W1, S1, columns E_p of W2, S2) from the chain's error e [BT, D] and the
    block's hidden activations hk = act(z), d1 = act'(z) [BT, BE]: g1 = (e W2[:, E_p]) * d1,
    W' = A W + G S - (c g)^T h, S' = E S - (m theta g)^T h per layer. Returns W1', W2', S1', S2'."""
    g1 = _mm(e, b_w2, BF16, PREC) * d1
    u1c = tl.trans(_mm(tl.trans(b_k), c[:, None] * g1, BF16, PREC))  # tall dots: see _mm
    u1m = tl.trans(_mm(tl.trans(b_k), wm[:, None] * g1, BF16, PREC))
    u2c = _mm(tl.trans(c[:, None] * e), hk, BF16, PREC)
    u2m = _mm(tl.trans(wm[:, None] * e), hk, BF16, PREC)
    return A * b_w1 + G * b_s1 - u1c, A * b_w2 + G * b_s2 - u2c, E * b_s1 - u1m, E * b_s2 - u2m


@triton.jit
def _mlp_update_tiles(p_w1, p_w2, p_s1, p_s2, p_w1n, p_w2n, p_s1n, p_s2n, b_k, e, c, wm, A, E, G, j_lo, j_hi,
                      D: tl.constexpr, HID: tl.constexpr, BE: tl.constexpr, ACT: tl.constexpr,
                      BF16: tl.constexpr, PREC: tl.constexpr):
    """The depth-2 update of hidden units j_lo..j_hi from the error e, tile by tile (`_slice_update` of each
    tile): from (p_w*, p_s*) to (p_w*n, p_s*n), which may be the same buffers."""
    for j in range(j_lo, j_hi, BE):
        o_1 = _tile_offs(j, D, BE, D, True)
        o_2 = _tile_offs(j, HID, D, BE, False)
        b_w1 = tl.load(p_w1 + o_1)
        b_w2 = tl.load(p_w2 + o_2)
        hk, d1, _ = _act(_mm(b_k, tl.trans(b_w1), BF16, PREC), ACT)
        w1n, w2n, s1n, s2n = _slice_update(b_w1, b_w2, tl.load(p_s1 + o_1), tl.load(p_s2 + o_2), e, b_k, hk,
                                           d1, c, wm, A, E, G, BF16, PREC)
        tl.store(p_w1n + o_1, w1n)
        tl.store(p_s1n + o_1, s1n)
        tl.store(p_w2n + o_2, w2n)
        tl.store(p_s2n + o_2, s2n)


@triton.jit
def _chain_ptrs(base, i_bh, slot, n_slots, SIZE: tl.constexpr):
    """Start of one chain's matrix in a [B*H, n_slots, out, in] buffer (int64: buffers pass 2^31)."""
    return base + (i_bh.to(tl.int64) * n_slots + slot) * SIZE


@triton.jit
def _chunk_span(i_c, i_b, i_h, T, CS: tl.constexpr, H: tl.constexpr):
    """Chunk i_c of chain (i_b, i_h): its first position t0, its length n (the last may be short) and the
    row index of its first token in a [B, T, H, ...] tensor (int64)."""
    t0 = i_c * CS
    return t0, tl.minimum(CS, T - t0), (i_b.to(tl.int64) * T + t0) * H + i_h


@triton.jit
def _state_ptrs(w1, w2, s1, s2, i_bh, slot, n_slots, SIZE: tl.constexpr):
    """`_chain_ptrs` of the four state buffers W1, W2, S1, S2 (depth 1: W2 and S2 alias W1 and S1)."""
    return (_chain_ptrs(w1, i_bh, slot, n_slots, SIZE), _chain_ptrs(w2, i_bh, slot, n_slots, SIZE),
            _chain_ptrs(s1, i_bh, slot, n_slots, SIZE), _chain_ptrs(s2, i_bh, slot, n_slots, SIZE))


@triton.jit(do_not_specialize=["T", "CK_EVERY", "N_CK"])
def titans_memory_fwd_kernel(
    q, k, v, cw, aeg, o, w1, w2, s1, s2, ck_w1, ck_w2, ck_s1, ck_s2, T, CK_EVERY, N_CK,
    H: tl.constexpr, D: tl.constexpr, HID: tl.constexpr, CS: tl.constexpr, BT: tl.constexpr,
    BE: tl.constexpr, DEPTH: tl.constexpr, ACT: tl.constexpr, BF16: tl.constexpr, PREC: tl.constexpr,
    SAVE: tl.constexpr,
):
    """One program per (batch, head) chain walks the chunks in order; the state [B*H, out, in] is
    updated in place (initial state in, final state out). With SAVE the state at the start of chunks
    0, CK_EVERY, 2 CK_EVERY, ... goes to checkpoint slot i_c // CK_EVERY for the backward."""
    i_bh = tl.program_id(0)
    i_b = i_bh // H
    i_h = i_bh % H
    p_w1, p_w2, p_s1, p_s2 = _state_ptrs(w1, w2, s1, s2, i_bh, 0, 1, HID * D)
    for i_c in range(0, tl.cdiv(T, CS)):
        t0, n, tok = _chunk_span(i_c, i_b, i_h, T, CS, H)
        if SAVE:
            if i_c % CK_EVERY == 0:
                slot = i_c // CK_EVERY
                _copy_state(p_w1, p_w2, p_s1, p_s2,
                            *_state_ptrs(ck_w1, ck_w2, ck_s1, ck_s2, i_bh, slot, N_CK, HID * D), D, HID, BE,
                            DEPTH)
                tl.debug_barrier()
        c, wm, A, E, G = _load_coeffs(cw, aeg, i_bh, i_c, t0, n, T, BT, CS)
        b_q = _load_rows(q + tok * D, n, D, BT, H * D)
        b_k = _load_rows(k + tok * D, n, D, BT, H * D)
        if DEPTH == 1:
            _matrix_fwd_step(p_w1, p_s1, p_w1, p_s1, b_q, b_k, v + tok * D, o + tok * D, H * D, n,
                             c, wm, A, E, G, D, BE, BT, BF16, PREC, True)
        else:
            b_v = _load_rows(v + tok * D, n, D, BT, H * D)
            _mlp_fwd_step(p_w1, p_w2, p_s1, p_s2, p_w1, p_w2, p_s1, p_s2, b_q, b_k, b_v, o + tok * D,
                          H * D, n, c, wm, A, E, G, D, HID, BE, BT, ACT, BF16, PREC, True)
        # the next chunk's loads read what other warps of this program just stored
        tl.debug_barrier()


# Overrides of kernel_config's choices (keys BE_F, BE, num_warps[_bwd], num_stages[_bwd], BF16, PREC,
# wgmma; for the split kernels split, split_bwd, split_be, split_pack, split_warps[_bwd], split_tile_bwd,
# split_maxnreg), empty in normal use: the benchmark sweeps tile sizes, warps and dot precisions through it
# (bench/memory_kernels.py --sweep), and TITANS_DNA_KERNEL_TUNING (a JSON object) sets it for a whole run.
# Two keys are trade-offs a user may want: "bwd_exact" (chunk_bwd.exact_backward: bf16 gradients closer to
# float32, for a slower backward) and "ckpt_every" (checkpoint_every: less recompute, more memory).
TUNING: dict = json.loads(os.environ.get("TITANS_DNA_KERNEL_TUNING") or "{}")


@contextlib.contextmanager
def build_switches(cfg: dict):
    """Compile-time switches for launches of these kernels (the first launch compiles).

    Unless cfg["wgmma"], the kernels are built with mma.sync instead of Hopper's wgmma: with Triton 3.6 on
    an H100, the wgmma code of these kernels' bf16 dots (bf16 inputs, and the bf16x3/bf16x6 splits of
    float32) gave zeros in the forward and illegal addresses in the backward, while tf32 wgmma and
    mma.sync were right (bench/memory_kernels.py runs, 2026-11-26). Triton reads DISABLE_MMA_V3 when it
    compiles and keys its cache on it, so other kernels built outside this block are unaffected.
    """
    old = os.environ.get("DISABLE_MMA_V3")
    if not cfg.get("wgmma", False):
        os.environ["DISABLE_MMA_V3"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DISABLE_MMA_V3", None)
        else:
            os.environ["DISABLE_MMA_V3"] = old


def interpreting() -> bool:
    """True when Triton kernels run on the CPU interpreter (TRITON_INTERPRET=1, read at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_config(q: torch.Tensor, hidden: int, chunk_size: int) -> dict:
    """Block sizes, warps and precision for one call (the backward's warps and stages under *_bwd).

    BT: the chunk's token rows, a power of two >= 16 (tl.dot's minimum). BE_F / BE: hidden units per state
    tile in the forward / backward step. Timed on an H100 (bf16, 64 -> 256 -> 64, chunk 64, 32k x 4,
    forward / forward+backward ms; bench/memory_kernels.py --sweep, 2026-11-26): tiles of 32 beat 64 in
    the forward (22 / 28) and 32 beat 16 in the backward (206 / 251 with 8 warps); 4 warps beat 8 (19 /
    170 against 22 / 250), and software-pipelining the backward's tile loops (2 stages) took it to 160.
    Pipelining stays off where its buffers would not fit the shared memory (float32 operands, and bf16
    chunk tiles beyond 64 x 64). Float32 inputs use 6xBF16 dots (float32 accuracy on the tensor cores;
    plain TF32 misses the 1e-4 target, and 3xTF32 needs more shared memory than an SM has in the
    backward); bf16/fp16 inputs use bf16 dots with float32 accumulation (see _mm).
    """
    BT = max(16, triton.next_power_of_2(chunk_size))
    interp = interpreting()
    half = q.dtype != torch.float32
    cfg = dict(
        BT=BT,
        BE_F=32,
        BE=32,
        BF16=0 if not half else (2 if interp else 1),
        PREC="ieee" if interp else "bf16x6",
        # 4 warps were faster at 64 x 64 chunk tiles; larger tiles spill everything at 4 (sm_90 build)
        num_warps=4 if BT * q.shape[-1] <= 64 * 64 else 8,
        num_stages=1,
        num_warps_bwd=4 if BT * q.shape[-1] <= 64 * 64 else 8,
        num_stages_bwd=2 if half and BT * q.shape[-1] <= 64 * 64 else 1,
    )
    cfg.update(TUNING)
    for key in ("num_warps", "num_stages"):  # a tuned value applies to both kernels unless given apart
        if key in TUNING and f"{key}_bwd" not in TUNING:
            cfg[f"{key}_bwd"] = TUNING[key]
    cfg["BE_F"], cfg["BE"] = min(hidden, cfg["BE_F"]), min(hidden, cfg["BE"])
    return cfg


def checkpoint_every(n_chunks: int) -> int:
    """Chunks per checkpoint segment: ~sqrt(n) balances the checkpoints (n / k states per chain) against
    the backward's scratch (k states), and k >= 4 keeps the recompute overhead small at short lengths.
    tuning "ckpt_every" sets k."""
    return TUNING.get("ckpt_every") or max(4, math.ceil(math.sqrt(n_chunks)))


def titans_memory_coeffs(theta: torch.Tensor, eta: torch.Tensor, alpha: torch.Tensor, chunk_size: int,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate coefficients of all chunks: c and m theta [B*H, 2, T], A, E, G in [B*H, NC, 4] (float32)."""
    B, T, H = theta.shape
    n_chunks = triton.cdiv(T, chunk_size)
    cw = torch.empty(B * H, 2, T, device=theta.device, dtype=torch.float32)
    aeg = torch.empty(B * H, n_chunks, 4, device=theta.device, dtype=torch.float32)
    BT = max(16, triton.next_power_of_2(chunk_size))
    # 8 warps: the [BT, BT] products of _gate_terms spill at 4 (sm_90 build)
    titans_memory_coeff_kernel[(n_chunks, B * H)](theta, eta, alpha, cw, aeg, T, H=H, CS=chunk_size, BT=BT,
                                                  num_warps=8)
    return cw, aeg


def titans_memory_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      coeffs: tuple[torch.Tensor, torch.Tensor], ws: list[torch.Tensor],
                      ss: list[torch.Tensor], chunk_size: int, activation: str, save: bool,
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Launch the forward. q, k, v [B, T, H, D] contiguous; coeffs from titans_memory_coeffs; ws, ss per
    layer [B, H, out, in] float32 contiguous, updated in place to the final state.

    Returns o [B, T, H, D] in q's dtype and, when `save`, the checkpoints [W1, W2, S1, S2] (depth 1:
    [W1, W1, S1, S1]) each [B*H, N_CK, out, in] float32 (else an empty list).
    """
    B, T, H, D = q.shape
    depth = len(ws)
    hidden = ws[0].shape[-2] if depth == 2 else D
    cfg = kernel_config(q, hidden, chunk_size)
    n_chunks = triton.cdiv(T, chunk_size)
    every = checkpoint_every(n_chunks)
    n_ck = triton.cdiv(n_chunks, every)
    w1, w2 = ws[0], ws[-1]
    s1, s2 = ss[0], ss[-1]
    ck = [w1, w2, s1, s2]
    if save:
        ck = [torch.empty(B * H, n_ck, *x.shape[2:], device=q.device, dtype=torch.float32)
              for x in ws + ss]
        if depth == 1:  # the kernel reads layer 2 only for depth 2
            ck = [ck[0], ck[0], ck[1], ck[1]]
    # imported here: the split kernel module builds on this one's helpers
    from .chunk_fwd_split import fwd_split_per_sm, split_programs, titans_memory_fwd_split

    with build_switches(cfg):
        P = split_programs(q, depth, hidden, chunk_size, cfg, lambda P: fwd_split_per_sm(
            q, k, v, coeffs, ws, ss, ck, every, n_ck, P, chunk_size, activation, save, cfg))
        if P:
            o = titans_memory_fwd_split(q, k, v, coeffs, ws, ss, ck, every, n_ck, P, chunk_size, activation,
                                        save, cfg)
            return o, ck if save else []
        o = torch.empty_like(q)
        titans_memory_fwd_kernel[(B * H,)](
            q, k, v, *coeffs, o, w1, w2, s1, s2, *ck, T, every, n_ck,
            H=H, D=D, HID=hidden, CS=chunk_size, BT=cfg["BT"], BE=cfg["BE_F"], DEPTH=depth,
            ACT=0 if activation == "silu" else 1, BF16=cfg["BF16"], PREC=cfg["PREC"], SAVE=save,
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )
    return o, ck if save else []
