"""`latentreason eval` of a model trained here with N samples per problem: --num-samples, --seed, the text
sampling flags and --latent-sampler/--latent-sampler-args; bad values are user errors naming the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentreason import cli
from tests.helpers import chain_problems, save_tiny_chat_model, tiny_lm
from tests.test_cli import user_error


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model saved as trained here (latent tokens, no method: --method picks one) and 3 chain problems."""
    root = tmp_path_factory.mktemp("tts_cli")
    tiny_lm("llama").save_pretrained(root / "model")
    data = root / "chain.json"
    problems = chain_problems(3, seed=2)
    data.write_text(json.dumps([{"question": p.question, "steps": p.steps, "answer": p.answer} for p in problems]))
    return root / "model", data


def eval_argv(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(model), "--file", str(data), "--output-dir", str(out), "--device", "cpu", *extra]


def records(out: Path) -> list[dict]:
    """predictions.jsonl without its timings."""
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "latency_s"} for row in rows]


def test_eval_with_a_latent_sampler_records_every_sample_and_the_samplers_settings(capsys, tmp_path, model_and_data):
    model, data = model_and_data
    out = tmp_path / "eval"
    extra = ["--method", "coconut", "--num-samples", "4", "--latent-sampler", "noise", "--seed", "3"]
    assert cli.main(eval_argv(model, data, out, *extra, "--max-new-tokens", "8")) == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["num_samples"] == 4 and payload["seed"] == 3
    assert payload["latent_sampler"] == "noise"
    assert payload["latent_sampler_args"] == {"sigma": 0.6, "scale": "absolute"}  # Coconut's default, resolved
    rows = records(out)
    assert len(rows) == 3
    for row in rows:
        assert len(row["samples"]) == 4
        assert row["generated"] == row["samples"][0]["generated"]
        assert row["latent_tokens"] == 3.0  # each sample's thoughts
    assert len({s["generated"] for row in rows for s in row["samples"]}) > 3  # the samples differ

    again = tmp_path / "again"
    assert cli.main(eval_argv(model, data, again, *extra, "--max-new-tokens", "8")) == 0
    assert records(again) == records(out)  # the seed repeats them


def test_eval_of_a_trained_model_records_greedy_sampling_by_default(capsys, tmp_path, model_and_data):
    model, data = model_and_data
    assert cli.main(eval_argv(model, data, tmp_path / "eval", "--method", "coconut", "--max-new-tokens", "4")) == 0
    payload = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert (payload["num_samples"], payload["latent_sampler"], payload["latent_sampler_args"]) == (1, None, None)
    assert payload["sampling"]["temperature"] == 0.0
    assert all("samples" not in row for row in records(tmp_path / "eval"))


def test_a_text_method_samples_its_replies_with_temperature(capsys, tmp_path, model_and_data):
    model, data = model_and_data
    extra = ["--method", "cot", "--num-samples", "3", "--temperature", "1.0", "--max-new-tokens", "6"]
    assert cli.main(eval_argv(model, data, tmp_path / "eval", *extra)) == 0
    rows = records(tmp_path / "eval")
    assert all(len(row["samples"]) == 3 for row in rows)
    assert len({s["generated"] for row in rows for s in row["samples"]}) > 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "cot", "--latent-sampler", "noise"], "--latent-sampler: "),
        (["--method", "coconut", "--latent-sampler", "gumbel"], "--latent-sampler: unknown sampler 'gumbel'"),
        (
            ["--method", "coconut", "--latent-sampler", "noise", "--latent-sampler-args", "{sigma: -1}"],
            "--latent-sampler-args for noise: sigma: expected >= 0, got -1.0",
        ),
        (
            ["--method", "coconut", "--latent-sampler", "dropout", "--latent-sampler-args", "{p: 1}"],
            "--latent-sampler-args for dropout: p: expected a probability in [0, 1), got 1.0",
        ),
        (
            ["--method", "coconut", "--latent-sampler", "noise", "--latent-sampler-args", "[0.6]"],
            "--latent-sampler-args: expected a dict",
        ),
        (
            ["--method", "coconut", "--latent-sampler-args", "{sigma: 1}"],
            "--latent-sampler-args: give --latent-sampler",
        ),
        (["--method", "coconut", "--num-samples", "4"], "--num-samples 4: every sample would be the same"),
        (["--method", "pause", "--latent-sampler", "noise"], "--latent-sampler-args: sigma: no default for pause"),
    ],
)
def test_bad_sampling_flags_are_user_errors_naming_the_flag(capsys, tmp_path, model_and_data, extra, message):
    model, data = model_and_data
    line = user_error(capsys, eval_argv(model, data, tmp_path / "eval", *extra))
    assert message in line
    if extra[1] == "cot":
        assert "'cot', which has no latent thoughts" in line


def test_a_sampler_a_solver_cannot_apply_is_a_user_error_once_its_model_loads(capsys, tmp_path, model_and_data):
    model, data = model_and_data
    capsys.readouterr()
    assert cli.main(eval_argv(model, data, tmp_path / "eval", "--method", "pccot", "--latent-sampler", "dropout")) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the weights' loading bar
    assert (
        last
        == "latentreason: error: --latent-sampler: latent sampler 'dropout': not available for pccot (available: noise)"
    )


def test_a_latent_sampler_on_a_pretrained_model_is_a_user_error(capsys, tmp_path, model_and_data):
    _, data = model_and_data
    model = save_tiny_chat_model(tmp_path / "chat")
    line = user_error(capsys, eval_argv(model, data, tmp_path / "eval", "--latent-sampler", "noise"))
    assert "--latent-sampler: for models trained here with latent thoughts;" in line
