"""BM25 retrieval with Pyserini's LuceneSearcher (batch search with threads); writes a TREC run.

    python -m pyserini_ssm.search --index indexes/scifact --topics beir-v1.0.0-scifact-test \\
        --topics-dir ../shared/data/topics-and-qrels --output runs/scifact.bm25.txt

--index takes a local index folder or a Pyserini prebuilt name (msmarco-v1-passage, beir-v1.0.0-scifact.flat, ...;
downloaded by Pyserini, online only). --topics takes a Pyserini topics name or a file (`qid<TAB>query`, .gz too).
For BEIR topics a hit whose docid equals the query id is dropped (--remove-query), as Pyserini's BEIR runs do.
The run tag records the BM25 parameters.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

from pyserini_ssm.bm25 import B, K1, SEARCH_THREADS, SEARCH_THREADS_HELP, parse_fields
from pyserini_ssm.cli import run_main
from pyserini_ssm.cli_config import add_options, config_values, option, option_names


@dataclass(frozen=True)
class SearchConfig:
    """The settings of one BM25 search (the CLI's flags, built by `cli_config`); BM25's defaults are `bm25`'s."""

    index: str = field(metadata=option("index folder or Pyserini prebuilt index name"))
    topics: str = field(metadata=option("Pyserini topics name or topics file"))
    output: str = field(metadata=option("TREC run file to write"))
    hits: int = field(default=1000, metadata=option("hits per query"))
    bm25_k1: float = field(default=K1, metadata=option("BM25 k1", flag="--k1", hidden_aliases=("--bm25-k1",)))
    bm25_b: float = field(default=B, metadata=option("BM25 b", flag="--b", hidden_aliases=("--bm25-b",)))
    threads: int = field(default=SEARCH_THREADS, metadata=option("search threads", default_help=SEARCH_THREADS_HELP))
    batch_size: int = field(default=128, metadata=option("queries per batch search"))
    fields: dict[str, float] | None = field(default=None, metadata=option(
        "search these fields together, e.g. contents=1.0 title=1.0 (default: both of those for an index with a "
        "title field, as Pyserini's BEIR multifield runs; else contents)", nargs="+", metavar="FIELD=BOOST",
        parse=parse_fields))
    remove_query: bool | None = field(default=None, metadata=option(
        "drop a hit whose docid equals the query id (default: on for BEIR topics, off otherwise)"))
    topics_dir: str | None = field(default=None, metadata=option(
        "folder of Anserini topics files (default $PYSERINI_SSM_TOPICS_DIR)"))
    tag: str | None = field(default=None, metadata=option("run tag (default: bm25_k1=<k1>_b=<b>)"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyserini_ssm.search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_options(parser, SearchConfig, option_names(SearchConfig))
    return parser


def bm25_tag(k1: float, b: float) -> str:
    return f"bm25_k1={k1:g}_b={b:g}"


def main(argv: Sequence[str] | None = None) -> int:
    config = SearchConfig(**config_values(build_parser().parse_args(argv), SearchConfig))
    from pyserini_ssm.bm25 import check_bm25_parameters
    from pyserini_ssm.errors import UserError
    from pyserini_ssm.files import atomic_output, check_output_path
    from pyserini_ssm.runs import format_run_lines, is_token
    from pyserini_ssm.topics import is_beir_topics, load_topics

    check_output_path(config.output)
    check_bm25_parameters(config.bm25_k1, config.bm25_b)
    for flag, value in (("--hits", config.hits), ("--threads", config.threads), ("--batch-size", config.batch_size)):
        if value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    remove_query = is_beir_topics(config.topics) if config.remove_query is None else config.remove_query
    tag = config.tag or bm25_tag(config.bm25_k1, config.bm25_b)
    if not is_token(tag):
        raise UserError(f"--tag {tag!r} must be one word (no spaces)")
    topics = load_topics(config.topics, config.topics_dir)

    from pyserini_ssm.first_stage.lucene import iter_bm25_batches, open_searcher

    start = time.perf_counter()
    searcher = open_searcher(config.index)
    fields = config.fields if config.fields is not None else searcher.default_fields()
    print(
        f"BM25 k1={config.bm25_k1:g} b={config.bm25_b:g}: {len(topics)} queries, {config.hits} hits, "
        f"remove_query={'on' if remove_query else 'off'}, threads={config.threads}, tag={tag}"
        + (f", fields={' '.join(f'{name}={boost:g}' for name, boost in fields.items())}" if fields else ""),
        flush=True,
    )
    written = 0
    with atomic_output(config.output) as handle:
        for batch in iter_bm25_batches(
            searcher,
            topics,
            hits=config.hits,
            k1=config.bm25_k1,
            b=config.bm25_b,
            threads=config.threads,
            batch_size=config.batch_size,
            remove_query=remove_query,
            fields=fields,
        ):
            for qid, hits in batch:
                handle.writelines(format_run_lines(qid, hits, tag))
                written += len(hits)
    elapsed = time.perf_counter() - start
    print(f"wrote {written} hits for {len(topics)} queries to {config.output} in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
