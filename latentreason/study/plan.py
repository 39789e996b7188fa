"""A study's runs: one per (task, row, seed), each a `latentreason train|rl` command and an `eval` command.

Every run is the CLI and nothing else, like the demo's rows: the commands written here are the ones
executed and the ones the report prints. A run of a row with `start` begins from that row's final
model of the same task and seed. Training resumes from its latest checkpoint
(`resume_from_checkpoint: auto`) and evaluation from its journal, so a killed study loses at most the
steps since the last checkpoint.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from latentreason.config import load_config, read_yaml
from latentreason.errors import ConfigError
from latentreason.methods import get_method
from latentreason.recipes import RL_METHODS, resolve_config_path
from latentreason.rl.config import RLConfig
from latentreason.study.config import StudyConfig, merged

# What the runner sets on every run, over anything the study says (and never_train_on: what it is evaluated on).
RESUME = {"resume_from_checkpoint": "auto", "overwrite_output_dir": True}


@dataclass(frozen=True)
class Run:
    study: str
    task: str
    row: str
    seed: int
    dir: str  # the run's directory: the trainer's output_dir (final/, log.jsonl), eval/, record.json
    train: list[str]  # `latentreason train|rl ...` arguments (after the program name)
    eval: list[str]  # `latentreason eval ...` arguments
    steps: int  # optimizer steps it trains
    start: str | None  # the key of the run it starts from
    data: dict[str, str]  # split -> what it trains and is evaluated on, in words (for its model card)
    launcher: tuple[str, ...] = ()  # e.g. ('accelerate', 'launch', '--num_processes', '4'): trains on several devices

    @property
    def key(self) -> str:
        return run_key(self.task, self.row, self.seed)

    def command(self, which: str) -> str:
        """The run's train or eval step as a shell command a user can paste."""
        if which == "train" and self.launcher:
            return shlex.join([*self.launcher, "-m", "latentreason.cli", *self.train])
        return shlex.join(["latentreason", *(self.train if which == "train" else self.eval)])

    def argv(self) -> list[str]:
        """The process the scheduler starts for the run (study/execute.py runs both steps)."""
        return [sys.executable, "-m", "latentreason.study.execute", str(Path(self.dir) / "run.json")]

    def save(self) -> None:
        path = Path(self.dir) / "run.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")


def run_key(task: str, row: str, seed: int) -> str:
    return f"{task}/{row}/seed-{seed}"


def plan_runs(
    study: StudyConfig, output_dir: Path, data_dir: str | None = None, launcher: tuple[str, ...] = ()
) -> list[Run]:
    """Every run of the study, rows in the study's order within each task and seed; each run's config is
    checked here, as `latentreason train|rl` would check it, so a bad field fails before anything runs.
    `launcher`: the command that starts training on several devices (`accelerate launch ...`, `torchrun ...`),
    empty for one process."""
    runs = []
    for task_name, task in study.tasks.items():
        for seed in study.seeds:
            for row_name, row in study.rows.items():
                run_dir = output_dir / "runs" / task_name / row_name / f"seed-{seed}"
                fields = merged(study.fields, row.fields)
                fields = merged(fields, task.fields)
                fields = merged(fields, task.rows.get(row_name) or {})
                fields = merged(fields, study.force)
                fields.update(RESUME, seed=seed, output_dir=str(run_dir), never_train_on=_evaluated(task.evaluate))
                if data_dir and "benchmark" in task.evaluate:  # training reads the benchmark to leave it out
                    fields["data_dir"] = str(data_dir)
                if row.start is not None:  # a trained model: its shape and tokenizer come with it
                    fields.pop("tiny_model", None)
                    fields.pop("tokenizer_vocab_size", None)
                    start_dir = output_dir / "runs" / task_name / row.start / f"seed-{seed}"
                    fields["model_name_or_path"] = str(start_dir / "final")
                where = f"{study.source}, task {task_name}, row {row_name}"
                config = _checked_config(row.recipe, fields, where)
                runs.append(
                    Run(
                        study=study.name,
                        task=task_name,
                        row=row_name,
                        seed=seed,
                        dir=str(run_dir),
                        train=_train_argv(row.recipe, fields),
                        eval=_eval_argv(run_dir, task.evaluate, config, data_dir),
                        steps=config.max_steps,
                        start=None if row.start is None else run_key(task_name, row.start, seed),
                        data=_data_words(config, task.evaluate),
                        launcher=tuple(launcher),
                    )
                )
    return runs


def _checked_config(recipe: str, fields: dict, where: str):
    path = resolve_config_path(recipe)
    method = read_yaml(path).get("method")
    if method is None:
        raise ConfigError(f"{where}: recipe {path} names no method")
    config_cls = RLConfig if method in RL_METHODS else get_method(method).config_cls
    try:
        config = load_config(config_cls, path, fields)
    except ConfigError as err:  # it blames "command line": the fields came from the study
        raise ConfigError(f"{where}: {str(err).replace('command line: ', '')}") from None
    if config.max_steps < 1:
        raise ConfigError(f"{where}: set max_steps (a study compares runs by their optimizer steps)")
    return config


def _evaluated(evaluate: dict) -> str:
    """What a run is evaluated on, as `never_train_on` names it: no run trains on a problem it is scored on."""
    if "file" in evaluate:
        return str(evaluate["file"])
    return str(evaluate["benchmark"]) + (f":{evaluate['split']}" if evaluate.get("split") else "")


def _data_words(config, evaluate: dict) -> dict[str, str]:
    params = f" {json.dumps(config.dataset_params)}" if config.dataset_params else ""
    count = config.num_train_examples or "all"
    source = evaluate.get("file") or f"{evaluate['benchmark']} {evaluate.get('split') or 'default split'}"
    limit = f", first {evaluate['limit']} problems" if evaluate.get("limit") else ""
    return {
        "train": f"{count} problems of {config.dataset}{params} (seed {config.seed})",
        "validation": f"{source}{limit}",
    }


def _train_argv(recipe: str, fields: dict) -> list[str]:
    method = read_yaml(resolve_config_path(recipe)).get("method")
    argv = ["rl" if method in RL_METHODS else "train", "--config", recipe]
    for name, value in fields.items():
        argv += [f"--{name}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return argv


def _eval_argv(run_dir: Path, evaluate: dict, config, data_dir: str | None) -> list[str]:
    argv = ["eval", "--model", str(run_dir / "final"), "--output-dir", str(run_dir / "eval")]
    if "file" in evaluate:
        argv += ["--file", str(evaluate["file"])]
    else:
        argv += ["--benchmark", str(evaluate["benchmark"])]
        if evaluate.get("split"):
            argv += ["--split", str(evaluate["split"])]
        if data_dir:
            argv += ["--data-dir", str(data_dir)]
    if evaluate.get("limit"):
        argv += ["--limit", str(evaluate["limit"])]
    argv += ["--max-new-tokens", str(config.max_new_tokens), "--batch-size", str(config.eval_batch_size)]
    return argv
