"""The benchmark registry: where each benchmark's splits live locally and on the Hugging Face hub.

A data directory is laid out like the project's shared data (gsm8k/test.jsonl, gsm8k_aug/valid.txt,
prosqa/prosqa_valid.json, ...). Without one, benchmarks that have a hub copy are fetched with the
optional `datasets` package (`pip install latentreason[hub]`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentreason.data.formats import CONVERTERS, LOADERS, InvalidRecords
from latentreason.data.problems import Problem
from latentreason.errors import DataError, UserError

DATA_DIR_ENV = "LATENTREASON_DATA_DIR"
SOURCES = ("auto", "local", "hub")

Row = dict[str, Any]


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark.

    files: split -> file path relative to the data directory.
    upstream: where the original files come from, for the "file not found" message.
    hub_splits: split -> hub split names, concatenated in order (SVAMP and MultiArith are published
    on the hub as train + test, while papers evaluate on all of it).
    hub_format: the record converter for hub rows (default: `format`), applied after `hub_adapter`
    (default: none) has mapped the hub's columns to the file's field names.
    """

    name: str
    format: str
    files: dict[str, str]
    default_split: str
    description: str
    upstream: str = ""
    hub_id: str | None = None
    hub_config: str | None = None
    hub_splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    hub_format: str | None = None
    hub_adapter: Callable[[Row, str], Any] | None = None

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys([*self.files, *self.hub_splits]))


# ---------------------------------------------------------------- hub row adapters


def _svamp_row(row: Row, where: str) -> Row:
    # ChilleD/SVAMP may store Answer as text; the SVAMP converter wants the number.
    record = dict(row)
    answer = record.get("Answer")
    if isinstance(answer, str):
        record["Answer"] = _parse_number(answer, where, "Answer")
    return record


def _multiarith_row(row: Row, where: str) -> Row:
    # ChilleD/MultiArith has {question, final_ans}; rebuild the original MultiArith record.
    if "question" not in row or "final_ans" not in row:
        raise DataError(where, None, f"expected columns 'question' and 'final_ans', found {sorted(row)}")
    answer = row["final_ans"]
    if isinstance(answer, str):
        answer = _parse_number(answer, where, "final_ans")
    return {"sQuestion": row["question"], "lEquations": [], "lSolutions": [answer]}


def _parse_number(text: str, where: str, column: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        raise DataError(where, column, f"expected a number, found {text!r}") from None


# ---------------------------------------------------------------- the registry


_BENCHMARKS = [
    BenchmarkSpec(
        "gsm8k",
        "gsm8k",
        {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
        "test",
        "GSM8K grade-school math, natural-language solutions with calculator annotations",
        upstream="github.com/openai/grade-school-math grade_school_math/data/{train,test}.jsonl",
        hub_id="openai/gsm8k",
        hub_config="main",
        hub_splits={"train": ("train",), "test": ("test",)},
    ),
    BenchmarkSpec(
        "gsm8k-aug",
        "icot",
        {
            "train": "gsm8k_aug/train.txt",
            "valid": "gsm8k_aug/valid.txt",
            "test": "gsm8k_aug/test.txt",
            "train_no_aug": "gsm8k_aug/train_no_aug.txt",
        },
        "test",
        "GSM8k-Aug (iCoT/Coconut): equation-only CoT '<<a*b=c>>'; test = GSM8K test",
        upstream="github.com/da03/Internalize_CoT_Step_by_Step data/gsm8k/ (train.txt is in Git LFS)",
        hub_id="whynlp/gsm8k-aug",
        hub_splits={"train": ("train",), "valid": ("validation",), "test": ("test",)},
        hub_format="coconut",  # whynlp/gsm8k-aug rows are {question, steps, answer}
    ),
    BenchmarkSpec(
        "gsm-hard",
        "gsm-hard",
        {"test": "gsm_hard/gsmhardv2.jsonl"},
        "test",
        "GSM-Hard (PAL): GSM8K test with larger numbers",
        upstream="github.com/reasoning-machines/pal datasets/gsmhardv2.jsonl",
        hub_id="reasoning-machines/gsm-hard",
        hub_splits={"test": ("train",)},
    ),
    BenchmarkSpec(
        "svamp",
        "svamp",
        {"test": "svamp/SVAMP.json"},
        "test",
        "SVAMP: 1000 one-equation word problems with perturbations",
        upstream="github.com/arkilpatel/SVAMP SVAMP.json",
        hub_id="ChilleD/SVAMP",
        hub_splits={"test": ("train", "test")},
        hub_adapter=_svamp_row,
    ),
    BenchmarkSpec(
        "multiarith",
        "multiarith",
        {"test": "multiarith/MultiArith.json"},
        "test",
        "MultiArith: 600 multi-step arithmetic word problems",
        upstream="MultiArith.json (Roy & Roth 2015), e.g. from the zero-shot-CoT repositories",
        hub_id="ChilleD/MultiArith",
        hub_splits={"test": ("train", "test")},
        hub_adapter=_multiarith_row,
    ),
    BenchmarkSpec(
        "prosqa",
        "coconut",
        {split: f"prosqa/prosqa_{split}.json" for split in ("train", "valid", "test")},
        "test",
        "ProsQA (Coconut): graph reasoning over fictional concepts, with the graph in meta",
        upstream="github.com/facebookresearch/coconut data/prosqa_{train,valid,test}.json",
    ),
    BenchmarkSpec(
        "prontoqa",
        "coconut",
        {split: f"prontoqa/prontoqa_{split}.json" for split in ("train", "valid", "test")},
        "test",
        "ProntoQA 5-hop, fictional ontology, as prepared by Coconut; answers True/False",
        upstream="generate with github.com/asaparov/prontoqa, convert with Coconut's preprocessing/prontoqa.py",
    ),
    BenchmarkSpec(
        "mult-4x4",
        "icot-mult",
        {"train": "mult_4x4/train.txt", "valid": "mult_4x4/valid.txt", "test": "mult_4x4/test_bigbench.txt"},
        "test",
        "4x4-digit multiplication with long-multiplication CoT (iCoT), digits least significant first",
        upstream="github.com/da03/implicit_chain_of_thought data/4_by_4_mult/ (train.txt is in Git LFS)",
    ),
    BenchmarkSpec(
        "mult-5x5",
        "icot-mult",
        {"train": "mult_5x5/train.txt", "valid": "mult_5x5/valid.txt", "test": "mult_5x5/test_bigbench.txt"},
        "test",
        "5x5-digit multiplication with long-multiplication CoT (iCoT), digits least significant first",
        upstream="github.com/da03/implicit_chain_of_thought data/5_by_5_mult/ (train.txt is in Git LFS)",
    ),
]

BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in _BENCHMARKS}


def list_benchmarks() -> list[BenchmarkSpec]:
    """All registered benchmarks, in name order."""
    return [BENCHMARKS[name] for name in sorted(BENCHMARKS)]


def get_benchmark(name: str) -> BenchmarkSpec:
    if name not in BENCHMARKS:
        raise UserError(f"unknown benchmark {name!r}; expected one of: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name]


# ---------------------------------------------------------------- loading


def load_benchmark(
    name: str,
    split: str | None = None,
    data_dir: str | Path | None = None,
    source: str = "auto",
    limit: int | None = None,
    on_invalid: str = "error",
) -> list[Problem]:
    """Load one split of a benchmark (the default evaluation split when `split` is None).

    data_dir defaults to $LATENTREASON_DATA_DIR. source='auto' reads the local file when there is a
    data directory and the hub otherwise; 'local' and 'hub' force one of them. `limit` keeps the
    first N problems. on_invalid='skip' leaves out (and counts) malformed records.
    """
    spec = get_benchmark(name)
    split = spec.default_split if split is None else split
    if split not in spec.splits:
        raise UserError(f"benchmark {name!r} has no split {split!r}; expected one of: {', '.join(spec.splits)}")
    if source not in SOURCES:
        raise UserError(f"unknown source {source!r}; expected one of: {', '.join(SOURCES)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise UserError(f"limit must be a non-negative integer, found {limit!r}")
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None

    if source == "hub" or (source == "auto" and data_dir is None):
        if source == "auto" and spec.hub_id is None:
            raise UserError(
                f"benchmark {name!r} needs a data directory (it has no Hugging Face hub copy): "
                f"pass data_dir / --data-dir or set {DATA_DIR_ENV}"
            )
        problems = _load_from_hub(spec, split, limit, on_invalid)
    else:
        if data_dir is None:
            raise UserError(f"source='local' needs a data directory: pass data_dir / --data-dir or set {DATA_DIR_ENV}")
        problems = _load_local(spec, split, Path(data_dir), on_invalid)
    return problems if limit is None else problems[:limit]


def _load_local(spec: BenchmarkSpec, split: str, data_dir: Path, on_invalid: str) -> list[Problem]:
    if split not in spec.files:
        raise UserError(
            f"benchmark {spec.name!r} split {split!r} exists only on the Hugging Face hub; "
            f"use source='hub' (local splits: {', '.join(spec.files)})"
        )
    path = data_dir / spec.files[split]
    if not path.is_file():
        how = f"put the file there (data directory laid out like the shared data; upstream: {spec.upstream})"
        if split in spec.hub_splits:
            how += f", or load it from the Hugging Face hub ({spec.hub_id}) with source='hub'"
            how += " after `pip install latentreason[hub]`"
        raise UserError(f"benchmark {spec.name!r} split {split!r}: file not found: {path.resolve()}; {how}")
    return LOADERS[spec.format](path, on_invalid)


def _load_from_hub(spec: BenchmarkSpec, split: str, limit: int | None, on_invalid: str) -> list[Problem]:
    if spec.hub_id is None:
        raise UserError(f"benchmark {spec.name!r} has no Hugging Face hub copy; use a data directory")
    if split not in spec.hub_splits:
        raise UserError(
            f"benchmark {spec.name!r} split {split!r} is not on the hub; "
            f"hub splits: {', '.join(spec.hub_splits)} (or use a data directory)"
        )
    convert = CONVERTERS[spec.hub_format or spec.format]
    adapt = spec.hub_adapter or (lambda row, where: dict(row))
    invalid = InvalidRecords(on_invalid, f"{spec.hub_id} split {split}")
    problems: list[Problem] = []
    for hub_split in spec.hub_splits[split]:
        for index, row in enumerate(fetch_hub_rows(spec.hub_id, spec.hub_config, hub_split)):
            if limit is not None and len(problems) >= limit:
                return invalid.check_nonempty(problems)
            where = f"{spec.hub_id} split {hub_split} record {index}"
            try:
                problem = convert(adapt(row, where), where)
            except DataError as error:
                invalid.handle(error)
                continue
            problem.meta["source"] = f"hf:{spec.hub_id}/{hub_split}#{index}"
            problems.append(problem)
    return invalid.check_nonempty(problems)


def fetch_hub_rows(dataset_id: str, config: str | None, split: str) -> Iterable[Row]:
    """Rows of one hub split, as dicts. Tests replace this function to stay offline."""
    try:
        import datasets  # optional extra: only hub users need it
    except ImportError:
        raise UserError(
            f"loading {dataset_id} from the Hugging Face hub needs the `datasets` package: "
            "pip install latentreason[hub] (or pass a data directory)"
        ) from None
    try:
        return datasets.load_dataset(dataset_id, config, split=split)
    except Exception as e:  # network, authentication, renamed dataset: all fixable by the user
        raise UserError(f"could not load {dataset_id} split {split!r} from the Hugging Face hub: {e}") from e
