"""Megabase streaming (issue 6): the `small` Titans-DNA model (random init: throughput only) streamed over the
first 256 kbp, the first 1 Mbp and the whole 4.64 Mbp E. coli K-12 genome as ONE sequence each
(`titans-dna embed --stream`'s path without the file: piece by piece with the state carried, windows
every 1 kbp, bf16 autocast), with Mbp/s and peak GPU memory per case (torch.cuda.max_memory_allocated, reset
per case). --modes picks how full pieces run: eagerly ("eager"), replayed from a CUDA graph of the layers one
after another ("graph"), or from a graph of the layers as a wavefront over segments, one CUDA stream per layer
("wavefront", what `embed --stream` uses), or that wavefront with the layers through torch.compile
("compiled", `embed --stream --compile`; its warm-up includes compiling); the last two run skewed pieces (the
layers a segment apart across pieces, every wave full) unless --level. Each length runs its modes in that
order; a graphed run reports its speedup and the relative errors of its total log-likelihood and region
embedding against the eager run (bf16 tolerance 1e-2, fp32 1e-5). A graphed time includes capturing the graph.
Targets: peak at 4.64 Mbp within 1.1x of the peak at 256 kbp; the whole genome in under 10 s.

Beside it, on the same card, the longest single forward call of two peers (batch 1, no_grad, bf16), lengths
doubling from 256k until an OOM or a call over --cap-s seconds (a call predicted to pass the cap is skipped):
  sdpa            torch SDPA causal attention, 8 heads x 64, flash backend
  titans_pytorch  titans-pytorch NeuralMemory(dim=512, heads=8, dim_head=64, chunk_size=64), if importable
Every contender runs in its own subprocess under --peer-timeout, so an OOM or a hang stays contained; each
case is written out as soon as it finishes.

GPU (device tool; the data folder carried, e.g. as .devdata):
    TITANS_DNA_DATA=.devdata python bench/megabase.py --out $OUT
    TITANS_DNA_DATA=.devdata python bench/megabase.py --out $OUT --peers ""  # ours only, all four modes
CPU smoke test (tiny model, short lengths, no meaning as timings):
    python bench/megabase.py --quick --out /tmp/megabase
Writes megabase.json and megabase.md to --out (default $OUT, else ./bench_out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from titans_dna.data.atomic import atomic_write_text
from titans_dna.data.bed import Interval
from titans_dna.data.genome import Genome
from titans_dna.data.paths import shared_data_dir
from titans_dna.kernels.titans_memory import last_backend
from titans_dna.model import TitansConfig, TitansDNA
from titans_dna.train.streaming import RegionStream

ECOLI = "genomes/ecoli_K12_MG1655.fa.gz"
PEERS = ("sdpa", "titans_pytorch")
MODES = ("eager", "graph", "wavefront", "compiled")  # how ours runs full pieces, slowest first
HEADS, HEAD_DIM, DIM, CHUNK = 8, 64, 512, 64
GiB = 2**30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None


def allocated_gib(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / GiB if device.type == "cuda" else None


def emit(path: Path, record: dict) -> None:
    """Append one result as a JSON line (survives the worker being killed later) and echo it."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


# ---- ours: the streamed model ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Streamed:
    """What a finished stream leaves: total log-likelihood, scored bases and the region embedding."""

    log_likelihood: float
    scored: int
    embedding: torch.Tensor


def run_ours(args: argparse.Namespace, result: Path) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = TitansDNA(TitansConfig.preset(args.preset)).to(device).eval()
    precision = "bf16" if device.type == "cuda" else "fp32"
    genome = Genome(args.genome)
    chrom, size = max(genome.records.items(), key=lambda kv: kv[1])
    lengths = [size if n == "all" else min(int(n), size) for n in args.lengths.split(",")]
    weights_gib = allocated_gib(device)

    modes = args.modes.split(",")
    tolerance = 1e-2 if precision == "bf16" else 1e-5

    def stream(length: int, mode: str) -> tuple[float, Streamed]:
        """Seconds to stream the first `length` bp (windows every kbp, as `embed --stream`), full pieces run
        as `mode` says, and what the stream produced (the RegionStream is freed on return; the model keeps
        its captured graphs for every stream)."""
        sync(device)
        start = time.perf_counter()
        run = RegionStream(model, genome, Interval(chrom, 0, length), stride=1000,
                           piece_segments=args.piece_segments, precision=precision,
                           cuda_graph=mode != "eager", wavefront=mode in ("wavefront", "compiled"),
                           compiled=mode == "compiled", skewed=not args.level)
        for _ in run:  # each piece's outputs are on the CPU already: the file write is all that is left out
            pass
        sync(device)
        return time.perf_counter() - start, Streamed(run.log_likelihood, run.scored, run.embedding.cpu())

    warm_up = min(lengths[0], 4 * args.piece_segments * model.config.segment_len)
    for mode in modes:  # Triton compile and autotune, and the first graph capture, happen here
        warm = stream(warm_up, mode)[0]
        emit(result, {"peer": "ours", "case": "warm-up", "seconds": warm, "backend": last_backend(),
                      "mode": mode})
    rates: dict[str, float] = {}
    for length in lengths:
        eager = None  # (seconds, stream) of this length's eager run: the graphed runs' reference
        for mode in modes:
            predicted = length / rates[mode] if mode in rates else 0.0
            if predicted > args.ours_cap_s:
                emit(result, {"peer": "ours", "length": length, "mode": mode,
                              "status": f"skipped: predicted {predicted:.0f} s"})
                continue
            reset_peak(device)
            held = allocated_gib(device)  # what the process holds going in: weights and anything left over
            seconds, run = stream(length, mode)
            rates[mode] = length / seconds
            record = {"peer": "ours", "length": length, "mode": mode, "status": "ok",
                      "seconds": seconds, "mbp_per_s": rates[mode] / 1e6, "peak_gib": peak_gib(device),
                      "held_before_gib": held, "weights_gib": weights_gib,
                      "nats_per_base": -run.log_likelihood / max(run.scored, 1),
                      "whole_genome": length == size, "record": chrom, "backend": last_backend(),
                      "parameters": model.num_parameters()}
            if mode != "eager" and eager is not None:
                record.update(graph_vs_eager(eager, (seconds, run), tolerance))
                print(f"{mode} vs eager, {length:,} bp: {record['speedup']:.2f}x; relative error of the "
                      f"log-likelihood {record['loglik_rel_err']:.2e}, of the embedding "
                      f"{record['embedding_rel_err']:.2e} (tolerance {tolerance:g})", flush=True)
            elif mode == "eager":
                eager = seconds, run
            emit(result, record)


def graph_vs_eager(eager: tuple[float, Streamed], graphed: tuple[float, Streamed],
                   tolerance: float) -> dict:
    """Speedup of the graphed stream over the eager one, and the relative errors of its total
    log-likelihood and region embedding (the eager run as reference)."""
    (eager_s, ref), (graph_s, run) = eager, graphed
    loglik = abs(run.log_likelihood - ref.log_likelihood) / max(abs(ref.log_likelihood), 1e-30)
    embedding = float((run.embedding.double() - ref.embedding.double()).norm()
                      / ref.embedding.double().norm().clamp(min=1e-30))
    return {"eager_seconds": eager_s, "speedup": eager_s / graph_s, "loglik_rel_err": loglik,
            "embedding_rel_err": embedding, "tolerance": tolerance,
            "matches_eager": max(loglik, embedding) <= tolerance}


# ---- peers: one forward call per length -------------------------------------------------------------------
def peer_call(peer: str, length: int, device: torch.device):
    """A no-argument forward call of `peer` at batch 1 over `length` tokens (inputs built here)."""
    import torch.nn.functional as F

    bf16 = device.type == "cuda"
    if peer == "sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        dtype = torch.bfloat16 if bf16 else torch.float32
        q, k, v = (torch.randn(1, HEADS, length, HEAD_DIM, device=device, dtype=dtype) for _ in range(3))
        backends = [SDPBackend.FLASH_ATTENTION] if bf16 else [SDPBackend.MATH]

        def call():
            with torch.no_grad(), sdpa_kernel(backends):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return call
    from titans_pytorch import NeuralMemory

    memory = NeuralMemory(dim=DIM, chunk_size=CHUNK, heads=HEADS, dim_head=HEAD_DIM).to(device)
    x = torch.randn(1, length, DIM, device=device)

    def call():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return memory(x)[0]
    return call


def run_peer(args: argparse.Namespace, peer: str, result: Path) -> None:
    device = torch.device(args.device)
    try:
        peer_call(peer, 1024, device)()  # import, allocator and kernel warm-up
    except ImportError as err:
        emit(result, {"peer": peer, "status": f"not importable: {err}"})
        return
    length, last = args.peer_start, None
    while length <= args.peer_max:
        if last is not None:  # attention grows as length^2, the memory layer linearly
            predicted = last[1] * (length / last[0]) ** (2 if peer == "sdpa" else 1)
            if predicted > args.cap_s:
                emit(result, {"peer": peer, "length": length,
                              "status": f"skipped: predicted {predicted:.0f} s"})
                return
        reset_peak(device)
        record = {"peer": peer, "length": length}
        try:
            call = peer_call(peer, length, device)
            sync(device)
            start = time.perf_counter()
            out = call()
            sync(device)
            seconds = time.perf_counter() - start
            finite = bool(torch.isfinite(out).all())
            del out, call
            record.update(seconds=seconds, finite=finite, peak_gib=peak_gib(device),
                          status="ok" if seconds <= args.cap_s else f"over {args.cap_s:.0f} s")
        except Exception as err:  # noqa: BLE001 - an OOM or a crash of a peer is a result
            oom = isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()
            record.update(status="OOM" if oom else "error", error=f"{type(err).__name__}: {err}"[:400],
                          peak_gib=peak_gib(device))
        emit(result, record)
        if record["status"] != "ok":
            return
        last, length = (length, record["seconds"]), length * 2


# ---- the report ------------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    rows = report["results"]
    ours = [r for r in rows if r.get("peer") == "ours" and "length" in r]
    card = report["environment"].get("gpu", report["environment"]["device"])
    lines = [f"## Megabase streaming, {card}", "",
             f"Model: `{report['config']['preset']}` preset, random init, pieces of "
             f"{report['config']['piece_segments']} segments, bf16 autocast on CUDA; memory backend "
             f"{next((r.get('backend') for r in ours if r.get('backend')), 'n/a')}.", "",
             "| length (bp) | mode | seconds | Mbp/s | peak GiB | status |",
             "|---|---|---|---|---|---|"]
    for r in ours:
        label = f"{r['length']:,}" + (" (whole genome)" if r.get("whole_genome") else "")
        lines.append(f"| {label} | {r['mode']} | {_f(r.get('seconds'))} | "
                     f"{_f(r.get('mbp_per_s'), 4, 'g')} | {_f(r.get('peak_gib'), 3)} | {r['status']} |")
    checked = [r for r in ours if "speedup" in r]
    if checked:
        lines += ["", "Graphed runs against eager (same lengths; relative errors of the graphed run's total "
                  "log-likelihood and region embedding):", "",
                  "| length (bp) | mode | eager s | graphed s | speedup | log-lik rel err | "
                  "embedding rel err | "
                  "within tolerance |", "|---|---|---|---|---|---|---|---|"]
        for r in checked:
            lines.append(f"| {r['length']:,} | {r['mode']} | {_f(r['eager_seconds'])} | "
                         f"{_f(r['seconds'])} | "
                         f"{r['speedup']:.2f}x | {r['loglik_rel_err']:.2e} | {r['embedding_rel_err']:.2e} | "
                         f"{'yes' if r['matches_eager'] else 'NO'} (<= {r['tolerance']:g}) |")
    # the targets read the fastest mode that ran
    ran = {r["mode"] for r in ours if r["status"] == "ok"}
    fastest = next((mode for mode in reversed(MODES) if mode in ran), None)
    ok = {r["length"]: r for r in ours if r["status"] == "ok" and r["mode"] == fastest}
    if ok:
        first, whole = ok[min(ok)], ok[max(ok)]
        if first.get("peak_gib") and whole.get("peak_gib"):
            lines.append(f"\nPeak memory {whole['length']:,} bp / {first['length']:,} bp: "
                         f"{whole['peak_gib'] / first['peak_gib']:.3f}x (target <= 1.1x).")
        if whole.get("whole_genome"):
            lines.append(f"Whole genome ({whole['length']:,} bp): {whole['seconds']:.1f} s (target < 10 s).")
    lines += ["", f"Peers, one forward call at batch 1 (lengths doubling until OOM or over "
              f"{report['config']['cap_s']:.0f} s):", "",
              "| peer | length | seconds | peak GiB | status |", "|---|---|---|---|---|"]
    for peer in (peer for peer in PEERS if any(r.get("peer") == peer for r in rows)):
        runs = [r for r in rows if r.get("peer") == peer]
        for r in runs:
            length = f"{r['length']:,}" if "length" in r else "-"
            lines.append(f"| {peer} | {length} | {_f(r.get('seconds'))} | {_f(r.get('peak_gib'), 3)} | "
                         f"{r['status']} |")
        passed = [r["length"] for r in runs if r.get("status") == "ok"]
        longest = f"**{max(passed):,}**" if passed else "none"
        lines.append(f"| **{peer} longest** | {longest} | | | |")
    return "\n".join(lines) + "\n"


def _f(value: float | None, digits: int = 2, kind: str = "f") -> str:
    return "-" if value is None else f"{value:.{digits}{kind}}"


def environment(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--genome", default=None, help=f"FASTA to stream (default: <data root>/{ECOLI})")
    p.add_argument("--data-root", default=None,
                   help="shared data folder (default: $TITANS_DNA_DATA, else ../shared/data)")
    p.add_argument("--preset", default="small", help="model preset (random init)")
    p.add_argument("--lengths", default="262144,1048576,all",
                   help="prefix lengths in bp; 'all' = the whole (longest) record")
    p.add_argument("--piece-segments", type=int, default=16, help="segments per forward call")
    p.add_argument("--ours-cap-s", type=float, default=300, help="skip a length predicted to take longer")
    p.add_argument("--modes", default=None,
                   help=f"ours: comma list of {','.join(MODES)} (default: all on CUDA, eager on CPU)")
    p.add_argument("--level", action="store_true",
                   help="wavefront pieces start and end level (no skew: each fills and drains its waves)")
    p.add_argument("--peers", default=",".join(PEERS), help="comma list of peers ('' for none)")
    p.add_argument("--peer-start", type=int, default=262144, help="first peer length")
    p.add_argument("--peer-max", type=int, default=1 << 25, help="longest peer length tried")
    p.add_argument("--cap-s", type=float, default=20.0, help="a peer call over this many seconds fails")
    p.add_argument("--peer-timeout", type=float, default=180, help="seconds before a worker is killed")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: tiny model, short lengths")
    p.add_argument("--out", default=None, help="output folder (default: $OUT, else ./bench_out)")
    p.add_argument("--worker", choices=("ours", *PEERS), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.lengths, args.cap_s = "tiny", "1024,2048", 2.0
        args.peer_start, args.peer_max = 1024, 4096
    on_cuda = args.device.startswith("cuda")
    if args.modes is None:
        args.modes = ",".join(MODES) if on_cuda else "eager"
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        p.error(f"unknown --modes {sorted(unknown)}; choose from {MODES}")
    if args.modes != "eager" and not on_cuda:
        p.error(f"--modes {args.modes} needs a CUDA device for its graphs (got --device {args.device})")
    if args.genome is None:
        root = Path(args.data_root) if args.data_root else shared_data_dir()
        args.genome = str(root / ECOLI)
    if args.worker == "ours":
        run_ours(args, Path(args.result))
        return 0
    if args.worker:
        run_peer(args, args.worker, Path(args.result))
        return 0

    out = Path(args.out or os.environ.get("OUT") or "bench_out")
    workers = ["ours", *[peer for peer in args.peers.split(",") if peer]]
    report = {"environment": environment(args.device), "results": [],
              "config": {k: getattr(args, k) for k in ("preset", "lengths", "piece_segments", "cap_s",
                                                       "peer_start", "genome", "quick", "modes", "level")}}
    for worker in workers:
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "result.jsonl"
            result.touch()
            given = argv if argv is not None else sys.argv[1:]
            cmd = [sys.executable, os.path.abspath(__file__), *given, "--worker", worker,
                   "--result", str(result), "--genome", args.genome, "--device", args.device]
            timeout = args.peer_timeout if worker != "ours" else None
            try:
                status = subprocess.run(cmd, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                status = f"killed after {timeout:.0f} s"
            rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
            if status != 0:
                rows.append({"peer": worker, "status": f"worker ended: {status}"})
            report["results"] += rows
    atomic_write_text(out / "megabase.json", json.dumps(report, indent=1))
    table = markdown(report)
    atomic_write_text(out / "megabase.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
