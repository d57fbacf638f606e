"""CLI flags built from the config dataclasses (`cli_config`): one default per setting, the same BM25 flags and
defaults in `rerank`, `search` and `train`, and the old `--bm25-k1`/`--bm25-b` names still parsed (hidden)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

import pytest

from pyserini_ssm import bm25
from pyserini_ssm.cli_config import add_options, config_values, option, option_names
from pyserini_ssm.reranking.config import RerankConfig
from pyserini_ssm.search import SearchConfig
from pyserini_ssm.training.config import TrainConfig
from pyserini_ssm.training.data import DataSource


def _parsers():
    from pyserini_ssm.rerank import build_parser as rerank_parser
    from pyserini_ssm.search import build_parser as search_parser
    from pyserini_ssm.train import build_parser as train_parser

    return {"rerank": (rerank_parser(), [RerankConfig]), "search": (search_parser(), [SearchConfig]),
            "train": (train_parser(), [DataSource, TrainConfig])}


REQUIRED = {"rerank": ["--model", "m"], "search": ["--index", "i", "--topics", "t", "--output", "o"], "train": []}


@pytest.mark.parametrize("cli", ["rerank", "search", "train"])
def test_every_flag_default_is_the_config_default(cli):
    parser, configs = _parsers()[cli]
    defaults = vars(parser.parse_args(REQUIRED[cli]))
    for config in configs:
        for item in dataclasses.fields(config):
            if item.name not in option_names(config):
                continue
            assert item.name in defaults, f"{cli}: {config.__name__}.{item.name} has no flag"
            if item.default is not dataclasses.MISSING:
                assert defaults[item.name] == item.default, (cli, item.name)


def test_bm25_flags_and_defaults_agree_across_the_clis():
    parsers = _parsers()
    for cli, (parser, _) in parsers.items():
        values = vars(parser.parse_args(REQUIRED[cli]))
        assert (values["bm25_k1"], values["bm25_b"], values["threads"]) == (bm25.K1, bm25.B, bm25.SEARCH_THREADS), cli
        help_text = parser.format_help()
        assert "--k1 K1" in help_text and "--b B" in help_text, cli
        assert "--bm25-k1" not in help_text and "--bm25-b" not in help_text, cli  # hidden aliases
        old = vars(parser.parse_args(REQUIRED[cli] + ["--bm25-k1", "1.2", "--bm25-b", "0.75"]))
        new = vars(parser.parse_args(REQUIRED[cli] + ["--k1", "1.2", "--b", "0.75"]))
        assert (old["bm25_k1"], old["bm25_b"]) == (new["bm25_k1"], new["bm25_b"]) == (1.2, 0.75), cli
    assert (RerankConfig(model="m").bm25_k1, DataSource().bm25_k1, SearchConfig("i", "t", "o").bm25_k1) == (0.9,) * 3
    assert RerankConfig(model="m").threads == DataSource().threads == bm25.SEARCH_THREADS >= 1


def test_flags_reach_the_config_by_field_name():
    from pyserini_ssm.rerank import build_parser

    args = build_parser().parse_args(["--model", "m", "--candidates", "c.json", "--no-progress", "--fields",
                                      "contents=1", "title=0.5", "--k1", "1.1", "--first-stage", "dense"])
    config = RerankConfig(**config_values(args, RerankConfig))
    assert (config.show_progress, config.fields, config.bm25_k1, config.first_stage) == (
        False, {"contents": 1.0, "title": 0.5}, 1.1, "dense")
    assert config.fetch_batch_size == 1000 and config.metrics is None  # API-only settings keep their defaults


def test_the_helper_on_a_config_of_its_own():
    @dataclass
    class Demo:
        name: str = field(metadata=option("a name"))
        depth: int = field(default=3, metadata=option("how deep"))
        mode: str = field(default="a", metadata=option("which mode", choices=("a", "b")))
        verbose: bool = field(default=False, metadata=option("say more"))
        progress: bool = field(default=True, metadata=option("no bar", flag="--no-bar"))
        remove: bool | None = field(default=None, metadata=option("decided later"))
        ratio: float = field(default=0.5, metadata=option("a ratio", flag="--r", hidden_aliases=("--old-ratio",)))
        internal: int = 7

    parser = argparse.ArgumentParser(prog="demo")
    add_options(parser, Demo, option_names(Demo))
    assert option_names(Demo) == ["name", "depth", "mode", "verbose", "progress", "remove", "ratio"]
    values = config_values(parser.parse_args(["--name", "x", "--no-bar", "--no-remove", "--old-ratio", "0.25"]),
                           Demo)
    assert Demo(**values) == Demo("x", 3, "a", False, False, False, 0.25)
    assert Demo(**config_values(parser.parse_args(["--name", "y", "--verbose", "--remove"]), Demo)).remove is True
    text = parser.format_help()
    assert "how deep (default: 3)" in text and "{a,b}" in text and "--old-ratio" not in text
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "x", "--mode", "c"])
    with pytest.raises(TypeError, match="--no-"):
        @dataclass
        class Wrong:
            flag: bool = field(default=True, metadata=option("on by default"))

        add_options(argparse.ArgumentParser(), Wrong, ["flag"])
