"""The SciFact Lucene index, built once per test process through the `index` CLI (the slowest fixture).

Shared by test_first_stage.py and test_cli_first_stage.py without a conftest entry: a process-wide cache.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from conftest import require_shared


@functools.lru_cache(maxsize=None)
def scifact_index_dir() -> Path:
    corpus = require_shared("beir-scifact", "corpus.jsonl.gz")
    from pyserini_ssm.index import main

    root = Path(tempfile.mkdtemp(prefix="pyserini-ssm-scifact-"))
    atexit.register(shutil.rmtree, root, True)
    index_dir = root / "index"
    assert main(["--input", str(corpus), "--index", str(index_dir), "--threads", "2"]) == 0
    return index_dir
