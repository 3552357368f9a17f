"""Shared test setup: the `gpu` marker (skipped without CUDA) and a torchrun launcher."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU node)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str | Path, nproc: int, *args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `script` under torchrun with `nproc` local processes; fail the test with its output."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1", f"--master-port={free_port()}",
        str(script), *args,
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)
    if r.returncode != 0:
        pytest.fail(f"torchrun {script} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}")
    return r


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def single_process_megatron():
    """One-rank gloo group + megatron parallel_state (TP=PP=CP=1) in this pytest process."""
    from megaindex import cpu_backend, distributed

    cpu_backend.activate()
    distributed.init_single_process()
    return True


@pytest.fixture(scope="session")
def tok():
    """The fixture SentencePiece tokenizer (tests/fixtures/tokenizer.model), shared by the data and eval tests."""
    from megaindex.data.tokenizer import IndexTokenizer

    return IndexTokenizer(REPO / "tests/fixtures/tokenizer.model")


@pytest.fixture(scope="session")
def filler():
    """The retrieval documents' filler text from the fixture corpus (its vocabulary and counts cached once)."""
    from megaindex.data.retrieval_filler import FillerText

    return FillerText([REPO / "tests/fixtures/corpus/pretrain.jsonl"])
