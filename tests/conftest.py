"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def find_shared_data_dir() -> Path:
    """The real benchmark files: $LATENTREASON_TEST_DATA, else <repo>/../shared/data."""
    return Path(os.environ.get("LATENTREASON_TEST_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real data directory; tests that use it skip when it is absent."""
    path = find_shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real benchmark data not found at {path} (set LATENTREASON_TEST_DATA)")
    return path


@pytest.fixture(scope="session")
def shared_file(shared_data_dir: Path):
    """shared_file('gsm8k/test.jsonl') -> its path, skipping the test when that file is absent."""

    def get(relative: str) -> Path:
        path = shared_data_dir / relative
        if not path.is_file():
            pytest.skip(f"{relative} not found at {path}")
        return path

    return get


@pytest.fixture(scope="session")
def two_rl_ranks(tmp_path_factory) -> Path:
    """The DDP reference launch of the distributed tests (test_distributed.py, test_fsdp_layers.py): GRPO in
    rl/, ATP-Latent SFT in atp/; one launch for the whole session."""
    from tests.test_distributed import ATP_RUN, RL_RUN, torchrun_two

    runs = {"rl": RL_RUN, "atp": ATP_RUN}
    return torchrun_two("distributed_rl_worker.py", tmp_path_factory.mktemp("ddp-rl"), runs, timeout=180)
