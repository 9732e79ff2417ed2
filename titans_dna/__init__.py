"""titans-dna: DNA sequence models on a Titans backbone (neural long-term memory learned at test time)."""

__version__ = "0.1.0"
