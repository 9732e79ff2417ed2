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
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from memory_check import (  # noqa: E402 - the bench folder is the script's own
    CHECKS,
    CHUNK,
    DEVICE,
    DH,
    HEADS,
    GiB,
    check_inputs_for,
    checks_named,
    finite,
    grads_of,
    memory_inputs,
    peak_gib,
    reset_peak,
    run_check,
    run_compile,
    run_stability,
    sync,
)

DMODEL = 512
TOKENS = 131072
LENGTHS = [2048, 8192, 32768, 131072]
LONG = [262144, 1048576, 4194304]
CAPS = {"ours": 240, "naive": 150, "titans_pytorch": 120, "titans_pytorch_b64": 60, "fla_gdn": 150,
        "sdpa": 60}
if DEVICE == "cpu":
    TOKENS, LENGTHS, LONG = 64, [32, 64], [128]


def timed(fn, pre=None, target_s=0.4, lo=3, hi=30) -> dict:
    """Median of CUDA-event times per call after one probe (the caller's first call is the warm-up)."""
    import torch

    def once():
        if pre is not None:
            pre()
        if DEVICE != "cuda":
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
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
    x = torch.randn(B, T, DMODEL, device=DEVICE, requires_grad=mode == "fwdbwd")
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
    import fla.ops.common.chunk_o as chunk_o
    import torch
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


def run_peer(peer: str, lengths: list[int], long: list[int], path: Path) -> None:
    """Time one peer over the 128k-token shapes, then batch-1 forwards; results to `path` as it goes."""
    import torch
    res = dict(peer=peer, cases=[], long=[])
    if peer == "titans_pytorch_b64":  # it runs out of memory beyond 8k x 16 (ANCHORS_GPU.md)
        lengths, long = [t for t in lengths if t <= 8192], []
    if peer == "ours":
        long = long or []

    def dump():
        path.write_text(json.dumps(res, indent=1))

    def measure(B, T, mode, reps=True):
        reset_peak()
        rec = dict(B=B, T=T, mode=mode)
        try:
            fn, pre, check = make_case(peer, B, T, mode)
            t0 = time.time()
            rec["finite"] = check()  # first call: compile/autotune + NaN check
            sync()
            rec["first_call_s"] = time.time() - t0
            if reps:
                rec.update(timed(fn, pre))
            else:  # long lengths: the faster of two more calls
                rec.update(timed(fn, pre, target_s=0, lo=2, hi=2))
            rec["tok_per_s"] = B * T / (rec["median_ms"] * 1e-3)
            rec["status"] = "ok" if rec["finite"] else "NaN/Inf"
        except Exception as e:  # noqa: BLE001 - a peer's failure is a result, not a crash
            oom = isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e)
            rec["status"] = "OOM" if oom else "error"
            rec["error"] = f"{type(e).__name__}: {e}"[:800]
        rec["peak_GiB"] = peak_gib()
        print(f"[{peer}] B={B} T={T} {mode}: {rec['status']} {rec.get('median_ms', float('nan')):.3f} ms "
              f"{rec.get('tok_per_s', 0) / 1e6:.3f} Mtok/s peak {rec['peak_GiB']:.2f} GiB "
              f"{rec.get('error', '')[:300]}", flush=True)
        return rec

    for T in lengths:
        for mode in ("fwdbwd", "fwd"):
            res["cases"].append(measure(max(1, TOKENS // T), T, mode))
            dump()
    last = next((c for c in reversed(res["cases"]) if c["mode"] == "fwd" and c["status"] == "ok"), None)
    for T in long:
        quadratic = peer == "sdpa"
        if last is not None:
            pred = last["median_ms"] * 1e-3 * (T / last["T"]) ** (2 if quadratic else 1) / last["B"]
            if pred > 24:
                res["long"].append(dict(B=1, T=T, mode="fwd", status=f"skipped: predicted {pred:.0f} s"))
                dump()
                break
        rec = measure(1, T, "fwd", reps=False)
        res["long"].append(rec)
        dump()
        if rec["status"] != "ok":
            break
        last = rec


def run_sweep(variant: dict, lengths: list[int], path: Path) -> None:
    """One kernel_config variant (chunk_fwd.TUNING): bf16 error on the bench shape, then ours' timings."""
    import torch

    from titans_dna.kernels.titans_memory import chunk_fwd
    from titans_dna.kernels.titans_memory.chunk import chunk_titans_memory
    from titans_dna.kernels.titans_memory.naive import naive_chunk_titans_memory
    rec = dict(variant=dict(variant), cases=[])
    os.environ.update(variant.pop("env", {}))
    chunk_fwd.TUNING.update(variant)
    xs, ws, state = check_inputs_for(CHECKS[0], seed=5)
    rounded = [x.to(torch.bfloat16).double() for x in xs]
    ws = [w.to(torch.bfloat16).double() for w in ws]
    do = torch.randn_like(xs[0])
    dstate = [torch.zeros(CHECKS[0][1], *w.shape, device=DEVICE, dtype=torch.float64) for w in ws] * 2
    kw = dict(chunk_size=CHECKS[0][7], activation=CHECKS[0][8])
    ref = grads_of(naive_chunk_titans_memory, rounded, ws, state, torch.float64, do, dstate, **kw)
    got = grads_of(chunk_titans_memory, rounded, ws, state, torch.bfloat16, do, dstate, **kw)
    rec["bf16_errors"] = {n: ((got[n].double() - r).norm() / r.norm().clamp_min(1e-30)).item()
                          for n, r in ref.items()}
    worst = max(rec["bf16_errors"].values())
    print(f"[sweep {rec['variant']}] bf16 worst error {worst:.2e}", flush=True)
    path.write_text(json.dumps(rec, indent=1))
    if not worst < 0.1:  # a wrong kernel's time means nothing
        return
    for T in lengths:
        for mode in ("fwdbwd", "fwd"):
            B = max(1, TOKENS // T)
            reset_peak()
            fn, pre, check = make_case("ours", B, T, mode)
            ok = check()
            sync()
            tm = timed(fn, pre, target_s=0.3)
            rec["cases"].append(dict(B=B, T=T, mode=mode, finite=ok, peak_GiB=peak_gib(), **tm))
            print(f"[sweep {rec['variant']}] B={B} T={T} {mode}: {tm['median_ms']:.2f} ms "
                  f"{B * T / tm['median_ms'] / 1e3:.3f} Mtok/s finite={ok}", flush=True)
            path.write_text(json.dumps(rec, indent=1))


def run_peak(path: Path) -> None:
    """Measured bf16 matmul rate (8192^3, random data) and device-to-device copy bandwidth."""
    import torch
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    a @ b
    mm = timed(lambda: a @ b, target_s=1.0, lo=20, hi=50)
    x = torch.empty(GiB // 2, device="cuda", dtype=torch.float32)
    y = torch.empty_like(x)
    cp = timed(lambda: y.copy_(x), lo=10, hi=20)
    rec = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
               triton=__import__("triton").__version__,
               bf16_tflops=2 * 8192 ** 3 / (mm["median_ms"] * 1e-3) / 1e12,
               copy_GBps=2 * x.numel() * 4 / (cp["median_ms"] * 1e-3) / 1e9)
    print(f"[peak] {rec}", flush=True)
    path.write_text(json.dumps(rec, indent=1))


LOG_LOCK = threading.Lock()  # peers on several GPUs finish in any order


def child(args: list[str], cap: float, log, gpu: str | None = None) -> int:
    """Run this script as a subprocess task under a wall-clock cap (on one GPU of the host when `gpu` is
    given), its output teed to the log."""
    cmd = [sys.executable, "-u", os.path.abspath(__file__), *args]
    cmd += ["--allow-gdn-bwd"] if "--allow-gdn-bwd" in sys.argv else []
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    t0 = time.time()
    try:
        out, _ = proc.communicate(timeout=cap)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        out += f"\n[bench] {' '.join(args)}: killed at the {cap:.0f} s cap\n"
    with LOG_LOCK:
        print(out, end="", flush=True)
        log.write(out)
        log.flush()
        where = f" on GPU {gpu}" if gpu is not None else ""
        print(f"[bench] {' '.join(args)}: rc {proc.returncode} in {time.time() - t0:.0f} s{where}",
              flush=True)
    return proc.returncode


def run_peers(specs: list[str], a: argparse.Namespace, out: Path, log) -> dict:
    """Time each peer in its own subprocess; with several --gpus, peers run side by side, one per GPU of
    the host (same card model: the timings stay comparable, and the run takes a fraction of the time)."""
    gpus: queue.Queue = queue.Queue()
    for gpu in a.gpus.split(",") if a.gpus else [None]:
        gpus.put(gpu)

    def one(spec: str) -> tuple[str, dict]:
        peer, _, own = spec.partition(":")  # "naive:32768/131072" times those lengths only
        path = out / f"peer_{peer}.json"
        gpu = gpus.get()
        try:
            args = ["--task", "peer", "--peer", peer, "--json", str(path), "--lengths",
                    own.replace("/", ",") if own else a.lengths,
                    "--long", a.long if peer in a.long_peers.split(",") else ""]
            child(args, CAPS.get(peer, 120), log, gpu)
        finally:
            gpus.put(gpu)
        return peer, load(path)

    with ThreadPoolExecutor(max_workers=gpus.qsize()) as pool:
        return dict(pool.map(one, specs))


def precompile(jobs: list[tuple[int, str, str]], cap: float) -> float:
    """Compile (CHECKS index, dtype, variant JSON) jobs in parallel processes: Triton compiles one kernel
    at a time, and these kernels take tens of seconds each."""
    t0 = time.time()
    me = os.path.abspath(__file__)
    procs = [subprocess.Popen([sys.executable, me, "--task", "compile", "--cfg", str(i), "--dtype", d,
                               "--variant", v]) for i, d, v in jobs]
    for p in procs:
        try:
            p.wait(timeout=max(1.0, cap - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
    return time.time() - t0


def load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _shape(T: int) -> str:
    return f"{max(1, TOKENS // T)}x{T // 1024}k"


def _peer_rows(peers: dict) -> list[str]:
    """M tokens/s as fwd+bwd / fwd per shape, then peak GiB fwd+bwd / fwd per shape."""
    rows = ["| peer | " + " | ".join(map(_shape, LENGTHS)) + " | peak GiB fwd+bwd / fwd |",
            "|---" * (len(LENGTHS) + 2) + "|"]
    for peer, r in peers.items():
        cells, peaks = [], []
        for T in LENGTHS:
            got = {c["mode"]: c for c in (r or {}).get("cases", []) if c["T"] == T}
            rate = [f"{got[m]['tok_per_s'] / 1e6:.3g}" if got.get(m, {}).get("status") == "ok"
                    else got.get(m, {}).get("status", "-") for m in ("fwdbwd", "fwd")]
            cells.append(" / ".join(rate) if got else "-")
            if got:
                peaks.append(" / ".join(f"{got[m]['peak_GiB']:.1f}" if m in got else "-"
                                        for m in ("fwdbwd", "fwd")))
        rows.append(f"| {peer} | " + " | ".join(cells) + f" | {', '.join(peaks) or 'no result'} |")
    return rows


def _long_rows(peers: dict) -> list[str]:
    rows = ["| peer | " + " | ".join(f"{t // 1024}k" for t in LONG) + " |", "|---" * (len(LONG) + 1) + "|"]
    for peer, r in peers.items():
        got = {c["T"]: c for c in (r or {}).get("long", [])}
        if got:
            rows.append(f"| {peer} | " + " | ".join(
                "-" if t not in got else got[t]["status"] if got[t].get("status") != "ok"
                else f"{got[t]['median_ms'] / 1e3:.3g} s ({got[t]['peak_GiB']:.1f})" for t in LONG) + " |")
    return rows


def _check_rows(check: list[dict]) -> list[str]:
    rows = ["| case | dtype | worst | error | tol | pass |", "|---|---|---|---|---|---|"]
    for c in check:
        if "error" in c:
            rows.append(f"| {c['name']} | {c['dtype']} | {c['error'][:80]} | - | - | NO |")
        else:
            rows.append(f"| {c['name']} | {c['dtype']} | {c['worst']} | {c['errors'][c['worst']]:.2e} | "
                        f"{c['tol']:.0e} | {'yes' if c['passed'] else 'NO'} |")
    return rows


def _sweep_rows(sweep: list[dict]) -> list[str]:
    lengths = sorted({c["T"] for r in sweep for c in r["cases"]})
    rows = ["| variant | bf16 worst error | " + " | ".join(map(_shape, lengths)) + " |",
            "|---|---|" + "---|" * len(lengths)]
    for r in sweep:
        by = {(c["T"], c["mode"]): c["median_ms"] for c in r["cases"]}
        cells = [f"{by.get((t, 'fwdbwd'), float('nan')):.2f} / {by.get((t, 'fwd'), float('nan')):.2f}"
                 for t in lengths]
        rows.append(f"| {json.dumps(r['variant'])} | {max(r['bf16_errors'].values()):.2e} | "
                    + " | ".join(cells) + " |")
    return rows


def markdown(res: dict) -> str:
    """The result tables of one run."""
    lines = []
    peak = res.get("peak") or {}
    if peak:
        lines += [f"Device: {peak['device']}, torch {peak['torch']}, Triton {peak['triton']}; bf16 matmul "
                  f"{peak['bf16_tflops']:.0f} TFLOP/s, copy {peak['copy_GBps']:.0f} GB/s.", ""]
    lines += ["M tokens/s, fwd+bwd / fwd", ""] + _peer_rows(res.get("peers", {}))
    lines += ["", "Batch-1 forward: seconds per call (peak GiB)", ""] + _long_rows(res.get("peers", {}))
    if res.get("check"):
        lines += ["", "Correctness vs the float64 reference (worst relative error over the output, the final "
                  "state and every gradient)", ""] + _check_rows(res["check"])
    sweep = [r for r in res.get("sweep", []) if r and r.get("cases")]
    if sweep:
        lines += ["", "Kernel-config sweep (ours, bf16): ms per call, fwd+bwd / fwd", ""] + _sweep_rows(sweep)
    if res.get("stability"):
        s = res["stability"]
        lines += ["", f"Stability: {s['T']} tokens at batch 1 in {s['pieces']} calls; finite with the "
                  f"default gates: {s['finite']}", ""]
        for regime in ("default", "active"):
            for dtype in ("torch.bfloat16", "torch.float32"):
                r = s[regime][dtype]
                trace = ", ".join(f"{w:.3g}" for w in r["max_abs_W_per_piece"])
                lines.append(f"- {regime} gates, {dtype}: finite={r['finite']}, max|W| per call {trace}")
        for name, probe in s["active_probe"].items():
            lines.append(f"- active gates, chunk by chunk, {name}: first chunk with max|W| >= 10 "
                         f"{probe['first_chunk_over_10']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out"),
                   help="folder for results (default $OUT)")
    p.add_argument("--peers", default="ours,naive,titans_pytorch,titans_pytorch_b64,fla_gdn,sdpa",
                   help="comma list of peers to time")
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)),
                   help="sequence lengths (128k tokens each)")
    p.add_argument("--long", default=",".join(map(str, LONG)), help="batch-1 forward lengths ('' for none)")
    p.add_argument("--long-peers", default="ours,naive,fla_gdn,sdpa", help="peers that run the long lengths")
    p.add_argument("--check", action="store_true", help="correctness vs the float64 reference first")
    p.add_argument("--check-cases", default="", help="check case names, separated by ';' (default: all)")
    p.add_argument("--stability", action="store_true", help="1M-token stability run")
    p.add_argument("--sweep", default="", help="JSON list of kernel_config overrides to time (ours, bf16)")
    p.add_argument("--sweep-lengths", default="32768,131072", help="lengths for --sweep")
    p.add_argument("--gpus", default="", help="GPU indices to spread the peers over, e.g. 0,1,2 (default: "
                   "one after another on the visible device)")
    p.add_argument("--allow-gdn-bwd", action="store_true", help="lift fla's Hopper guard (timing only)")
    p.add_argument("--task", help=argparse.SUPPRESS)
    p.add_argument("--peer", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    p.add_argument("--cfg", type=int, help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="{}", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    ints = [int(x) for x in a.lengths.split(",") if x]
    long = [int(x) for x in a.long.split(",") if x]
    if a.task:
        task = {"peer": lambda: run_peer(a.peer, ints, long, Path(a.json)),
                "check": lambda: run_check(Path(a.json), a.check_cases),
                "stability": lambda: run_stability(Path(a.json)),
                "peak": lambda: run_peak(Path(a.json)),
                "compile": lambda: run_compile(a.cfg, a.dtype, json.loads(a.variant)),
                "sweep": lambda: run_sweep(json.loads(a.variant), ints, Path(a.json))}
        task[a.task]()
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = dict(date=time.strftime("%Y-%m-%d %H:%M:%S"), argv=sys.argv[1:], peers={})
    with open(out / "bench.log", "a") as log:
        child(["--task", "peak", "--json", str(out / "peak.json")], 120, log)
        res["peak"] = load(out / "peak.json")
        variants = json.loads(a.sweep) if a.sweep else []
        jobs = [(i, d, "{}") for i in checks_named(a.check_cases) for d in CHECKS[i][10]] if a.check else []
        jobs += [(0, "bfloat16", json.dumps(v)) for v in variants]
        if "ours" in a.peers and not a.check:
            jobs.append((0, "bfloat16", "{}"))
        if jobs:
            res["precompile_s"] = precompile(jobs, 240)
            print(f"[bench] precompiled {len(jobs)} configurations in {res['precompile_s']:.0f} s",
                  flush=True)
        if a.check:
            child(["--task", "check", "--json", str(out / "check.json"), "--check-cases", a.check_cases], 240,
                  log)
            res["check"] = load(out / "check.json")
        for i, v in enumerate(variants):
            path = out / f"sweep_{i}.json"
            child(["--task", "sweep", "--variant", json.dumps(v), "--json", str(path), "--lengths",
                   a.sweep_lengths], 150, log)
            res.setdefault("sweep", []).append(load(path))
        if a.stability:
            child(["--task", "stability", "--json", str(out / "stability.json")], 120, log)
            res["stability"] = load(out / "stability.json")
        res["peers"] = run_peers([spec for spec in a.peers.split(",") if spec], a, out, log)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    (out / "results.md").write_text(markdown(res))
    print(markdown(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
