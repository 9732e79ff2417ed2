"""The ``titans-dna`` command: typed calls into the library, one subcommand per job.

Each subcommand is a pair ``_add_<name>(subparsers)`` / ``_run_<name>(args) -> int``; the run function turns
the parsed arguments into plain library calls and never passes the namespace inward.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from titans_dna import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="titans-dna",
        description="DNA sequence models on a Titans backbone: inspect FASTA, pretrain, fine-tune, embed, "
        "score.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"titans-dna {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except (FileNotFoundError, ValueError) as err:
        # User-facing errors (bad input files, bad options) get one clear line, not a traceback.
        print(f"titans-dna {args.command}: error: {err}", file=sys.stderr)
        return 2


def _add_model_info(subparsers) -> None:
    p = subparsers.add_parser(
        "model-info", help="parameter counts of a model preset or checkpoint, per component",
        description="Build a preset (on the meta device: no memory used), or load a checkpoint, and print "
        "its parameters per component. With --retention, also how long the checkpoint's memory keeps a "
        "write: the forgetting gate's half-life in tokens per layer and head, measured on real sequence.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--preset", choices=("tiny", "small", "base"), default="tiny", help="model size preset")
    p.add_argument("--block", choices=("mac", "mag", "mal", "lmm"), default="mac", help="Titans block")
    p.add_argument("--checkpoint", default=None,
                   help="a saved model (folder or shipped name) instead of a preset")
    p.add_argument("--retention", metavar="FASTA", default=None,
                   help="with --checkpoint: measure the memory's half-life on the first record of FASTA")
    p.add_argument("--retention-bases", type=int, default=8192, help="bases of that record to read")
    p.add_argument("--device", default="cpu", help="device for --retention")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=_run_model_info)


def _run_model_info(args: argparse.Namespace) -> int:
    import json

    import torch

    from titans_dna.model import TitansConfig, TitansDNA

    if args.retention and not args.checkpoint:
        raise ValueError("--retention measures a trained memory: give --checkpoint too")
    if args.checkpoint:
        from titans_dna.train.inference import load_backbone

        model, name = load_backbone(args.checkpoint, _device(args.device)), args.checkpoint
    else:
        with torch.device("meta"):
            model = TitansDNA(TitansConfig.preset(args.preset, block=args.block))
        name = args.preset
    config = model.config
    counts, total = model.parameter_counts(), model.num_parameters()
    half_life = _memory_half_life(model, args.retention, args.retention_bases) if args.retention else None
    if args.json:
        print(json.dumps({"model": name, "block": config.block, "config": config.to_dict(),
                          "parameters": counts, "total": total, "half_life": half_life}, indent=2))
        return 0
    print(f"{name} / {config.block}: d_model {config.d_model}, {config.n_layers} layers, "
          f"{config.n_heads} heads x {config.head_dim}, memory depth {config.memory_depth} "
          f"(x{config.memory_expansion}), chunk {config.chunk_size}, segment {config.segment_len}")
    for component, n in counts.items():
        print(f"  {component:<12}{n:>14,}")
    print(f"  {'total':<12}{total:>14,}")
    if half_life is not None:
        print(f"memory half-life in tokens (forgetting gate, {args.retention}), one value per head:")
        for i, heads in enumerate(half_life):
            print(f"  layer {i}: " + ", ".join(f"{h:,.0f}" for h in heads))
    return 0


def _memory_half_life(model, fasta: str, bases: int) -> list[list[float]]:
    """Half-life per layer and head of the model's memory over the first `bases` of FASTA's first record."""
    import torch

    from titans_dna.data.genome import Genome
    from titans_dna.model.retention import forgetting_rates, half_lives

    genome = Genome(fasta)
    chrom, length = next(iter(genome.records.items()))
    ids, _ = genome.fetch_ids(chrom, 0, min(bases, length))
    tokens = torch.from_numpy(ids).to(model.device, torch.long)[None]
    return half_lives(forgetting_rates(model, tokens)).tolist()


def _add_info(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="records of FASTA/GenBank/EMBL files: length, GC %%, N %%, soft-masked %%",
        description="One row per record (length, GC %% of unambiguous bases, N %% (N and IUPAC codes), "
        "soft-masked %% = lowercase) and totals. Reads plain, gzip and BGZF files, or '-' for stdin.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="sequence files, or - for stdin")
    p.add_argument("--format", choices=("fasta", "genbank", "embl"), default=None,
                   help="input format (default: from the extension, then the first line)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (shown only on a terminal)")
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    import json

    from titans_dna.data.fasta import iter_records, source_name
    from titans_dna.data.stats import format_table, record_stats, total_stats

    rows = []
    for file in args.files:
        name = source_name(file)
        for record, seq in iter_records(file, args.format, progress=not args.no_progress):
            rows.append((name, record_stats(record, seq, name)))
    total = total_stats(r for _, r in rows)
    if args.json:
        records = [{"file": file, **r.as_dict()} for file, r in rows]
        print(json.dumps({"records": records, "total": total.as_dict()}, indent=2))
    else:
        print(format_table(rows, total))
    return 0


def _add_preprocess(subparsers) -> None:
    p = subparsers.add_parser(
        "preprocess", help="tokenise a genome into an HDF5 window store (.h5) or a flat token store (.npy)",
        description="With --out x.h5: windows of --window tokens (tiles every --stride, or --num-windows "
        "random ones), optionally from BED intervals of some splits, N-filtered, written atomically. "
        "With --out x.npy: every record's tokens back to back in a memory-mappable array (+ x.json), "
        "the fastest source of random pretraining windows.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("fasta", nargs="+", metavar="FASTA", help="FASTA files (plain, gzip or BGZF)")
    p.add_argument("--out", required=True, help="output path: .h5 (windows) or .npy (flat token store)")
    p.add_argument("--window", type=int, default=None, help="window length in tokens (required for .h5)")
    p.add_argument("--bed", default=None, help="BED file of intervals to take windows from")
    p.add_argument("--split", nargs="+", default=None, help="keep BED intervals with these split labels")
    p.add_argument("--split-column", type=int, default=4, help="1-based BED column holding the split label")
    p.add_argument("--drop-missing", action="store_true",
                   help="skip BED intervals on contigs the FASTA lacks (default: refuse)")
    p.add_argument("--max-n", type=float, default=0.1, help="drop windows with a larger fraction of N")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--stride", type=int, default=None, help="tile step (default: the window length)")
    group.add_argument("--num-windows", type=int, default=None, help="sample this many random windows")
    p.add_argument("--short", choices=("skip", "pad"), default="skip",
                   help="regions shorter than the window: skip them (counted) or pad with [PAD]")
    p.add_argument("--seed", type=int, default=0, help="seed for --num-windows sampling")
    p.add_argument("--exclude-overlaps", nargs="+", default=None, metavar="TABLE",
                   help="labelled tables (csv/tsv/parquet/FASTA) whose sequences are kept out of a .npy "
                   "store: genome bases sharing an exact 32-mer with them (either strand) are stored as N")
    p.set_defaults(run=_run_preprocess)


def _run_preprocess(args: argparse.Namespace) -> int:
    from pathlib import Path

    from titans_dna.data.store import preprocess
    from titans_dna.data.tables import read_labelled
    from titans_dna.data.token_store import build_token_store

    if Path(args.out).suffix == ".npy":
        exclude = [seq for table in args.exclude_overlaps or [] for seq in read_labelled(table)[0]]
        store = build_token_store(args.fasta, args.out, exclude_sequences=exclude or None)
        print(f"{store.path}: {len(store.records)} records, {store.data.size:,} tokens "
              f"(index {store.path.with_suffix('.json')})")
        if exclude:
            report = store.meta["decontamination"]
            print(f"kept out of pretraining: {report['masked_bases']:,} bases set to N; "
                  f"{report['sequences_hit']:,} of {report['labelled_sequences']:,} labelled sequences share "
                  f"a {report['k']}-mer with the genome")
        return 0
    if args.exclude_overlaps:
        raise ValueError("--exclude-overlaps applies to a .npy token store (--out x.npy)")
    if args.window is None:
        raise ValueError("--window is required for an .h5 window store")
    summary = preprocess(
        args.fasta, args.out, args.window, bed=args.bed, split=args.split, split_column=args.split_column,
        max_n=args.max_n, stride=args.stride, num_windows=args.num_windows, seed=args.seed, short=args.short,
        drop_missing=args.drop_missing,
    )
    print(f"{summary.path}: {summary.windows:,} windows of {summary.window} tokens; "
          f"{summary.skipped_short} regions shorter than the window skipped, "
          f"{summary.dropped_n} windows over --max-n dropped")
    return 0


def _add_pretrain(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain", help="pretrain a Titans-DNA model on genomes (causal or MLM); torchrun for several GPUs",
        description="Composes configs/ with the Hydra overrides given (model=small data=human_chr20 "
        "train.objective=mlm train.max_steps=2000 run_dir=runs/x ...) and trains; the run folder gets the "
        "resolved config, metrics.csv, TensorBoard logs, loss_curves.png, train_state.pt (train.resume=true "
        "continues it exactly) and checkpoint/ (the weights). Several GPUs: torchrun --nproc_per_node=N "
        "-m titans_dna.cli pretrain ...",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides (see configs/)")
    p.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    p.set_defaults(run=_run_pretrain)


def _run_pretrain(args: argparse.Namespace) -> int:
    import os

    from omegaconf import OmegaConf

    from titans_dna.train.configs import compose_config

    cfg = compose_config(args.overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from titans_dna.train.pretrain import pretrain

    summary = pretrain(cfg)
    if os.environ.get("RANK", "0") == "0":
        print(f"{summary['steps']} steps, {summary['tokens']:,} tokens: "
              f"train loss {summary['train_loss']:.4f}, valid loss {summary['valid_loss']:.4f} "
              f"(perplexity {summary['valid_ppl']:.3f})")
        print(f"run folder: {summary['run_dir']}\nweights: {summary['checkpoint']}")
    return 0


def _add_finetune(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune", help="fine-tune a classifier on a labelled task (Titans-DNA, CNN or k-mer baselines)",
        description="Caduceus protocol: train on train, early-stop on validation (the task's dev split or a "
        "stratified 10%% of train), test once per seed with the best weights; writes metrics.json (mean and "
        "max-min spread over seeds), predictions and confusion matrices into the run folder. "
        "Hydra overrides: task=gue_tf_0 init=CHECKPOINT model=small|cnn_baseline|kmer_logreg "
        "seeds=[0,1,2] train.lr=1e-4 ...",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # argparse cannot collect positionals that an option interrupts: the options go after the overrides.
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides (see configs/)")
    p.add_argument("--max-steps", type=int, default=None, help="= train.max_steps: optimizer steps per seed")
    p.add_argument("--max-rows", type=int, default=None, help="= train.max_rows: rows per split (stratified)")
    p.add_argument("--no-progress", action="store_true", help="= train.progress=false")
    p.set_defaults(run=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    from titans_dna.train.configs import compose_config
    from titans_dna.train.finetune import finetune_from_config

    flags = {"train.max_steps": args.max_steps, "train.max_rows": args.max_rows,
             "train.progress": False if args.no_progress else None}
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides)
    cfg = compose_config(overrides, base_overrides=["train=finetune"])
    summary = finetune_from_config(cfg)
    metric = summary["metric"]
    for name, stats in summary["summary"].items():
        m = stats[metric]
        print(f"{summary['task']} {summary['model']} {name}: {metric} {m['mean']:.4f} "
              f"(spread {m['spread']:.4f} over seeds {summary['seeds']})")
    print(f"run folder: {cfg.run_dir}")
    return 0


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a fine-tuned model on a task's test set or a labelled file",
        description="Writes metrics.json (accuracy, MCC, F1, AUROC), predictions.tsv and a confusion matrix "
        "PNG. Data: a task's test split(s) (--task NAME, a file of configs/task/) or --data FILE (CSV/TSV "
        "with sequence and label columns, or FASTA with >id|label headers).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="fine-tuned model: a finetune run's seed_<n> folder")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--task", default=None, help="evaluate on this task's test split(s), e.g. gue_tf_0")
    data.add_argument("--data", default=None, help="labelled file to evaluate on")
    p.add_argument("--data-root", default=None, help="folder of the task files (default: the shared data)")
    p.add_argument("--format", choices=("csv", "tsv", "parquet", "fasta"), default=None,
                   help="format of --data (default: from the extension)")
    p.add_argument("--out", default=None, help="output folder (default: runs/evaluate-<date>-<time>)")
    p.add_argument("--rc-conjoin", choices=("auto", "yes", "no"), default="auto",
                   help="average both strands (auto: as in fine-tuning)")
    _add_runtime_args(p, batch_size=64)
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from titans_dna.train.configs import compose_config, data_path, prepare_run_dir
    from titans_dna.train.evaluate import evaluate_checkpoint
    from titans_dna.train.finetune_data import Split, load_task

    overrides = [f"{key}={value}" for key, value in
                 (("task", args.task), ("data_root", args.data_root), ("run_dir", args.out)) if value]
    cfg = compose_config(overrides, base_overrides=["train=finetune"])
    if args.data:
        from titans_dna.data.tables import read_labelled

        seqs, labels, names = read_labelled(args.data, fmt=args.format)
        tests = {"test": Split(list(seqs), labels, list(names))}
    else:
        tests = load_task(cfg.task, lambda p: data_path(cfg, p)).tests
    run_dir = prepare_run_dir(cfg, "evaluate")
    conjoin = None if args.rc_conjoin == "auto" else args.rc_conjoin == "yes"
    result = evaluate_checkpoint(args.checkpoint, tests, run_dir, args.batch_size, _device(args.device),
                                 _PRECISION[args.dtype], conjoin, not args.no_progress)
    for name, m in result["test"].items():
        print(f"{name}: n {m['n']}  accuracy {m['accuracy']:.4f}  MCC {m['mcc']:.4f}  F1 {m['f1']:.4f}  "
              f"AUROC {m['auroc']:.4f}")
    print(f"run folder: {run_dir}")
    return 0


_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _device(name: str):
    from titans_dna.train.distributed import pick_device

    return pick_device(name)


def _add_runtime_args(p: argparse.ArgumentParser, batch_size: int) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=batch_size, help="sequences per forward pass")
    p.add_argument("--dtype", choices=tuple(_PRECISION), default="float32",
                   help="compute precision (bfloat16/float16: autocast; weights stay float32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("fasta", nargs="?", default=None, metavar="FASTA",
                   help="sequence file (FASTA/GenBank/EMBL, gzip ok; - for stdin); or use --bed")
    p.add_argument("--bed", default=None, help="BED regions to take from --reference instead of a FASTA")
    p.add_argument("--reference", default=None, help="genome FASTA that the --bed regions refer to")
    p.add_argument("--format", choices=("fasta", "genbank", "embl"), default=None,
                   help="format of the sequence file (default: from the extension, then the first line)")


def _records(args: argparse.Namespace):
    from titans_dna.train.inference import read_records

    return read_records(args.fasta, args.bed, args.reference, args.format)


def _add_embed(subparsers) -> None:
    p = subparsers.add_parser(
        "embed", help="embeddings of sequences or BED regions into an HDF5 file",
        description="Pooled embeddings [n, d_model] ('embeddings'), or per-token ones ('tokens' with "
        "'offsets'), with record names (and coordinates from --bed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_input_args(p)
    p.add_argument("--checkpoint", required=True, help="pretrained model folder or shipped name")
    p.add_argument("--out", required=True, help="output .h5 file")
    p.add_argument("--pooling", choices=("mean", "max", "first", "last"), default="mean", help="pooling")
    p.add_argument("--per-token", action="store_true", help="keep every token's embedding (no pooling)")
    p.add_argument("--rc-average", action="store_true", help="average with the reverse complement embedding")
    _add_stream_args(p, stride=1000, stride_help="with --stream: width in bp of the per-window embeddings "
                     "('windows', 'window_start', 'window_end'); 0 for none")
    _add_runtime_args(p, batch_size=32)
    p.set_defaults(run=_run_embed)


def _add_stream_args(p: argparse.ArgumentParser, stride: int, stride_help: str) -> None:
    p.add_argument("--stream", action="store_true",
                   help="run each record (or --bed region) as ONE sequence, piece by piece with the model "
                   "state carried: whole chromosomes in constant memory (needs an indexed FASTA, not stdin)")
    p.add_argument("--stride", type=int, default=stride, help=stride_help)
    p.add_argument("--piece-segments", type=int, default=16, help="with --stream: model segments per forward")
    p.add_argument("--no-cuda-graph", action="store_true",
                   help="with --stream: run every piece eagerly (by default, on a GPU, full pieces replay a "
                   "CUDA graph of the forward: the same numbers without the kernel-launch overhead)")
    p.add_argument("--compile", action="store_true",
                   help="with --stream on a GPU: the graph runs the layers through torch.compile (fewer, "
                   "fused kernels: 1.7x faster on a whole genome, after ~30 s of compiling)")


def _stream_input(args: argparse.Namespace):
    from titans_dna.train.inference import load_backbone
    from titans_dna.train.streaming import open_regions

    if args.stride < 0:
        raise ValueError(f"--stride must be >= 0, got {args.stride}")
    genome, regions = open_regions(args.fasta, args.bed, args.reference)
    return load_backbone(args.checkpoint, _device(args.device)), genome, regions


def _cuda_graph(args: argparse.Namespace) -> bool | None:
    """RegionStream's cuda_graph: off with --no-cuda-graph, else its own choice."""
    return False if args.no_cuda_graph else None


def _run_embed(args: argparse.Namespace) -> int:
    from titans_dna.train.inference import embed_file, load_backbone

    if args.stream:
        from titans_dna.train.stream_writers import stream_embed_file

        if args.per_token or args.rc_average:
            raise ValueError("--stream does not combine with --per-token (use --stride 1) or --rc-average")
        model, genome, regions = _stream_input(args)
        done = stream_embed_file(model, genome, regions, args.out, args.stride or None, args.pooling,
                                 args.piece_segments, _PRECISION[args.dtype], progress=not args.no_progress,
                                 cuda_graph=_cuda_graph(args), compiled=args.compile)
        bases, seconds = sum(s.length for s in done), sum(s.seconds for s in done)
        print(f"{args.out}: {len(done)} records streamed, {bases:,} bp in {seconds:.1f} s, "
              f"d_model {model.config.d_model}")
        return 0
    model = load_backbone(args.checkpoint, _device(args.device))
    n = embed_file(model, _records(args), args.out, args.pooling, args.per_token, args.rc_average,
                   args.batch_size, _PRECISION[args.dtype], with_coords=args.bed is not None,
                   progress=not args.no_progress)
    print(f"{args.out}: {n} records, d_model {model.config.d_model}")
    return 0


def _add_predict(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="class probabilities of sequences or BED regions with a fine-tuned model",
        description="TSV: name, chrom, start, end, strand, prediction, prob_0..prob_{C-1}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_input_args(p)
    p.add_argument("--checkpoint", required=True, help="fine-tuned model: a finetune run's seed_<n> folder")
    p.add_argument("--out", default="-", help="output TSV (- for stdout)")
    p.add_argument("--rc-conjoin", choices=("auto", "yes", "no"), default="auto",
                   help="average both strands (auto: as in fine-tuning)")
    _add_runtime_args(p, batch_size=64)
    p.set_defaults(run=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from titans_dna.train.inference import predict_file

    conjoin = None if args.rc_conjoin == "auto" else args.rc_conjoin == "yes"
    n = predict_file(args.checkpoint, _records(args), args.out, args.batch_size, _device(args.device),
                     _PRECISION[args.dtype], conjoin, progress=not args.no_progress)
    if args.out != "-":
        print(f"{args.out}: {n} records")
    return 0


def _add_score(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="per-record log-likelihood under the causal model",
        description="TSV: name, chrom, start, end, strand, length, scored_bases, log_likelihood (nats), "
        "log_likelihood_per_base, perplexity. Long records stream through the model with its state "
        "carried.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_input_args(p)
    p.add_argument("--checkpoint", required=True, help="pretrained causal model folder or shipped name")
    p.add_argument("--out", default="-", help="output TSV (- for stdout); with --stream: the per-position "
                   "track, .h5/.hdf5 for HDF5, else bedGraph (- for stdout)")
    _add_stream_args(p, stride=1, stride_help="with --stream: bp per track bin, each bin holding the mean "
                     "log-likelihood of its bases (1: every base)")
    _add_runtime_args(p, batch_size=16)
    p.set_defaults(run=_run_score)


def _run_score(args: argparse.Namespace) -> int:
    from titans_dna.train.inference import load_backbone, score_file

    if args.stream:
        from titans_dna.train.stream_writers import stream_score_file

        if args.stride < 1:
            raise ValueError(f"--stride must be >= 1 for score --stream, got {args.stride}")
        model, genome, regions = _stream_input(args)
        done = stream_score_file(model, genome, regions, args.out, args.stride, args.piece_segments,
                                 _PRECISION[args.dtype], progress=not args.no_progress,
                                 cuda_graph=_cuda_graph(args), compiled=args.compile)
        report = sys.stderr if args.out == "-" else sys.stdout  # stdout may carry the bedGraph
        for s in done:
            print(f"{s.name}: {s.length:,} bp, log-likelihood {s.log_likelihood:.3f} nats over {s.scored:,} "
                  f"bases ({s.log_likelihood_per_base:.4f} per base) in {s.seconds:.1f} s", file=report)
        return 0
    model = load_backbone(args.checkpoint, _device(args.device))
    n = score_file(model, _records(args), args.out, args.batch_size, _PRECISION[args.dtype],
                   progress=not args.no_progress)
    if args.out != "-":
        print(f"{args.out}: {n} records")
    return 0


def _add_score_variants(subparsers) -> None:
    p = subparsers.add_parser(
        "score-variants", help="zero-shot variant effects: log-likelihood ratio alt vs ref (both strands)",
        description="For each ALT allele: LLR = log p(alt window) - log p(ref window) under the causal "
        "model, averaged with the same on the reverse strand. REF must match --reference (else an error "
        "names the VCF line). Output: TSV, or with --out x.vcf the input VCF with INFO/TITANS_LLR.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("vcf", metavar="VCF", help="variants (VCF, gzip ok)")
    p.add_argument("--reference", required=True, help="genome FASTA the VCF refers to")
    p.add_argument("--checkpoint", required=True, help="pretrained causal model folder or shipped name")
    p.add_argument("--out", default="-", help="output .tsv or .vcf (- for a TSV on stdout)")
    p.add_argument("--window", type=int, default=512, help="reference bases on each side of the variant")
    _add_runtime_args(p, batch_size=16)
    p.set_defaults(run=_run_score_variants)


def _run_score_variants(args: argparse.Namespace) -> int:
    from titans_dna.train.inference import load_backbone
    from titans_dna.train.variants import score_variants

    model = load_backbone(args.checkpoint, _device(args.device))
    n = score_variants(model, args.vcf, args.reference, args.out, args.window, args.batch_size,
                       _PRECISION[args.dtype], progress=not args.no_progress)
    if args.out != "-":
        print(f"{args.out}: {n} alleles scored")
    return 0


# Registrars, in the order `--help` lists them; helpers append their `_add_<name>` functions here.
_SUBCOMMANDS: list = [_add_info, _add_preprocess, _add_model_info, _add_pretrain, _add_finetune,
                     _add_evaluate, _add_embed, _add_predict, _add_score, _add_score_variants]

if __name__ == "__main__":
    sys.exit(main())
