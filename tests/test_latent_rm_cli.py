"""`latentreason eval --reward-model DIR`: a LatentRM scores every latent sample, and results.json reports
best-of-N through the test-time scaling metrics."""

from __future__ import annotations

import json

import pytest

from latentreason import cli
from latentreason.evaluation.tts_metrics import best_of_n_correct
from latentreason.model.latent_lm import LatentLM
from latentreason.tts.reward_model import LatentRM
from tests.test_cli import user_error
from tests.test_latent_sampler_cli import eval_argv, model_and_data, records  # noqa: F401  (the fixture)

SAMPLED = ["--method", "coconut", "--num-samples", "4", "--latent-sampler", "noise", "--max-new-tokens", "6"]


@pytest.fixture(scope="module")
def reward_model(model_and_data, tmp_path_factory):  # noqa: F811  (the fixture imported above)
    model, _ = model_and_data
    directory = tmp_path_factory.mktemp("rm") / "rm"
    LatentRM(LatentLM.from_pretrained(model)).save_pretrained(directory)
    return directory


def test_eval_with_a_reward_model_scores_every_sample_and_reports_best_of_n(
    capsys,
    tmp_path,
    model_and_data,  # noqa: F811
    reward_model,
):
    model, data = model_and_data
    out = tmp_path / "eval"
    assert cli.main(eval_argv(model, data, out, *SAMPLED, "--reward-model", str(reward_model))) == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["reward_model"] == str(reward_model)
    rows = records(out)
    scores = [[s["score"] for s in row["samples"]] for row in rows]
    assert all(len(set(row)) > 1 for row in scores)  # the samples' thoughts differ, so do their scores
    expected = sum(best_of_n_correct(sc, [s["correct"] for s in row["samples"]]) for sc, row in zip(scores, rows))
    assert payload["results"][0]["best_of_n_accuracy"] == pytest.approx(expected / len(rows))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "cot"], "--reward-model: "),
        (["--method", "coconut"], "not a latent reward model"),
    ],
)
def test_a_reward_model_that_cannot_score_is_a_user_error(
    capsys,
    tmp_path,
    model_and_data,  # noqa: F811
    extra,
    message,
):
    model, data = model_and_data
    capsys.readouterr()
    assert cli.main(eval_argv(model, data, tmp_path / "eval", *extra, "--reward-model", str(model))) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_reward_model_path_that_is_not_a_model_is_refused_before_loading(capsys, tmp_path, model_and_data):  # noqa: F811
    model, data = model_and_data
    line = user_error(capsys, eval_argv(model, data, tmp_path / "eval", *SAMPLED, "--reward-model", str(tmp_path)))
    assert f"--reward-model: {tmp_path} is not a model directory" in line
