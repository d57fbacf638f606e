"""The bench's figures: inference throughput against pair length (`throughput.png`), and the efficiency figure
(throughput and peak memory against fixed lengths, inference and training side by side) with its Markdown table.

This module imports no pyserini and no Java: it runs on the GPU machines.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from pyserini_ssm.bench_records import Measurement


FAMILY_COLOURS = {"mamba1": "tab:orange", "mamba2": "tab:red", "decoder": "tab:blue", "encoder": "tab:green"}


def plot_throughput(records: Sequence[Measurement], path: str | os.PathLike, title: str = "") -> Path | None:
    """Inference pairs/s against pair length, one line per model coloured by family: the fixed lengths as a line,
    MS MARCO lengths as markers at their mean length (hollow: padded-random baseline, filled: best method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyserini_ssm.files import atomic_output

    usable = [r for r in records if not r.skipped and r.pairs_per_s]
    models = list(dict.fromkeys(r.model for r in usable if r.benchmark in ("inference", "fixed-length")))
    if not models:
        return None
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    for model in models:
        mine = [r for r in usable if r.model == model]
        family = mine[0].family
        colour = FAMILY_COLOURS.get(family, "tab:gray")
        fixed = sorted((int(r.lengths), r.pairs_per_s) for r in mine if r.benchmark == "fixed-length")
        label = f"{model} ({family})"
        if fixed:
            axis.plot([x for x, _ in fixed], [y for _, y in fixed], marker="o", color=colour, label=label)
            label = None
        msmarco = [r for r in mine if r.benchmark == "inference" and r.lengths.startswith("msmarco")]
        if msmarco:
            mean_length = msmarco[0].tokens / msmarco[0].pairs
            baseline = [r for r in msmarco if r.method == "padded-random"]
            best = max((r for r in msmarco if r.method != "padded-random"), key=lambda r: r.pairs_per_s,
                       default=None)
            if baseline:
                axis.scatter([mean_length], [baseline[0].pairs_per_s], facecolors="none", edgecolors=colour, s=60,
                             label=label)
                label = None
            if best is not None:
                axis.scatter([mean_length], [best.pairs_per_s], color=colour, marker="*", s=120, label=label)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel("pair length (tokens); MS MARCO at its mean: o padded-random, * best")
    axis.set_ylabel("inference pairs/s")
    axis.set_title(title or "reranker inference throughput")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_output(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)
    return Path(path)


def efficiency_table(records: Sequence[Measurement]) -> str:
    """The efficiency figure as a Markdown table: per fixed length and model, inference and training pairs/s with
    peak memory (GiB), the method (packed/padded), pairs per step and the attention kernel; one line per length."""
    wanted = ("fixed-length", "fixed-length-training")
    usable = [r for r in records if r.benchmark in wanted]
    models = list(dict.fromkeys(r.model for r in usable))
    lengths = sorted({int(r.lengths) for r in usable})
    by_key = {(r.benchmark, r.model, int(r.lengths)): r for r in usable}

    def cell(record: Measurement | None, training: bool) -> str:
        if record is None:
            return "—"
        if record.skipped:
            return f"skipped ({record.note[:40]})"
        memory = f"{record.peak_memory_mb / 1024:.1f} GiB" if record.peak_memory_mb is not None else "?"
        extra = f", {record.pairs}/step" if training else ""
        extra += ", ckpt" if record.grad_checkpointing else ""
        method = record.method.replace("train-", "")
        return f"{record.pairs_per_s:,.1f} ({memory}; {method}{extra})"

    header = ["length"] + [f"{model} {kind}" for model in models for kind in ("inference", "training")]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---:"] * len(header)) + " |"]
    for length in lengths:
        row = [f"{length:,}"]
        for model in models:
            row.append(cell(by_key.get(("fixed-length", model, length)), False))
            row.append(cell(by_key.get(("fixed-length-training", model, length)), True))
        lines.append("| " + " | ".join(row) + " |")
    kernels = sorted({f"{r.model}: {r.attention}" for r in usable if r.attention and not r.skipped})
    return "\n".join(lines) + ("\n\nattention kernels: " + "; ".join(kernels) if kernels else "")


def plot_efficiency(records: Sequence[Measurement], throughput_path: str | os.PathLike,
                    memory_path: str | os.PathLike, title: str = "") -> list[Path]:
    """The efficiency figure: pairs/s (log) against the fixed length (log 2), inference and training side by
    side, one line per model coloured by family; and the same for peak memory. Nothing without fixed lengths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyserini_ssm.files import atomic_output

    panels = (("fixed-length", "inference"), ("fixed-length-training", "training"))
    usable = [r for r in records if not r.skipped and r.pairs_per_s and r.benchmark in dict(panels)]
    if not usable:
        return []
    models = list(dict.fromkeys(r.model for r in usable))
    written = []
    for path, value, label, log_y in ((throughput_path, "pairs_per_s", "pairs/s", True),
                                      (memory_path, "peak_memory_mb", "peak memory (GiB)", False)):
        figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        for axis, (benchmark, name) in zip(axes, panels):
            for model in models:
                mine = sorted((int(r.lengths), r) for r in usable if r.model == model and r.benchmark == benchmark)
                if not mine:
                    continue
                ys = [getattr(r, value) / (1024 if value == "peak_memory_mb" else 1) for _, r in mine]
                family = mine[0][1].family
                axis.plot([x for x, _ in mine], ys, marker="o", color=FAMILY_COLOURS.get(family, "tab:gray"),
                          label=f"{model} ({mine[0][1].method})")
            axis.set_xscale("log", base=2)
            if log_y:
                axis.set_yscale("log")
            axis.set_xlabel("pair length (tokens)")
            axis.set_ylabel(f"{name} {label}")
            axis.set_title(name)
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=8)
        figure.suptitle(f"{title}: {label} vs length (each model at its best setting)" if title else label)
        figure.tight_layout()
        with atomic_output(path, "wb") as handle:
            figure.savefig(handle, format="png", dpi=120)
        plt.close(figure)
        written.append(Path(path))
    return written


def write_plots(records: Sequence[Measurement], machine: dict[str, Any], output: Path) -> None:
    """throughput.png, efficiency_throughput.png and efficiency_memory.png (the last two with fixed lengths)."""
    where = machine.get("gpu") or machine["cpu"]
    plot_throughput(records, output / "throughput.png", title=f"{where}, {records[0].dtype if records else ''}")
    plot_efficiency(records, output / "efficiency_throughput.png", output / "efficiency_memory.png", title=where)
