"""RLConfig has no field RL would ignore: what only a supervised run reads (the model it builds, the sequences
it drops) is refused like any unknown key and is not offered as a flag."""

from __future__ import annotations

import dataclasses

import pytest

from latentreason.cli import main
from latentreason.config import load_config
from latentreason.errors import ConfigError
from latentreason.rl.config import RLConfig
from latentreason.train_config import SFTConfig, TrainConfig

SUPERVISED_ONLY = ("tiny_model", "tokenizer_vocab_size", "init_from_token", "max_seq_length")


def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_supervised_only_fields_belong_to_sft_config_alone():
    assert set(SUPERVISED_ONLY) <= field_names(SFTConfig)
    assert not set(SUPERVISED_ONLY) & (field_names(TrainConfig) | field_names(RLConfig))


@pytest.mark.parametrize("key", SUPERVISED_ONLY)
def test_rl_recipe_with_a_supervised_only_field_names_file_and_field(tmp_path, key, capsys):
    path = tmp_path / "rl.yaml"
    path.write_text(f"method: atp-rl\n{key}: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(RLConfig, path, {})
    assert str(err.value).startswith(f"{path}: unknown field '{key}' for RLConfig")
    assert main(["rl", "--config", str(path)]) == 2
    assert f"unknown field '{key}' for RLConfig" in capsys.readouterr().err


def test_rl_help_lists_rl_fields_only(capsys):
    with pytest.raises(SystemExit):
        main(["rl", "--help"])
    rl_help = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    train_help = capsys.readouterr().out
    assert "--num_generations" in rl_help and "--dataset" in rl_help
    for key in SUPERVISED_ONLY:
        assert f"--{key}" in train_help and f"--{key}" not in rl_help
