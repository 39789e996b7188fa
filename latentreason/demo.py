"""`latentreason demo`: train and compare methods on a generated task, offline, on a CPU.

Task: chains of single-digit operations modulo 10 ('7 + 5 - 3 * 8' -> '<<7+5=2>> <<2-3=9>> <<9*8=2>>
### 2'). A tiny Llama is trained from scratch with CoT-SFT and, from the same initialisation and for
the same number of steps, with No-CoT; both are evaluated on held-out generated problems (none of
their questions occurs in training). Latent methods start from the CoT-SFT checkpoint, as the papers
do, so CoT is trained once.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path


from latentreason.data.sources import held_out_from, load_problems
from latentreason.errors import UserError
from latentreason.evaluation.harness import evaluate
from latentreason.evaluation.report import markdown_table, write_report
from latentreason.methods import get_method
from latentreason.model.latent_lm import LatentLM
from latentreason.training.config import TrainConfig
from latentreason.training.run import run_training


@dataclass
class DemoPlan:
    """Budget of one demo run (the full one is sized for about 10 minutes on 2 CPU cores)."""

    task: dict = field(default_factory=lambda: {"num_steps": 3, "ops": "+-*", "modulus": 10})
    tiny_model: dict = field(
        default_factory=lambda: {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
                                 "intermediate_size": 512}
    )
    num_train: int = 51200
    num_test: int = 500
    batch_size: int = 256
    learning_rate: float = 3e-3
    steps: dict = field(default_factory=lambda: {"cot": 200, "no-cot": 200})


QUICK = DemoPlan(num_train=2048, num_test=64, batch_size=64, steps={"cot": 12, "no-cot": 12},
                 tiny_model={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                             "intermediate_size": 64})


def _config(plan: DemoPlan, method: str, output_dir: Path, seed: int) -> TrainConfig:
    return get_method(method).config_cls(
        model_name_or_path="tiny",
        tiny_model=plan.tiny_model,
        dataset="synthetic:chain",
        dataset_params=plan.task,
        num_train_examples=plan.num_train,
        num_eval_examples=0,  # the demo evaluates once, on its test problems, after training
        output_dir=str(output_dir / "runs" / method),
        per_device_train_batch_size=plan.batch_size,
        learning_rate=plan.learning_rate,
        max_steps=plan.steps[method],
        warmup_steps=max(1, plan.steps[method] // 20),
        logging_steps=10,
        max_new_tokens=40,
        eval_batch_size=250,
        seed=seed,
    )


def run_demo(output_dir: str | Path = "demo_output", quick: bool = False, overwrite: bool = False,
             seed: int = 0) -> list:
    """Train CoT-SFT and No-CoT on a generated task and compare them on held-out problems."""
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} is not empty; pass --overwrite to replace it or choose another --output-dir")
        shutil.rmtree(out)
    plan = QUICK if quick else DemoPlan()
    began = time.perf_counter()
    train = load_problems("synthetic:chain", "train", params=plan.task, limit=plan.num_train, seed=seed)
    test = held_out_from(train, load_problems("synthetic:chain", "test", params=plan.task,
                                              limit=plan.num_test, seed=seed))
    print(f"demo task: {plan.task['num_steps']}-step chains of '{plan.task['ops']}' mod {plan.task['modulus']}, "
          f"{len(train)} training problems, {len(test)} held-out test problems")
    print(f"example: {train[0].question}  ->  {train[0].cot}  ### {train[0].answer}")
    results, timings = [], {}
    for method in plan.steps:
        start = time.perf_counter()
        run = run_training(method, _config(plan, method, out, seed))
        timings[f"train_{method}_s"] = round(time.perf_counter() - start, 1)
        lm = LatentLM.from_pretrained(run.final_dir).eval()
        results.append(evaluate(get_method(method)(_config(plan, method, out, seed)).solver(lm), test,
                                "chain (held-out)", batch_size=250))
    timings["total_s"] = round(time.perf_counter() - began, 1)
    paths = write_report(results, out, {"task": plan.task, "quick": quick, "timings": timings})
    print("\n" + markdown_table(results))
    print(f"\ntotal time {timings['total_s']:.0f} s; report: {paths['json']}"
          + (f", plot: {paths['plot']}" if "plot" in paths else ""))
    return results
