"""Data layer: tokenizer, FASTA genomes and windows, BED splits, HDF5 token stores, GenomicBenchmarks."""

from titans_dna.data.bed import Interval, check_intervals, read_bed
from titans_dna.data.fasta import FastaFormatError, iter_records
from titans_dna.data.genome import Genome
from titans_dna.data.genomic_benchmarks import gb_registry, load_gb_coordinates, load_gb_folder
from titans_dna.data.store import H5WindowDataset, preprocess
from titans_dna.data.tables import LabelledSequences, load_table, read_labelled
from titans_dna.data.token_store import TokenStore, build_token_store
from titans_dna.data.tokenizer import (
    BASE_IDS,
    BOS_ID,
    CLS_ID,
    EMBED_ROWS,
    MASK_ID,
    N_ID,
    PAD_ID,
    SEP_ID,
    TOKENIZER_VERSION,
    UNK_ID,
    VOCAB_SIZE,
    DNATokenizer,
    InvalidSequenceError,
    decode,
    encode,
    reverse_complement,
    reverse_complement_ids,
)
from titans_dna.data.windows import GenomeCollection, WindowDataset

__all__ = [
    "FastaFormatError",
    "Genome",
    "GenomeCollection",
    "H5WindowDataset",
    "Interval",
    "LabelledSequences",
    "TokenStore",
    "WindowDataset",
    "build_token_store",
    "check_intervals",
    "gb_registry",
    "iter_records",
    "load_gb_coordinates",
    "load_gb_folder",
    "load_table",
    "preprocess",
    "read_bed",
    "read_labelled",
    "BASE_IDS",
    "BOS_ID",
    "CLS_ID",
    "EMBED_ROWS",
    "MASK_ID",
    "N_ID",
    "PAD_ID",
    "SEP_ID",
    "TOKENIZER_VERSION",
    "UNK_ID",
    "VOCAB_SIZE",
    "DNATokenizer",
    "InvalidSequenceError",
    "decode",
    "encode",
    "reverse_complement",
    "reverse_complement_ids",
]
