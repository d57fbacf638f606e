"""`python -m pyserini_ssm.leaderboard`: one table of metrics across runs and datasets, with significance vs a baseline.

One dataset (runs named by their file name, or `LABEL=PATH`):

    python -m pyserini_ssm.leaderboard bm25=run.bm25.txt mamba=run.mamba.txt --qrels dl19-passage

Several datasets (one `--dataset QRELS RUN...` each; runs with the same label form one row):

    python -m pyserini_ssm.leaderboard \\
        --dataset beir-v1.0.0-scifact-test bm25=scifact.bm25.txt mamba=scifact.mamba.txt \\
        --dataset beir-v1.0.0-nfcorpus-test bm25=nfcorpus.bm25.txt mamba=nfcorpus.mamba.txt

Each non-baseline value is compared with the baseline's (`--baseline LABEL`, default: the first run) over the
queries both were evaluated on, by a two-sided paired test (`--test t` or `permutation`); p-values are
Bonferroni-corrected over the comparisons in that column (the number of non-baseline runs), and a value whose
corrected p is below `--alpha` is marked with a dagger. The `W/T/L` column counts the queries on which the run beats,
ties, or loses to the baseline on the first metric. Metrics follow Pyserini's 2CR conventions per collection
(`pyserini_ssm.evaluation`), guessed from each qrels name unless `--convention` names one; the table's footnote says
which was used. Metric names are ir_measures' (`nDCG@10`, `P@10`, `AP(rel=2)`) or trec_eval's (`ndcg_cut_10`, `map`);
count measures (`num_rel`, `num_ret`) are summed over the queries, as trec_eval reports them.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from pyserini_ssm.cli import run_main
from pyserini_ssm.errors import UserError

SIGNIFICANCE_MARK = "\u2020"  # dagger
TESTS = ("t", "permutation")


@dataclass
class DatasetRuns:
    """One dataset of the table: its qrels (qid -> docid -> grade), and runs (label -> qid -> docid -> score)."""

    name: str
    qrels: Mapping[str, Mapping[str, int]]
    runs: Mapping[str, Mapping[str, Mapping[str, float]]]
    collection_hint: str | None = None


@dataclass
class Cell:
    """One run's value on one dataset and metric, and how it compares with the baseline's."""

    dataset: str
    run: str
    metric: str
    value: float
    queries: int
    p_value: float | None = None
    p_adjusted: float | None = None
    significant: bool = False
    wins: int | None = None
    ties: int | None = None
    losses: int | None = None
    deltas: dict[str, float] = field(default_factory=dict, repr=False)
    is_count: bool = False  # a sum over queries (num_rel, ...): shown as an integer


@dataclass
class Leaderboard:
    datasets: list[str]
    metrics: dict[str, list[str]]  # dataset -> metric names, in column order
    runs: list[str]  # row order
    baseline: str
    test: str
    alpha: float
    cells: dict[tuple[str, str, str], Cell]  # (dataset, run, metric) -> cell
    conventions: dict[str, str] = field(default_factory=dict)  # dataset -> the metrics line of its convention

    def cell(self, dataset: str, run: str, metric: str) -> Cell | None:
        return self.cells.get((dataset, run, metric))

    def _columns(self) -> list[tuple[str, str | None]]:
        """(dataset, metric) per value column and (dataset, None) for each dataset's W/T/L column."""
        columns: list[tuple[str, str | None]] = []
        for dataset in self.datasets:
            columns.extend((dataset, metric) for metric in self.metrics[dataset])
            columns.append((dataset, None))
        return columns

    def _header(self, dataset: str, metric: str | None) -> str:
        name = metric if metric is not None else f"W/T/L ({self.metrics[dataset][0]})"
        return name if len(self.datasets) == 1 else f"{dataset} {name}"

    def _text(self, dataset: str, run: str, metric: str | None) -> str:
        if metric is None:
            first = self.cell(dataset, run, self.metrics[dataset][0])
            if first is None:
                return ""
            return "baseline" if run == self.baseline else f"{first.wins}/{first.ties}/{first.losses}"
        cell = self.cell(dataset, run, metric)
        if cell is None:
            return ""
        value = f"{cell.value:.0f}" if cell.is_count else f"{cell.value:.4f}"
        return value + (SIGNIFICANCE_MARK if cell.significant else "")

    def to_markdown(self) -> str:
        columns = self._columns()
        header = ["run"] + [self._header(dataset, metric) for dataset, metric in columns]
        lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * len(columns)) + " |"]
        for run in self.runs:
            lines.append("| " + " | ".join([run] + [self._text(d, run, m) for d, m in columns]) + " |")
        test_name = "paired t-test" if self.test == "t" else "paired randomization test"
        lines.append("")
        lines.append(
            f"{SIGNIFICANCE_MARK}: significantly different from {self.baseline} ({test_name}, two-sided, "
            f"Bonferroni-corrected p < {self.alpha:g}). W/T/L: queries won/tied/lost against {self.baseline}."
        )
        for dataset in self.datasets:
            if dataset in self.conventions:
                lines.append(f"Metrics on {dataset}: {self.conventions[dataset]}.")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """Long format, one row per (dataset, run, metric), with the raw and corrected p-values."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(
            ["dataset", "run", "metric", "value", "queries", "p_value", "p_bonferroni", "significant", "wins", "ties",
             "losses"]
        )
        for dataset in self.datasets:
            for run in self.runs:
                for metric in self.metrics[dataset]:
                    cell = self.cell(dataset, run, metric)
                    if cell is None:
                        continue
                    writer.writerow(
                        [dataset, run, metric, f"{cell.value:.6f}", cell.queries,
                         "" if cell.p_value is None else f"{cell.p_value:.6g}",
                         "" if cell.p_adjusted is None else f"{cell.p_adjusted:.6g}",
                         int(cell.significant), _blank(cell.wins), _blank(cell.ties), _blank(cell.losses)]
                    )
        return buffer.getvalue()


def _blank(value) -> str:
    return "" if value is None else str(value)


def per_query_metrics(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str] | None,
    collection_hint: str | None,
    convention: str | None = None,
) -> dict[str, dict[str, float]]:
    """metric -> qid -> value over every judged query (2CR: judged queries missing from the run count as 0)."""
    return _by_metric(_evaluate(run, qrels, metrics, collection_hint, convention))


def _evaluate(run, qrels, metrics, collection_hint, convention):
    from pyserini_ssm.evaluation import evaluate

    return evaluate(run, qrels, metrics, collection_hint=collection_hint, per_query=True, convention=convention)


def _by_metric(result) -> dict[str, dict[str, float]]:
    by_metric: dict[str, dict[str, float]] = {metric: {} for metric in result}
    for qid, values in result.per_query.items():
        for metric in by_metric:
            by_metric[metric][qid] = values[metric]
    return by_metric


def leaderboard_table(
    datasets: Sequence[DatasetRuns],
    *,
    metrics: Sequence[str] | None = None,
    baseline: str | None = None,
    test: str = "t",
    alpha: float = 0.05,
    permutation_trials: int = 100_000,
    seed: int = 0,
    convention: str | None = None,
) -> Leaderboard:
    """Evaluate every run of every dataset and compare each with the baseline run of the same dataset.

    `metrics=None` takes each collection's default metrics (from the dataset's `collection_hint`, else its name).
    `convention` (`dl`, `msmarco-dev`, `beir`, `none`, ...) applies one 2CR convention to every dataset; None or
    `auto` guesses each dataset's from its qrels name.
    The baseline (default: the first run label) must be present in every dataset. Every run is evaluated over all
    judged queries (a judged query the run lacks scores 0, as trec_eval -c), so the pairs are always complete.
    """
    from pyserini_ssm import significance
    from pyserini_ssm.evaluation import aggregate, resolve_convention, resolve_metrics

    if test not in TESTS:
        raise UserError(f"unknown significance test {test!r}; choose t or permutation")
    if not 0.0 < alpha < 1.0:
        raise UserError(f"alpha must be between 0 and 1, got {alpha}")
    if not datasets:
        raise UserError("no dataset given: pass runs with --qrels, or --dataset QRELS RUN...")
    run_order = list(dict.fromkeys(label for dataset in datasets for label in dataset.runs))
    if not run_order:
        raise UserError("no runs given")
    baseline = baseline if baseline is not None else run_order[0]
    names = [dataset.name for dataset in datasets]
    if len(set(names)) != len(names):
        raise UserError(f"dataset names repeat: {names}; give each --dataset once")
    for dataset in datasets:  # bad names or conventions before any evaluation
        resolve_metrics(metrics, resolve_convention(convention, dataset.collection_hint or dataset.name))
    cells: dict[tuple[str, str, str], Cell] = {}
    metric_columns: dict[str, list[str]] = {}
    conventions: dict[str, str] = {}
    for dataset in datasets:
        if baseline not in dataset.runs:
            raise UserError(
                f"baseline {baseline!r} has no run for dataset {dataset.name!r} (its runs: "
                f"{', '.join(dataset.runs)}); choose --baseline among them"
            )
        hint = dataset.collection_hint or dataset.name
        results = {label: _evaluate(run, dataset.qrels, metrics, hint, convention) for label, run in dataset.runs.items()}
        evaluated = {label: _by_metric(result) for label, result in results.items()}
        conventions[dataset.name] = results[baseline].describe()
        columns = list(evaluated[baseline])
        metric_columns[dataset.name] = columns
        comparisons = len(dataset.runs) - 1
        for metric in columns:
            base_values = evaluated[baseline][metric]
            for label, per_metric in evaluated.items():
                values = per_metric.get(metric, {})
                if not values:
                    continue
                # the same value as evaluate() reports: the mean, or the sum for count measures (num_rel, ...)
                resolved = results[label].metrics[metric]
                summary = aggregate(resolved, list(values.values()))
                cell = Cell(dataset.name, label, metric, summary, len(values), is_count=resolved.is_count)
                cells[(dataset.name, label, metric)] = cell
                if label == baseline:
                    continue
                shared = [qid for qid in base_values if qid in values]
                run_list = [values[qid] for qid in shared]
                base_list = [base_values[qid] for qid in shared]
                cell.deltas = {qid: values[qid] - base_values[qid] for qid in shared}
                counts = significance.win_tie_loss(run_list, base_list)
                cell.wins, cell.ties, cell.losses = counts.wins, counts.ties, counts.losses
                if len(shared) < 2:
                    continue
                if test == "t":
                    result = significance.paired_t_test(run_list, base_list)
                else:
                    result = significance.paired_randomization_test(
                        run_list, base_list, trials=permutation_trials, seed=seed
                    )
                cell.p_value = result.p_value
                cell.p_adjusted = significance.bonferroni([result.p_value], comparisons)[0]
                cell.significant = cell.p_adjusted < alpha
    return Leaderboard(names, metric_columns, run_order, baseline, test, alpha, cells, conventions)


def plot_deltas(board: Leaderboard, path: str | os.PathLike) -> None:
    """PNG of per-query differences (run - baseline) on each dataset's first metric, sorted, one panel per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyserini_ssm.files import atomic_output

    panels = [
        board.cells[(dataset, run, board.metrics[dataset][0])]
        for dataset in board.datasets
        for run in board.runs
        if run != board.baseline and (dataset, run, board.metrics[dataset][0]) in board.cells
    ]
    if not panels:
        raise UserError("nothing to plot: the table holds no run besides the baseline")
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), squeeze=False)
    for axis, cell in zip(axes[:, 0], panels):
        deltas = sorted(cell.deltas.values(), reverse=True)
        colors = ["tab:green" if d > 0 else "tab:red" if d < 0 else "tab:gray" for d in deltas]
        axis.bar(range(len(deltas)), deltas, color=colors, width=1.0)
        axis.axhline(0.0, color="black", linewidth=0.6)
        axis.set_xlim(-0.5, len(deltas) - 0.5)
        title = f"{cell.run} - {board.baseline}: {cell.metric}"
        if len(board.datasets) > 1:
            title = f"{cell.dataset}: " + title
        axis.set_title(f"{title}  (W/T/L {cell.wins}/{cell.ties}/{cell.losses})", fontsize=9)
        axis.set_ylabel("delta")
    axes[-1, 0].set_xlabel("queries, sorted by delta")
    figure.tight_layout()
    with atomic_output(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)


def parse_run_spec(spec: str) -> tuple[str, str]:
    """`LABEL=PATH` -> (LABEL, PATH); a bare PATH is labelled by its file name without .gz/.txt/.trec."""
    if "=" in spec and not Path(spec).exists():
        label, path = spec.split("=", 1)
        if not label or not path:
            raise UserError(f"run spec {spec!r}: write LABEL=PATH or just PATH")
        return label, path
    name = Path(spec).name
    for suffix in (".gz", ".txt", ".trec", ".run"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name, spec


def load_datasets(
    groups: Sequence[tuple[str, Sequence[str]]], topics_dir: str | None = None
) -> list[DatasetRuns]:
    """(qrels name or file, run specs) per dataset -> DatasetRuns, reading qrels and runs."""
    from pyserini_ssm.qrels import load_qrels
    from pyserini_ssm.runs import read_run, run_as_dict

    datasets = []
    for qrels_spec, run_specs in groups:
        if not run_specs:
            raise UserError(f"dataset {qrels_spec!r} has no runs: --dataset QRELS RUN [RUN...]")
        qrels = load_qrels(qrels_spec, topics_dir=topics_dir)
        runs: dict[str, dict[str, dict[str, float]]] = {}
        for spec in run_specs:
            label, path = parse_run_spec(spec)
            if label in runs:
                raise UserError(f"two runs are labelled {label!r} for {qrels_spec}; name them with LABEL=PATH")
            runs[label] = run_as_dict(read_run(path))
        name = _dataset_name(qrels_spec)
        datasets.append(DatasetRuns(name, qrels, runs, collection_hint=qrels_spec))
    return datasets


def _dataset_name(qrels_spec: str) -> str:
    path = Path(qrels_spec)
    if not path.exists():
        return qrels_spec
    name = path.name
    for prefix in ("qrels.",):
        name = name[len(prefix):] if name.startswith(prefix) else name
    for suffix in (".gz", ".txt", ".tsv"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyserini_ssm.leaderboard",
        description="Metrics across runs and datasets, with paired significance tests against a baseline.",
        epilog="Run specs are PATH or LABEL=PATH; the same LABEL across datasets makes one row.",
    )
    parser.add_argument("runs", nargs="*", metavar="RUN", help="run files of the one dataset named by --qrels")
    parser.add_argument("--qrels", help="qrels of the positional runs: a Pyserini name (dl19-passage) or a file")
    parser.add_argument(
        "--dataset",
        nargs="+",
        action="append",
        default=[],
        metavar=("QRELS", "RUN"),
        help="a dataset: its qrels (name or file) then its runs; repeat for more datasets",
    )
    parser.add_argument("--baseline", help="label (or file) of the run the others are tested against (default: first)")
    parser.add_argument(
        "--metrics", nargs="+",
        help="metrics, e.g. nDCG@10 P@10 AP(rel=2) or ndcg_cut_10 map recall_1000 (default: per collection)",
    )
    parser.add_argument(
        "--convention", default="auto", metavar="{auto,dl,msmarco-dev,beir,none,...}",
        help="2CR convention for every dataset: dl, dl-v2, dl-doc, msmarco-dev, msmarco-dev-depth100, beir, none "
        "(default auto: guessed from each qrels name)",
    )
    parser.add_argument("--test", choices=TESTS, default="t", help="paired t-test or randomization test (default: t)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level after Bonferroni (0.05)")
    parser.add_argument("--trials", type=int, default=100_000, help="randomization test samples (100000)")
    parser.add_argument("--seed", type=int, default=0, help="randomization test seed (0)")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="table format")
    parser.add_argument("--output", help="write the table here instead of standard output")
    parser.add_argument("--plot", metavar="PNG", help="also draw per-query deltas against the baseline")
    parser.add_argument("--topics-dir", help="folder of Anserini topics/qrels files, for names without a download")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    groups: list[tuple[str, list[str]]] = []
    if args.runs:
        if not args.qrels:
            raise UserError("runs given without --qrels: add --qrels NAME|FILE (or use --dataset QRELS RUN...)")
        groups.append((args.qrels, list(args.runs)))
    elif args.qrels:
        raise UserError("--qrels given without runs: list the run files after the options")
    groups.extend((group[0], group[1:]) for group in args.dataset)
    if not groups:
        raise UserError("nothing to compare: give RUN... --qrels NAME, or --dataset QRELS RUN...")
    from pyserini_ssm.evaluation import resolve_convention, resolve_metrics
    from pyserini_ssm.files import atomic_output, check_output_path

    for path in (args.output, args.plot):
        if path:
            check_output_path(path)
    for qrels_spec, _ in groups:  # names first: a typo should not wait for the runs to be read
        resolve_metrics(args.metrics, resolve_convention(args.convention, qrels_spec))
    datasets = load_datasets(groups, args.topics_dir)
    baseline = args.baseline
    if baseline is not None and Path(baseline).exists():
        baseline = parse_run_spec(baseline)[0]
    board = leaderboard_table(
        datasets,
        metrics=args.metrics,
        baseline=baseline,
        test=args.test,
        alpha=args.alpha,
        permutation_trials=args.trials,
        seed=args.seed,
        convention=args.convention,
    )
    text = board.to_markdown() if args.format == "markdown" else board.to_csv()
    if args.output:
        with atomic_output(args.output) as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    if args.plot:
        plot_deltas(board, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
