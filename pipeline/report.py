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
    """One row per model (each expert, the mean, the MoE), one column per metric as value [low, high]."""
    models = report["models"]
    names = list(next(iter(models.values())))
    rows = [
        [model, *[f"{m[name]['value']:.4g} [{m[name]['low']:.3g}, {m[name]['high']:.3g}]" for name in names]]
        for model, m in models.items()
    ]
    show_table(f"{report['task']} ({report['type']}): test n={report['n_test']}, 95% bootstrap CI", ["model", *names], rows)
