import json
import random

import pytest

from pyserini_ssm.documents import (
    SENTENCE_SEGMENTS,
    SegmentConfig,
    aggregate_max,
    best_segment_index,
    doc_id_of_segment,
    expand_documents,
    firstp_text,
    maxp_scores,
    segment_document,
    split_sentences,
)
from pyserini_ssm.errors import UserError

WORDS = [f"w{n}" for n in range(10)]


def test_word_windows_cover_the_text_with_overlap():
    text = " ".join(WORDS)
    assert segment_document(text, window=4, stride=2) == [
        "w0 w1 w2 w3",
        "w2 w3 w4 w5",
        "w4 w5 w6 w7",
        "w6 w7 w8 w9",
    ]
    assert segment_document(text, window=4, stride=3) == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]
    assert segment_document(text, window=20, stride=10) == [text]
    assert segment_document("   ", window=4, stride=2) == []


def test_sentence_windows_like_msmarco_doc_segmented():
    text = " ".join(f"Sentence number {n} ends here." for n in range(12))
    assert len(split_sentences(text)) == 12
    segments = segment_document(text, window=10, stride=5, unit="sentences")
    assert len(segments) == 2
    assert segments[0].startswith("Sentence number 0 ") and segments[0].endswith("number 9 ends here.")
    assert segments[1].startswith("Sentence number 5 ") and segments[1].endswith("number 11 ends here.")
    assert split_sentences('He said "stop." Then? (Yes!) no') == ['He said "stop."', "Then?", "(Yes!)", "no"]


def test_bad_windows():
    with pytest.raises(UserError, match="positive"):
        segment_document("a b", window=0, stride=1)
    with pytest.raises(UserError, match="skip text"):
        segment_document("a b", window=2, stride=3)
    with pytest.raises(UserError, match="unit"):
        SegmentConfig(unit="tokens")


def test_firstp_text():
    assert firstp_text("A  Title", "body  text here") == "A Title body text here"
    assert firstp_text(None, "one two three", max_words=2) == "one two"


def test_segment_ids_and_aggregation():
    assert doc_id_of_segment("D59221#12") == "D59221"
    assert doc_id_of_segment("D7") == "D7"
    ids = ["D1", "D2", "D1", "D2", "D3"]
    scores = [0.1, 0.9, 0.7, 0.2, -1.0]
    assert aggregate_max(ids, scores) == {"D1": 0.7, "D2": 0.9, "D3": -1.0}
    assert best_segment_index(ids, scores) == {"D1": 2, "D2": 1, "D3": 4}
    with pytest.raises(UserError):
        aggregate_max(ids, scores[:2])


QUERY = "quantum tunneling microscope resolution"
NEEDLE = "the scanning quantum tunneling microscope reaches atomic resolution on clean surfaces"


def _collection(path):
    """Three 600-word documents of filler; only D2 holds the needle, at words 400-412."""
    generator = random.Random(13)
    vocabulary = [f"filler{n}" for n in range(300)]
    documents = []
    for doc_id in ("D1", "D2", "D3"):
        words = [generator.choice(vocabulary) for _ in range(600)]
        if doc_id == "D2":
            words[400:400] = NEEDLE.split()
        documents.append({"id": doc_id, "title": f"Document {doc_id}", "contents": " ".join(words)})
    with open(path, "w") as handle:
        for document in documents:
            handle.write(json.dumps(document) + "\n")
    return path


def overlap_score(query, texts):
    """Share of query terms present in each text: the simplest real relevance scorer."""
    terms = set(query.split())
    return [len(terms & set(text.split())) / len(terms) for text in texts]


def test_maxp_picks_the_only_matching_segment(tmp_path):
    path = _collection(tmp_path / "docs.jsonl")
    documents = [(d["id"], d["title"], d["contents"]) for d in map(json.loads, open(path))]
    config = SegmentConfig("words", 150, 75)

    scores = maxp_scores(QUERY, documents, overlap_score, config)
    assert scores == {"D1": 0.0, "D2": 1.0, "D3": 0.0}

    texts, doc_ids = expand_documents(documents, config)
    assert doc_ids.count("D2") == 8  # 612 words: windows start at 0, 75, ..., 525
    best = best_segment_index(doc_ids, overlap_score(QUERY, texts))
    assert NEEDLE in texts[best["D2"]]
    assert texts[best["D2"]].startswith("Document D2 ")  # the title leads every segment
    # the first window that holds the whole needle (words 400-412) starts at 300: the fifth D2 segment
    assert best["D2"] - doc_ids.index("D2") == 4

    # FirstP reads only the start of each document: the needle, 400 words in, is beyond a 150-word input.
    firstp = overlap_score(QUERY, [firstp_text(title, body, max_words=150) for _, title, body in documents])
    assert firstp == [0.0, 0.0, 0.0]


def test_maxp_with_sentence_segments():
    body = " ".join(f"Filler sentence {n} says nothing." for n in range(30))
    body += " " + NEEDLE.capitalize() + "."
    scores = maxp_scores(QUERY, [("D9", None, body), ("D8", None, "Nothing here.")], overlap_score, SENTENCE_SEGMENTS)
    assert scores == {"D9": 1.0, "D8": 0.0}


def test_max_passage_run_keeps_each_documents_best_segment():
    from pyserini_ssm.documents import max_passage_run
    from pyserini_ssm.runs import Hit

    segments = {"q": [Hit("D1#2", 9.0), Hit("D2#0", 8.0), Hit("D1#0", 7.5), Hit("D3#1", 7.0), Hit("D2#5", 6.0)]}
    documents = max_passage_run(segments)
    assert [(hit.docid, hit.score) for hit in documents["q"]] == [("D1", 9.0), ("D2", 8.0), ("D3", 7.0)]
    assert [hit.docid for hit in max_passage_run(segments, hits=2)["q"]] == ["D1", "D2"]
