"""TREC Complex Answer Retrieval (CAR): paragraph collections and outline queries, through the same pipeline.

- `index_paragraphs(paragraphs.cbor, index_dir)`: reads a CAR paragraph file (`paragraphCorpus.cbor`, or a
  benchmark's `*.paragraphs` file) with `trec-car-tools`, writes it as a Pyserini JsonCollection
  (`{"id": para_id, "contents": text}`) in a temporary folder and indexes it with
  `pyserini_ssm.first_stage.lucene.build_index`. The paragraph text is `Paragraph.get_text()`: plain text and link
  anchor texts, concatenated.
- `outline_topics(outlines.cbor)`: the standard CAR section queries, one per heading path of each outline page
  (`Page.flat_headings_list()`): id `<page id>/<heading id>/<sub-heading id>...` (the ids of the CAR qrels), text
  `<page name> <heading> <sub-heading>...`. `include_pages=True` adds one query per page (id = the page id).
- `write_paragraphs` / `write_outlines`: write small CAR CBOR files (trec-car-tools reads but does not write);
  used by the tests, and to cut a collection down to a sample.

CLI:

    python -m pyserini_ssm.car index paragraphCorpus.cbor indexes/car-paragraphs [--threads 8]
    python -m pyserini_ssm.car topics train.pages.cbor-outlines.cbor topics.car.tsv [--include-pages]

then `python -m pyserini_ssm.search --index indexes/car-paragraphs --topics topics.car.tsv ...` and rerank as usual.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

from pyserini_ssm.cli import run_main
from pyserini_ssm.errors import UserError

PARAGRAPHS_PER_FILE = 1_000_000  # Anserini indexes one file per thread: several files for the 30M-paragraph corpus
# CAR file type tags in the header (trec-car-tools `_iter_with_header`): 0 pages, 1 outlines, 2 paragraphs.
PAGES_FILE, OUTLINES_FILE, PARAGRAPHS_FILE = 0, 1, 2


def _trec_car():
    try:
        from trec_car import read_data
    except ImportError:
        raise UserError("reading TREC CAR files needs trec-car-tools: pip install trec-car-tools") from None
    return read_data


def _open_cbor(path: str | os.PathLike) -> BinaryIO:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CAR file not found: {path}")
    return open(path, "rb")  # a BufferedReader: trec-car-tools peeks at the next byte


def iter_paragraphs(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """(paragraph id, text) for each paragraph of a CAR paragraph CBOR file."""
    read_data = _trec_car()
    with _open_cbor(path) as handle:
        try:
            for paragraph in read_data.iter_paragraphs(handle):
                yield paragraph.para_id, paragraph.get_text()
        except read_data.WrongCarFileException as error:
            raise UserError(f"{path} is not a CAR paragraph file ({error}); give the *.paragraphs / paragraphCorpus file") from None
        except (read_data.CborElementNotDefinedException, read_data.BrokenCborFileException, ValueError) as error:
            raise UserError(f"{path}: not a readable CAR paragraph CBOR file ({type(error).__name__})") from None


def paragraphs_to_json_collection(
    paragraphs: Iterable[tuple[str, str]], folder: str | os.PathLike, per_file: int = PARAGRAPHS_PER_FILE
) -> int:
    """Write (id, text) pairs as JsonCollection JSONL files (`docs00000.jsonl`, ...) into `folder`; returns count."""
    folder = Path(folder)
    count = 0
    handle = None
    try:
        for para_id, text in paragraphs:
            if count % per_file == 0:
                if handle is not None:
                    handle.close()
                handle = open(folder / f"docs{count // per_file:05d}.jsonl", "w", encoding="utf-8")
            handle.write(json.dumps({"id": para_id, "contents": text}, ensure_ascii=False) + "\n")
            count += 1
    finally:
        if handle is not None:
            handle.close()
    return count


def index_paragraphs(cbor_path: str | os.PathLike, index_dir: str | os.PathLike, threads: int = 1):
    """Index a CAR paragraph file with Lucene (JsonCollection through a temporary folder); returns IndexStats."""
    from pyserini_ssm.first_stage.lucene import build_index

    index_dir = Path(index_dir)
    parent = index_dir.parent if str(index_dir.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"index parent folder does not exist: {parent} (create it first)")
    with tempfile.TemporaryDirectory(prefix=".car-json-", dir=parent) as folder:
        count = paragraphs_to_json_collection(iter_paragraphs(cbor_path), folder)
        if count == 0:
            raise UserError(f"{cbor_path} holds no paragraphs")
        return build_index(folder, index_dir, collection="JsonCollection", threads=threads)


def outline_topics(path: str | os.PathLike, include_pages: bool = False) -> dict[str, str]:
    """CAR section queries of an outlines (or pages) CBOR file: section path id -> page name + headings."""
    read_data = _trec_car()
    topics: dict[str, str] = {}
    with _open_cbor(path) as handle:
        try:
            for page in read_data.iter_annotations(handle):  # accepts outline and page files alike
                if include_pages:
                    topics[page.page_id] = page.page_name
                for section_path in page.flat_headings_list():
                    qid = "/".join([page.page_id] + [section.headingId for section in section_path])
                    topics[qid] = " ".join([page.page_name] + [section.heading for section in section_path])
        except read_data.WrongCarFileException as error:
            raise UserError(f"{path} is not a CAR outlines file ({error}); give the *.cbor-outlines.cbor file") from None
        except (read_data.CborElementNotDefinedException, read_data.BrokenCborFileException, ValueError) as error:
            raise UserError(f"{path}: not a readable CAR outlines CBOR file ({type(error).__name__})") from None
    return topics


def write_topics_tsv(topics: dict[str, str], path: str | os.PathLike) -> None:
    """qid<TAB>query lines, the TSV topics format Pyserini and pyserini_ssm.topics read."""
    from pyserini_ssm.files import atomic_output

    with atomic_output(path) as handle:
        for qid, query in topics.items():
            if "\t" in qid or "\n" in qid:
                raise UserError(f"query id {qid!r} holds a tab or newline and cannot be written as TSV")
            handle.write(f"{qid}\t{' '.join(query.split())}\n")


# ------------------------------------------------------------------------------------------ writing CAR CBOR
# Layout read by trec-car-tools 2.x: a header ["CAR", [file type], provenance], then one indefinite-length array
# (0x9f ... 0xff) of items. Identifiers (paragraph, page, heading ids) are CBOR byte strings; texts are text strings.
#   paragraph: [0, para_id, [body...]]; body: [0, text] or [1, [0, page name, [section], page id, anchor text]]
#   page:      [0 (page) or 1 (outline), page name, page id, [skeleton...]]
#   skeleton:  section [0, heading, heading id, [skeleton...]] | paragraph wrapper [1, paragraph]


def _cbor():
    try:
        import cbor
    except ImportError:
        raise UserError("writing TREC CAR files needs the cbor package (installed with trec-car-tools)") from None
    return cbor


def _write_car_file(path: str | os.PathLike, file_type: int, items: Iterable) -> None:
    from pyserini_ssm.files import atomic_output

    cbor = _cbor()
    with atomic_output(path, "wb") as handle:
        handle.write(cbor.dumps(["CAR", [file_type], ["pyserini_ssm", []]]))
        handle.write(b"\x9f")
        for item in items:
            handle.write(cbor.dumps(item))
        handle.write(b"\xff")


def paragraph_item(para_id: str, text: str, links: Sequence[tuple[str, str, str]] = ()) -> list:
    """A CAR paragraph: `text`, then one link body per (anchor text, target page name, target page id)."""
    bodies: list = [[0, text]]
    for anchor, page_name, page_id in links:
        bodies.append([1, [0, page_name, [], page_id.encode("ascii"), anchor]])
    return [0, para_id.encode("ascii"), bodies]


def write_paragraphs(path: str | os.PathLike, paragraphs: Iterable[tuple[str, str]]) -> None:
    """Write (paragraph id, text) pairs as a CAR paragraph CBOR file."""
    _write_car_file(path, PARAGRAPHS_FILE, (paragraph_item(para_id, text) for para_id, text in paragraphs))


def section_item(heading: str, heading_id: str, children: Sequence = ()) -> list:
    """A CAR section (children: nested `section_item`s)."""
    return [0, heading, heading_id.encode("ascii"), list(children)]


def write_outlines(path: str | os.PathLike, pages: Iterable[tuple[str, str, Sequence]]) -> None:
    """Write (page name, page id, [section_item...]) outlines as a CAR outlines CBOR file."""
    _write_car_file(
        path, OUTLINES_FILE, ([1, name, page_id.encode("ascii"), list(sections)] for name, page_id, sections in pages)
    )


# --------------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pyserini_ssm.car", description="TREC CAR collections and queries.")
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="index a CAR paragraph CBOR file with Lucene")
    index.add_argument("paragraphs", help="paragraph CBOR file (paragraphCorpus.cbor, *.paragraphs)")
    index.add_argument("index_dir", help="new index folder")
    index.add_argument("--threads", type=int, default=1)
    topics = commands.add_parser("topics", help="write the section queries of a CAR outlines file as TSV topics")
    topics.add_argument("outlines", help="outlines CBOR file (*.cbor-outlines.cbor)")
    topics.add_argument("output", help="topics TSV to write")
    topics.add_argument("--include-pages", action="store_true", help="also one query per page (its name)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "index":
        stats = index_paragraphs(args.paragraphs, args.index_dir, threads=args.threads)
        print(f"indexed {stats.indexed} paragraphs into {stats.index_dir}", file=sys.stderr)
    else:
        topics = outline_topics(args.outlines, include_pages=args.include_pages)
        if not topics:
            raise UserError(f"{args.outlines} holds no sections to query")
        write_topics_tsv(topics, args.output)
        print(f"wrote {len(topics)} queries to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
