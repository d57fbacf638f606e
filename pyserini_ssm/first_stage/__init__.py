"""First-stage retrieval: Lucene indexing, BM25 search and document texts, through Pyserini.

This package is the only place that imports pyserini or jnius (and so starts a JVM); import it lazily, inside
functions, so that `--help` and the modeling code never pay for Java.
"""
