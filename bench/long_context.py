"""Long-context pretraining throughput (issue 6): tokens/s of the `small` model (random init) at 1k, 8k, 64k,
256k and 1M tokens per sequence with the same tokens per optimizer step (1024 x 1k ... 1 x 1M by default):
forward + backward + AdamW step of the causal loss, gradient checkpointing over segments
(`TitansConfig.gradient_checkpointing`), bf16 autocast on CUDA. Lengths from --by-segment-from on train
through `titans_dna.train.segment_backprop` (the same gradients, each layer-segment's forward and backward
replayed from a CUDA graph on a GPU) in place of autograd over the whole sequence. Peak memory per length
(torch.cuda.max_memory_allocated, reset per length). Targets: 1M-token sequences train on one 80 GB card, and
tokens/s at 1M >= 0.3x tokens/s at 8k.

Batch 1 is latency-bound, so one step at batch 1 (--profile-length) runs under torch.profiler: step wall time
against the summed kernel time (how idle the GPU is), the top ops by self time, and the time inside the memory
op, the attention and the MLP (forward and checkpoint recompute; the autograd backward kernels are reported
as one remainder, since they run outside module scopes).

GPU (device tool):            python bench/long_context.py --out $OUT
CPU smoke test (tiny model):  python bench/long_context.py --quick --out /tmp/long_context
Writes long_context.json and long_context.md to --out (default $OUT, else ./bench_out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

import titans_dna.model.titans_memory as memory_layer
from titans_dna.data.atomic import atomic_write_text
from titans_dna.model import TitansConfig, TitansDNA
from titans_dna.model.attention import PersistentAttention
from titans_dna.model.layers import SwiGLU
from titans_dna.train.objectives import causal_batch, weighted_lm_loss
from titans_dna.train.segment_backprop import SegmentRunner, segment_backprop

GiB = 2**30
SCOPES = ("memory_op", "attention", "mlp")
# segment_backprop: layers on their own CUDA streams (batch 1), that through torch.compile, or one stream;
# "<mode>:K" steps each layer over K segments at once (segments_per_step)
SEGMENT_MODES = ("wavefront", "compiled", "serial")


class Trainer:
    """One model + AdamW; `step(batch, length)` is a full optimizer step on random DNA tokens."""

    def __init__(self, preset: str, device: torch.device) -> None:
        torch.manual_seed(0)
        config = TitansConfig.preset(preset, gradient_checkpointing=True)
        self.device = device
        self.model = TitansDNA(config).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95))
        self.bf16 = device.type == "cuda"
        self.runners: dict[str, SegmentRunner] = {}  # one per mode, made on first use: each keeps its graphs

    def runner(self, mode: str) -> SegmentRunner:
        """The `segment_backprop` runner of a mode, "<SEGMENT_MODES entry>[:segments per step]"."""
        if mode not in self.runners:
            kind, _, per_step = mode.partition(":")
            if kind not in SEGMENT_MODES:
                raise ValueError(f"unknown segment mode {mode!r}; expected one of {SEGMENT_MODES}[:K]")
            self.runners[mode] = SegmentRunner(
                self.model, "bf16" if self.bf16 else "fp32", cuda_graphs=self.bf16,
                wavefront=kind != "serial", compiled=kind == "compiled", segments_per_step=int(per_step or 1))
        return self.runners[mode]

    def step(self, batch: int, length: int, micro: int, by_segment: str | None = None) -> float:
        """Seconds of one step of `batch` sequences of `length` tokens, `micro` sequences per forward
        (`by_segment`, a SEGMENT_MODES entry: through `segment_backprop`, graphed layer-segments on CUDA, as
        a wavefront over streams, compiled or not, or layer after layer)."""
        ids = torch.randint(7, 11, (batch, length), device=self.device)  # A, C, G, T
        sync(self.device)
        start = time.perf_counter()
        for lo in range(0, batch, micro):
            if by_segment:
                runner = self.runner(by_segment)
                segment_backprop(self.model, causal_batch(ids[lo:lo + micro]), runner.precision,
                                 runner=runner, scale=micro / batch)
                continue
            lm = causal_batch(ids[lo:lo + micro])
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.model(lm.inputs).logits
            loss, _ = weighted_lm_loss(logits, lm)
            (loss * (lm.inputs.shape[0] / batch)).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(trainer: Trainer, length: int, tokens: int, target_s: float, max_steps: int,
            by_segment: str | None = None) -> dict:
    """A warm-up step on short sequences of the same batch (MAC runs its kernels per segment, so that compiles
    and autotunes everything this length needs, and captures the layer-segment graphs), then timed steps until
    target_s or max_steps; the micro-batch halves on OOM."""
    device, batch = trainer.device, max(1, tokens // length)
    # two full steps at least: the first (no state yet) runs eagerly, the next ones capture their graphs
    step_len = trainer.runner(by_segment).step_len if by_segment else 0
    warm_length = min(length, max(4 * trainer.model.config.segment_len, 3 * step_len))
    micro = batch
    record = {"length": length, "batch": batch, "tokens_per_step": batch * length,
              "method": f"segment_backprop ({by_segment})" if by_segment else "autograd"}
    while True:
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            trainer.step(batch, warm_length, micro, by_segment)
            times = [trainer.step(batch, length, micro, by_segment)]
            while sum(times) < target_s and len(times) < max_steps:
                times.append(trainer.step(batch, length, micro, by_segment))
            break
        except torch.cuda.OutOfMemoryError as err:
            trainer.optimizer.zero_grad(set_to_none=True)
            if micro == 1:
                return {**record, "status": "OOM", "error": str(err)[:300]}
            micro //= 2
        except RuntimeError as err:  # say a graph capture the device's torch refuses: the other lengths go on
            trainer.optimizer.zero_grad(set_to_none=True)
            return {**record, "status": f"error: {type(err).__name__}", "error": str(err)[:600]}
    seconds = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / GiB if device.type == "cuda" else None
    return {**record, "status": "ok", "micro_batch": micro, "steps": len(times), "step_s": seconds,
            "tokens_per_s": batch * length / seconds, "peak_gib": peak}


@contextlib.contextmanager
def scoped_components(model: TitansDNA):
    """Profiler scopes around the memory op (every titans_memory call of the layer), attention and MLP."""
    handles, op = [], memory_layer.titans_memory

    def scoped_op(*args, **kwargs):
        with record_function("memory_op"):
            return op(*args, **kwargs)

    def enter(name):
        def pre(module, args):
            module._bench_scope = record_function(name)
            module._bench_scope.__enter__()
        return pre

    def leave(module, args, output):
        module._bench_scope.__exit__(None, None, None)

    for module in model.modules():
        kinds = {"attention": isinstance(module, PersistentAttention), "mlp": isinstance(module, SwiGLU)}
        for name in (n for n, hit in kinds.items() if hit):
            handles += [module.register_forward_pre_hook(enter(name)), module.register_forward_hook(leave)]
    memory_layer.titans_memory = scoped_op  # the bench's own instrumentation, undone below
    try:
        yield
    finally:
        memory_layer.titans_memory = op
        for handle in handles:
            handle.remove()


def breakdown(trainer: Trainer, length: int, top: int) -> dict:
    """Profile one batch-1 step of `length` tokens: wall vs kernel time, top ops, component scopes."""
    device = trainer.device
    trainer.step(1, min(length, 4 * trainer.model.config.segment_len), 1)  # warm-up outside the profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with scoped_components(trainer.model), profile(activities=activities) as prof:
        wall = trainer.step(1, length, 1)
    events = prof.key_averages()
    on_device = device.type == "cuda"
    # CPU-side rows are ops and our scopes; device-side rows are kernels (plus mirrored scope annotations,
    # which would count the kernels twice)
    host = [e for e in events if e.device_type == DeviceType.CPU]
    kernels = [e for e in events if e.device_type != DeviceType.CPU and e.key not in SCOPES
               and not getattr(e, "is_user_annotation", False)]

    def self_time(e) -> float:
        return (e.self_device_time_total if on_device else e.self_cpu_time_total) / 1e6

    kernel_s = sum(e.self_device_time_total for e in kernels) / 1e6 if on_device else None
    ops = sorted((e for e in host if e.key not in SCOPES and not e.key.startswith("ProfilerStep")),
                 key=self_time, reverse=True)[:top]
    scopes = {e.key: {"calls": e.count, "cpu_s": e.cpu_time_total / 1e6,
                      "device_s": e.device_time_total / 1e6 if on_device else None}
              for e in host if e.key in SCOPES}
    return {"length": length, "wall_s": wall, "kernel_s": kernel_s,
            "kernel_launches": sum(e.count for e in kernels) if on_device else None,
            "gpu_busy": kernel_s / wall if on_device else None, "scopes": scopes,
            "top_ops": [{"op": e.key, "calls": e.count, "self_s": self_time(e)} for e in ops]}


def markdown(report: dict) -> str:
    env, cases = report["environment"], report["cases"]
    lines = [f"## Long-context pretraining throughput, {env.get('gpu', env['device'])}", "",
             f"`{report['config']['preset']}` preset, gradient checkpointing over segments, "
             f"{'bf16 autocast' if env['device'].startswith('cuda') else 'fp32'}, AdamW; "
             f"{report['config']['tokens']:,} tokens per step.", "",
             "| tokens/sequence | backward | batch | micro-batch | step s | tokens/s | peak GiB | status |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cases:
        peak = "-" if c.get("peak_gib") is None else f"{c['peak_gib']:.2f}"
        lines.append(f"| {c['length']:,} | {c.get('method', 'autograd')} | {c['batch']} | "
                     f"{c.get('micro_batch', '-')} | "
                     f"{c.get('step_s', float('nan')):.3f} | {c.get('tokens_per_s', float('nan')):,.0f} | "
                     f"{peak} | {c['status']} |")
    if report.get("ratio") is not None:
        lines.append(f"\ntokens/s at {report['ratio']['long']:,} vs {report['ratio']['ref']:,}: "
                     f"**{report['ratio']['value']:.3f}x** (target >= 0.3x).")
    b = report.get("breakdown")
    if b:
        busy = "." if b["kernel_s"] is None else (
            f"; kernels {b['kernel_s']:.3f} s over {b['kernel_launches']:,} launches (GPU busy "
            f"{100 * b['gpu_busy']:.0f}% of the step).")
        lines += ["", f"### Where the time goes: one step at batch 1 x {b['length']:,} tokens", "",
                  f"Step wall time {b['wall_s']:.3f} s{busy}", "",
                  "| scope (forward + recompute) | calls | CPU s | device s |", "|---|---|---|---|"]
        for name, s in b["scopes"].items():
            device_s = "-" if s["device_s"] is None else f"{s['device_s']:.3f}"
            lines.append(f"| {name} | {s['calls']:,} | {s['cpu_s']:.3f} | {device_s} |")
        lines += ["", "| top op (self time) | calls | seconds |", "|---|---|---|"]
        lines += [f"| `{o['op'][:60]}` | {o['calls']:,} | {o['self_s']:.3f} |" for o in b["top_ops"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--preset", default="small", help="model preset (random init)")
    p.add_argument("--lengths", default="1024,8192,65536,262144,1048576", help="tokens per sequence")
    p.add_argument("--tokens", type=int, default=1 << 20, help="tokens per optimizer step at every length")
    p.add_argument("--by-segment-from", type=int, default=65536,
                   help="lengths from this one on train through segment_backprop (0: none)")
    p.add_argument("--segment-modes", default="wavefront",
                   help=f"comma list of {','.join(SEGMENT_MODES)}, each optionally ':K' (segments per layer "
                        "step): how segment_backprop lengths run")
    p.add_argument("--ratio-ref", type=int, default=8192, help="the length the longest one is compared with")
    p.add_argument("--target-s", type=float, default=15.0, help="seconds of timed steps per length")
    p.add_argument("--max-steps", type=int, default=5, help="most timed steps per length")
    # 4k: a profiled 16k step did not finish within 60 s on an H200 (tens of thousands of kernel events)
    p.add_argument("--profile-length", type=int, default=4096, help="batch-1 length profiled (0: none)")
    p.add_argument("--top", type=int, default=15, help="ops listed in the breakdown")
    p.add_argument("--quick", action="store_true", help="CPU smoke test: tiny model, short sequences")
    p.add_argument("--out", default=None, help="output folder (default: $OUT, else ./bench_out)")
    args = p.parse_args(argv)
    if args.quick:
        args.preset, args.lengths, args.tokens, args.ratio_ref = "tiny", "64,256,1024", 1024, 256
        args.by_segment_from = 1024
        args.target_s, args.max_steps, args.profile_length = 0.0, 1, 128
    device = torch.device(args.device)
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    trainer = Trainer(args.preset, device)
    report = {"environment": env, "cases": [], "parameters": trainer.model.num_parameters(),
              "config": {"preset": args.preset, "tokens": args.tokens, "gradient_checkpointing": True}}
    out = Path(args.out or os.environ.get("OUT") or "bench_out")
    for length in (int(n) for n in args.lengths.split(",")):
        modes = args.segment_modes.split(",") if 0 < args.by_segment_from <= length else [None]
        for mode in modes:
            report["cases"].append(measure(trainer, length, args.tokens, args.target_s, args.max_steps, mode))
            print(json.dumps(report["cases"][-1]), flush=True)
        ok = {}  # per length, its fastest way
        for c in (c for c in report["cases"] if c["status"] == "ok"):
            if c["length"] not in ok or c["tokens_per_s"] > ok[c["length"]]["tokens_per_s"]:
                ok[c["length"]] = c
        longest = max((n for n in ok), default=None)
        if args.ratio_ref in ok and longest and longest != args.ratio_ref:
            report["ratio"] = {"long": longest, "ref": args.ratio_ref,
                               "value": ok[longest]["tokens_per_s"] / ok[args.ratio_ref]["tokens_per_s"]}
        save(report, out)  # after every length: a 1M step takes minutes, and a time cap may end the run
    if args.profile_length:
        report["breakdown"] = breakdown(trainer, args.profile_length, args.top)
        save(report, out)
    print(markdown(report))
    return 0


def save(report: dict, out: Path) -> None:
    for name, text in (("long_context.json", json.dumps(report, indent=1)),
                       ("long_context.md", markdown(report))):
        atomic_write_text(out / name, text)


if __name__ == "__main__":
    sys.exit(main())
