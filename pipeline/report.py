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


def show_metrics(report: dict) -> None:
    """One row per metric; a column per candidate (probes, experts, mean, MoE, ablations) and per paired
    difference (MoE - best expert, MoE - mean): the value and its bootstrap interval."""
    columns = {**report["models"], **report["paired"]}
    metrics = list(next(iter(columns.values())))
    rows = [
        [metric, *[f"{c[metric]['value']:.4g}\n[{c[metric]['low']:.3g}, {c[metric]['high']:.3g}]" for c in columns.values()]]
        for metric in metrics
    ]
    boot = report["bootstrap"]
    title = (
        f"{report['task']} ({report['type']}): test n={report['n_test']} records of {boot['subjects']} subjects; "
        f"{boot['confidence']:.0%} CI from {boot['resamples_used']}/{boot['resamples']} subject resamples; best expert {report['best_expert']}"
    )
    show_table(title, ["metric", *columns], rows)
