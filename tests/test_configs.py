"""The Hydra tree in configs/: composition with overrides, presets matching the code, paths that exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra.utils import get_class, instantiate

import titans_dna
from titans_dna.model import TitansConfig
from titans_dna.train.configs import (
    CONFIGS_ENV_VAR,
    compose_config,
    config_dir,
    data_path,
    prepare_run_dir,
)

ROOT = config_dir()


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / group).glob("*.yaml"))


def test_package_configs_is_the_repository_configs_folder():
    package = Path(titans_dna.__file__).parent
    assert (package / "configs").resolve() == (package.parent / "configs").resolve() == ROOT
    groups = sorted(p.name for p in ROOT.iterdir() if p.is_dir())
    assert groups == ["data", "experiment", "model", "task", "train"]
    for path in ROOT.rglob("*.yaml"):
        text = path.read_text()
        assert "${eval" not in text and "???" not in text, path
        assert text.startswith("#"), f"{path} should open with a comment saying what it is for"


def test_defaults_and_command_line_overrides():
    cfg = compose_config()
    assert (cfg.model.block, cfg.model.d_model, cfg.train.objective) == ("mac", 128, "causal")
    assert cfg.get("task") is None and cfg.data_root is None
    cfg = compose_config(["model=small", "model.block=mal", "train.optimizer.lr=3e-4", "train.objective=mlm",
                          "data=human_chr20", "data.window_length=2048", "+train.extra=1"])
    assert (cfg.model.d_model, cfg.model.block, cfg.train.optimizer.lr) == (256, "mal", 3e-4)
    assert (cfg.train.objective, cfg.data.window_length, cfg.train.extra) == ("mlm", 2048, 1)
    # A subcommand's own defaults yield to the user's: fine-tuning composes train=finetune first.
    assert "batch_size" in compose_config(["task=gue_tf_0"], base_overrides=["train=finetune"]).train
    assert "objective" in compose_config(["train=pretrain"], base_overrides=["train=finetune"]).train


@pytest.mark.parametrize("bad", ["model=huge", "train.no_such_key=1", "model.block"])
def test_bad_overrides_are_value_errors(bad):
    with pytest.raises(ValueError, match="bad config override"):
        compose_config([bad])


def test_experiment_presets_override_groups():
    quick = compose_config(["experiment=quickstart"])
    assert (quick.model.d_model, quick.data.window_length, quick.train.max_steps) == (128, 512, 50)
    gpu = compose_config(["experiment=pretrain_small_gpu", "train.max_steps=10"])
    assert (gpu.model.d_model, gpu.data.window_length, gpu.train.max_steps) == (256, 4096, 10)
    assert gpu.train.seq_warmup.steps > 0 and gpu.train.tokens_per_batch % gpu.data.window_length == 0


@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_model_presets_match_titans_config(preset):
    built = instantiate(compose_config([f"model={preset}"]).model)
    assert isinstance(built, TitansConfig)
    assert built == TitansConfig.preset(preset)
    assert instantiate(compose_config([f"model={preset}", "model.block=lmm"]).model).block == "lmm"


def test_every_target_imports():
    for path in ROOT.rglob("*.yaml"):
        for target in _targets(yaml.safe_load(path.read_text())):
            assert get_class(target), f"{path}: _target_ {target} does not import"


def _targets(node):
    if isinstance(node, dict):
        if "_target_" in node:
            yield node["_target_"]
        for value in node.values():
            yield from _targets(value)


def test_data_and_task_files_exist(data_dir, monkeypatch):
    monkeypatch.setenv("TITANS_DNA_DATA", str(data_dir))
    for name in names("data"):
        cfg = compose_config([f"data={name}"])
        for genome in cfg.data.genomes:
            assert data_path(cfg, genome).is_file(), (name, genome)
        assert cfg.data.valid_regions, f"data={name} holds nothing out for validation"
    for name in names("task"):
        cfg = compose_config([f"task={name}"])
        task = cfg.task
        assert task.name == name and task.num_classes >= 2 and task.format in ("csv", "tsv", "fasta")
        if task.path is None:  # the custom task: the user points it at a folder
            continue
        for split, file in task.splits.items():
            if file is not None:
                assert (data_path(cfg, task.path) / file).is_file(), (name, split, file)
        if "all" in task.splits:
            assert sum(task.split_fractions) == pytest.approx(1.0)


def test_run_dir_gets_the_resolved_config(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("TITANS_DNA_DATA", str(data_dir))
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(["model.block=mag"])
    run_dir = prepare_run_dir(cfg, "pretrain")
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("pretrain-")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data_root"] == str(data_dir.resolve()) and saved["run_dir"] == str(run_dir)
    assert saved["model"]["block"] == "mag"


def test_config_dir_env_override(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text("# a user's own tree\nseed: 7\n")
    monkeypatch.setenv(CONFIGS_ENV_VAR, str(tmp_path))
    assert compose_config().seed == 7
    monkeypatch.setenv(CONFIGS_ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=CONFIGS_ENV_VAR):
        compose_config()
