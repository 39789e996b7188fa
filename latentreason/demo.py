"""`latentreason demo`: train and compare methods on a generated task, offline, on a CPU.

Task: chains of single-digit operations modulo 10 ('7 + 5 - 3 * 8' -> '<<7+5=2>> <<2-3=9>> <<9*8=2>>
### 2'). Training mixes 1- to 3-step chains; the test set holds 3-step chains whose questions never
occur in training. Each row trains with the shipped recipe `<method>-tiny.yaml` (the same files
`latentreason train --config cot-tiny` uses): CoT-SFT and No-CoT from the same from-scratch
initialisation for the same number of steps; latent methods start from the CoT-SFT checkpoint, as
the papers do, so CoT is trained once; ATP-Latent SFT+RL is GRPO (`atp-rl-tiny.yaml`) on the ATP-Latent
SFT model.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from latentreason.config import load_config
from latentreason.data.sources import held_out_from, load_problems
from latentreason.errors import UserError
from latentreason.evaluation.harness import evaluate
from latentreason.evaluation.report import markdown_table, write_report
from latentreason.methods import get_method
from latentreason.methods.saved import method_for
from latentreason.model.latent_lm import LatentLM
from latentreason.recipes import RL_METHODS, SHIPPED_CONFIGS
from latentreason.rl.config import RLConfig
from latentreason.rl.run import run_rl
from latentreason.training.run import run_training

# Row -> the row whose final model it starts from (None: a fresh tiny model). `atp-rl` is GRPO on ATP-Latent SFT.
ROWS = {
    "cot": None,
    "no-cot": None,
    "icot": "cot",
    "coconut": "cot",
    "pause": "cot",
    "codi": "cot",
    "pccot": "cot",
    "colar": "cot",
    "simcot": "cot",
    "atp": "cot",
    "atp-rl": "atp",
    "colar-rl": "colar",
}
TEST_TASK = {"num_steps": 3, "ops": "+-*", "modulus": 10}
NUM_TEST = 500
# --quick: the same pipeline with a model and budget small enough for a smoke test.
QUICK = {
    "tiny_model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    "num_train_examples": 1024,
    "per_device_train_batch_size": 32,
    "max_steps": 12,
    "warmup_steps": 1,
}
QUICK_NUM_TEST = 64
QUICK_RL = {"max_steps": 2, "questions_per_step": 4, "num_generations": 4, "per_device_train_batch_size": 16}


def row_config(method: str, output_dir: Path, start: Path | None, quick: bool, seed: int | None = None):
    overrides = {"output_dir": str(output_dir / "runs" / method), "num_eval_examples": 0}
    if seed is not None:
        overrides["seed"] = seed
    if start is not None:
        overrides["model_name_or_path"] = str(start)
    if method in RL_METHODS:
        return load_config(
            RLConfig, SHIPPED_CONFIGS / f"{method}-tiny.yaml", {**overrides, **(QUICK_RL if quick else {})}
        )
    if quick:
        overrides.update({k: v for k, v in QUICK.items() if k != "tiny_model" or start is None})
    return load_config(get_method(method).config_cls, SHIPPED_CONFIGS / f"{method}-tiny.yaml", overrides)


def select_rows(names: list[str] | None) -> list[str]:
    """The rows asked for plus the rows they start from, in the table's order (None: every row)."""
    if not names:
        return list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise UserError(f"--rows: unknown {', '.join(unknown)}; the rows are {', '.join(ROWS)}")
    wanted = set()
    for name in names:
        while name is not None and name not in wanted:
            wanted.add(name)
            name = ROWS[name]
    return [name for name in ROWS if name in wanted]


def run_demo(
    output_dir: str | Path = "demo_output",
    quick: bool = False,
    overwrite: bool = False,
    rows: list[str] | None = None,
    seed: int | None = None,
) -> list:
    """Train CoT-SFT, No-CoT and the latent methods on a generated task and compare them on held-out problems.

    `seed` replaces every recipe's seed: another draw of the training and test problems, of the
    initialisation and of the data order, for a replicate of the whole table.
    """
    selected = select_rows(rows)
    out = Path(output_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} is not empty; pass --overwrite to replace it or choose another --output-dir")
        shutil.rmtree(out)
    began = time.perf_counter()
    cot_config = row_config("cot", out, None, quick, seed)
    train = load_problems(
        cot_config.dataset,
        "train",
        params=cot_config.dataset_params,
        limit=cot_config.num_train_examples,
        seed=cot_config.seed,
    )
    test = held_out_from(
        train,
        load_problems(
            cot_config.dataset,
            "test",
            params=TEST_TASK,
            limit=QUICK_NUM_TEST if quick else NUM_TEST,
            seed=cot_config.seed,
        ),
    )
    print(
        f"demo task: 3-step chains of '+-*' mod 10; {len(train)} training problems (1-3 steps), "
        f"{len(test)} held-out 3-step test problems"
    )
    print(f"example: {train[0].question}  ->  {train[0].cot}  ### {train[0].answer}")
    results, timings, finals = [], {}, {}
    for method in selected:
        config = row_config(method, out, finals.get(ROWS[method]), quick, seed)
        began_row = time.perf_counter()
        run = run_rl(config, progress=True) if method in RL_METHODS else run_training(method, config)
        timings[f"train_{method}_s"] = round(time.perf_counter() - began_row, 1)
        finals[method] = run.final_dir
        lm = LatentLM.from_pretrained(run.final_dir).eval()
        solver = method_for(lm, str(run.final_dir)).solver(lm)
        solver.name = method
        results.append(evaluate(solver, test, "chain-3step (held-out)", 250))
    timings["total_s"] = round(time.perf_counter() - began, 1)
    meta = {"test_task": TEST_TASK, "quick": quick, "seed": cot_config.seed, "timings": timings}
    paths = write_report(results, out, meta)
    print("\n" + markdown_table(results))
    print(
        f"\ntotal time {timings['total_s']:.0f} s; report: {paths['json']}"
        + (f", plot: {paths['plot']}" if "plot" in paths else "")
    )
    return results
