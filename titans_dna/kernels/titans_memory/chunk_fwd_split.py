"""Split-chain forward of the chunked Titans memory (depth 2): P programs share one (batch, head) chain.

The persistent kernel (chunk_fwd.py) gives a chain one program, which streams the whole state through
registers twice per chunk; at batch 1 a few programs run on a card of 132 SMs and each chunk step costs the
latency of some 40 dependent small matmuls. Here program p of a chain owns the hidden units
E_p = [p BE, (p + 1) BE): rows E_p of W1 and S1, columns E_p of W2 and S2. It keeps them in registers for the
whole walk (loaded once, stored once), and per chunk:

1. computes its share of the MLP for the keys, act(k W1[E_p]^T) W2[:, E_p]^T [BT, D], stores it to its slot
   of a scratch buffer and arrives at the chain's barrier;
2. while the others arrive, computes and stores its share for the queries and writes its BT / P rows of
   the previous chunk's output o (the queries plus the sum of their P shares), then waits;
3. reduce-scatters the error e = k + sum_p share_p - v, which every program needs whole: it sums its own
   rows of the P key shares, stores its rows of e over the same rows of its own share (rows no other
   program reads), meets the others at a second barrier and reads e back. Each program reads 2 (BT / P) D
   values of every share instead of BT D: with one barrier, 8 programs per chain read 128 KiB per chunk
   each, and at 4 x 32k the forward took 5.6 ms against 4.7-5.0 ms reduce-scattered (H200);
4. updates its slices from e alone: g1 = (e W2[:, E_p]) * act'(z), u1 = (c g1)^T k, u2 = (c e)^T act(z).

The barrier is a per-chain counter in global memory: each program adds 1 after its stores and spins until
the counter reaches P x (barriers passed). Scratch slots alternate between two buffers by chunk parity: a
block is read between the barrier that publishes it and the reader's next arrival, and its slot is written
again two chunks later, after a barrier that the reader can only open by arriving. The P programs of every
chain must be resident at once, which `split_programs` guarantees by launching at most one program per SM
(or as many as an SM holds). The sums run in a fixed order: results do not depend on timing.

The CPU interpreter runs programs one after another, so there a barrier between programs would never open;
with P = 1 the same code runs there (each barrier is passed by the program's own arrival).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from .chunk_fwd import (
    _act,
    _chunk_span,
    _load_coeffs,
    _load_rows,
    _mm,
    _slice_update,
    _state_ptrs,
    _tile_offs,
    interpreting,
)

# a barrier that stays shut this long (seconds) sets the error flag instead of hanging the card
MAX_SPINS = tl.constexpr(1 << 26)


@triton.jit
def _arrive(sync):
    """Count this program's arrival at the chain's barrier: its stores so far are published."""
    tl.debug_barrier()  # every thread's stores are issued before this program arrives
    tl.atomic_add(sync, 1, sem="release")


@triton.jit
def _wait(sync, flag, target):
    """Wait until `target` arrivals have been counted at the chain's barrier."""
    count = tl.atomic_add(sync, 0, sem="acquire")
    spins = tl.full([], 0, tl.int32)
    while (count < target) & (spins < MAX_SPINS):
        count = tl.atomic_add(sync, 0, sem="acquire")
        spins += 1
    if count < target:
        tl.atomic_max(flag, 1)
    tl.debug_barrier()


@triton.jit
def _barrier(sync, flag, target):
    """Arrive at the chain's barrier and wait until `target` arrivals have been counted."""
    _arrive(sync)
    _wait(sync, flag, target)


@triton.jit
def _sum_shares(p_part, row0, R: tl.constexpr, D: tl.constexpr, P: tl.constexpr, SLOT: tl.constexpr):
    """Sum over the P programs' shares of rows row0..row0+R ([R, D] float32); .cg skips the SM's L1,
    which is not coherent with the other SMs' stores."""
    offs = (row0 + tl.arange(0, R))[:, None] * D + tl.arange(0, D)[None, :]
    acc = tl.zeros([R, D], dtype=tl.float32)
    for r in tl.static_range(P):
        acc += tl.load(p_part + r * SLOT + offs, cache_modifier=".cg")
    return acc


@triton.jit
def _publish_rows(p_region, rows, i_p, sync, BT: tl.constexpr, D: tl.constexpr, P: tl.constexpr,
                  SLOT: tl.constexpr):
    """The second half of a reduce-scatter, first part: this program's rows of a [BT, D] block (rows
    i_p BT / P .., summed by it) go over the same rows of its own share at p_region, which no other program
    reads, and it arrives at the chain's barrier. `_gather_rows` reads the block once all have arrived."""
    o_r = i_p * (BT // P) + tl.arange(0, BT // P)
    tl.debug_barrier()  # every thread has read the rows it overwrites
    tl.store(p_region + i_p * SLOT + o_r[:, None] * D + tl.arange(0, D)[None, :], rows)
    _arrive(sync)


@triton.jit
def _gather_rows(p_region, sync, flag, target, BT: tl.constexpr, D: tl.constexpr, P: tl.constexpr,
                 SLOT: tl.constexpr):
    """Wait for `target` arrivals, then read the block that `_publish_rows` assembled, [BT, D], from the P
    slots at p_region."""
    o_t = tl.arange(0, BT)
    o_td = (o_t // (BT // P))[:, None] * SLOT + o_t[:, None] * D + tl.arange(0, D)[None, :]
    _wait(sync, flag, target)
    return tl.load(p_region + o_td, cache_modifier=".cg")


@triton.jit
def _token_rows(tok, n, o_r, H: tl.constexpr, D: tl.constexpr):
    """Offsets [R, D] of a chunk's rows o_r in a [B, T, H, D] tensor, and the mask of those before row n;
    `tok` is the chunk's first token row."""
    return (tok + o_r[:, None].to(tl.int64) * H) * D + tl.arange(0, D)[None, :], (o_r < n)[:, None]


@triton.jit
def _k_minus_v_rows(k, v, tok, n, o_r, H: tl.constexpr, D: tl.constexpr):
    """k - v (float32) of a chunk's rows o_r (0 from row n on); `tok` is the chunk's first token row."""
    o_rd, m_r = _token_rows(tok, n, o_r, H, D)
    return tl.load(k + o_rd, mask=m_r, other=0.0).to(tl.float32) - tl.load(v + o_rd, mask=m_r, other=0.0)


@triton.jit
def _output_rows(o, q, p_part, i_c, i_b, i_h, o_r, i_p, T, H: tl.constexpr, D: tl.constexpr, CS: tl.constexpr,
                 R: tl.constexpr, P: tl.constexpr, SLOT: tl.constexpr):
    """Store this program's output rows o_r of chunk i_c: the queries plus the sum of the P query shares
    at p_part."""
    _, n, tok = _chunk_span(i_c, i_b, i_h, T, CS, H)
    o_rd, m_r = _token_rows(tok, n, o_r, H, D)
    out = tl.load(q + o_rd, mask=m_r, other=0.0).to(tl.float32) + _sum_shares(p_part, i_p * R, R, D, P, SLOT)
    tl.store(o + o_rd, out.to(o.dtype.element_ty), mask=m_r)


@triton.jit
def _chunk_keys(k, cw, aeg, i_c, i_b, i_h, i_bh, T, H: tl.constexpr, D: tl.constexpr, CS: tl.constexpr,
                BT: tl.constexpr):
    """Chunk i_c's length n, first token row, gate coefficients (c, m theta, A, E, G) and keys [BT, D]."""
    t0, n, tok = _chunk_span(i_c, i_b, i_h, T, CS, H)
    c, wm, A, E, G = _load_coeffs(cw, aeg, i_bh, i_c, t0, n, T, BT, CS)
    return n, tok, c, wm, A, E, G, _load_rows(k + tok * D, n, D, BT, H * D)


@triton.jit
def _chunk_inputs(q, k, v, cw, aeg, i_c, i_b, i_h, i_bh, o_r, T, H: tl.constexpr, D: tl.constexpr,
                  CS: tl.constexpr, BT: tl.constexpr):
    """_chunk_keys' values with the queries [BT, D] and, for this program's rows o_r of the error, k - v
    (float32)."""
    n, tok, c, wm, A, E, G, b_k = _chunk_keys(k, cw, aeg, i_c, i_b, i_h, i_bh, T, H, D, CS, BT)
    kv_r = _k_minus_v_rows(k, v, tok, n, o_r, H, D)
    return n, c, wm, A, E, G, _load_rows(q + tok * D, n, D, BT, H * D), b_k, kv_r


@triton.jit(do_not_specialize=["T", "CK_EVERY", "N_CK"])
def titans_memory_fwd_split_kernel(
    q, k, v, cw, aeg, o, w1, w2, s1, s2, ck_w1, ck_w2, ck_s1, ck_s2, part, sync, flag, T, CK_EVERY, N_CK,
    H: tl.constexpr, D: tl.constexpr, HID: tl.constexpr, CS: tl.constexpr, BT: tl.constexpr,
    BE: tl.constexpr, P: tl.constexpr, ACT: tl.constexpr, BF16: tl.constexpr, PREC: tl.constexpr,
    SAVE: tl.constexpr,
):
    """Grid (B * H * P,): program p of chain i_bh owns hidden units p BE .. (p + 1) BE (module docstring).
    part [B*H, 2, P, 2, BT, D] float32 scratch (parity, program, queries/keys); sync [B*H] int32 zeros;
    flag [1] int32, set to 1 if a barrier timed out. State and checkpoints as titans_memory_fwd_kernel."""
    pid = tl.program_id(0)
    i_bh = pid // P
    i_p = pid % P
    i_b = i_bh // H
    i_h = i_bh % H
    j = i_p * BE
    o_1 = _tile_offs(j, D, BE, D, True)  # rows E_p of W1 / S1: [BE, D]
    o_2 = _tile_offs(j, HID, D, BE, False)  # columns E_p of W2 / S2: [D, BE]
    p_w1, p_w2, p_s1, p_s2 = _state_ptrs(w1, w2, s1, s2, i_bh, 0, 1, HID * D)
    b_w1 = tl.load(p_w1 + o_1)
    b_w2 = tl.load(p_w2 + o_2)
    b_s1 = tl.load(p_s1 + o_1)
    b_s2 = tl.load(p_s2 + o_2)
    SLOT: tl.constexpr = 2 * BT * D
    R: tl.constexpr = BT // P  # output rows this program sums and writes
    o_t = tl.arange(0, BT)
    o_td = o_t[:, None] * D + tl.arange(0, D)[None, :]
    o_r = i_p * R + tl.arange(0, R)
    NC = tl.cdiv(T, CS)
    p_chain = part + i_bh.to(tl.int64) * 2 * P * SLOT  # this chain's two parity blocks of P slots
    n, c, wm, A, E, G, b_q, b_k, kv_r = _chunk_inputs(q, k, v, cw, aeg, 0, i_b, i_h, i_bh, o_r, T, H, D, CS,
                                                      BT)
    for i_c in range(0, NC):
        if SAVE:
            if i_c % CK_EVERY == 0:
                slot = i_c // CK_EVERY
                c_w1, c_w2, c_s1, c_s2 = _state_ptrs(ck_w1, ck_w2, ck_s1, ck_s2, i_bh, slot, N_CK, HID * D)
                tl.store(c_w1 + o_1, b_w1)
                tl.store(c_w2 + o_2, b_w2)
                tl.store(c_s1 + o_1, b_s1)
                tl.store(c_s2 + o_2, b_s2)
        p_part = p_chain + (i_c % 2) * P * SLOT
        hk, d1, _ = _act(_mm(b_k, tl.trans(b_w1), BF16, PREC), ACT)
        tl.store(p_part + i_p * SLOT + BT * D + o_td, _mm(hk, tl.trans(b_w2), BF16, PREC))
        # split phase: the queries' path runs while the other programs arrive
        _arrive(sync + i_bh)
        hq, _, _ = _act(_mm(b_q, tl.trans(b_w1), BF16, PREC), ACT)
        tl.store(p_part + i_p * SLOT + o_td, _mm(hq, tl.trans(b_w2), BF16, PREC))
        if i_c > 0:
            _output_rows(o, q, p_chain + ((i_c - 1) % 2) * P * SLOT, i_c - 1, i_b, i_h, o_r, i_p, T, H, D, CS,
                         R, P, SLOT)
        _wait(sync + i_bh, flag, (i_c * 2 + 1) * P)
        # the error, reduce-scattered: each program sums its rows of the y shares alone (1 / P of the reads
        # that summing them all would take, for a second barrier)
        e_r = tl.where((o_r < n)[:, None], kv_r + _sum_shares(p_part + BT * D, i_p * R, R, D, P, SLOT), 0.0)
        _publish_rows(p_part + BT * D, e_r, i_p, sync + i_bh, BT, D, P, SLOT)
        e = _gather_rows(p_part + BT * D, sync + i_bh, flag, (i_c * 2 + 2) * P, BT, D, P, SLOT)
        k_now = b_k
        c_now, wm_now, A_now, E_now, G_now = c, wm, A, E, G
        # the next chunk's inputs load while this chunk's update runs: they head the next step's critical
        # path (issued before the wait above, they made 4 x 32k's forward 1.08x slower: H200, 5.04 / 4.67 ms)
        i_next = tl.minimum(i_c + 1, NC - 1)
        n, c, wm, A, E, G, b_q, b_k, kv_r = _chunk_inputs(q, k, v, cw, aeg, i_next, i_b, i_h, i_bh, o_r, T, H,
                                                          D, CS, BT)
        b_w1, b_w2, b_s1, b_s2 = _slice_update(b_w1, b_w2, b_s1, b_s2, e, k_now, hk, d1, c_now, wm_now, A_now,
                                               E_now, G_now, BF16, PREC)
    _output_rows(o, q, p_chain + ((NC - 1) % 2) * P * SLOT, NC - 1, i_b, i_h, o_r, i_p, T, H, D, CS, R, P,
                 SLOT)
    tl.store(p_w1 + o_1, b_w1)
    tl.store(p_w2 + o_2, b_w2)
    tl.store(p_s1 + o_1, b_s1)
    tl.store(p_s2 + o_2, b_s2)


# the last launch's error flag (int32 [1]) of each split kernel, "fwd" and "bwd"
barrier_flags: dict[str, torch.Tensor] = {}
# the last launch's programs per chain, P, of each split kernel
launched_programs: dict[str, int] = {}


@functools.cache
def _resident_programs(device: torch.device) -> int:
    """The card's SMs: a split launch of at most one program per SM is resident at once."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def _beside_others(q: torch.Tensor) -> bool:
    """Whether a launch now may run beside other split launches: it is on a stream other than the device's
    default one, as in a graph capture or the wavefront's stream per layer. A packed grid fills every SM, so
    two at once (or one beside another split launch) could each hold SMs that the other's waiting programs
    need, and their barriers would stay shut."""
    return torch.cuda.current_stream(q.device) != torch.cuda.default_stream(q.device)


def packed(q: torch.Tensor, P: int) -> bool:
    """Whether a split launch of P programs per chain puts more than one program on some SM."""
    return q.device.type == "cuda" and q.shape[0] * q.shape[2] * P > _resident_programs(q.device)


def programs_per_sm(compiled) -> int:
    """How many programs of a compiled kernel one SM holds at once, from the registers ptxas gave it
    (allocated per warp in units of 256), its shared memory and its warps (64 per SM). The per-block limits
    the driver reports stand in for the SM's: the same 64 Ki registers and 1 KiB less shared memory on
    sm_90, so the count never overstates. 1 where this Triton does not say."""
    try:
        compiled._init_handles()  # loading the module is what reports its registers
        utils = triton.runtime.driver.active.utils
        props = utils.get_device_properties(triton.runtime.driver.active.get_current_device())
        warps = compiled.metadata.num_warps
        regs = -(-compiled.n_regs * 32 // 256) * 256 * warps
        smem = compiled.metadata.shared + 1024  # the driver reserves 1 KiB per block
        return max(1, min(props["max_num_regs"] // regs, props["max_shared_mem"] // smem, 64 // warps))
    except AttributeError:
        return 1


# programs_per_sm of each split kernel build (kernel, input dtype and device, options, build switch)
_PER_SM: dict[tuple, int] = {}


def cached_per_sm(kernel, options: dict, q: torch.Tensor, call: Callable[[], tuple]) -> int:
    """`programs_per_sm` of `kernel` built with `options` for inputs of q's dtype and device; `call` gives the
    grid and arguments it is compiled for, on the first ask only (a launch's buffers are not free)."""
    key = (kernel, q.dtype, q.device, tuple(sorted(options.items())), os.environ.get("DISABLE_MMA_V3"))
    if key not in _PER_SM:
        grid, args = call()
        _PER_SM[key] = programs_per_sm(kernel.warmup(*args, grid=grid, **options))
    return _PER_SM[key]


def split_programs(q: torch.Tensor, depth: int, hidden: int, chunk_size: int, tuning: dict,
                   per_sm: Callable[[int], int] = lambda P: 1) -> int:
    """P, the programs per chain of a split launch (forward, and the backward unless tuning "split_bwd" is 0),
    or 0 for the persistent kernel.

    Depth 2 only (a matrix memory's rows are independent: no sharing to split). P = hidden / BE for the
    tile BE = 16, else 32, else 64 (tuning "split_be" fixes it), with P >= 2, whose B * H * P programs are all
    resident at once: one per SM, or for BE >= 32 `per_sm(P)` per SM (the kernel built for P,
    `programs_per_sm`) unless tuning "split_pack" is 0 or the launch may run beside others
    (`_beside_others`: graph captures and side streams keep one per SM). Two programs per SM take the
    backward's 4 x 32k chains from P = 4 to 8 (BENCHMARKS.md). P must divide the chunk tile's rows (each
    program writes BT / P output rows). At 128k x 1 (H200), 16-unit tiles took the backward from 128 to 110
    ms fwd+bwd, and the forward, once its exchanges were reduce-scattered, from 14.6 to 12.3 ms (before,
    they made it slower: 17.5 against 16.0 ms). tuning "split": 0 turns the split off, 1
    also turns it on in the CPU interpreter, with P = 1 (its programs run one after another, so P > 1 would
    wait forever at the first barrier).
    """
    if depth != 2 or tuning.get("split") == 0:
        return 0
    if q.device.type != "cuda":
        return 1 if tuning.get("split") == 1 else 0
    chains, room = q.shape[0] * q.shape[2], _resident_programs(q.device)
    BT = max(16, triton.next_power_of_2(chunk_size))
    for be in ([tuning["split_be"]] if "split_be" in tuning else [16, 32, 64]):
        P = hidden // be
        if not (2 <= P <= BT and hidden % be == 0):
            continue
        if not packed(q, P):
            return P
        may_pack = be >= 32 and tuning.get("split_pack", 1) and not _beside_others(q)
        if may_pack and chains * P <= room * per_sm(P):
            return P
    return 0


def register_cap(cfg: dict) -> dict:
    """Launch options that let ptxas use all 255 registers per thread (tuning "split_maxnreg", 0 for
    ptxas' own choice). Left to choose, ptxas 12.9 built some of these kernels with 32 registers and 5-12
    KiB of spills per thread (the forward with P = 8 at 4 warps, the backward at most shapes), where it
    gives the same PTX 255 registers and 1.5-6 KiB with the cap stated (sm_90a, Triton 3.9 PTX); on an H200
    the cap took fwd+bwd at 4 x 32k from 110 to 79 ms (BENCHMARKS.md)."""
    cap = cfg.get("split_maxnreg", 255)
    return {"maxnreg": cap} if cap and not interpreting() else {}


def _fwd_split_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      coeffs: tuple[torch.Tensor, torch.Tensor], ws: list[torch.Tensor],
                      ss: list[torch.Tensor], ck: list[torch.Tensor], every: int, n_ck: int, P: int,
                      chunk_size: int, activation: str, save: bool, cfg: dict,
                      ) -> tuple[dict, Callable[[], tuple]]:
    """The split forward's compile-time arguments and launch options, and a builder of its grid and runtime
    arguments (with fresh o, scratch and barrier buffers)."""
    B, T, H, D = q.shape
    hidden = ws[0].shape[-2]
    BT = max(16, triton.next_power_of_2(chunk_size))
    options = dict(H=H, D=D, HID=hidden, CS=chunk_size, BT=BT, BE=hidden // P, P=P,
                   ACT=0 if activation == "silu" else 1, BF16=cfg["BF16"], PREC=cfg["PREC"], SAVE=save,
                   num_warps=cfg.get("split_warps", 4), num_stages=1, **register_cap(cfg))

    def build() -> tuple:
        part = torch.empty(B * H, 2, P, 2, BT, D, device=q.device, dtype=torch.float32)
        sync = torch.zeros(B * H + 1, device=q.device, dtype=torch.int32)  # the last entry is the error flag
        o = torch.empty_like(q)
        args = (q, k, v, *coeffs, o, ws[0], ws[1], ss[0], ss[1], *ck, part, sync, sync[B * H:], T, every,
                n_ck)
        return (B * H * P,), args

    return options, build


def fwd_split_per_sm(*call) -> int:
    """`programs_per_sm` of the split forward built for titans_memory_fwd_split's arguments `call`."""
    options, build = _fwd_split_launch(*call)
    return cached_per_sm(titans_memory_fwd_split_kernel, options, call[0], build)


def titans_memory_fwd_split(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            coeffs: tuple[torch.Tensor, torch.Tensor], ws: list[torch.Tensor],
                            ss: list[torch.Tensor], ck: list[torch.Tensor], every: int, n_ck: int, P: int,
                            chunk_size: int, activation: str, save: bool, cfg: dict) -> torch.Tensor:
    """Launch the split forward (arguments as titans_memory_fwd, with `ck` its checkpoint buffers and `cfg`
    its kernel_config). Returns o; the state in ws, ss is updated in place."""
    options, build = _fwd_split_launch(q, k, v, coeffs, ws, ss, ck, every, n_ck, P, chunk_size, activation,
                                       save, cfg)
    grid, args = build()
    barrier_flags["fwd"] = args[-4]  # the error flag, sync[B * H:]
    launched_programs["fwd"] = P
    titans_memory_fwd_split_kernel[grid](*args, **options)
    return args[5]  # o
