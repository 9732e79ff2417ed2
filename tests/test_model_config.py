"""TitansConfig validation, presets and serialisation; `titans-dna model-info`; from_pretrained by name."""

from __future__ import annotations

import json

import pytest
import torch

from titans_dna.cli import main
from titans_dna.model import TitansConfig, TitansDNA


@pytest.mark.parametrize("fields, message", [
    (dict(d_model=100, n_heads=3, head_dim=32), "head dim must divide d_model"),
    (dict(segment_len=100, chunk_size=64), "segment_len must be a multiple of chunk_size"),
    (dict(block="transformer"), "block must be one of"),
    (dict(memory_depth=0), "memory_depth"),
    (dict(memory_depth=5), "memory_depth"),
    (dict(memory_activation="relu"), "memory_activation"),
    (dict(d_model=36, n_heads=4, head_dim=9), "head_dim must be even"),
    (dict(memory_backend="cuda"), "memory_backend"),
    (dict(chunk_size=0), "chunk_size must be a positive int"),
    (dict(theta_max=0.0), "theta_max"),
    (dict(dropout=1.0), "dropout"),
])
def test_bad_configs_raise_at_construction(fields, message):
    with pytest.raises(ValueError, match=message):
        TitansConfig(**fields)


def test_dict_round_trip_and_unknown_keys():
    config = TitansConfig.preset("tiny", block="mag", causal=False)
    assert TitansConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"unknown TitansConfig field\(s\) \['segment_length'\]"):
        TitansConfig.from_dict({**config.to_dict(), "segment_length": 128})
    with pytest.raises(ValueError, match="unknown preset"):
        TitansConfig.preset("huge")


@pytest.mark.parametrize("name, low, high",
                         [("tiny", 0.7e6, 1.3e6), ("small", 6e6, 10e6), ("base", 30e6, 50e6)])
def test_preset_sizes(name, low, high):
    with torch.device("meta"):
        model = TitansDNA(TitansConfig.preset(name))
    assert low <= model.num_parameters() <= high
    assert sum(model.parameter_counts().values()) == model.num_parameters()


def test_model_info_cli(capsys):
    assert main(["model-info", "--preset", "small", "--block", "mal", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    with torch.device("meta"):
        model = TitansDNA(TitansConfig.preset("small", block="mal"))
    assert info["total"] == model.num_parameters() == sum(info["parameters"].values())
    assert {"memory", "attention", "mlp", "embedding"} <= set(info["parameters"])
    assert main(["model-info"]) == 0
    assert "total" in capsys.readouterr().out


def test_model_info_measures_the_memory_half_life_of_a_checkpoint(data_dir, capsys):
    """`model-info --checkpoint C --retention FASTA`: half-lives per layer and head, as
    `titans_dna.model.retention` gives them on the same bases; --retention alone is refused."""
    from titans_dna.data.genome import Genome
    from titans_dna.model.retention import forgetting_rates, half_lives

    fasta = data_dir / "genomes" / "phage_lambda_NC_001416.fa"
    argv = ["model-info", "--checkpoint", "titans-dna-small", "--retention", str(fasta),
            "--retention-bases", "1024"]
    assert main([*argv, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model = TitansDNA.from_pretrained("titans-dna-small").float().eval()
    genome = Genome(fasta)
    ids = torch.from_numpy(genome.fetch_ids(next(iter(genome.records)), 0, 1024)[0]).long()[None]
    torch.testing.assert_close(torch.tensor(info["half_life"], dtype=torch.float64),
                               half_lives(forgetting_rates(model, ids)))
    assert info["total"] == model.num_parameters() and info["block"] == "mac"
    assert main(argv) == 0
    assert "layer 5:" in capsys.readouterr().out
    assert main(["model-info", "--retention", str(fasta)]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_from_pretrained_unknown_name_lists_shipped_models():
    with pytest.raises(FileNotFoundError, match="shipped models"):
        TitansDNA.from_pretrained("no-such-model")
