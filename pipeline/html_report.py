"""`enecg report`: the whole result of the current run in one self-contained HTML file (report.html).

What it shows, all read from the run's artifacts (nothing is recomputed):
- per task, from metrics/TASK.json: every candidate's metrics with their bootstrap intervals, the paired
  differences (MoE - best expert, MoE - mean) with theirs, the bootstrap's unit and resamples, the gate's
  weights (mean, and by true class), per-label AUROC and any warnings; and the task's pictures
  (plots/TASK/*.png, drawn by `enecg evaluate`), embedded as data URIs;
- the corpus: prepare's QC summary (corpus.zarr attrs["summary"]: records read, kept, excluded per reason) and
  its grid (sampling rate, samples, leads);
- the backbones: from each embeddings/NAME.zarr's attrs, the checkpoint file and its SHA-256, the input spec,
  the embedding size, the device, and the provenance of the corpus it ran on (manifest hash, code hash).

The page needs no network, no script and no other file: a new user opens it and sees the whole result.
"""

from __future__ import annotations

import base64
import datetime
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import zarr

from pipeline import __version__
from pipeline.layout import CORPUS, embeddings_path, figures_dir, metrics_path

FIGURE_TITLES = {
    "roc": "ROC curves", "precision_recall": "Precision-recall curves", "predicted_vs_actual": "Predicted vs actual",
    "calibration": "Calibration (reliability diagram)", "confusion": "Confusion matrix (MoE)", "gate": "MoE gate weights",
    "training": "Training curves (heads per fold, gate)",
}
THIRDS = ("low third", "middle third", "high third")  # a regression task's groups of records, in order
HIGHER_IS_BETTER = {"mae": False, "mse": False}


@dataclass
class TaskSection:
    name: str
    report: dict | None  # metrics/TASK.json, None when the task has not been evaluated
    figures: list[tuple[str, str]] = field(default_factory=list)  # (title, data URI)


@dataclass
class BackboneSection:
    name: str
    attrs: dict | None  # embeddings/NAME.zarr attrs, None when it has not been extracted


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def task_figures(directory: Path) -> list[tuple[str, str]]:
    """(title, data URI) of every PNG in a task's plots folder, in FIGURE_TITLES' order, then any other."""
    found = {path.stem: path for path in sorted(Path(directory).glob("*.png"))}
    order = [stem for stem in FIGURE_TITLES if stem in found] + [stem for stem in found if stem not in FIGURE_TITLES]
    return [(FIGURE_TITLES.get(stem, stem.replace("_", " ")), data_uri(found[stem])) for stem in order]


def read_attrs(path: Path) -> dict | None:
    if not Path(path).exists():
        return None
    try:
        return dict(zarr.open_group(path, mode="r").attrs)
    except Exception:  # a partial or foreign folder: reported as missing rather than failing the whole report
        return None


def gather(params: dict) -> dict:
    """Everything the report shows, from the artifacts of the run that params describe."""
    tasks = []
    for name in params.get("tasks", []):
        path = metrics_path(name)
        report = json.loads(path.read_text()) if path.exists() else None
        tasks.append(TaskSection(name, report, task_figures(figures_dir(name)) if report else []))
    corpus = read_attrs(CORPUS)
    backbones = [BackboneSection(name, read_attrs(embeddings_path(name))) for name in params.get("backbones", [])]
    return {"tasks": tasks, "corpus": corpus, "backbones": backbones, "params": params}


def number(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def interval(stat: dict | None) -> str:
    """'[low, high]' of a {"value", "low", "high"} summary, 4 significant digits."""
    return f"[{number(stat.get('low'))}, {number(stat.get('high'))}]" if stat else ""


def verdict(stat: dict, metric: str) -> str:
    """'MoE better' / 'MoE worse' where a paired difference's interval excludes 0 (errors: lower is better)."""
    low, high = stat.get("low"), stat.get("high")
    if low is None or high is None or any(isinstance(v, float) and math.isnan(v) for v in (low, high)) or low <= 0 <= high:
        return ""
    return "MoE better" if (low > 0) == HIGHER_IS_BETTER.get(metric, True) else "MoE worse"


def metric_columns(report: dict) -> list[str]:
    rows = list(report.get("models", {}).values())
    return list(rows[0]) if rows else []


def candidate_order(models: dict) -> list[str]:
    """Experts, their mean, the MoE and its ablations, then the probes (metrics/TASK.json stores them sorted)."""
    rank = lambda name: (0 if name.startswith("expert:") else 1 if name == "mean" else 2 if name == "moe" else 3 if name.startswith("moe") else 4)  # noqa: E731
    return sorted(models, key=lambda name: (rank(name), list(models).index(name)))


def group_order(report: dict) -> list[str]:
    """The gate's groups of records in the task's order (its classes, or the thirds of a regression target)."""
    groups = list((report.get("gate_weights") or {}).get("by_class") or {})
    known = [*THIRDS, "0", "1", *((report.get("bootstrap") or {}).get("labels") or [])]
    return [g for g in dict.fromkeys(known) if g in groups] + [g for g in groups if g not in known]


def best_per_metric(report: dict) -> dict[str, str]:
    """metric -> the candidate with the best point estimate (lowest for errors, highest otherwise)."""
    best = {}
    for metric in metric_columns(report):
        scored = [(row[metric]["value"], name) for name, row in report["models"].items()
                  if metric in row and row[metric].get("value") is not None and not math.isnan(row[metric]["value"])]
        if scored:
            best[metric] = (min if not HIGHER_IS_BETTER.get(metric, True) else max)(scored)[1]
    return best


TEMPLATE = jinja2.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>EnECG report</title>
<style>
  body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em; color: #222; }
  h1 { border-bottom: 2px solid #c22; padding-bottom: .2em; }
  h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
  table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
  th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; white-space: nowrap; }
  th:first-child, td:first-child { text-align: left; }
  table.wrap td { white-space: normal; max-width: 22em; }
  th { background: #f3f3f3; }
  tr.moe td { background: #fff1f1; font-weight: 600; }
  td.best { text-decoration: underline; }
  .ci { color: #666; font-size: 11px; }
  .note { color: #666; font-size: 13px; }
  .warn { color: #a60; }
  .missing { color: #a00; }
  .figures { display: flex; flex-wrap: wrap; gap: 1em; }
  figure { margin: 0; border: 1px solid #eee; padding: .4em; min-width: 0; max-width: 100%; box-sizing: border-box; }
  figure img { max-width: 100%; height: auto; display: block; }
  figcaption { font-size: 13px; color: #444; margin-top: .2em; }
  nav a { margin-right: 1em; }
  code { background: #f5f5f5; padding: 0 .2em; }
</style>
</head>
<body>
<h1>EnECG report</h1>
<p class="note">Written {{ written }} by enecg {{ version }}. Backbones {{ params.backbones | join(", ") }};
split {{ params.split.method if params.split else "?" }}. Interactive plots: <code>dvc plots show</code>;
every number below is in <code>metrics/TASK.json</code>.</p>
<nav>{% for task in tasks %}<a href="#task-{{ task.name }}">{{ task.name }}</a>{% endfor %}<a href="#corpus">corpus</a><a href="#backbones">backbones</a></nav>

{% for task in tasks %}
<h2 id="task-{{ task.name }}">{{ task.name }}{% if task.report %} <small>({{ task.report.type }})</small>{% endif %}</h2>
{% if not task.report %}
<p class="missing">Not evaluated yet: run <code>enecg evaluate --task {{ task.name }}</code> (or <code>dvc repro</code>).</p>
{% else %}
{% set r = task.report %}{% set boot = r.bootstrap %}{% set best = best_per_metric(r) %}
<p>Test set: {{ r.n_test }} records of {{ boot.subjects }} subjects (training: {{ r.n_train }} records).
{{ "%.0f" | format(100 * boot.confidence) }}% intervals from {{ boot.resamples_used }} of {{ boot.resamples }} bootstrap resamples of {{ boot.unit }}s{% if boot.labels_used %}; macro averages over {{ boot.labels_used }} labels{% endif %}.
Best single expert on these records: <b>{{ r.best_expert }}</b>.</p>
{% for warning in r.warnings or [] %}<p class="warn">warning: {{ warning }}</p>{% endfor %}
<table>
<tr><th>candidate</th>{% for m in metric_columns(r) %}<th>{{ m }}</th>{% endfor %}</tr>
{% for name in candidate_order(r.models) %}{% set row = r.models[name] %}
<tr{% if name == "moe" %} class="moe"{% endif %}><td>{{ name }}</td>{% for m in metric_columns(r) %}<td{% if best.get(m) == name %} class="best"{% endif %}>{% if row.get(m) %}{{ number(row[m].value) }}<br><span class="ci">{{ interval(row[m]) }}</span>{% endif %}</td>{% endfor %}</tr>
{% endfor %}
</table>
<p class="note">Each cell: the value on the test records, below it its interval [low, high]; underlined: the best point estimate of the column.</p>
<h3>Paired differences (same resamples)</h3>
<table>
<tr><th>difference</th>{% for m in metric_columns(r) %}<th>{{ m }}</th>{% endfor %}</tr>
{% for name, row in r.paired.items() %}
<tr><td>{{ name }}</td>{% for m in metric_columns(r) %}<td>{% if row.get(m) %}{{ number(row[m].value) }}<br><span class="ci">{{ interval(row[m]) }}</span>{% if verdict(row[m], m) %}<br><b>{{ verdict(row[m], m) }}</b>{% endif %}{% endif %}</td>{% endfor %}</tr>
{% endfor %}
</table>
<p class="note">moe-best: MoE minus the best single expert (chosen on the test records: the conservative choice); moe-mean: MoE minus the plain mean of the experts. "MoE better" / "MoE worse": the interval excludes 0 (for errors such as mae, lower is better).</p>
{% if r.gate_weights %}
<h3>Gate weights (MoE, test records)</h3>
{% set experts = r.gate_weights.mean.keys() | list %}
<table>
<tr><th>records</th>{% for e in experts %}<th>{{ e }}</th>{% endfor %}</tr>
<tr><td>all</td>{% for e in experts %}<td>{{ "%.3f" | format(r.gate_weights.mean[e]) }}</td>{% endfor %}</tr>
{% for group in group_order(r) %}{% set weights = r.gate_weights.by_class[group] %}
<tr><td>true class {{ group }}</td>{% for e in experts %}<td>{{ "%.3f" | format(weights[e]) if e in weights else "" }}</td>{% endfor %}</tr>
{% endfor %}
</table>
{% endif %}
{% if r.per_label_auroc %}
<details><summary>AUROC of the MoE per label ({{ r.per_label_auroc | length }})</summary>
<table><tr><th>label</th><th>auroc</th></tr>
{% for label, value in r.per_label_auroc.items() %}<tr><td>{{ label }}</td><td>{{ "%.4g" | format(value) if value == value else "–" }}</td></tr>{% endfor %}
</table></details>
{% endif %}
<div class="figures">
{% for title, uri in task.figures %}
<figure><img src="{{ uri }}" alt="{{ task.name }}: {{ title }}"><figcaption>{{ task.name }}: {{ title }}</figcaption></figure>
{% else %}
<p class="missing">No pictures in plots/{{ task.name }}/: rerun <code>enecg evaluate --task {{ task.name }}</code>.</p>
{% endfor %}
</div>
{% endif %}
{% endfor %}

<h2 id="corpus">Corpus (prepare)</h2>
{% if not corpus %}
<p class="missing">corpus.zarr not found: run <code>enecg prepare</code>.</p>
{% else %}
{% set qc = corpus.summary or {} %}
<table>
<tr><th>records in the manifest</th><td>{{ qc.records }}</td></tr>
<tr><th>kept (passed QC)</th><td>{{ qc.kept }}</td></tr>
{% for reason, count in (qc.excluded or {}).items() %}<tr><th>excluded: {{ reason }}</th><td>{{ count }}</td></tr>{% endfor %}
{% if not qc.excluded %}<tr><th>excluded</th><td>0</td></tr>{% endif %}
<tr><th>grid</th><td>{{ corpus.sampling_rate }} Hz x {{ corpus.samples }} samples, {{ (corpus.leads or []) | length }} leads ({{ (corpus.leads or []) | join(", ") }}){% if corpus.units %}, {{ corpus.units }}{% endif %}</td></tr>
{% set prov = corpus.provenance or {} %}
{% if prov.manifest %}<tr><th>manifest</th><td>{{ prov.manifest }}{% if prov.manifest_sha256 %} (sha256 {{ prov.manifest_sha256[:16] }}…){% endif %}</td></tr>{% endif %}
</table>
{% endif %}

<h2 id="backbones">Backbones (frozen, extracted once)</h2>
<table class="wrap">
<tr><th>backbone</th><th>checkpoint</th><th>sha256</th><th>embedding</th><th>input</th><th>device</th><th>corpus manifest</th><th>enecg</th></tr>
{% for b in backbones %}
{% if not b.attrs %}
<tr><td>{{ b.name }}</td><td colspan="7" class="missing">embeddings/{{ b.name }}.zarr not found: run <code>enecg extract --model {{ b.name }}</code></td></tr>
{% else %}{% set a = b.attrs %}{% set spec = a.spec or {} %}{% set prov = a.provenance or {} %}{% set corpus_prov = prov.corpus or {} %}
<tr><td>{{ b.name }}</td><td>{{ a.checkpoint }}</td><td title="{{ a.checkpoint_sha256 }}"><code>{{ (a.checkpoint_sha256 or "")[:16] }}…</code></td>
<td>{{ a.embedding_dim }}{% if a.outputs and a.outputs | length > 1 %} (+ {{ a.outputs[1:] | join(", ") }}){% endif %}</td>
<td>{{ (spec.leads or []) | length }} leads, {{ spec.sampling_rate }} Hz x {{ spec.samples }}; {{ spec.normalisation }}</td>
<td>{{ a.device }}</td><td title="{{ corpus_prov.manifest_sha256 }}">{{ corpus_prov.manifest }}</td><td>{{ prov.enecg_version }}</td></tr>
{% endif %}
{% endfor %}
</table>
<p class="note">Full SHA-256 on hover; every attribute is in <code>embeddings/NAME.zarr</code> (zarr.json).</p>
</body>
</html>
""", autoescape=True, undefined=jinja2.ChainableUndefined)


def render(inputs: dict) -> str:
    return TEMPLATE.render(
        **inputs, version=__version__, written=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        number=number, interval=interval, verdict=verdict, metric_columns=metric_columns, best_per_metric=best_per_metric,
        candidate_order=candidate_order, group_order=group_order,
    )


def write_report(params: dict, out: Path) -> Path:
    """report.html (or `out`) from the current run's artifacts, written whole (a temporary file renamed)."""
    from pipeline.stores import atomic_path

    out = Path(out)
    html = render(gather(params))
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out
