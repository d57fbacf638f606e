"""`python -m pyserini_ssm.X --help` in a fresh interpreter, with the heavy packages it loaded.

A CLI's --help is fast (< 0.2 s, docs/DESIGN.md) because it imports neither torch, transformers nor pyserini: tests
assert that, not a wall-clock time, which would measure the machine (timings are the benchmark commands' job).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "pyserini", "jnius", "mamba_ssm", "sentence_transformers", "matplotlib")
_MARK = "loaded by --help:"


def help_and_heavy_imports(module: str) -> tuple[str, list[str]]:
    """(the --help text, the HEAVY packages loaded while printing it) of `python -m <module> --help`."""
    code = (f"import runpy, sys\nsys.argv = [{module!r}, '--help']\n"
            f"try:\n    runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
            "except SystemExit as stop:\n    assert stop.code in (0, None), stop.code\n"
            f"print({_MARK!r}, ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore"}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                               cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr
    text, _, loaded = completed.stdout.rpartition(_MARK)
    return text, [name for name in loaded.strip().split(",") if name]
