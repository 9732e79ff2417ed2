"""Whole-model parity and step time per memory backend on the GPU (issue 5's pretraining NaN, issue 4).

A checkpoint (or the random `small` preset) runs real genome windows under bf16 autocast through each memory
backend: the no-grad forward (validation, inference: the fused recurrent kernel) and the training forward +
backward (the chunk kernels). Per case: non-finite losses and which layer's output first went non-finite,
the loss, and the relative error of the logits against the PyTorch reference. Kernel tunings
(`chunk_fwd.TUNING` overrides) can be compared, e.g. '[{}, {"num_warps": 8, "num_stages": 1}]'.
Then the fine-tuning step time (SequenceClassifier, batch x short sequences) per backend, to see whether the
short-sequence step is bound by kernel launches.

GPU (device tool): python bench/model_parity.py --checkpoint CKPT --store genomes_all.npy --out $OUT
CPU smoke test:    TRITON_INTERPRET=1 python bench/model_parity.py --quick --out /tmp/model_parity
Writes model_parity.json to --out (default $OUT, else ./bench_out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

from titans_dna.data.token_store import TokenStore  # noqa: E402
from titans_dna.kernels.titans_memory import chunk_fwd  # noqa: E402
from titans_dna.model import TitansConfig, TitansDNA  # noqa: E402
from titans_dna.model.heads import SequenceClassifier  # noqa: E402
from titans_dna.model.titans_dna import TitansLayer  # noqa: E402


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def set_backend(model: torch.nn.Module, backend: str) -> None:
    """Point every memory layer (and the model's own config) at ``backend``."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, TitansConfig):
            config.memory_backend = backend


@contextlib.contextmanager
def tuning(overrides: dict):
    old = dict(chunk_fwd.TUNING)
    chunk_fwd.TUNING.clear()
    chunk_fwd.TUNING.update(overrides)
    try:
        yield
    finally:
        chunk_fwd.TUNING.clear()
        chunk_fwd.TUNING.update(old)


def first_nonfinite_layer(model: TitansDNA, ids: torch.Tensor, grad: bool) -> str | None:
    """Name of the first layer (block + MLP) whose output is non-finite on ``ids`` (None: all finite)."""
    found: list[str] = []
    hooks = [
        module.register_forward_hook(
            lambda mod, args, out, name=name: found.append(name)
            if not found and not torch.isfinite(out if torch.is_tensor(out) else out[0]).all()
            else None
        )
        for name, module in model.named_modules()
        if isinstance(module, TitansLayer)
    ]
    try:
        with torch.set_grad_enabled(grad), torch.autocast(DEVICE, dtype=torch.bfloat16):
            model(ids)
    finally:
        for hook in hooks:
            hook.remove()
    return found[0] if found else None


def window_loss(model: TitansDNA, ids: torch.Tensor, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-window mean next-token loss [B], logits) under bf16 autocast; backward when ``grad``."""
    with torch.set_grad_enabled(grad), torch.autocast(DEVICE, dtype=torch.bfloat16):
        logits = model(ids).logits.float()
    loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").mean(1)
    if grad:
        loss.mean().backward()
        model.zero_grad(set_to_none=True)
    return loss.detach(), logits.detach()


def parity(model: TitansDNA, batches: list[torch.Tensor], tunings: list[dict]) -> list[dict]:
    rows = []
    for grad in (False, True):
        set_backend(model, "naive")
        reference = [window_loss(model, ids, grad) for ids in batches]
        cases = [("naive", {})] + [("triton", t) for t in tunings]
        for backend, overrides in cases:
            set_backend(model, backend)
            with tuning(overrides):
                sync()
                start = time.perf_counter()
                results = [window_loss(model, ids, grad) for ids in batches]
                sync()
                seconds = time.perf_counter() - start
                losses = torch.cat([r[0] for r in results])
                bad = [i for i, ids in enumerate(batches) if not torch.isfinite(results[i][0]).all()]
                where = first_nonfinite_layer(model, batches[bad[0]], grad) if bad else None
            err = max(
                float((r[1] - ref[1]).norm() / ref[1].norm())
                for r, ref in zip(results, reference, strict=True)
            )
            row = {
                "mode": "train fwd+bwd" if grad else "no-grad fwd",
                "backend": backend,
                "tuning": overrides,
                "windows": int(losses.numel()),
                "nonfinite_windows": int((~torch.isfinite(losses)).sum()),
                "first_nonfinite_layer": where,
                "mean_loss": float(losses[torch.isfinite(losses)].mean()) if torch.isfinite(losses).any()
                else None,
                "logits_rel_err_vs_naive": err,
                "seconds": round(seconds, 3),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def finetune_step_time(model: TitansDNA, batch: int, length: int, steps: int) -> list[dict]:
    """Seconds per AdamW step of a classifier on random [batch, length] tokens, per backend."""
    classifier = SequenceClassifier(model, 2).to(DEVICE)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-4)
    ids = torch.randint(7, 11, (batch, length), device=DEVICE)
    labels = torch.randint(0, 2, (batch,), device=DEVICE)
    rows = []
    for backend in ("naive", "triton"):
        set_backend(model, backend)
        for i in range(steps + 3):
            if i == 3:
                sync()
                start = time.perf_counter()
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                loss = F.cross_entropy(classifier(ids).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync()
        row = {"backend": backend, "batch": batch, "length": length,
               "s_per_step": (time.perf_counter() - start) / steps}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="model folder or shipped name (default: random small)")
    p.add_argument("--store", default=None, help="token store (.npy) to draw windows from")
    p.add_argument("--windows", type=int, default=128, help="windows drawn")
    p.add_argument("--length", type=int, default=4096, help="window length")
    p.add_argument("--batch", type=int, default=16, help="windows per call")
    p.add_argument("--tunings", default='[{}, {"num_warps": 8, "num_stages": 1}]', help="JSON list")
    p.add_argument("--ft-batch", type=int, default=256, help="fine-tuning step: sequences per step")
    p.add_argument("--ft-length", type=int, default=100, help="fine-tuning step: sequence length")
    p.add_argument("--ft-steps", type=int, default=10, help="timed fine-tuning steps per backend")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="CPU smoke test: tiny model, a few short windows")
    p.add_argument("--out", default=os.environ.get("OUT", "bench_out"))
    args = p.parse_args(argv)
    if args.quick:  # the triton backend on CPU needs TRITON_INTERPRET=1
        args.windows, args.length, args.batch = 4, 128, 2
        args.ft_batch, args.ft_length, args.ft_steps = 4, 32, 1
    torch.manual_seed(args.seed)
    if args.checkpoint:
        model = TitansDNA.from_pretrained(args.checkpoint).float().to(DEVICE)
    else:
        model = TitansDNA(TitansConfig.preset("tiny" if args.quick else "small")).to(DEVICE)
    rng = np.random.default_rng(args.seed)
    if args.store:
        tokens = TokenStore(args.store).data
        starts = rng.integers(0, len(tokens) - args.length, args.windows)
        windows = np.stack([np.asarray(tokens[s: s + args.length]) for s in starts])
    else:
        windows = rng.integers(7, 11, (args.windows, args.length))
    ids = torch.as_tensor(windows.astype(np.int64), device=DEVICE)
    batches = list(ids.split(args.batch))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
        "checkpoint": args.checkpoint,
        "seed": args.seed,
        "parity": parity(model, batches, json.loads(args.tunings)),
        "finetune_step": finetune_step_time(model, args.ft_batch, args.ft_length, args.ft_steps),
    }
    (out / "model_parity.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
