"""PCCoT: CODI's objective on Jacobi thoughts; T = num_latents is CODI exactly, T < num_latents is not."""

from __future__ import annotations

import pytest
import torch

from latentreason.data.generators.chain import generate_chain
from latentreason.errors import ConfigError
from latentreason.methods.codi import CODI, CODIConfig
from latentreason.methods.pccot import PCCoT, PCCoTConfig
from latentreason.model.latent_lm import LatentLM
from latentreason.training.run import run_training
from tests.helpers import EXACT, build_tiny_lm, tiny_train_config


@pytest.mark.parametrize("use_projector", [False, True])
def test_as_many_iterations_as_latents_gives_codis_loss_and_answers(use_projector):
    lm = build_tiny_lm("llama", dtype=torch.float64)  # equal up to float64 rounding
    settings = dict(num_latents=4, use_projector=use_projector, distill_weight=1.0, max_new_tokens=6)
    codi, pccot = CODI(CODIConfig(**settings)), PCCoT(PCCoTConfig(jacobi_iterations=4, **settings))
    codi.prepare(lm)
    pccot.prepare(lm)
    lm.eval()
    problems = generate_chain(4, seed=2, num_steps=3, min_steps=1)
    batch = codi.collate(lm, problems)
    with torch.no_grad():
        codi_loss, codi_parts = codi.loss(lm, batch)
        pccot_loss, pccot_parts = pccot.loss(lm, batch)
    torch.testing.assert_close(pccot_loss, codi_loss, **EXACT)
    assert pccot_parts["distill"] == pytest.approx(codi_parts["distill"], rel=1e-10, abs=1e-10)
    assert [s.text for s in pccot.solver(lm).solve(problems)] == [s.text for s in codi.solver(lm).solve(problems)]
    fewer = PCCoT(PCCoTConfig(jacobi_iterations=1, **settings))
    with torch.no_grad():
        approximate, _ = fewer.loss(lm, batch)
    assert abs(float(approximate - codi_loss)) > 1e-3  # one update leaves slots 1..3 approximate


def test_pccot_trains_and_answers_with_its_latent_count(tmp_path):
    config = tiny_train_config(PCCoTConfig, tmp_path / "pccot", num_latents=3, jacobi_iterations=2, num_eval_examples=4)
    result = run_training("pccot", config, progress=False)
    assert result.eval.latent_tokens == 3.0
    lm = LatentLM.from_pretrained(result.final_dir)
    assert "projector" not in lm.heads  # the reference's default: the hidden state is the thought


def test_iterations_must_be_positive():
    with pytest.raises(ConfigError, match="jacobi_iterations"):
        PCCoTConfig(jacobi_iterations=0)
