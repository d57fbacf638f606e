import pytest

pytest.importorskip("trec_car")

from trec_car import read_data  # noqa: E402

from pyserini_ssm.car import (  # noqa: E402
    iter_paragraphs,
    main,
    outline_topics,
    paragraph_item,
    section_item,
    write_outlines,
    write_paragraphs,
)
from pyserini_ssm.errors import UserError  # noqa: E402

PARAGRAPHS = [
    ("a1f3c0d9e2b84f6c9d0e1f2a3b4c5d6e", "Aftertaste is the taste intensity of a food or beverage perceived after it is removed."),
    ("b2e4d1c0f3a95e7d8c1f2e3d4c5b6a7f", "Temporal taste perception: bitterness lingers longer than sweetness on the tongue."),
    ("c3d5e2f1a4b06f8e9d2a3f4e5d6c7b8a", "Green tea polyphenols are responsible for an astringent aftertaste in some drinkers."),
    ("d4c6f3a2b5c17a9f0e3b4a5f6e7d8c9b", "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris."),
]


def test_paragraph_file_round_trips_through_trec_car_tools(tmp_path):
    path = tmp_path / "sample.paragraphs.cbor"
    write_paragraphs(path, PARAGRAPHS)
    assert list(iter_paragraphs(path)) == PARAGRAPHS
    # and the official reader sees exactly our fields, links included
    linked = tmp_path / "linked.cbor"
    from pyserini_ssm.car import PARAGRAPHS_FILE, _write_car_file

    item = paragraph_item("e5", "See the ", links=[("tower", "Eiffel Tower", "enwiki:Eiffel%20Tower")])
    _write_car_file(linked, PARAGRAPHS_FILE, [item])
    with open(linked, "rb") as handle:
        (paragraph,) = list(read_data.iter_paragraphs(handle))
    assert paragraph.para_id == "e5"
    assert paragraph.get_text() == "See the tower"
    assert paragraph.bodies[1].pageid == "enwiki:Eiffel%20Tower"
    assert paragraph.bodies[1].page == "Eiffel Tower"


def test_outline_section_queries(tmp_path):
    path = tmp_path / "sample.cbor-outlines.cbor"
    sections = [
        section_item("Temporal taste perception", "Temporal%20taste%20perception"),
        section_item("Causes", "Causes", [section_item("Green tea", "Green%20tea")]),
    ]
    write_outlines(path, [("Aftertaste", "enwiki:Aftertaste", sections)])
    assert outline_topics(path) == {
        "enwiki:Aftertaste/Temporal%20taste%20perception": "Aftertaste Temporal taste perception",
        "enwiki:Aftertaste/Causes": "Aftertaste Causes",
        "enwiki:Aftertaste/Causes/Green%20tea": "Aftertaste Causes Green tea",
    }
    assert list(outline_topics(path, include_pages=True))[0] == "enwiki:Aftertaste"
    # a paragraph file is not an outlines file
    paragraphs = tmp_path / "p.cbor"
    write_paragraphs(paragraphs, PARAGRAPHS)
    with pytest.raises(UserError, match="not a CAR outlines file"):
        outline_topics(paragraphs)
    with pytest.raises(UserError, match="not a CAR paragraph file"):
        list(iter_paragraphs(path))


def test_topics_cli_writes_tsv(tmp_path):
    outlines = tmp_path / "o.cbor"
    write_outlines(outlines, [("Paris", "enwiki:Paris", [section_item("Landmarks", "Landmarks")])])
    output = tmp_path / "topics.tsv"
    assert main(["topics", str(outlines), str(output)]) == 0
    assert output.read_text() == "enwiki:Paris/Landmarks\tParis Landmarks\n"


@pytest.mark.java
def test_car_paragraphs_index_and_retrieve(tmp_path):
    from pyserini_ssm.first_stage.lucene import bm25_search, open_searcher

    paragraphs = tmp_path / "sample.paragraphs.cbor"
    write_paragraphs(paragraphs, PARAGRAPHS)
    outlines = tmp_path / "sample.cbor-outlines.cbor"
    write_outlines(
        outlines,
        [("Aftertaste", "enwiki:Aftertaste", [section_item("Temporal taste perception", "Temporal%20taste%20perception")])],
    )
    index = tmp_path / "index"
    assert main(["index", str(paragraphs), str(index)]) == 0
    topics = outline_topics(outlines)
    results = bm25_search(open_searcher(index), topics, hits=10)
    qid = "enwiki:Aftertaste/Temporal%20taste%20perception"
    ranked = [hit.docid for hit in results[qid]]
    assert ranked[0] == PARAGRAPHS[1][0]  # the paragraph on temporal taste perception
    assert PARAGRAPHS[3][0] not in ranked  # the Eiffel Tower shares no term with the query
