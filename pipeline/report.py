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
    """One row per metric, one column per model (each expert, the plain mean, the MoE): value and 95% interval."""
    models = report["models"]
    metrics = list(next(iter(models.values())))
    rows = [
        [metric, *[f"{m[metric]['value']:.4g}\n[{m[metric]['low']:.3g}, {m[metric]['high']:.3g}]" for m in models.values()]]
        for metric in metrics
    ]
    columns = [name.removeprefix("expert:") for name in models]
    show_table(f"{report['task']} ({report['type']}): test n={report['n_test']}, bootstrap 95% CI", ["metric", *columns], rows)
