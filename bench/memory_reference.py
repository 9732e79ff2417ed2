"""Throughput of the plain-PyTorch titans_memory reference (naive_chunk), optionally beside titans-pytorch.

Sizes follow the Titans anchors: d_model 512 = 8 heads x 64, memory depth 2, expansion 4, chunk 64,
B x L = 128k tokens (2k x 64, 8k x 16, 32k x 4) plus one short single sequence (2k x 1).
Our numbers are for the bare op on random inputs (no projections); titans-pytorch's NeuralMemory is a
whole layer (projections, norms, gates), run under bf16 autocast as its users run it. Each peer runs
in its own subprocess, so an OOM or a crash in one cannot spoil the other.

From the repository root (or with the package installed, without PYTHONPATH):
GPU (through the device tool):  PYTHONPATH=. python bench/memory_reference.py --peers naive,titans_pytorch
CPU smoke check:                PYTHONPATH=. python bench/memory_reference.py --device cpu --quick
The JSON goes to --out, else $OUT/memory_reference.json, else ./memory_reference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import torch.nn.functional as F

from titans_dna.data.atomic import atomic_write_text
from titans_dna.kernels.titans_memory import naive_chunk_titans_memory

HEADS, HEAD_DIM, DEPTH, EXPANSION, CHUNK = 8, 64, 2, 4, 64
DEFAULT_CASES = "2048x64,8192x16,32768x4,2048x1"
QUICK_CASES = "256x2,128x1"
PEERS = ("naive", "titans_pytorch")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_call(fn, device: torch.device) -> float:
    """Seconds of one call: CUDA events on the GPU, a wall clock on the CPU."""
    if device.type != "cuda":
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def naive_case(B: int, L: int, train: bool, device: torch.device, dtype: torch.dtype):
    """(call, leaves) for the reference op at gate levels like the layer's initialisation."""
    shape, gates = (B, L, HEADS, HEAD_DIM), (B, L, HEADS)
    hidden = HEAD_DIM * EXPANSION
    leaves = {
        "q": F.normalize(torch.randn(shape, device=device), dim=-1).to(dtype),
        "k": F.normalize(torch.randn(shape, device=device), dim=-1).to(dtype),
        "v": torch.randn(shape, device=device, dtype=dtype),
        "theta": (0.02 * torch.sigmoid(torch.randn(gates, device=device))).to(dtype),  # ~0.01
        "eta": torch.sigmoid(2.2 + torch.randn(gates, device=device)).to(dtype),  # ~0.9
        "alpha": torch.sigmoid(-4.6 + torch.randn(gates, device=device)).to(dtype),  # ~0.01
        "w1": torch.randn(HEADS, hidden, HEAD_DIM, device=device) / HEAD_DIM**0.5,
        "w2": torch.randn(HEADS, HEAD_DIM, hidden, device=device) / hidden**0.5,
    }
    for t in leaves.values():
        t.requires_grad_(train)
    x = leaves

    def call():
        return naive_chunk_titans_memory(x["q"], x["k"], x["v"], x["theta"], x["eta"], x["alpha"],
                                         [x["w1"], x["w2"]], chunk_size=CHUNK, output_final_state=False)[0]
    return call, list(leaves.values())


def titans_pytorch_case(B: int, L: int, train: bool, device: torch.device, dtype: torch.dtype):
    """(call, leaves) for titans-pytorch's NeuralMemory layer at defaults plus our head layout."""
    from titans_pytorch import NeuralMemory

    layer = NeuralMemory(dim=HEADS * HEAD_DIM, chunk_size=CHUNK, heads=HEADS, dim_head=HEAD_DIM).to(device)
    x = torch.randn(B, L, HEADS * HEAD_DIM, device=device, requires_grad=train)
    autocast = device.type == "cuda" and dtype != torch.float32

    def call():
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            return layer(x)[0]
    return call, [x, *layer.parameters()]


def measure(peer: str, B: int, L: int, train: bool, device: torch.device, dtype: torch.dtype,
            target_s: float, max_reps: int) -> dict:
    """Warm-up (also the NaN check), one probe, then n timed calls filling about target_s; median."""
    make = naive_case if peer == "naive" else titans_pytorch_case
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    call, leaves = make(B, L, train, device, dtype)
    cotangent = None

    def step():
        nonlocal cotangent
        if not train:
            with torch.no_grad():
                return call()
        for t in leaves:
            t.grad = None
        out = call()
        cotangent = torch.randn_like(out) if cotangent is None else cotangent
        out.backward(cotangent)
        return out

    out = step()
    _sync(device)
    checked = [out] + ([t.grad for t in leaves if t.grad is not None] if train else [])
    finite = all(bool(torch.isfinite(t).all()) for t in checked)
    probe = _time_call(step, device)
    reps = max(3, min(max_reps, int(target_s / max(probe, 1e-6))))
    times = [_time_call(step, device) for _ in range(reps)]
    median = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"peer": peer, "B": B, "L": L, "mode": "fwd+bwd" if train else "fwd", "finite": finite,
            "median_ms": 1e3 * median, "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times),
            "reps": reps, "tokens_per_s": B * L / median, "peak_gib": peak}


def run_worker(args: argparse.Namespace) -> int:
    """Run one peer's cases in this process and write its JSON list to --result."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    results: list[dict] = []
    try:
        if args.worker == "titans_pytorch":
            import titans_pytorch  # noqa: F401  (ImportError: peer not installed, reported below)
        for case in args.cases.split(","):
            L, B = (int(n) for n in case.split("x"))
            for train in (False, True):
                try:
                    results.append(measure(args.worker, B, L, train, device, dtype, args.target_s,
                                           args.max_reps))
                except torch.cuda.OutOfMemoryError:
                    results.append({"peer": args.worker, "B": B, "L": L, "error": "OOM",
                                    "mode": "fwd+bwd" if train else "fwd"})
                print(json.dumps(results[-1]), flush=True)
    except ImportError as err:
        results.append({"peer": args.worker, "error": f"not importable: {err}"})
    atomic_write_text(args.result, json.dumps(results))
    return 0


def environment(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    try:
        info["titans_pytorch"] = version("titans-pytorch")
    except PackageNotFoundError:  # not installed: the field stays absent
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="input dtype of the op / autocast dtype of titans-pytorch (default: bfloat16)")
    p.add_argument("--peers", default="naive", help=f"comma-separated subset of {','.join(PEERS)}")
    p.add_argument("--cases", default=None, help=f"LxB list (default: {DEFAULT_CASES})")
    p.add_argument("--quick", action="store_true", help=f"tiny cases ({QUICK_CASES}), few repetitions")
    p.add_argument("--target-s", type=float, default=0.5, help="seconds of timed calls per case")
    p.add_argument("--max-reps", type=int, default=20, help="most timed calls per case")
    p.add_argument("--peer-timeout", type=float, default=400,
                   help="seconds before a peer's process is killed (default: 400)")
    p.add_argument("--out", default=None, help="output JSON path (default: $OUT/memory_reference.json)")
    p.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.cases = args.cases or (QUICK_CASES if args.quick else DEFAULT_CASES)
    if args.quick:
        args.target_s, args.max_reps = 0.05, 3
    if args.worker:
        return run_worker(args)

    out = Path(args.out or Path(os.environ.get("OUT", ".")) / "memory_reference.json")
    report = {"environment": environment(args.device), "results": [],
              "config": {"heads": HEADS, "head_dim": HEAD_DIM, "depth": DEPTH, "expansion": EXPANSION,
                         "chunk": CHUNK, "dtype": args.dtype, "cases": args.cases,
                         "timing": "warm-up + probe, then median of n calls (CUDA events on GPU)"}}
    for peer in args.peers.split(","):
        if peer not in PEERS:
            p.error(f"unknown peer {peer!r}; choose from {PEERS}")
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "result.json"
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", peer, "--result", str(result),
                   "--device", args.device, "--dtype", args.dtype, "--cases", args.cases,
                   "--target-s", str(args.target_s), "--max-reps", str(args.max_reps)]
            try:
                rc = subprocess.run(cmd, timeout=args.peer_timeout).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
            if result.exists():
                report["results"] += json.loads(result.read_text())
            else:
                report["results"].append({"peer": peer, "error": f"worker ended without results (rc={rc})"})
    atomic_write_text(out, json.dumps(report, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
