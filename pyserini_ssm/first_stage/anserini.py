"""The first stage's one door to the JVM: Anserini's Java classes through Pyserini's pyjnius set-up.

`ensure_java()` first (the right Java, before jnius loads), then importing Pyserini configures the classpath with
its Anserini jar and starts the JVM (once per process), then Java's logging is quieted. Every function of
`first_stage/` that touches Java starts here.
"""

from __future__ import annotations

from pyserini_ssm.java import ensure_java, quiet_java_logging


def anserini_classes():
    """pyjnius' `autoclass`, with Anserini's classes on the classpath (imports pyserini: starts the JVM on first use)."""
    ensure_java()
    from pyserini.pyclass import autoclass  # noqa: F401  (configures the classpath, starts the JVM)

    quiet_java_logging()
    return autoclass
