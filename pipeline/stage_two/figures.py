"""The evaluation's pictures as PNG files (matplotlib), drawn from the tables of pipeline.stage_two.plot_data:
plots/TASK/roc.png, precision_recall.png (classification), calibration.png, confusion.png (classification) or
predicted_vs_actual.png (regression), gate.png and training.png.

Figures are made with matplotlib's object API (`Figure`, no pyplot state), so drawing is thread-safe and needs
no display. Each candidate keeps its colour in every figure; the MoE is drawn thickest, the plain mean dashed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.stage_two.plot_data import BY_CLASS, OVER_RECORDS, areas, kept_epoch
from pipeline.tasks import Task

PANEL = 3.1  # inches per panel
DPI = 100
MAX_COLUMNS = 4
MIN_WIDTH = 6.4  # inches: room for a figure's title and legend beside a single panel
LEGEND_WIDTH = 1.7  # inches at the right of the panels for a figure's legend
REFERENCE_STYLE = {"color": "0.55", "linestyle": ":", "linewidth": 1.2}
EXPERT_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def display_name(candidate: str) -> str:
    return {"moe": "MoE", "mean": "mean of experts"}.get(candidate, candidate.removeprefix("expert:"))


def candidate_style(candidate: str, experts: list[str]) -> dict:
    """The MoE thick crimson, the plain mean dashed black, each expert its colour (by its place in `experts`,
    the same in every figure)."""
    if candidate == "moe":
        return {"color": "crimson", "linewidth": 2.4, "zorder": 5}
    if candidate == "mean":
        return {"color": "black", "linewidth": 1.6, "linestyle": "--", "zorder": 4}
    name = candidate.removeprefix("expert:")
    index = experts.index(name) if name in experts else len(experts)
    return {"color": EXPERT_COLOURS[index % len(EXPERT_COLOURS)], "linewidth": 1.2, "alpha": 0.9}


def _grid(panels: int, height: float = PANEL, share: bool = False, legend: bool = False, measured: bool = False) -> tuple[Figure, np.ndarray]:
    """A figure of `panels` axes, MAX_COLUMNS a row, laid out with fixed margins in inches (matplotlib's layout
    engines measure every text on every draw: this is much quicker, and the panels here are regular).
    `share`: common axes, tick labels on the outer panels only; `legend`: room for one legend at the right;
    `measured`: matplotlib's constrained layout instead, for panels whose labels vary in size (class names)."""
    columns = max(1, min(panels, MAX_COLUMNS))
    rows = math.ceil(max(panels, 1) / columns)
    left, right, top, bottom = 0.8, (LEGEND_WIDTH if legend else 0.25), 0.8, 0.6
    wgap, hgap = (0.25 if share else 0.8), (0.45 if share else 0.85)
    width = max(left + columns * PANEL + (columns - 1) * wgap + right, MIN_WIDTH)
    tall = top + rows * height + (rows - 1) * hgap + bottom
    if measured:
        figure = Figure(figsize=(width, tall), layout="constrained")
        return figure, figure.subplots(rows, columns, squeeze=False, sharex=share, sharey=share)
    figure = Figure(figsize=(width, tall))
    figure.subplots_adjust(left=left / width, right=(left + columns * PANEL + (columns - 1) * wgap) / width, bottom=bottom / tall, top=1 - top / tall,
                           wspace=wgap / PANEL, hspace=hgap / height)
    axes = figure.subplots(rows, columns, squeeze=False, sharex=share, sharey=share)
    return figure, axes


def _legend(figure: Figure, axes: np.ndarray) -> None:
    """The figure's one legend (the first panel's lines), in the room _grid(legend=True) left right of the panels."""
    right = max(ax.get_position().x1 for ax in axes.flat)
    figure.legend(*axes.flat[0].get_legend_handles_labels(), loc="upper left", fontsize=8,
                  bbox_to_anchor=(right + 0.1 / figure.get_figwidth(), axes.flat[0].get_position().y1))


def _outer_labels(axes: np.ndarray, used: int) -> None:
    """Shared axes: tick labels and axis titles on the outer panels only (fewer texts to lay out); a panel
    with no used panel below it keeps its x axis labelled. The unused panels of the grid are hidden."""
    columns = axes.shape[1]
    for index, ax in enumerate(axes.flat):
        if index >= used:
            ax.set_visible(False)
            continue
        xlabel = ax.get_xlabel()
        ax.label_outer(remove_inner_ticks=False)
        if index + columns >= used:  # the lowest used panel of its column
            ax.tick_params(labelbottom=True)
            ax.set_xlabel(xlabel)


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def _by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    grouped: dict[tuple, list[dict]] = {}
    for row in rows:
        grouped.setdefault(tuple(row[k] for k in keys), []).append(row)
    return grouped


def _groups(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(row["group"] for row in rows))


def curve_figure(rows: list[dict], xname: str, yname: str, title: str, xlabel: str, ylabel: str, area: str | None, experts: list[str]) -> Figure:
    """One panel per group (shared 0-1 axes), one line per candidate, the reference rows dotted; the legend on
    the first panel, each panel's areas under the curves (when `area` names them) written in it."""
    groups = _groups(rows)
    figure, axes = _grid(len(groups), share=True, legend=True)
    areas_ = areas(rows, xname, yname) if area else {}
    lines = _by(rows, "group", "series")
    for index, group in enumerate(groups):
        ax = axes.flat[index]
        written = []
        for (g, series), points in lines.items():
            if g != group:
                continue
            points = sorted(points, key=lambda row: row["point"])
            xs, ys = [p[xname] for p in points], [p[yname] for p in points]
            if points[0]["reference"]:
                ax.plot(xs, ys, label=series, **REFERENCE_STYLE)
                continue
            ax.plot(xs, ys, label=display_name(series), **candidate_style(series, experts))
            if area and not np.isnan(areas_[(g, series)]):
                written.append(f"{display_name(series)} {areas_[(g, series)]:.3f}")
        if written:
            where = (0.97, 0.03, "right", "bottom") if area == "AUC" else (0.03, 0.03, "left", "bottom")
            ax.text(where[0], where[1], f"{area}\n" + "\n".join(written), transform=ax.transAxes, ha=where[2], va=where[3], fontsize=7,
                    bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})
        ax.set(title=group, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
    _legend(figure, axes)
    _outer_labels(axes, len(groups))
    figure.suptitle(title)
    return figure


def calibration_figure(task: Task, rows: list[dict], experts: list[str]) -> Figure:
    """Reliability diagram per group (identity dotted); the MoE's markers are sized by the number of test
    records in the bin (classification; regression bins are deciles of the prediction, equal in size)."""
    groups = _groups(rows)
    regression = task.type == "regression"
    figure, axes = _grid(len(groups), share=not regression, legend=True)
    lines = _by(rows, "group", "series")
    for index, group in enumerate(groups):
        ax = axes.flat[index]
        for (g, series), points in lines.items():
            if g != group:
                continue
            points = sorted(points, key=lambda row: row["point"])
            xs, ys = [p["predicted"] for p in points], [p["observed"] for p in points]
            if points[0]["reference"]:
                ax.plot(xs, ys, label="perfect calibration", **REFERENCE_STYLE)
                continue
            style = candidate_style(series, experts)
            ax.plot(xs, ys, label=display_name(series), **style)
            if series == "moe" and not regression:
                counts = np.array([p["count"] for p in points], float)
                ax.scatter(xs, ys, s=12 + 150 * counts / counts.max(), color=style["color"], alpha=0.5, zorder=6)
        ax.set(title=group, xlabel="mean prediction (decile bins)" if regression else "mean predicted probability",
               ylabel="mean actual value" if regression else "fraction of positives")
        ax.grid(alpha=0.3)
    _legend(figure, axes)
    _outer_labels(axes, len(groups))
    note = "" if regression else " (MoE markers: records per bin)"
    figure.suptitle(f"{task.name}: reliability diagram{note}", fontsize=11)
    return figure


def confusion_figure(task: Task, rows: list[dict]) -> Figure:
    """MoE confusion matrix: counts, coloured by the fraction of the actual class (row); multilabel: one 2 x 2
    matrix per frequent label."""
    if task.type == "multiclass":
        panels = [(task.name, list(task.classes), rows)]
    else:
        panels = [(label, [f"not {label}", label], [r for r in rows if r["label"] == label]) for label in dict.fromkeys(r["label"] for r in rows)]
    figure, axes = _grid(len(panels), measured=True)
    for index, (label, names, subset) in enumerate(panels):
        ax = axes.flat[index]
        position = {name: i for i, name in enumerate(names)}
        counts = np.zeros((len(names), len(names)), int)
        for row in subset:
            counts[position[row["actual"]], position[row["predicted"]]] += 1
        fraction = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{counts[i, j]}\n{fraction[i, j]:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if fraction[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set(title=label if task.type == "multilabel" else "", xlabel="predicted (MoE)", ylabel="actual")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    figure.suptitle(f"{task.name}: confusion matrix of the MoE (test records)")
    return figure


def predicted_vs_actual_figure(task: Task, rows: list[dict], experts: list[str]) -> Figure:
    """Regression: every test record's prediction against its actual value, with the identity, for the
    candidates of the table (the best experts, the plain mean and the MoE)."""
    by_series = _by(rows, "series")
    mae = {series: float(np.mean([abs(r["predicted"] - r["actual"]) for r in points])) for (series,), points in by_series.items()}
    order = [series for (series,) in by_series]
    figure, axes = _grid(len(order))
    values = [row["actual"] for row in rows] + [row["predicted"] for row in rows]
    low, high = min(values), max(values)
    for index, series in enumerate(order):
        ax = axes.flat[index]
        points = [row for row in rows if row["series"] == series]
        actual, predicted = np.array([p["actual"] for p in points]), np.array([p["predicted"] for p in points])
        style = candidate_style(series, experts)
        ax.scatter(actual, predicted, s=10, alpha=0.6, color=style["color"])
        ax.plot([low, high], [low, high], label="identity", **REFERENCE_STYLE)
        ax.set(title=f"{display_name(series)} (MAE {mae[series]:.3g})", xlabel="actual", ylabel="predicted", xlim=(low, high), ylim=(low, high))
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(order):]:
        ax.set_visible(False)
    figure.suptitle(f"{task.name}: predicted vs actual (test records)")
    return figure


def gate_figure(task: Task, rows: list[dict], experts: list[str]) -> Figure:
    """The MoE gate: mean weight per expert among the test records of each true class (left) and the
    distribution of each expert's weight over the test records (right: quartiles, median, extremes)."""
    figure = Figure(figsize=(2 * PANEL + 2.2, PANEL + 0.6), layout="constrained")
    left, right = figure.subplots(1, 2)
    by_class = [row for row in rows if row["view"] == BY_CLASS]
    classes = list(dict.fromkeys(row["class"] for row in by_class))
    means = {(row["class"], row["expert"]): row["weight"] for row in by_class}
    height = 0.8 / max(len(experts), 1)
    for e, expert in enumerate(experts):
        positions = np.arange(len(classes)) + (e - (len(experts) - 1) / 2) * height
        left.barh(positions, [means.get((c, expert), np.nan) for c in classes], height=height, label=expert, color=EXPERT_COLOURS[e % len(EXPERT_COLOURS)])
    left.set_yticks(range(len(classes)), classes)
    left.invert_yaxis()
    left.axvline(1 / max(len(experts), 1), **REFERENCE_STYLE, label="equal weights")
    left.set(title="mean weight by true class", xlabel="gate weight", xlim=(0, 1.02))
    spread = {row["expert"]: row for row in rows if row["view"] == OVER_RECORDS}
    stats = [{"med": spread[e]["weight"], "q1": spread[e]["q1"], "q3": spread[e]["q3"], "whislo": spread[e]["low"], "whishi": spread[e]["high"],
              "fliers": [], "label": e} for e in experts if e in spread]
    parts = right.bxp(stats, orientation="horizontal", patch_artist=True)
    for e, box in enumerate(parts["boxes"]):
        box.set_facecolor(EXPERT_COLOURS[e % len(EXPERT_COLOURS)])
        box.set_alpha(0.6)
    right.invert_yaxis()
    right.axvline(1 / max(len(experts), 1), **REFERENCE_STYLE)
    records = next(iter(spread.values()))["records"] if spread else 0
    right.set(title=f"weight over the {records} test records", xlabel="gate weight (quartiles, median, extremes)", xlim=(-0.02, 1.02))
    figure.legend(*left.get_legend_handles_labels(), loc="outside lower center", ncols=min(len(experts) + 1, 6), fontsize=8)
    figure.suptitle(f"{task.name}: MoE gate weights")
    return figure


def training_figure(task: Task, histories: dict[str, dict[str, dict[str, list[float]]]]) -> Figure:
    """Training curves: one panel per expert (its fold heads overlaid) and one for the gate (its variants);
    train (blue) and held-out (orange) loss per epoch, the held-out loss from epoch 0 (before training), each
    curve's kept epoch dotted."""
    owners = list(histories)
    figure, axes = _grid(len(owners), height=PANEL * 0.85)
    for index, owner in enumerate(owners):
        ax = axes.flat[index]
        curves = histories[owner]
        for c, (curve, history) in enumerate(curves.items()):
            shade = 0.45 + 0.55 * (c + 1) / len(curves)
            train, validation = history.get("train", []), history.get("validation", [])
            ax.plot(range(1, len(train) + 1), train, color="tab:blue", alpha=shade, linewidth=1.1, label="train" if c == 0 else None)
            if validation:
                ax.plot(range(len(validation)), validation, color="tab:orange", alpha=shade, linewidth=1.1, label="held-out" if c == 0 else None)
                best = kept_epoch(history)
                ax.plot([best], [validation[best]], "o", color="tab:orange", markersize=3.5)
        what = ("gate variant" if owner == "gate" else "fold head") + ("s" if len(curves) > 1 else "")
        ax.set(title=f"{owner} ({len(curves)} {what})", xlabel="epoch", ylabel="loss")
        ax.grid(alpha=0.3)
        if index == 0:
            ax.legend(fontsize=7, loc="upper right")
    for ax in list(axes.flat)[len(owners):]:
        ax.set_visible(False)
    figure.suptitle(f"{task.name}: training curves (held-out loss from epoch 0; dot: best epoch)", fontsize=11)
    return figure


def write_figures(directory: Path, task: Task, tables: dict[str, list[dict]], experts: list[str], histories: dict) -> list[Path]:
    """Every PNG of a task into `directory` (plots/TASK/); returns their paths."""
    directory = Path(directory)
    written = []
    if tables["roc"]:
        written.append(_save(curve_figure(tables["roc"], "fpr", "tpr", f"{task.name}: ROC (test records)", "false positive rate", "true positive rate", "AUC", experts),
                             directory / "roc.png"))
    if tables["precision_recall"]:
        written.append(_save(curve_figure(tables["precision_recall"], "recall", "precision", f"{task.name}: precision-recall (test records)", "recall", "precision", "area",
                                          experts), directory / "precision_recall.png"))
    if tables["calibration"]:
        written.append(_save(calibration_figure(task, tables["calibration"], experts), directory / "calibration.png"))
    if tables["confusion"]:
        written.append(_save(confusion_figure(task, tables["confusion"]), directory / "confusion.png"))
    if tables["predicted_vs_actual"]:
        written.append(_save(predicted_vs_actual_figure(task, tables["predicted_vs_actual"], experts), directory / "predicted_vs_actual.png"))
    if tables["gate"]:
        written.append(_save(gate_figure(task, tables["gate"], experts), directory / "gate.png"))
    if histories:
        written.append(_save(training_figure(task, histories), directory / "training.png"))
    return written
