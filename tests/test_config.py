"""Config dataclasses from YAML and flags: unknown keys, type coercion, file errors, cross-field checks."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from latentreason.config import add_config_flags, coerce, field, from_dict, load_config, read_yaml
from latentreason.errors import ConfigError
from latentreason.train_config import SFTConfig, TrainConfig


@dataclass
class Demo:
    flag: bool = field(False, help="a switch")
    count: int = field(1, help="an int")
    rate: float = field(0.5, help="a float")
    name: str = field("x", help="a string")
    params: dict = field({}, help="a mapping")
    items: list = field([], help="a list")
    maybe: str | None = field(None, help="optional string")
    limit: int | None = field(None, help="optional int")


@dataclass
class NeedsName:
    name: str = field(help="required")


# --- unknown keys ------------------------------------------------------------------------------------


def test_unknown_key_names_field_source_and_close_match():
    with pytest.raises(ConfigError) as err:
        from_dict(Demo, {"cuont": 3}, "recipes/run.yaml")
    message = str(err.value)
    assert message.startswith("recipes/run.yaml: ")
    assert "unknown field 'cuont' for Demo" in message
    assert "did you mean 'count'?" in message


def test_unknown_key_without_close_match_has_no_hint():
    with pytest.raises(ConfigError, match="unknown field 'zzzzzz'") as err:
        from_dict(Demo, {"zzzzzz": 1})
    assert "did you mean" not in str(err.value)


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("learning_rat: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, path, {})
    assert str(path) in str(err.value)
    assert "did you mean 'learning_rate'?" in str(err.value)


# --- type coercion -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("False", False), ("1", True), ("0", False), ("yes", True), ("NO", False), (True, True)],
)
def test_bool_strings(raw, expected):
    assert from_dict(Demo, {"flag": raw}).flag is expected


@pytest.mark.parametrize("raw", ["maybe", "", 2.5])
def test_bad_bool_names_field_and_expected(raw):
    with pytest.raises(ConfigError, match=r"cfg\.yaml, field 'flag': expected true or false"):
        from_dict(Demo, {"flag": raw}, "cfg.yaml")


def test_ints_and_floats():
    config = from_dict(Demo, {"count": "42", "rate": "1e-3"})
    assert config.count == 42 and isinstance(config.count, int)
    assert config.rate == 0.001
    assert from_dict(Demo, {"count": "0x10"}).count == 16
    rate = from_dict(Demo, {"rate": 2}).rate
    assert rate == 2.0 and isinstance(rate, float)


@pytest.mark.parametrize(
    ("key", "raw", "pattern"),
    [
        ("count", "3.5", "field 'count': expected int, got '3.5'"),
        ("count", "ten", "field 'count': expected int"),
        ("count", True, "field 'count': expected a number"),
        ("rate", "fast", "field 'rate': expected float, got 'fast'"),
        ("rate", False, "field 'rate': expected a number"),
    ],
)
def test_bad_numbers_name_field_and_type(key, raw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_dict(Demo, {key: raw})


def test_dict_and_list_from_yaml_strings():
    config = from_dict(Demo, {"params": "{num_steps: 3, ops: '+-'}", "items": "[1, two]"})
    assert config.params == {"num_steps": 3, "ops": "+-"}
    assert config.items == [1, "two"]
    assert from_dict(Demo, {"params": {"a": 1}}).params == {"a": 1}
    with pytest.raises(ConfigError, match=r"field 'params': expected a dict, got \[1, 2\]"):
        from_dict(Demo, {"params": "[1, 2]"})
    with pytest.raises(ConfigError, match="field 'items': expected a list"):
        from_dict(Demo, {"items": {"a": 1}})


def test_unparseable_yaml_string_for_a_dict_is_a_config_error():
    # Was a raw yaml.ParserError (a traceback from the CLI) before the fix.
    with pytest.raises(ConfigError, match="field 'params': not valid YAML"):
        from_dict(Demo, {"params": "{num_steps: 3"})


def test_optional_fields_accept_none_and_coerce_values():
    config = from_dict(Demo, {"maybe": None, "limit": "5"})
    assert config.maybe is None and config.limit == 5
    assert from_dict(Demo, {"limit": None}).limit is None
    with pytest.raises(ConfigError, match=r"field 'count': may not be empty \(expected int\)"):
        from_dict(Demo, {"count": None})


def test_strings():
    assert from_dict(Demo, {"name": 12}).name == "12"
    # YAML reads `name: false` as a bool; a string field keeps the YAML spelling, not Python's 'False'.
    assert from_dict(Demo, {"name": False}).name == "false"
    with pytest.raises(ConfigError, match="field 'name': expected a string, got dict"):
        from_dict(Demo, {"name": {"a": 1}})


def test_coerce_directly_names_where():
    assert coerce("7", int, "flag --seed") == 7
    with pytest.raises(ConfigError, match="^flag --seed: expected int"):
        coerce("seven", int, "flag --seed")


def test_mutable_defaults_are_not_shared():
    first, second = Demo(), Demo()
    first.params["a"] = 1
    first.items.append(1)
    assert second.params == {} and second.items == []


def test_missing_required_field_is_a_config_error():
    assert from_dict(NeedsName, {"name": "n"}).name == "n"
    with pytest.raises(ConfigError, match="^needs.yaml: .*name"):
        from_dict(NeedsName, {}, "needs.yaml")


# --- read_yaml ---------------------------------------------------------------------------------------


def test_read_yaml_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="absent.yaml: config file not found"):
        read_yaml(path)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"lr: [1, 2\n", "not valid YAML"),
        (b"- 1\n- 2\n", "expected a mapping"),
        (b"just a string\n", "expected a mapping"),
        (b"name: \xff\xfe\n", "not valid YAML"),
    ],
)
def test_read_yaml_bad_content_names_the_file(tmp_path, content, pattern):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=pattern) as err:
        read_yaml(path)
    assert str(err.value).startswith(f"{path}: ")


def test_read_yaml_empty_file_is_empty_mapping(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert read_yaml(path) == {}


# --- TrainConfig cross-field checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"lr_scheduler_type": "step"}, "lr_scheduler_type"),
        ({"eval_split": "test"}, "eval_split"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"),
        ({"eval_batch_size": "0"}, "eval_batch_size"),
        ({"gradient_accumulation_steps": -1}, "gradient_accumulation_steps"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"report_to": "mlflow"}, "report_to"),
        ({"bf16": "maybe"}, "bf16"),
        ({"answer_mode": "loose"}, "answer_mode"),
    ],
)
def test_train_config_checks_name_the_field(values, name):
    with pytest.raises(ConfigError, match=f"field '{name}'"):
        from_dict(TrainConfig, values)


def test_train_config_needs_steps_or_epochs():
    with pytest.raises(ConfigError, match="max_steps > 0 or num_train_epochs > 0"):
        from_dict(TrainConfig, {"max_steps": -1, "num_train_epochs": 0})
    assert from_dict(TrainConfig, {"max_steps": 5, "num_train_epochs": 0}).max_steps == 5


def test_train_config_defaults_are_valid():
    config = TrainConfig()
    assert config.lr_scheduler_type == "cosine" and config.eval_split == "valid"


# --- load_config -------------------------------------------------------------------------------------


def test_load_config_merges_yaml_then_overrides(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "method: cot\n"  # consumed by the CLI, not an SFTConfig field
        "learning_rate: 1e-3\n"
        "seed: 3\n"
        "bf16: false\n"
        "dataset_params: {num_steps: 2}\n"
        "max_steps: 10\n"
    )
    config = load_config(SFTConfig, path, {"seed": "7", "dataset_params": "{num_steps: 4}"})
    assert config.seed == 7  # override wins
    assert config.learning_rate == 0.001  # YAML's string '1e-3' coerced to float
    assert config.max_steps == 10  # YAML value kept
    assert config.bf16 == "false"
    assert config.dataset_params == {"num_steps": 4}
    assert config.model_name_or_path == "tiny"  # untouched default


def test_load_config_without_file_uses_overrides_only():
    config = load_config(TrainConfig, None, {"seed": "5", "overwrite_output_dir": "yes"})
    assert config.seed == 5 and config.overwrite_output_dir is True
    with pytest.raises(ConfigError, match="^command line: unknown field"):
        load_config(TrainConfig, None, {"sed": "5"})


def test_load_config_blames_each_error_on_its_source(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("learning_rate: 1e-3\n")
    with pytest.raises(ConfigError, match="^command line, field 'seed': expected int"):
        load_config(TrainConfig, path, {"seed": "x"})
    path.write_text("seed: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, path, {"seed": "1"})
    assert str(err.value).startswith(f"{path}, field 'seed': expected int")


def test_config_flags_parse_only_what_was_given():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, TrainConfig)
    args = vars(parser.parse_args(["--seed", "9", "--dataset_params", "{num_steps: 2}"]))
    assert args == {"seed": "9", "dataset_params": "{num_steps: 2}"}
    config = load_config(TrainConfig, None, args)
    assert config.seed == 9 and config.dataset_params == {"num_steps": 2}
