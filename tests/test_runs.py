from __future__ import annotations

import gzip

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyserini_ssm.cli import run_main
from pyserini_ssm.errors import UserError
from pyserini_ssm.runs import Hit, format_run_lines, read_run, run_as_dict, write_run

from conftest import require_shared


def test_write_then_read_round_trip_in_pyserini_order(tmp_path):
    results = {"q2": [Hit("b", 1.0), Hit("a", 1.0), Hit("c", 3.5)], "q1": [Hit("x", -2.0)]}
    path = tmp_path / "run.txt"
    write_run(results, path, tag="t")
    assert path.read_text().splitlines() == [
        "q2 Q0 c 1 3.500000 t",
        "q2 Q0 a 2 1.000000 t",  # tie broken by docid ascending
        "q2 Q0 b 3 1.000000 t",
        "q1 Q0 x 1 -2.000000 t",
    ]
    back = read_run(path)
    assert list(back) == ["q2", "q1"]
    assert [h.docid for h in back["q2"]] == ["c", "a", "b"]
    assert run_as_dict(back) == {"q2": {"c": 3.5, "a": 1.0, "b": 1.0}, "q1": {"x": -2.0}}


def test_read_orders_by_score_then_rank(tmp_path):
    path = tmp_path / "run.txt"
    path.write_text("1 Q0 d1 2 5.0 x\n1 Q0 d2 1 5.0 x\n1 Q0 d3 3 9.0 x\n")
    assert [h.docid for h in read_run(path)["1"]] == ["d3", "d2", "d1"]


def test_gzip_run(tmp_path):
    path = tmp_path / "run.txt.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("7 Q0 doc 1 1.5 tag\n")
    assert read_run(path) == {"7": [Hit("doc", 1.5)]}


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 Q0 d 1 2.0\n", "6 columns"),
        ("1 Q0 d one 2.0 t\n", "rank"),
        ("1 Q0 d 1 high t\n", "not a number"),
        ("1 Q0 d 1 nan t\n", "not a number"),
        ("\n\n", "no results"),
    ],
)
def test_malformed_run_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.run"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as error:
        read_run(path)
    if "no results" not in message:
        assert f"{path}:" in str(error.value)


def test_undecodable_and_corrupt_gzip_are_user_errors(tmp_path):
    path = tmp_path / "latin.run"
    path.write_bytes(b"1 Q0 d\xe9 1 2.0 t\n")
    with pytest.raises(UserError, match="UTF-8"):
        read_run(path)
    broken = tmp_path / "broken.run.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UserError, match="cannot read"):
        read_run(broken)


def test_missing_run_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_run(tmp_path / "nope.run")


def test_write_run_into_missing_folder_leaves_nothing(tmp_path):
    target = tmp_path / "missing" / "run.txt"
    with pytest.raises(UserError, match="does not exist"):
        write_run({"1": [Hit("d", 1.0)]}, target, tag="t")
    assert not (tmp_path / "missing").exists()


def test_bad_docid_aborts_write_without_partial_file(tmp_path):
    target = tmp_path / "run.txt"
    with pytest.raises(UserError, match="whitespace"):
        write_run({"1": [Hit("ok", 2.0)], "2": [Hit("bad id", 1.0)]}, target, tag="t")
    assert list(tmp_path.iterdir()) == []


def test_format_run_lines_for_streaming():
    lines = format_run_lines("5", [Hit("a", 0.5), Hit("b", 0.25)], "tag")
    assert lines == ["5 Q0 a 1 0.500000 tag\n", "5 Q0 b 2 0.250000 tag\n"]
    with pytest.raises(UserError):
        format_run_lines("5", [], "two words")


def test_shared_dl19_run_reads():
    path = require_shared("msmarco-passage-dl19-bm25-top100", "run.dl19-passage.bm25.top100.txt.gz")
    run = read_run(path)
    assert len(run) == 43 and all(len(hits) == 100 for hits in run.values())
    assert all(a.score >= b.score for hits in run.values() for a, b in zip(hits, hits[1:]))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_read_run_parses_or_raises_user_error(tmp_path, data):
    path = tmp_path / "fuzz.run"
    path.write_bytes(data)
    try:
        run = read_run(path)
    except UserError:
        return
    for qid, hits in run.items():
        assert qid and all(h.docid and h.score == h.score for h in hits)
        assert len({h.docid for h in hits}) == len(hits)


token = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=" \t\n\r\f\v\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), min_size=1, max_size=8)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.dictionaries(token, st.dictionaries(token, st.floats(-1e6, 1e6), min_size=1, max_size=5), min_size=1, max_size=4))
def test_fuzz_write_read_round_trip(tmp_path, run):
    path = tmp_path / "rt.run"
    write_run({q: [Hit(d, s) for d, s in docs.items()] for q, docs in run.items()}, path, tag="t")
    back = run_as_dict(read_run(path))
    assert back.keys() == run.keys()
    for qid, docs in run.items():
        assert back[qid].keys() == docs.keys()
        assert all(abs(back[qid][d] - round(s, 6)) < 1e-6 for d, s in docs.items())
