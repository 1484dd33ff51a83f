"""The `enecg` command line: a thin layer over the stages (each command = one DVC stage or a helper)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import typer

from pipeline.errors import EnECGError
from pipeline.layout import REPORT
from pipeline.params import load_params
from pipeline.progress import console

app = typer.Typer(help="EnECG: frozen ECG backbones once, cached; LoRA heads and a MoE gate on the cache.", no_args_is_help=True)
manifest_app = typer.Typer(help="Build a manifest from a corpus as PhysioNet distributes it.", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")
PARAMS = typer.Option(Path("params.yaml"), "--params", help="DVC params file")
# Option help texts. The backbone names are the registry's (tests/test_backbone_provenance.py checks that),
# written out so that `--help` need not import torch and every backbone module; the tasks are the shipped
# params.yaml's (also checked there).
BACKBONE_NAMES = (
    "dlinear", "ecgfm", "ecgfm-finetuned", "ecgfounder", "ecgfounder-1lead", "hubert-ecg-base", "hubert-ecg-large",
    "hubert-ecg-small", "minirocket", "moment-base", "moment-large", "moment-small", "tempo", "timesnet",
)
PRETRAINABLE_NAMES = ("dlinear", "minirocket", "timesnet")
POST_TRAINABLE_NAMES = ("ecgfounder", "ecgfounder-1lead")  # pipeline.params.POST_TRAINABLE (tests check they agree)
DEFAULT_TASKS = ("rr_interval", "irregular", "rate_class")
MODEL_HELP = f"backbone, one of: {', '.join(BACKBONE_NAMES)} (`enecg backbones` shows each)"
PRETRAIN_MODEL_HELP = f"backbone this project makes from the corpus, one of: {', '.join(PRETRAINABLE_NAMES)}"
TASK_HELP = (
    "task: a name in params.yaml `tasks`, defined under `task_definitions` "
    f"(the shipped params: {', '.join(DEFAULT_TASKS)})"
)


def user_errors(command):
    """Print an EnECGError as one actionable message (no traceback) and exit 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except EnECGError as error:
            console.print(f"[bold red]error:[/] {error}")
            raise typer.Exit(1) from None

    return wrapper


@app.command("demo-data")
@user_errors
def demo_data(params: Path = PARAMS):
    """Write the embedded default corpus: simulated 12-lead WFDB records and their manifest."""
    from stages import demo_data as stage

    console.print(f"wrote {stage.run(load_params(params, need_tasks=False))}")


@app.command()
@user_errors
def prepare(params: Path = PARAMS, strict: bool = typer.Option(False, help="fail if any record is excluded")):
    """Read, check and resample the manifest's records into corpus.zarr."""
    from stages import prepare as stage

    stage.run(load_params(params), strict=strict)


@app.command()
@user_errors
def pretrain(model: str = typer.Option(..., "--model", "-m", help=PRETRAIN_MODEL_HELP), params: Path = PARAMS):
    """Make a pretrainable backbone's checkpoint from the corpus (self-supervised)."""
    from stages import pretrain as stage

    console.print(stage.run(load_params(params), model))


@app.command()
@user_errors
def extract(
    model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    params: Path = PARAMS,
    stop_after_chunks: Optional[int] = typer.Option(None, hidden=True, help="stop early, as if killed (tests)"),
):
    """Run one frozen backbone over the corpus once -> embeddings/MODEL.zarr (resumable)."""
    from stages import extract as stage

    console.print(stage.run(load_params(params), model, stop_after_chunks))


def _backbones(loaded: dict, model: Optional[str]) -> list[str]:
    return [model] if model else list(loaded["backbones"])


def _tasks(loaded: dict, task: Optional[str]) -> list[str]:
    return [task] if task else list(loaded["tasks"])


@app.command("fit-heads")
@user_errors
def fit_heads(
    task: Optional[str] = typer.Option(None, "--task", "-t", help=TASK_HELP + " (default: every task)"),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help=f"{MODEL_HELP}; default: every backbone in params.yaml `backbones`"
    ),
    params: Path = PARAMS,
):
    """Train the LoRA heads (k folds, out-of-fold predictions) of a backbone on its cached embeddings, for one task
    or every task (dvc.yaml runs one backbone's tasks in one process)."""
    from stages import fit_heads as stage

    loaded = load_params(params)
    for name in _backbones(loaded, model):
        for task_name in _tasks(loaded, task):
            console.print(stage.run(loaded, task_name, name))


@app.command("post-train")
@user_errors
def post_train(
    task: str = typer.Option(..., "--task", "-t", help=TASK_HELP),
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help=f"network to post-train, one of: {', '.join(POST_TRAINABLE_NAMES)}; default: every one in params.yaml `post_trained`",
    ),
    params: Path = PARAMS,
):
    """Post-train a network on one task's labels (preview linear probe, then fine-tuning with stochastic depth)
    -> heads/MODEL-post/TASK/, an expert of the ensemble. Needs a gate hold-out (params.yaml split)."""
    from pipeline.errors import ManifestError
    from pipeline.params import POST_TRAINABLE
    from stages import post_train as stage

    loaded = load_params(params)
    if model is not None and model not in POST_TRAINABLE:
        raise ManifestError(f"--model {model!r}: post-training fine-tunes one of {list(POST_TRAINABLE)}")
    for name in [model] if model else loaded.get("post_trained", []):
        console.print(stage.run(loaded, task, name))


@app.command("fit-gate")
@user_errors
def fit_gate(task: Optional[str] = typer.Option(None, "--task", "-t", help=TASK_HELP + " (default: every task)"), params: Path = PARAMS):
    """Train the mixture-of-experts gate of a task (default: every task) on the heads' out-of-fold predictions."""
    from stages import fit_gate as stage

    loaded = load_params(params)
    for name in _tasks(loaded, task):
        console.print(stage.run(loaded, name))


@app.command()
@user_errors
def evaluate(task: Optional[str] = typer.Option(None, "--task", "-t", help=TASK_HELP + " (default: every task)"), params: Path = PARAMS):
    """Evaluate probes, experts, their mean and the MoE on the test split -> metrics/TASK.json and metrics.json."""
    from stages import evaluate as stage

    loaded = load_params(params)
    for name in _tasks(loaded, task):
        stage.run(loaded, name)
    stage.write_summary(loaded)


@app.command("fit-ensemble")
@user_errors
def fit_ensemble(task: str = typer.Option(..., "--task", "-t", help=TASK_HELP), params: Path = PARAMS):
    """fit-heads for every backbone, post-train for every post-trained network, then fit-gate, then evaluate, for one task."""
    from stages import evaluate
    from stages import fit_gate as gate_stage
    from stages import fit_heads as heads_stage
    from stages import post_train as post_stage

    loaded = load_params(params)
    for name in loaded["backbones"]:
        heads_stage.run(loaded, task, name)
    for name in loaded.get("post_trained", []):
        post_stage.run(loaded, task, name)
    gate_stage.run(loaded, task)
    evaluate.run(loaded, task)
    evaluate.write_summary(loaded)


@app.command()
@user_errors
def report(
    out: Path = typer.Option(REPORT, "--out", "-o", help="the HTML file to write"),
    params: Path = PARAMS,
):
    """One self-contained HTML page of the current run: every task's metrics, intervals, pictures and gate
    weights, prepare's QC summary and the backbones' checkpoints -> report.html."""
    from stages import report as stage

    console.print(f"wrote {stage.run(load_params(params), out)}")


@app.command("cross-validate")
@user_errors
def cross_validate(task: str = typer.Option(..., "--task", "-t", help=TASK_HELP), params: Path = PARAMS):
    """EnECG's protocol (split.method: cv): stage two once per test fold -> metrics/TASK.cv.json (mean, std)."""
    from stages import cross_validate as stage

    stage.run(load_params(params), task)


@app.command()
@user_errors
def predict(
    records: list[Path] = typer.Argument(..., help="WFDB records: rec, rec.hea, rec.dat or rec.mat (one record)"),
    task: Optional[list[str]] = typer.Option(
        None, "--task", "-t", help=f"{TASK_HELP}; repeatable; default: every task in params.yaml `tasks`"
    ),
    params: Path = PARAMS,
    as_json: bool = typer.Option(False, "--json", help="print the predictions as JSON on stdout (no table)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="also write them to FILE: .csv or .json"),
    plot: Optional[Path] = typer.Option(
        None, "--plot", metavar="DIR", help="draw each record's 12 leads with its predictions -> DIR/<record>.png"
    ),
):
    """Run the trained chain (backbones, heads, gate) on new WFDB records: per record and task the prediction,
    each expert's own prediction and gate weight, and an out-of-distribution flag (a signal unlike an ECG, or an
    embedding far from the training records'). Exits 1 when no record could be predicted."""
    from stages import predict as stage

    loaded = load_params(params)
    stage.run(loaded, records, task or list(loaded["tasks"]), as_json=as_json, out=out, plot=plot)


@app.command()
@user_errors
def backbones(
    checkpoints: Path = typer.Option(Path("checkpoints"), help="folder of checkpoints/<name>/"),
    corpus: Optional[str] = typer.Option(
        None, "--corpus", metavar="ID",
        help="test corpus id (e.g. ptb-xl, mimic-iv-ecg): warn for each backbone whose checkpoint was trained on it",
    ),
):
    """List every backbone: input, leads, embedding size, checkpoint (found + sha256, or missing), where it comes
    from and what its published weights were trained on. One block per backbone, readable at 80 columns."""
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    from pipeline.stage_one.backbones import (
        CORPORA,
        LEADS_12,
        checkpoint_sha256,
        corpus_id,
        list_backbones,
        made_by_pretrain,
        seen_corpus_warning,
    )

    configs = list_backbones()
    console.print(Text("backbones (preprocessing: see each module's docstring)", style="bold"))
    wanted = corpus_id(corpus) if corpus is not None and corpus.strip() else None
    if wanted is not None and wanted not in CORPORA:
        note = f"note: {wanted!r} is not a known corpus id, so no checkpoint can match it; known: {', '.join(CORPORA)}"
        console.print(Text(note, style="yellow"))
    warned = 0
    for config in configs:
        path = checkpoints / config.name / config.checkpoint_file
        status = f"found, sha256 {checkpoint_sha256(path)[:12]}" if path.exists() else "missing"
        corpus_made = path.exists() and made_by_pretrain(config.name, path)
        if corpus_made:
            status += ", made by `enecg pretrain` (pretrain.json beside it)"
        spec = config.spec
        leads = f"lead{'s' * (len(spec.leads) > 1)} {', '.join(spec.leads)}"
        if tuple(spec.leads) == LEADS_12:
            leads = "12 leads"
        trained = ", ".join(config.trained_on) or "not stated"
        if config.trained_on_labels:
            trained += f" (with labels: {', '.join(config.trained_on_labels)})"
        if corpus_made or (config.pretrainable and not config.trained_on):
            trained = "this corpus's training records, without labels"
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True)
        grid.add_column(overflow="fold")
        rows = [
            ("input", f"{spec.sampling_rate:g} Hz x {spec.samples} samples, {leads}, dim {config.embedding_dim}"),
            ("checkpoint", str(path)),
            ("", status),
            ("source", config.source),
            ("trained on", trained),
            ("", config.trained_on_source or "not stated"),
        ]
        if wanted is not None:
            warning = seen_corpus_warning(config.name, wanted, path)
            warned += warning is not None
            if warning is not None:
                rows.append(("WARNING", warning))
            elif corpus_made or (config.pretrainable and not config.trained_on):
                rows.append(("corpus", f"{wanted}: made by `enecg pretrain` from this corpus's training records only"))
            elif config.trained_on:
                rows.append(("corpus", f"{wanted} is not among the corpora its authors state"))
            else:
                rows.append(("corpus", f"{wanted}: cannot be checked, its training corpora are not stated"))
        for label, value in rows:
            alarm = label == "WARNING"
            grid.add_row(Text(label, style="bold yellow" if alarm else "dim"), Text(value, style="yellow" * alarm))
        console.print(Text(config.name, style="bold cyan"))
        console.print(Padding(grid, (0, 0, 0, 2)))
    if wanted is not None:
        summary = f"{warned} of {len(configs)} checkpoints may have been trained on records of {wanted}"
        console.print(Text(summary, style="bold"))


@app.command()
@user_errors
def specs(out: Path = typer.Option(Path("specs"), help="folder to write one JSON per backbone")):
    """Write each backbone's input spec and code hash (DVC re-extracts a backbone only when its file changes)."""
    from pipeline.stage_one.specs import write_specs

    write_specs(out)


def _report_manifest(rows: list, tasks: dict, out: Path) -> None:
    from data_manifests.ptbxl import tasks_path, write_manifest

    write_manifest(rows, tasks, out)
    console.print(f"wrote {len(rows)} records to {out} and task definitions ({', '.join(tasks)}) to {tasks_path(out)}")


@manifest_app.command("mimic-iv-ecg")
@user_errors
def manifest_mimic(
    ecg_root: Path = typer.Argument(..., help="MIMIC-IV-ECG folder (record_list.csv, machine_measurements.csv, files/)"),
    out: Path = typer.Option(Path("data/mimic-iv-ecg.jsonl"), help="manifest to write"),
    patients: Optional[Path] = typer.Option(None, help="MIMIC-IV hosp/patients.csv(.gz): adds age and gender"),
    labevents: Optional[Path] = typer.Option(None, help="MIMIC-IV hosp/labevents.csv(.gz): adds the potassium flag"),
    window_hours: float = typer.Option(24.0, help="potassium result must lie within this many hours of the ECG"),
    one_per_subject: bool = typer.Option(False, help="keep each subject's first ECG (EnECG's protocol)"),
    max_subjects: Optional[int] = typer.Option(None, help="keep at most this many subjects (EnECG: 30000)"),
):
    """EnECG's tasks (rr_interval, age, gender, flag, report_label) from MIMIC-IV-ECG."""
    from data_manifests.mimic_iv_ecg import build_mimic_iv_ecg_manifest

    rows, tasks = build_mimic_iv_ecg_manifest(
        ecg_root, patients_csv=patients, labevents_csv=labevents, potassium_window_hours=window_hours,
        one_per_subject=one_per_subject, max_subjects=max_subjects,
    )
    _report_manifest(rows, tasks, out)


@manifest_app.command("ptb-xl")
@user_errors
def manifest_ptbxl(
    source: Path = typer.Argument(..., help="PTB-XL folder (ptbxl_database.csv, scp_statements.csv) or a label table .csv"),
    out: Path = typer.Option(Path("data/ptb-xl.jsonl"), help="manifest to write"),
    sampling_rate: int = typer.Option(500, help="500 -> records500 (filename_hr), 100 -> records100 (filename_lr)"),
):
    """Age, sex and the PTB-XL benchmark's statement sets, with strat_fold as the fold."""
    from data_manifests.ptbxl import build_ptbxl_manifest

    rows, tasks = build_ptbxl_manifest(source, sampling_rate=sampling_rate)
    _report_manifest(rows, tasks, out)


if __name__ == "__main__":
    app()
