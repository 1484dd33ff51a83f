"""The `enecg` command line: a thin layer over the stages (each command = one DVC stage or a helper)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

import typer

from pipeline.errors import EnECGError
from pipeline.params import load_params
from pipeline.progress import console

app = typer.Typer(help="EnECG: frozen ECG backbones once, cached; LoRA heads and a MoE gate on the cache.", no_args_is_help=True)
manifest_app = typer.Typer(help="Build a manifest from a corpus as PhysioNet distributes it.", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")
PARAMS = typer.Option(Path("params.yaml"), "--params", help="DVC params file")


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

    console.print(f"wrote {stage.run(load_params(params))}")


@app.command()
@user_errors
def prepare(params: Path = PARAMS, strict: bool = typer.Option(False, help="fail if any record is excluded")):
    """Read, check and resample the manifest's records into corpus.zarr."""
    from stages import prepare as stage

    stage.run(load_params(params), strict=strict)


@app.command()
@user_errors
def pretrain(model: str = typer.Option(..., "--model", "-m"), params: Path = PARAMS):
    """Make a pretrainable backbone's checkpoint from the corpus (self-supervised)."""
    from stages import pretrain as stage

    console.print(stage.run(load_params(params), model))


@app.command()
@user_errors
def extract(
    model: str = typer.Option(..., "--model", "-m"),
    params: Path = PARAMS,
    stop_after_chunks: Optional[int] = typer.Option(None, hidden=True, help="stop early, as if killed (tests)"),
):
    """Run one frozen backbone over the corpus once -> embeddings/MODEL.zarr (resumable)."""
    from stages import extract as stage

    console.print(stage.run(load_params(params), model, stop_after_chunks))


def _backbones(loaded: dict, model: Optional[str]) -> list[str]:
    return [model] if model else list(loaded["backbones"])


@app.command("fit-heads")
@user_errors
def fit_heads(task: str = typer.Option(..., "--task", "-t"), model: Optional[str] = typer.Option(None, "--model", "-m", help="default: every backbone in params"), params: Path = PARAMS):
    """Train the LoRA heads of one task (k folds, out-of-fold predictions) on cached embeddings."""
    from stages import fit_heads as stage

    loaded = load_params(params)
    for name in _backbones(loaded, model):
        console.print(stage.run(loaded, task, name))


@app.command("fit-gate")
@user_errors
def fit_gate(task: str = typer.Option(..., "--task", "-t"), params: Path = PARAMS):
    """Train the mixture-of-experts gate of one task on the heads' out-of-fold predictions."""
    from stages import fit_gate as stage

    console.print(stage.run(load_params(params), task))


@app.command()
@user_errors
def evaluate(task: str = typer.Option(..., "--task", "-t"), params: Path = PARAMS):
    """Evaluate each expert, their mean and the MoE on the test split -> metrics/TASK.json."""
    from stages import evaluate as stage

    stage.run(load_params(params), task)


@app.command("fit-ensemble")
@user_errors
def fit_ensemble(task: str = typer.Option(..., "--task", "-t"), params: Path = PARAMS):
    """fit-heads for every backbone, then fit-gate, then evaluate, for one task."""
    from stages import evaluate, fit_gate as gate_stage, fit_heads as heads_stage

    loaded = load_params(params)
    for name in loaded["backbones"]:
        heads_stage.run(loaded, task, name)
    gate_stage.run(loaded, task)
    evaluate.run(loaded, task)


@app.command()
@user_errors
def predict(
    records: list[Path] = typer.Argument(..., help="WFDB record paths (without extension)"),
    task: Optional[list[str]] = typer.Option(None, "--task", "-t", help="default: every task in params"),
    params: Path = PARAMS,
):
    """Run the trained chain (backbones, heads, gate) on new WFDB records."""
    from stages import predict as stage

    loaded = load_params(params)
    stage.run(loaded, records, task or list(loaded["tasks"]))


@app.command()
@user_errors
def backbones(checkpoints: Path = typer.Option(Path("checkpoints"), help="folder of checkpoints/<name>/")):
    """List every backbone: input spec, embedding size, checkpoint status and where it comes from."""
    from pipeline.backbones import checkpoint_sha256, list_backbones
    from pipeline.report import show_table

    rows = []
    for config in list_backbones():
        path = checkpoints / config.name / config.checkpoint_file
        status = f"found {checkpoint_sha256(path)[:12]}" if path.exists() else "missing"
        spec = config.spec
        rows.append([config.name, f"{spec.sampling_rate:g} Hz x {spec.samples}", len(spec.leads), config.embedding_dim, f"{path}\n{status}", config.source])
    show_table("backbones (preprocessing: see each module's docstring)", ["name", "input", "leads", "dim", "checkpoint", "source"], rows)


@app.command()
@user_errors
def specs(out: Path = typer.Option(Path("specs"), help="folder to write one JSON per backbone")):
    """Write each backbone's input spec and code hash (DVC re-extracts a backbone only when its file changes)."""
    from pipeline.specs import write_specs

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
