"""The harness reports the accuracy a trained model really has, checked against an independent path."""

from __future__ import annotations

import torch

from latentreason.data.generators.chain import generate_chain
from latentreason.evaluation.harness import evaluate
from latentreason.evaluation.solvers import TextSolver
from latentreason.model.latent_lm import LatentLM
from latentreason.train_config import SFTConfig
from latentreason.training.run import run_training


def test_harness_accuracy_equals_one_by_one_hf_generate(tmp_path):
    # 18 distinct one-step problems mod 3: small enough for a tiny model to learn most of them fast.
    params = {"num_steps": 1, "ops": "+*", "modulus": 3}
    config = SFTConfig(
        model_name_or_path="tiny",
        tiny_model={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
        dataset="synthetic:chain",
        dataset_params=params,
        num_train_examples=256,
        num_eval_examples=0,
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        adam_beta2=0.95,
        lr_scheduler_type="constant",
        max_steps=150,
        max_new_tokens=16,
        seed=0,
    )
    lm = LatentLM.from_pretrained(run_training("cot", config, progress=False).final_dir).eval()
    problems = list({p.question: p for p in generate_chain(200, seed=9, **params)}.values())
    result = evaluate(TextSolver(lm, 16), problems, batch_size=7, progress=False)

    # Independent path: Hugging Face generate, one problem at a time, no padding, plain string check.
    correct = 0
    for problem in problems:
        prompt = [lm.tokenizer.bos_token_id] + lm.tokenizer(problem.question + "\n")["input_ids"]
        ids = torch.tensor([prompt])
        out = lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=lm.eos_id,
            pad_token_id=lm.pad_id,
        )
        text = lm.tokenizer.decode(out[0, len(prompt) :], skip_special_tokens=True)
        correct += text.split("###")[-1].strip() == problem.answer if "###" in text else 0
    assert result.n == len(problems) == 18
    assert result.accuracy == correct / len(problems)
    assert result.accuracy > 0.5  # the model did learn: chance is 1/3
