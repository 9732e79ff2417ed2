"""titans-dna: DNA sequence models on a Titans backbone (neural long-term memory learned at test time)."""

__version__ = "0.1.0"

_MODEL_EXPORTS = ("TitansDNA", "TitansConfig", "SequenceClassifier")
__all__ = ["__version__", *_MODEL_EXPORTS]


def __getattr__(name: str):
    # lazy: `titans-dna --help` and the data commands should not pay for importing the model
    if name in _MODEL_EXPORTS:
        import titans_dna.model as model

        return getattr(model, name)
    raise AttributeError(f"module 'titans_dna' has no attribute {name!r}")
