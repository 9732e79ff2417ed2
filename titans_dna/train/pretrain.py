"""The pretraining loop, top to bottom in one function (nanoGPT style): ``pretrain(cfg) -> dict``.

Causal next-token or MLM objective on genome windows; AdamW with warm-up + cosine; bf16 autocast on CUDA;
gradient clipping and accumulation; sequence-length warm-up; periodic validation on held-out windows;
atomic, exactly resumable checkpoints; a warm start from a checkpoint (``init``); CSV / TensorBoard / PNG
logs; DDP or FSDP under torchrun.
Run folder: ``config.yaml``, ``metrics.csv``, ``tb/``, ``loss_curves.png``, ``train_state.pt`` (resume)
and ``checkpoint/`` (the weights, ``TitansDNA.from_pretrained``-loadable).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time

import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm import tqdm

from titans_dna.model import TitansConfig, TitansDNA
from titans_dna.train.checkpoint import load_checkpoint, save_checkpoint
from titans_dna.train.configs import prepare_run_dir
from titans_dna.train.distributed import (
    ShardedSampler,
    all_reduce_sum,
    init_distributed,
    shutdown_distributed,
    wrap_model,
)
from titans_dna.train.logging_utils import RunLogger, perplexity
from titans_dna.train.objectives import make_batch, weighted_lm_loss
from titans_dna.train.pretrain_data import EpochIndexed, build_datasets
from titans_dna.train.schedule import seq_len_at, split_windows, warmup_cosine
from titans_dna.train.segment_backprop import SegmentRunner, segment_backprop


def warm_start(model: TitansDNA, init: str) -> None:
    """Copy the weights of ``init`` (a checkpoint folder or a shipped name) into ``model``, which keeps its
    own config: continued pretraining can change settings that are not weights (``alpha_max``, windows,
    checkpointing), never the shapes."""
    source = TitansDNA.from_pretrained(init)
    try:
        model.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as err:
        raise ValueError(f"init={init}: its weights do not fit this run's model config ({err})") from None


def pretrain(cfg: DictConfig) -> dict:
    """Pretrain a Titans-DNA model as ``cfg`` (the composed Hydra config of ``configs/``) says.

    Returns:
        Summary: ``run_dir``, ``steps``, ``train_loss``, ``valid_loss``, ``valid_ppl``, ``tokens``,
        ``tokens_per_s`` (last log interval), ``checkpoint`` (folder of the exported weights).
    """
    owns_group = not dist.is_initialized()
    info = init_distributed(cfg.device)
    run_dir = prepare_run_dir(cfg, "pretrain", info.rank, info.world_size)
    tc = cfg.train
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank

    # ---- data: each step reads tokens_per_batch tokens, split over ranks and accumulation micro-batches
    window = int(cfg.data.window_length)
    windows_per_step = int(tc.tokens_per_batch) // window
    per_rank = windows_per_step // info.world_size
    micro = int(tc.micro_batch_size or per_rank)
    if per_rank < 1 or windows_per_step % info.world_size or per_rank % micro:
        raise ValueError(
            f"train.tokens_per_batch={tc.tokens_per_batch} gives {windows_per_step} windows of {window} "
            f"per step, which must split evenly over {info.world_size} rank(s) and micro-batches of {micro}"
        )
    accum = per_rank // micro
    train_set, valid_set = build_datasets(cfg)
    n_valid = len(valid_set) // info.world_size * info.world_size  # equal shards: FSDP needs lockstep ranks
    if n_valid == 0:
        raise ValueError(f"{len(valid_set)} validation windows cannot be shared by {info.world_size} ranks")

    # ---- model, optimizer (decay on matrices only, as nanoGPT), schedule
    model_cfg = instantiate(
        cfg.model, causal=tc.objective == "causal", gradient_checkpointing=tc.grad_checkpointing
    )
    if not isinstance(model_cfg, TitansConfig):
        raise ValueError(
            f"pretraining needs a Titans model preset (model=tiny|small|base), got {type(model_cfg)}"
        )
    model = TitansDNA(model_cfg)
    if cfg.get("init") and not tc.resume:  # a resumed run restores its own weights below
        warm_start(model, cfg.init)
    by_segment = bool(tc.get("segment_backprop", False))
    if by_segment and info.world_size > 1:
        raise ValueError("train.segment_backprop=true trains on one process: it bypasses the DDP/FSDP "
                         "wrapper, whose gradient synchronisation would not run")
    compiled = bool(tc.get("compile", False))
    if compiled and not by_segment:
        raise ValueError("train.compile=true compiles the layer-segments of train.segment_backprop=true; "
                         "the whole-model step does not compile")
    model = wrap_model(model.to(info.device), tc.strategy, info)
    segments = (SegmentRunner(model, tc.precision, cuda_graphs=info.device.type == "cuda", compiled=compiled,
                              segments_per_step=int(tc.get("segments_per_step", 1)))
                if by_segment else None)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = instantiate(tc.optimizer, params=groups, _convert_="all")
    lr_factor = functools.partial(
        warmup_cosine,
        warmup_steps=int(tc.warmup_steps),
        total_steps=int(tc.max_steps),
        min_ratio=float(tc.min_lr_ratio),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    mask_gen = torch.Generator(info.device).manual_seed(cfg.seed * 1009 + info.rank + 1)
    use_bf16 = tc.precision == "bf16" or (tc.precision == "auto" and info.device.type == "cuda")
    autocast = functools.partial(torch.autocast, info.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    # ---- resume: weights, optimizer, schedule, RNG streams; the data position follows from the step
    state_path = run_dir / "train_state.pt"
    step, carried = 0, {"interval_loss": 0.0, "interval_steps": 0}
    if tc.resume:
        carried = load_checkpoint(
            state_path, model, optimizer, scheduler, info, generators={"mask": mask_gen}
        )
        step = carried["step"]
    logger = RunLogger(run_dir, resume_step=step if tc.resume else None) if info.is_main else None

    sampler = ShardedSampler(len(train_set), info.rank, info.world_size, seed=cfg.seed, start=step * per_rank)
    workers = int(cfg.data.num_workers)
    # Spawned, not forked, workers: a forked worker would share the parent's open FASTA handles (and
    # their file offsets) with its siblings, and interleaved BGZF reads then decompress garbage.
    loader_args = dict(
        num_workers=workers,
        pin_memory=info.device.type == "cuda",
        multiprocessing_context="spawn" if workers else None,
        persistent_workers=workers > 0,
    )
    train_batches = iter(
        DataLoader(EpochIndexed(train_set), batch_size=micro, sampler=sampler, **loader_args)
    )
    valid_loader = DataLoader(
        torch.utils.data.Subset(valid_set, range(info.rank, n_valid, info.world_size)),
        batch_size=micro,
        **loader_args,
    )

    def to_device(batch: dict, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        ids, soft, attn = (
            split_windows(batch[k], length) for k in ("input_ids", "soft_mask", "attention_mask")
        )
        attn = None if attn.all() else attn.to(info.device)  # checked on the CPU: no device sync
        return ids.to(info.device, non_blocking=True), soft.to(info.device, non_blocking=True), attn

    @torch.no_grad()
    def validate(loader: DataLoader) -> float:
        """Mean loss (nats/base, every counted base weighted 1) over the validation windows of all ranks."""
        model.eval()
        gen = torch.Generator(info.device).manual_seed(cfg.seed + 7)  # same MLM masks at every validation
        sums = torch.zeros(2, device=info.device)
        for batch in loader:
            ids, soft, attn = to_device(batch, window)
            lm = make_batch(tc.objective, ids, soft, tc.mask_prob, tc.ignore_n, 1.0, gen)
            with autocast():
                logits = model(lm.inputs, attention_mask=attn).logits
            loss, weight = weighted_lm_loss(logits, lm)
            sums += torch.stack([loss * weight, weight])
        sums = all_reduce_sum(sums, info)
        model.train()
        return (sums[0] / sums[1].clamp_min(1e-8)).item()

    def checkpoint(interval_loss: torch.Tensor, interval_steps: int) -> None:
        # The part-filled log interval travels too, so a resumed run logs the same averages.
        carry = {
            "interval_loss": all_reduce_sum(interval_loss, info).item(),
            "interval_steps": interval_steps,
        }
        state = save_checkpoint(
            state_path, model, optimizer, scheduler, step, info, generators={"mask": mask_gen}, extra=carry
        )
        if info.is_main:  # export plain weights for embed / finetune / from_pretrained
            export = TitansDNA(model_cfg)
            export.load_state_dict(state)
            export.save_pretrained(run_dir / "checkpoint")

    # ---- the loop
    model.train()
    bar = tqdm(
        total=int(tc.max_steps),
        initial=step,
        disable=not (info.is_main and tc.progress),
        unit="step",
        dynamic_ncols=True,
    )
    summary = {
        "run_dir": str(run_dir),
        "train_loss": math.nan,
        "valid_loss": math.nan,
        "tokens_per_s": math.nan,
    }
    interval_loss = torch.full((), carried["interval_loss"] / info.world_size, device=info.device)
    interval_steps, interval_start = int(carried["interval_steps"]), time.perf_counter()
    skipped_steps = nonfinite_streak = interval_skipped = 0
    while step < int(tc.max_steps):
        seq_len = seq_len_at(step, window, int(tc.seq_warmup.start_len), int(tc.seq_warmup.steps))
        lr = scheduler.get_last_lr()[0]
        step_loss = torch.zeros((), device=info.device)
        for i in range(accum):
            ids, soft, attn = to_device(next(train_batches), seq_len)
            lm = make_batch(tc.objective, ids, soft, tc.mask_prob, tc.ignore_n, tc.soft_mask_weight, mask_gen)
            # DDP all-reduces gradients on the last micro-batch only
            sync = (
                model.no_sync()
                if accum > 1 and i < accum - 1 and hasattr(model, "no_sync")
                else contextlib.nullcontext()
            )
            if segments is not None and attn is None:  # windows without padding: segment by segment
                loss = segment_backprop(model, lm, tc.precision, runner=segments, scale=1 / accum)
                step_loss += loss / accum
                continue
            with sync, autocast():
                loss, _ = weighted_lm_loss(model(lm.inputs, attention_mask=attn).logits, lm)
            (loss / accum).backward()
            step_loss += loss.detach() / accum
        # A non-finite loss on any rank skips the update everywhere (one sync per step), so one bad batch
        # cannot poison the weights; a run of them still stops the job.
        if all_reduce_sum((~torch.isfinite(step_loss)).float(), info).item() == 0:
            interval_loss += step_loss
            if tc.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc.grad_clip))
            optimizer.step()
            nonfinite_streak = 0
        else:
            skipped_steps += 1
            interval_skipped += 1
            nonfinite_streak += 1
            bar.write(f"step {step + 1}: non-finite loss, update skipped ({skipped_steps} so far)")
            if nonfinite_streak > int(tc.max_nonfinite_steps):
                bar.close()
                if logger:
                    logger.close()  # the logs up to here stay readable
                raise FloatingPointError(
                    f"training loss non-finite for {nonfinite_streak} steps in a row at step {step + 1}; "
                    "lower train.optimizer.lr"
                )
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        interval_steps += 1
        bar.update(1)

        last = step == int(tc.max_steps)
        if step % int(tc.log_every) == 0 or last:
            updates = interval_steps - interval_skipped
            train_loss = all_reduce_sum(interval_loss, info).item() / max(updates * info.world_size, 1)
            train_loss = train_loss if updates else math.nan
            elapsed = time.perf_counter() - interval_start
            tokens_per_s = interval_steps * windows_per_step * window / elapsed
            summary.update(train_loss=train_loss, tokens_per_s=tokens_per_s)
            if logger:
                logger.log(
                    step,
                    "train",
                    loss=train_loss,
                    ppl=perplexity(train_loss),
                    lr=lr,
                    seq_len=seq_len,
                    tokens=step * windows_per_step * window,
                    tokens_per_s=tokens_per_s,
                    elapsed_s=elapsed,
                )
                bar.set_postfix(
                    loss=f"{train_loss:.4f}",
                    ppl=f"{perplexity(train_loss):.3f}",
                    tok_s=f"{tokens_per_s:,.0f}",
                    seq=seq_len,
                )
            interval_loss.zero_()
            interval_steps, interval_skipped, interval_start = 0, 0, time.perf_counter()
        if step % int(tc.val_every) == 0 or last:
            valid_loss = validate(valid_loader)
            summary["valid_loss"] = valid_loss
            if logger:
                logger.log(
                    step,
                    "valid",
                    loss=valid_loss,
                    ppl=perplexity(valid_loss),
                    tokens=step * windows_per_step * window,
                )
                bar.write(
                    f"step {step}: valid loss {valid_loss:.4f}, perplexity {perplexity(valid_loss):.3f}"
                )
        if step % int(tc.checkpoint_every) == 0 or last:
            checkpoint(interval_loss, interval_steps)
    bar.close()
    # Stop the loader workers here rather than at interpreter exit, where a worker or pin-memory thread
    # torn down after the process group has been seen to hang a torchrun rank.
    del train_batches, valid_loader

    if logger:
        logger.close()
    if owns_group:
        shutdown_distributed()
    return {
        **summary,
        "steps": step,
        "skipped_steps": skipped_steps,
        "valid_ppl": perplexity(summary["valid_loss"]),
        "tokens": step * windows_per_step * window,
        "checkpoint": str(run_dir / "checkpoint"),
    }
