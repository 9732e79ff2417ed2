"""The Titans backbone: config, memory layer, blocks (MAC/MAG/MAL/LMM), model, heads."""

from titans_dna.model.blocks import BlockState
from titans_dna.model.config import TitansConfig
from titans_dna.model.heads import SequenceClassifier, pool
from titans_dna.model.titans_dna import ModelState, TitansDNA, TitansOutput
from titans_dna.model.titans_memory import TitansMemory

__all__ = [
    "BlockState",
    "ModelState",
    "SequenceClassifier",
    "TitansConfig",
    "TitansDNA",
    "TitansMemory",
    "TitansOutput",
    "pool",
]
