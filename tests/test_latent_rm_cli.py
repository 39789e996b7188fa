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


def test_eval_with_beam_search_answers_each_problem_with_its_best_beam(
    capsys,
    tmp_path,
    model_and_data,  # noqa: F811
    reward_model,
):
    from latentreason.data.formats import load_file
    from latentreason.evaluation.latent_solver import LatentSolver
    from latentreason.methods.saved import method_for
    from latentreason.tts import latent_sampler_from_args
    from latentreason.tts.beam import rm_beam_search

    model, data = model_and_data
    out = tmp_path / "eval"
    beam = ["--method", "coconut", "--latent-sampler", "noise", "--max-new-tokens", "6", "--beam-width", "2"]
    assert cli.main(eval_argv(model, data, out, *beam, "--reward-model", str(reward_model))) == 0
    payload = json.loads((out / "results.json").read_text())
    assert (payload["beam_width"], payload["beam_expansions"]) == (2, 4)
    # The CLI's answers are rm_beam_search's, called directly with the same model, RM, sampler and seed.
    lm = LatentLM.from_pretrained(model).eval()
    solver = method_for(lm, str(model), "coconut", max_new_tokens=6).solver(lm)
    assert isinstance(solver, LatentSolver)
    solver.configure(samples=1, latent_sampler=latent_sampler_from_args("noise", {}).for_method("coconut"))
    rm = LatentRM.from_pretrained(reward_model)
    problems = load_file(str(data), None, "error")
    direct = rm_beam_search(solver, rm, problems, solver.latent_sampler, 2, 4, seed=0)
    assert [r["generated"] for r in records(out)] == [s.text for s in direct]

    # Several widths in one command: each problem is searched at each width, the widest answers it, and
    # results.json draws accuracy against the width from every width's answers.
    curve = tmp_path / "curve"
    beam[-1] = "2,1"
    assert cli.main(eval_argv(model, data, curve, *beam, "--reward-model", str(reward_model))) == 0
    payload = json.loads((curve / "results.json").read_text())
    assert payload["beam_width"] == [1, 2]
    narrow = rm_beam_search(solver, rm, problems, solver.latent_sampler, 1, 4, seed=0)
    rows = records(curve)
    assert [r["generated"] for r in rows] == [s.text for s in direct]
    assert [[b["width"] for b in r["beams"]] for r in rows] == [[1, 2]] * len(problems)
    assert [r["beams"][0]["generated"] for r in rows] == [s.text for s in narrow]
    result = payload["results"][0]
    right = [sum(r["beams"][i]["correct"] for r in rows) / len(rows) for i in (0, 1)]
    assert result["accuracy_vs_beam_width"] == {"widths": [1, 2], "beam": right}
    assert result["accuracy"] == right[1]
    assert (curve / "accuracy_vs_samples.png").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--beam-width", "2", "--latent-sampler", "noise"], "--beam-width: needs --reward-model"),
        (["--beam-expansions", "3"], "--beam-expansions: give --beam-width"),
        (["--beam-width", "0"], "expected at least 1"),
        (["--beam-width", "2,four"], "--beam-width: expected whole numbers such as 4 or 1,2,4,8, got '2,four'"),
    ],
)
def test_bad_beam_flags_are_refused_before_loading(capsys, tmp_path, model_and_data, extra, message):  # noqa: F811
    model, data = model_and_data
    line = user_error(capsys, eval_argv(model, data, tmp_path / "eval", "--method", "coconut", *extra))
    assert message in line
