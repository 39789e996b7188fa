"""`inspect` shows the thoughts evaluation scores: the method's own prompts and rollout."""

from __future__ import annotations

import pytest
import torch

from latentreason.data.generators.chain import generate_chain
from latentreason.evaluation.inspect import inspect_problems
from latentreason.methods.colar import CoLaR, CoLaRConfig
from latentreason.methods.pccot import PCCoT, PCCoTConfig
from tests.helpers import build_tiny_lm, eot_at_varied_steps


def colar(lm):
    method = CoLaR(CoLaRConfig(max_latents=6, compression_factor=3))
    method.prepare(lm)
    eot_at_varied_steps(lm)  # rows stop at different steps
    return method


def pccot(lm):
    method = PCCoT(PCCoTConfig(num_latents=4, jacobi_iterations=2))
    method.prepare(lm)
    return method


@pytest.mark.parametrize("build", [colar, pccot])
def test_inspect_reports_the_solvers_thoughts_and_answers(build):
    """CoLaR's prompt carries its speed (the plain `question <bot>` prompt thinks differently); PCCoT's
    thoughts come from 2 Jacobi iterations (the sequential rollout gives other ones)."""
    lm = build_tiny_lm("llama")
    method = build(lm)
    lm.eval()
    problems = generate_chain(6, seed=1, num_steps=3)
    solver = method.solver(lm)
    with torch.no_grad():
        expected = solver.rollout(solver.prompts(problems))
    reports = inspect_problems(lm, method, problems)
    for row, report in enumerate(reports):
        k = int(expected.num_latents[row])
        assert report["latents"] == k
        answer = expected.tokens[row, : expected.lengths[row]]
        assert report["answer_text"] == lm.tokenizer.decode(answer, skip_special_tokens=True)
        norms = [z["norm"] for group in report["groups"] for z in group["latents"]]
        assert norms == [round(float(z.norm()), 3) for z in expected.latent_inputs[row, :k]]
