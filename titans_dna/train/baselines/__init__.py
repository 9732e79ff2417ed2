"""Baselines reported beside Titans-DNA in every fine-tuning results table."""

from titans_dna.train.baselines.cnn import GenomicBenchmarksCNN
from titans_dna.train.baselines.kmer import KmerLogReg, canonical_kmer_counts

__all__ = ["GenomicBenchmarksCNN", "KmerLogReg", "canonical_kmer_counts"]
