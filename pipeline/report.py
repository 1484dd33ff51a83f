"""Rich tables for what the stages report: QC summaries, metrics, the backbone list."""

from __future__ import annotations

from rich.table import Table

from pipeline.progress import console


def show_table(title: str, columns: list[str], rows: list[list]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == columns[0] else "right")
    for row in rows:
        table.add_row(*[f"{cell:.4g}" if isinstance(cell, float) else str(cell) for cell in row])
    console.print(table)


SHOWN = {"regression": ("mae", "r2"), "binary": ("auroc", "auprc", "f1_pos", "accuracy"), "multiclass": ("auroc", "auprc", "f1", "accuracy"),
         "multilabel": ("auroc", "auprc", "f1", "accuracy")}


def show_metrics(report: dict) -> None:
    """One row per candidate (probes, experts, mean, MoE, ablations) and per paired difference (MoE - best
    expert, MoE - mean); a column per headline metric: value and bootstrap interval (all metrics: the JSON)."""
    rows = {**report["models"], **report["paired"]}
    metrics = [m for m in SHOWN[report["type"]] if m in next(iter(rows.values()))]
    boot = report["bootstrap"]
    title = (
        f"{report['task']} ({report['type']}): test n={report['n_test']} records of {boot['subjects']} subjects; "
        f"{boot['confidence']:.0%} CI from {boot['resamples_used']}/{boot['resamples']} subject resamples; best expert {report['best_expert']}"
    )
    cells = [[name, *[f"{row[m]['value']:.4g} [{row[m]['low']:.3g}, {row[m]['high']:.3g}]" for m in metrics]] for name, row in rows.items()]
    show_table(title, ["candidate", *metrics], cells)
