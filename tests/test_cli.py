"""The `latentreason` command line, run in-process through `cli.main` (and once as the console script).

User mistakes must end with exit status 2 and one `latentreason: error: ...` line on stderr that
names what is wrong; `--debug` re-raises instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from latentreason import cli
from latentreason.errors import UserError
from latentreason.evaluation.solvers import TextSolver
from tests.helpers import chain_problems, save_tiny_chat_model, tiny_lm

BENCHMARK_NAMES = {
    "gsm8k",
    "gsm8k-aug",
    "gsm-hard",
    "svamp",
    "multiarith",
    "prosqa",
    "prontoqa",
    "mult-4x4",
    "mult-5x5",
}
TINY_MODEL = "{hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}"


def train_argv(output_dir: Path, **overrides: str) -> list[str]:
    """`train` arguments for a run of about a second: tiny model, 2 steps, 8 held-out problems."""
    flags = {
        "tiny_model": TINY_MODEL,
        "dataset": "synthetic:chain",
        "dataset_params": "{num_steps: 2}",
        "num_train_examples": "64",
        "num_eval_examples": "8",
        "per_device_train_batch_size": "16",
        "max_steps": "2",
        "max_new_tokens": "16",
        "output_dir": str(output_dir),
    }
    flags.update(overrides)
    argv = ["train", "--method", "cot"]
    for name, value in flags.items():
        argv += [f"--{name}", value]
    return argv


def user_error(capsys, argv: list[str]) -> str:
    """Run `argv`, check it fails as a user mistake, and return its single stderr line."""
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("latentreason: error: ")
    return lines[0]


def stats_json(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert cli.main(["data", "stats", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, int, str]:
    """One tiny CoT run through the CLI, shared by the train and eval tests: (output_dir, exit code, stdout)."""
    output_dir = tmp_path_factory.mktemp("cli_train") / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli.main(train_argv(output_dir))
    return output_dir, code, stdout.getvalue()


@pytest.fixture
def chain_file(tmp_path, capsys) -> Path:
    """Six generated 2-step chain problems in Coconut JSON."""
    path = tmp_path / "chain.json"
    assert (
        cli.main(["data", "generate", "--task", "chain", "-n", "6", "--params", "{num_steps: 2}", "--out", str(path)])
        == 0
    )
    capsys.readouterr()
    return path


# --- data stats ----------------------------------------------------------------------------------


def test_stats_of_a_benchmark_split_as_json(capsys, shared_data_dir):
    stats = stats_json(capsys, ["--benchmark", "gsm8k-aug", "--data-dir", str(shared_data_dir), "--split", "valid"])
    assert stats["benchmark"] == "gsm8k-aug"
    assert stats["count"] == 500
    steps = stats["steps"]
    assert set(steps) == {"mean", "min", "max"}
    assert 0 <= steps["min"] <= steps["mean"] <= steps["max"]
    assert steps["max"] > 0


def test_stats_of_a_file(capsys, shared_file):
    path = shared_file("prosqa/prosqa_valid.json")
    stats = stats_json(capsys, ["--file", str(path)])
    assert stats["benchmark"] == "prosqa_valid"
    assert stats["count"] == len(json.loads(path.read_text()))
    assert stats["steps"]["min"] >= 1


def test_stats_human_readable_matches_json(capsys, shared_data_dir):
    source = ["--benchmark", "gsm8k-aug", "--data-dir", str(shared_data_dir), "--split", "valid"]
    expected = stats_json(capsys, source)
    assert cli.main(["data", "stats", *source]) == 0
    out = capsys.readouterr().out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)
    lines = out.splitlines()
    assert lines[0] == "problems: 500"
    steps_row = next(line.split() for line in lines if line.startswith("steps"))
    steps = expected["steps"]
    assert steps_row == ["steps", f"{steps['mean']:.1f}", str(steps["min"]), str(steps["max"])]


def test_stats_with_a_missing_data_dir_is_a_user_error(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("LATENTREASON_DATA_DIR", raising=False)
    missing = tmp_path / "no_such_data"
    line = user_error(capsys, ["data", "stats", "--benchmark", "gsm8k-aug", "--data-dir", str(missing)])
    assert str(missing) in line
    assert "no such directory" in line


def test_stats_of_an_unknown_benchmark_is_a_user_error(capsys, tmp_path):
    line = user_error(capsys, ["data", "stats", "--benchmark", "gsm8k-ag", "--data-dir", str(tmp_path)])
    assert "unknown benchmark 'gsm8k-ag'" in line
    assert "gsm8k-aug" in line  # the valid names are listed


def test_stats_of_a_split_the_benchmark_lacks_is_a_user_error(capsys, tmp_path):
    line = user_error(
        capsys, ["data", "stats", "--benchmark", "svamp", "--data-dir", str(tmp_path), "--split", "valid"]
    )
    assert "no split 'valid'" in line


# --- data list / generate ------------------------------------------------------------------------


def test_data_list_names_every_benchmark_once(capsys):
    assert cli.main(["data", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split()[0] for line in lines]
    assert sorted(names) == sorted(BENCHMARK_NAMES)
    assert all("splits:" in line for line in lines)


def test_generate_writes_coconut_records_that_stats_reads(capsys, tmp_path):
    path = tmp_path / "f.json"
    assert cli.main(["data", "generate", "--task", "chain", "-n", "5", "--out", str(path)]) == 0
    assert "wrote 5 problems" in capsys.readouterr().out
    records = json.loads(path.read_text())
    assert len(records) == 5
    for record in records:
        assert set(record) == {"question", "steps", "answer"}
        assert record["steps"] and all(isinstance(step, str) for step in record["steps"])
    stats = stats_json(capsys, ["--file", str(path)])
    assert stats["count"] == 5
    assert stats["benchmark"] == "f"


def test_generate_passes_params_and_creates_the_output_directory(capsys, tmp_path):
    path = tmp_path / "new" / "dir" / "four.json"
    argv = ["data", "generate", "--task", "chain", "-n", "3", "--params", "{num_steps: 4}", "--out", str(path)]
    assert cli.main(argv) == 0
    assert [len(r["steps"]) for r in json.loads(path.read_text())] == [4, 4, 4]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--params", "{num_steps: "], "--params: not valid YAML"),
        (["--params", "[1, 2]"], "--params: expected a mapping"),
        (["--params", "{num_step: 2}"], "unknown parameter(s) ['num_step']"),
    ],
)
def test_generate_with_bad_params_is_a_user_error(capsys, tmp_path, extra, expected):
    out = tmp_path / "g.json"
    line = user_error(capsys, ["data", "generate", "--task", "chain", "-n", "2", *extra, "--out", str(out)])
    assert expected in line
    assert not out.exists()


def test_generate_with_an_unknown_task_is_a_user_error(capsys, tmp_path):
    line = user_error(capsys, ["data", "generate", "--task", "chian", "-n", "2", "--out", str(tmp_path / "g.json")])
    assert "unknown generator 'chian'" in line


# --- train ---------------------------------------------------------------------------------------


def test_train_with_flags_writes_a_final_model(trained):
    output_dir, code, stdout = trained
    assert code == 0
    final = output_dir / "final"
    assert (final / "model.safetensors").is_file()
    assert f"final model: {final}" in stdout
    assert json.loads((final / "latentreason.json").read_text())["method"] == "cot"
    model_config = json.loads((final / "config.json").read_text())  # --tiny_model was applied
    assert (model_config["hidden_size"], model_config["num_hidden_layers"]) == (32, 2)
    assert (output_dir / "checkpoint-2").is_dir()  # --max_steps 2
    assert not (output_dir / "checkpoint-3").exists()
    assert "held-out accuracy:" in stdout and "on 8 problems" in stdout  # --num_eval_examples 8


def test_train_from_yaml_with_a_flag_override(capsys, tmp_path):
    output_dir = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "method: no-cot\n"
        "tiny_model: {hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64}\n"
        "dataset: synthetic:chain\n"
        "dataset_params: {num_steps: 2}\n"
        "num_train_examples: 32\n"
        "num_eval_examples: 0\n"
        "per_device_train_batch_size: 16\n"
        "max_steps: 3\n"
        f"output_dir: {output_dir}\n"
    )
    assert cli.main(["train", "--config", str(recipe), "--max_steps", "1"]) == 0
    out = capsys.readouterr().out
    final = output_dir / "final"
    assert (final / "model.safetensors").is_file()
    assert json.loads((final / "latentreason.json").read_text())["method"] == "no-cot"  # from the YAML
    assert (output_dir / "checkpoint-1").is_dir()  # the flag beats the YAML's max_steps: 3
    assert not (output_dir / "checkpoint-3").exists()
    assert "held-out accuracy" not in out  # the YAML's num_eval_examples: 0


def test_train_yaml_with_an_unknown_key_is_a_user_error(capsys, tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(f"max_step: 3\noutput_dir: {tmp_path / 'run'}\n")
    line = user_error(capsys, ["train", "--config", str(recipe)])
    assert str(recipe) in line
    assert "unknown field 'max_step'" in line
    assert "did you mean 'max_steps'?" in line
    assert not (tmp_path / "run").exists()


def test_train_with_a_mistyped_flag_value_is_a_user_error(capsys, tmp_path):
    line = user_error(capsys, train_argv(tmp_path / "run", max_steps="abc"))
    assert "field 'max_steps'" in line
    assert "'abc'" in line
    assert not (tmp_path / "run").exists()


def test_train_with_a_missing_config_file_is_a_user_error(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    line = user_error(capsys, ["train", "--config", str(missing)])
    assert f"--config {missing}: no such file" in line


def test_train_with_an_unknown_flag_exits_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        cli.main(train_argv(tmp_path / "run") + ["--max_stesp", "1"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --max_stesp" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --- eval ----------------------------------------------------------------------------------------


def eval_argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(model), "--file", str(data), "--output-dir", str(out), "--device", "cpu", *extra]


def test_eval_writes_results(capsys, tmp_path, trained, chain_file):
    output_dir, code, _ = trained
    assert code == 0
    out = tmp_path / "eval"
    assert cli.main(eval_argv(output_dir / "final", chain_file, out, "--max-new-tokens", "16")) == 0
    stdout = capsys.readouterr().out
    payload = json.loads((out / "results.json").read_text())
    assert payload["model"] == str(output_dir / "final")
    assert (payload["model_kind"], payload["answer_mode"], payload["max_new_tokens"]) == ("trained", "strict", 16)
    assert "prompt" not in payload
    [result] = payload["results"]
    assert {"method", "benchmark", "accuracy", "latent_tokens", "text_tokens", "latency_s", "n"} <= set(result)
    assert result["method"] == "cot"  # read from the trained model
    assert result["benchmark"] == "chain"
    assert result["n"] == 6
    assert result["latent_tokens"] == 0.0
    assert result["latency_s"] > 0
    table = (out / "results.md").read_text()
    assert "| cot | chain | 6 |" in table
    assert "| cot | chain | 6 |" in stdout


def test_eval_accuracy_counts_the_answers_the_model_gets_right(capsys, tmp_path):
    # The 2-step model of `trained` answers nothing, so its accuracy would be 0 however it is scored. An
    # untrained one says varied things: the file asks for what it says on problems 0 and 2 (sentence
    # answers) and for other sentences or the chain's numbers on the rest.
    lm = tiny_lm("gpt2")
    lm.save_pretrained(tmp_path / "model")
    problems = chain_problems(4, seed=4)
    texts = [s.text.strip() for s in TextSolver(lm, max_new_tokens=6).solve(problems)]
    answers = [texts[0], "no", texts[2], problems[3].answer]
    data = tmp_path / "data.json"
    data.write_text(
        json.dumps([{"question": p.question, "steps": p.steps, "answer": a} for p, a in zip(problems, answers)])
    )
    argv = eval_argv(tmp_path / "model", data, tmp_path / "eval", "--method", "cot", "--max-new-tokens", "6")
    assert cli.main(argv) == 0
    [result] = json.loads((tmp_path / "eval" / "results.json").read_text())["results"]
    assert result["accuracy"] == 2 / 4


def test_eval_with_limit_and_method_override(capsys, tmp_path, trained, chain_file):
    output_dir, _, _ = trained
    out = tmp_path / "eval"
    assert cli.main(eval_argv(output_dir / "final", chain_file, out, "--method", "no-cot", "--limit", "2")) == 0
    [result] = json.loads((out / "results.json").read_text())["results"]
    assert (result["method"], result["n"]) == ("no-cot", 2)
    assert result["text_tokens"] == 0.0  # no-cot generates no reasoning


def test_cli_eval_resumes_and_removes_its_journal_when_done(capsys, monkeypatch, tmp_path, trained, chain_file):
    output_dir, _, _ = trained
    whole, out = tmp_path / "whole", tmp_path / "eval"
    argv = ["--max-new-tokens", "8", "--batch-size", "2"]
    assert cli.main(eval_argv(output_dir / "final", chain_file, whole, *argv)) == 0
    real_solver = cli._solver

    def dies_after_one_batch(*args):
        solver = real_solver(*args)
        solve, calls = solver.solve, []

        def once(problems):
            if calls:
                raise KeyboardInterrupt
            calls.append(problems)
            return solve(problems)

        solver.solve = once
        return solver

    monkeypatch.setattr(cli, "_solver", dies_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        cli.main(eval_argv(output_dir / "final", chain_file, out, *argv))
    assert len((out / "progress.jsonl").read_text().splitlines()) == 2  # its key and the one finished batch
    monkeypatch.setattr(cli, "_solver", real_solver)
    capsys.readouterr()
    assert cli.main(eval_argv(output_dir / "final", chain_file, out, *argv)) == 0
    assert f"resuming: 2 of 6 problems solved earlier ({out / 'progress.jsonl'}" in capsys.readouterr().out
    assert not list(out.glob("progress*.jsonl"))  # predictions.jsonl holds every record now
    expected = [json.loads(line) for line in (whole / "predictions.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    drop = ("latency_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == [
        {k: v for k, v in r.items() if k not in drop} for r in expected
    ]


def test_cli_eval_restart_solves_everything_again(capsys, tmp_path, trained, chain_file):
    output_dir, _, _ = trained
    out = tmp_path / "eval"
    out.mkdir()
    (out / "progress.jsonl").write_text("not a journal\n")
    (out / "progress-1-of-2.jsonl").write_text("another process's\n")
    assert cli.main(eval_argv(output_dir / "final", chain_file, out, "--max-new-tokens", "4", "--restart")) == 0
    assert "resuming" not in capsys.readouterr().out
    assert not list(out.glob("progress*.jsonl"))


def test_eval_of_a_missing_model_is_a_user_error(capsys, tmp_path, chain_file):
    missing = tmp_path / "no_model"
    line = user_error(
        capsys, ["eval", "--model", str(missing), "--file", str(chain_file), "--output-dir", str(tmp_path / "eval")]
    )
    assert str(missing) in line
    assert not (tmp_path / "eval").exists()


# --- eval of a pretrained model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """A plain Hugging Face directory (no latentreason.json): a tiny Llama whose tokenizer has a chat template."""
    return save_tiny_chat_model(tmp_path_factory.mktemp("cli_chat") / "model")


def test_inspect_of_a_pretrained_model_points_to_the_decoders(capsys, chat_model):
    line = user_error(capsys, ["inspect", "--model", str(chat_model), "--question", "1 + 2"])
    assert "this is a pretrained model (no latentreason.json)" in line and "--decoder" in line


@pytest.mark.parametrize("flag, expected", [(None, "float32"), ("bfloat16", "bfloat16")])
def test_eval_dtype_is_float32_on_a_cpu_unless_asked(capsys, tmp_path, chat_model, chain_file, flag, expected):
    extra = ["--max-new-tokens", "4", "--limit", "2", *(["--dtype", flag] if flag else [])]
    assert cli.main(eval_argv(chat_model, chain_file, tmp_path / "eval", *extra)) == 0
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["dtype"] == expected


def test_eval_of_a_plain_model_directory_prompts_through_its_chat_template(capsys, tmp_path, chat_model, chain_file):
    from latentreason.data.formats import load_file
    from latentreason.evaluation.chat_solver import ChatSolver
    from latentreason.evaluation.prompting import BOXED_TEMPLATE, PromptBuilder, few_shot_pairs
    from latentreason.model.pretrained import load_pretrained

    shots = tmp_path / "shots.json"
    shots.write_text(json.dumps([{"question": "1 + 2", "steps": ["<<1+2=3>>"], "answer": "3"}] * 2))
    vocab = json.loads((chat_model / "config.json").read_text())["vocab_size"]
    out = tmp_path / "eval"
    extra = ("--system-prompt", "Be brief.", "--few-shot", "1", "--few-shot-file", str(shots), "--max-new-tokens", "5")
    assert cli.main(eval_argv(chat_model, chain_file, out, *extra)) == 0
    payload = json.loads((out / "results.json").read_text())
    assert (payload["model_kind"], payload["answer_mode"], payload["max_new_tokens"]) == ("pretrained", "auto", 5)
    assert (payload["sampling"]["temperature"], payload["few_shot_source"]) == (0.0, str(shots))
    assert (payload["decoder"], payload["num_samples"], payload["seed"]) == ("text", 1, 0)
    prompt = payload["prompt"]
    assert prompt["chat_template"] is True
    assert (prompt["system_prompt"], prompt["few_shot"], prompt["template"]) == ("Be brief.", 1, BOXED_TEMPLATE)
    assert prompt["stop_tokens"] == ["<|eos|>", "<|im_end|>"]
    [result] = payload["results"]
    assert (result["method"], result["n"], result["latent_tokens"]) == ("chat", 6, 0.0)
    # The CLI's replies are those of the same prompt built in Python.
    lm = load_pretrained(str(chat_model))
    assert lm.embed.weight.shape[0] == vocab  # evaluated as it is: no latent tokens
    few_shot = few_shot_pairs(load_file(str(shots))[:1], "auto")
    builder = PromptBuilder(lm.tokenizer, system_prompt="Be brief.", few_shot=few_shot, template=BOXED_TEMPLATE)
    expected = ChatSolver(lm, builder, max_new_tokens=5).solve(load_file(str(chain_file)))
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["generated"] for r in records] == [s.text for s in expected]
    assert [r["text_tokens"] for r in records] == [s.text_tokens for s in expected]


def test_eval_of_a_model_without_chat_template_says_the_prompt_is_plain(capsys, tmp_path, chain_file):
    model = save_tiny_chat_model(tmp_path / "plain", chat_template=None)
    out = tmp_path / "eval"
    assert cli.main(eval_argv(model, chain_file, out, "--max-new-tokens", "2", "--answer-mode", "flexible")) == 0
    assert "note: the tokenizer has no chat template" in capsys.readouterr().out
    payload = json.loads((out / "results.json").read_text())
    assert payload["answer_mode"] == "flexible"
    assert (payload["prompt"]["chat_template"], payload["prompt"]["template"]) == (False, "{question}")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("--method", "cot"), "--method: for models trained here; {model} is pretrained"),
        (("--few-shot", "2"), "--few-shot with --file: give --few-shot-file"),
        (("--few-shot-file", "x.json"), "--few-shot-file: give --few-shot N"),
        (("--few-shot", "-1"), "--few-shot: expected a number of examples >= 0, got -1"),
        (("--temperature", "-0.5"), "--temperature: expected >= 0, got -0.5"),
        (("--top-p", "0"), "--top-p: expected in (0, 1], got 0.0"),
        (("--num-samples", "0"), "--num-samples: expected at least 1, got 0"),
        (("--decoder", "soft"), "unknown decoder 'soft'; available: fractional, hrpo, latentmas"),
        (("--decoder", "soft-thinking", "--decoder-args", "{topk: 1}"), "did you mean 'top_k'?"),
        (("--decoder-args", "[1, 2]"), "--decoder-args: expected a dict, got [1, 2]"),
        (("--max-new-tokens", "0"), "--max-new-tokens: expected at least 1, got 0"),
        (("--prompt-template", "Solve it."), "--prompt-template: 'Solve it.' has no {question} for the question"),
    ],
)
def test_eval_of_a_pretrained_model_with_bad_flags_is_a_user_error(
    capsys, tmp_path, chat_model, chain_file, extra, expected
):
    line = user_error(capsys, eval_argv(chat_model, chain_file, tmp_path / "eval", *extra))
    assert expected.replace("{model}", str(chat_model)) in line
    assert not (tmp_path / "eval").exists()


def test_eval_few_shot_from_a_file_with_too_few_problems(capsys, tmp_path, chat_model, chain_file):
    line = user_error(
        capsys,
        eval_argv(chat_model, chain_file, tmp_path / "eval", "--few-shot", "7", "--few-shot-file", str(chain_file)),
    )
    assert f"--few-shot 7: {chain_file} has only 6 problems" in line


def test_eval_few_shot_needs_a_train_split_other_than_the_evaluated_one(capsys, tmp_path, chat_model):
    argv = ["eval", "--model", str(chat_model), "--output-dir", str(tmp_path / "eval"), "--few-shot", "2"]
    line = user_error(capsys, [*argv, "--benchmark", "svamp", "--data-dir", str(tmp_path)])
    assert "--few-shot: svamp has no train split apart from the evaluated one (test)" in line
    line = user_error(capsys, [*argv, "--benchmark", "gsm8k", "--split", "train", "--data-dir", str(tmp_path)])
    assert "--few-shot: gsm8k has no train split apart from the evaluated one (train)" in line


def test_eval_of_a_trained_model_rejects_prompt_flags(capsys, tmp_path, trained, chain_file):
    output_dir, _, _ = trained
    argv = eval_argv(output_dir / "final", chain_file, tmp_path / "eval", "--system-prompt", "Hi", "--decoder", "text")
    line = user_error(capsys, argv)
    assert "--system-prompt: for pretrained models;" in line  # a CoT model takes --decoder (its layout's prompt)
    assert "was trained here" in line
    line = user_error(capsys, [*argv[:-4], "--method", "coconut", "--decoder", "text"])
    assert "--decoder: for pretrained models (--decoder also for models trained with cot, icot or no-cot)" in line


def test_eval_of_an_unknown_model_name_says_what_was_expected(capsys, tmp_path, chain_file):
    line = user_error(capsys, ["eval", "--model", "smolm2", "--file", str(chain_file), "--output-dir", str(tmp_path)])
    assert "--model smolm2: no such directory; expected 'smollm2', a directory trained here" in line


# --- main: dispatch and --debug -----------------------------------------------------------------


def test_debug_reraises_the_user_error(tmp_path):
    argv = ["data", "stats", "--benchmark", "gsm8k-ag", "--data-dir", str(tmp_path)]
    with pytest.raises(UserError, match="unknown benchmark 'gsm8k-ag'"):
        cli.main(["--debug", *argv])
    with pytest.raises(UserError, match="unknown benchmark 'gsm8k-ag'"):
        cli.main([*argv, "--debug"])


def test_help_and_unknown_commands(capsys):
    assert cli.main(["--help"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: latentreason") and err == ""
    assert cli.main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: latentreason")
    line = user_error(capsys, ["trian"])
    assert "unknown command 'trian'" in line


def test_console_script_reports_a_user_mistake_in_one_line(tmp_path):
    script = Path(sys.executable).parent / "latentreason"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "latentreason.cli"]
    proc = subprocess.run(
        [*command, "data", "stats", "--benchmark", "gsm8k-ag", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("latentreason: error: unknown benchmark 'gsm8k-ag'")
    assert "Traceback" not in proc.stderr


# --- bench ---------------------------------------------------------------------------------------


def test_bench_engine_quick_prints_the_figures_as_json_last(capsys):
    assert cli.main(["bench", "engine", "--quick", "--device", "cpu"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    figures = json.loads(last)
    names = ("train_ratio_2", "train_ratio_4", "rollout_ratio_floor", "rollout_speedup_oracle", "rollout_mem_mb")
    for key in (*names, "oracle_speedup_at_floor"):
        assert figures[key] > 0, key


def test_bench_rl_quick_prints_the_phases_and_speed_up_as_json_last(capsys):
    assert cli.main(["bench", "rl", "--quick", "--device", "cpu"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("step_rollout_s", "step_score_s", "step_update_s", "rollouts_per_s_batched", "rollout_speedup_loop"):
        assert figures[key] > 0, key
    assert figures["latents_per_rollout"] == 4  # the stop head never stops: max_latent_stage 2 x c_thought 2
    assert figures["recompute_speedup"] > 0 and figures["recompute_max_diff"] < 1e-4  # one call == N + 1 calls
