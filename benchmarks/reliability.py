"""Reliability figures: what every bad input gets, and what a `kill -9` of prepare / extract costs.

Run from the project root (takes about ten minutes on 2 busy cores; work files go to a temporary folder):

    python benchmarks/reliability.py [--trials 3] [--subjects 8] [--records 3] [--repeat 20]

1. Bad inputs: the catalogue of bad records in tests/test_bad_records.py (written with wfdb, the real
   malformed and 400 Hz records of ../shared/data/challenge-samples, and corrupted copies of real ones), each
   read as `prepare` and `predict` read it, then all of them through `prepare` (QC summary, --strict); the
   bad manifest lines and params files, with the error each gets and how long it took to fail.
2. Resume after kill: the embedded demo corpus (`enecg demo-data`, `--subjects` x `--records` simulated
   records), its manifest listed `--repeat` times over (distinct record ids, the same WFDB files) so that a
   run lasts long enough to be killed; `enecg prepare` and `enecg extract --model minirocket` run once
   uninterrupted, then `--trials` times killed with `kill -9` at a random moment and rerun. The resumed
   store must equal the uninterrupted one byte for byte; time lost = (killed run + rerun) - uninterrupted.
Output: tables on stdout and benchmarks/reliability.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import wfdb
import yaml
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the bad-input catalogue lives with the tests that check it

from pipeline.stage_one.backbones import LEADS_12  # noqa: E402
from pipeline.stage_one.corpus import prepare_corpus  # noqa: E402
from pipeline.errors import EnECGError  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.stage_one.signals import load_canonical  # noqa: E402
from pipeline.tasks import Task  # noqa: E402
from tests.test_bad_records import BAD_LINES, REAL, SETTINGS, check_kept, make_records, manifest_rows, write_manifest  # noqa: E402
from tests.test_kill_resume import ENECG, kill_at_random  # noqa: E402


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def short(text: str, limit: int = 150) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def handling(path: Path) -> str:
    """What reading a kept record involved: resampling, unit conversion, lead reordering, padding or cutting."""
    header = wfdb.rdheader(str(path))
    steps = [f"resampled {header.fs:g} -> 500 Hz"] if header.fs != 500 else []
    steps += [f"{header.units[0]} -> mV"] if header.units[0] != "mV" else []
    names = [name.upper() for name in header.sig_name]
    steps += ["leads reordered by name"] if names[:12] != [lead.upper() for lead in LEADS_12] else []
    steps += [f"{len(names) - 12} extra leads dropped"] if len(names) > 12 else []
    seconds = header.sig_len / header.fs
    steps += [f"zero-padded {seconds:.2f} -> 10 s"] if seconds < 10 else [f"cut {seconds:.2f} -> 10 s"] if seconds > 10 else []
    return ", ".join(steps) or "as is"


def bad_records(work: Path) -> str:
    root = work / "records"
    cases = make_records(root, real=REAL.exists())
    rows = []
    for case in cases:
        try:
            canonical = load_canonical(root / case.name, SETTINGS)
            outcome = f"kept: {handling(root / case.name)}; max error {check_kept(case, canonical):.4f} mV"
        except EnECGError as error:
            outcome = "excluded: " + str(error).removeprefix(f"{root / case.name}: ").replace(f"{root}/", "")
        verdict = "ok" if outcome.startswith("kept") == (case.expect is None) else "UNEXPECTED"
        rows.append([f"`{case.name}`", case.problem, short(outcome), verdict])
    manifest = write_manifest(work / "manifest.jsonl", manifest_rows(cases))
    try:
        prepare_corpus(manifest, root, work / "strict.zarr", SETTINGS, chunk_records=8, strict=True)
        strict = "(no failure)"
    except EnECGError as error:
        strict = short(str(error).replace(str(root) + "/", ""), 300)
    summary = prepare_corpus(manifest, root, work / "corpus.zarr", SETTINGS, chunk_records=8)
    counts = [[reason, count] for reason, count in sorted(summary["excluded"].items())]
    return "\n\n".join([
        f"QC settings: {SETTINGS.sampling_rate} Hz x {SETTINGS.seconds:g} s, min_seconds {SETTINGS.min_seconds:g} "
        f"(7-10 s records are zero-padded at the end), flat below {SETTINGS.flat_threshold_mv} mV peak-to-peak.",
        table(["record", "what is wrong", "what it gets (`load_canonical`, as prepare and predict read it; error against the "
               "signal it should be)", "as tested"], rows),
        f"All {summary['records']} through `prepare` (chunks of 8, 2 threads): {summary['kept']} kept, "
        f"{summary['records'] - summary['kept']} excluded; the summary table counts them by kind:",
        table(["excluded because", "records"], counts),
        f"`prepare --strict` on the same manifest fails after the first chunk that excludes a record:\n\n> {strict}",
    ])


def bad_manifests(work: Path) -> str:
    rows = []
    task = Task("rr_interval", "regression", "rr_interval")
    for number, (row, _) in enumerate(BAD_LINES):
        folder = work / f"manifest{number}"
        folder.mkdir(parents=True)
        manifest = write_manifest(folder / "m.jsonl", [{"record_id": "good", "subject_id": "p", "path": "good", "rr_interval": 800.0}, "", row])
        start = time.perf_counter()
        try:
            prepare_corpus(manifest, folder, folder / "corpus.zarr", SETTINGS, tasks=[task])
            outcome = "(accepted)"
        except EnECGError as error:
            outcome = str(error).replace(str(folder), "ROOT")
        text = row if isinstance(row, str) else json.dumps(row)
        rows.append([f"`{short(text, 70)}`", short(outcome, 170), f"{(time.perf_counter() - start) * 1000:.0f} ms"])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for problem, content in [
        ("invalid YAML", "data: [unclosed\n"),
        ("section missing", yaml.safe_dump({k: v for k, v in params.items() if k != "prepare"})),
        ("unknown task", yaml.safe_dump({**params, "tasks": ["rr_interval", "qt_interval"]})),
    ]:
        path = work / "params.yaml"
        path.write_text(content)
        try:
            load_params(path)
            outcome = "(accepted)"
        except EnECGError as error:
            outcome = str(error).replace(str(work) + "/", "")
        rows.append([f"params.yaml: {problem}", short(outcome, 170), "-"])
    return "\n\n".join([
        "Line 3 of a manifest (line 1 good, line 2 blank), through `prepare_corpus` with the task rr_interval "
        "(regression); each fails before any record is read (there are none on disk):",
        table(["input", "error", "time to fail"], rows),
    ])


def digest(store: Path) -> dict[str, str]:
    return {str(file.relative_to(store)): hashlib.sha256(file.read_bytes()).hexdigest() for file in sorted(store.rglob("*")) if file.is_file()}


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(action) -> tuple[float, float, object]:
    """Wall and CPU seconds (of the subprocesses it waited for) of `action()`, and its result."""
    wall, cpu = time.perf_counter(), cpu_of_children()
    result = action()
    return time.perf_counter() - wall, cpu_of_children() - cpu, result


def run(folder: Path, *args: str) -> tuple[float, float]:
    wall, cpu, _ = timed(lambda: subprocess.run([str(ENECG), *args], cwd=folder, check=True, capture_output=True))
    return wall, cpu


def demo_project(work: Path, subjects: int, records: int, repeat: int, chunk: int) -> Path:
    folder = work / "demo"
    folder.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["demo"].update(subjects=subjects, records_per_subject=records)
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    print(f"demo-data: {run(folder, 'demo-data')[0]:.0f} s", flush=True)
    rows = [json.loads(line) for line in (folder / params["data"]["manifest"]).read_text().splitlines()]
    many = [{**row, "record_id": f"{row['record_id']}_{copy}"} for copy in range(repeat) for row in rows]
    (folder / "data" / "demo" / "repeated.jsonl").write_text("".join(json.dumps(row) + "\n" for row in many))
    params["data"]["manifest"] = "data/demo/repeated.jsonl"
    params["prepare"]["chunk_records"] = params["extract"]["chunk_records"] = chunk
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder


def resume_trials(folder: Path, command: list[str], store: Path, trials: int, startup: float) -> list[list]:
    """One uninterrupted run, then `trials` runs killed at a random moment of the work (after the start-up) and rerun."""
    partial = store.with_name(store.name + ".partial")
    shutil.rmtree(store, ignore_errors=True)
    full, full_cpu = run(folder, *command)
    reference = digest(store)
    chunks = zarr.open_group(store, mode="r")["done"].shape[0]
    rows = [[" ".join(command), "uninterrupted", f"{full:.1f}", f"{full_cpu:.1f}", "-", "-", "-", "-"]]
    for trial in range(trials):
        within, landed = max(0.1, full - startup), False
        while not landed:  # a kill that lands after the run finished is drawn again, sooner
            shutil.rmtree(store, ignore_errors=True)
            killed, killed_cpu, (_, landed) = timed(lambda: kill_at_random(folder, command, partial, within, env=dict(os.environ)))
            within /= 2
        done = int(zarr.open_group(partial, mode="r")["done"][:].sum()) if partial.exists() else 0
        rerun, rerun_cpu = run(folder, *command)
        lost, lost_cpu = killed + rerun - full, killed_cpu + rerun_cpu - full_cpu
        rows.append([" ".join(command), f"kill -9 #{trial + 1}", f"{killed:.1f} + {rerun:.1f}", f"{killed_cpu:.1f} + {rerun_cpu:.1f}",
                     f"{done} of {chunks}", f"{lost:+.1f}", f"{lost_cpu:+.1f} ({lost_cpu / full_cpu:+.0%})",
                     "yes" if digest(store) == reference else "NO"])
        print(rows[-1], flush=True)
    return rows


def resume_after_kill(work: Path, trials: int, subjects: int, records: int, repeat: int) -> str:
    chunk = 32
    folder = demo_project(work, subjects, records, repeat, chunk)
    startup = min(run(folder, "--help")[0] for _ in range(2))
    imports = timed(lambda: subprocess.run([sys.executable, "-c", "import stages.prepare, stages.extract"], cwd=folder, check=True))[0]
    rows = resume_trials(folder, ["prepare"], folder / "corpus.zarr", trials, startup + imports)
    print(f"pretrain minirocket: {run(folder, 'pretrain', '--model', 'minirocket')[0]:.0f} s", flush=True)
    rows += resume_trials(folder, ["extract", "--model", "minirocket"], folder / "embeddings" / "minirocket.zarr", trials, startup + imports)
    count = subjects * records * repeat
    return "\n\n".join([
        f"Corpus: {subjects * records} simulated demo records listed {repeat} times = {count} manifest lines, chunks of "
        f"{chunk} records; each run is a fresh `enecg` process (CLI start {startup:.1f} s, importing the stages' "
        f"modules with torch, scipy, zarr and dask {imports:.1f} s more, paid again by every rerun). Each kill lands at "
        "a moment drawn uniformly from the uninterrupted run's working time, counted from when the partial store "
        "appears (drawn again, sooner, if the run finished first).",
        table(["command", "run", "wall s (killed + rerun)", "CPU s (killed + rerun)", "chunks done at the kill", "wall s lost",
               "CPU s lost (of uninterrupted)", "store byte-identical"], rows),
        "Time lost = killed run + rerun - uninterrupted run. It is the process restart (start-up and imports) plus the "
        f"chunk that was being written when the kill landed (at most {chunk} records); completed chunks are never "
        "redone (tests/test_kill_resume.py checks that their chunk files are not rewritten). CPU seconds (user + system "
        "of the `enecg` processes) are the steadier measure here: wall times on this shared machine vary by tens of "
        "percent from run to run with the other users' load.",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--records", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    args = parser.parse_args()
    random.seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="enecg-reliability-") as tmp:
        work = Path(tmp)
        sections = [
            "# Reliability: bad input, and resume after `kill -9`",
            f"Produced by `python benchmarks/reliability.py --trials {args.trials} --subjects {args.subjects} --records "
            f"{args.records} --repeat {args.repeat}` on {platform.machine()} with {os.cpu_count()} cores (load average "
            f"{os.getloadavg()[0]:.1f} at the start: the machine is shared, so wall times are inflated), "
            f"{time.strftime('%Y-%m-%d')}.",
            "## Bad records", bad_records(work / "bad"),
            "## Bad manifests and params", bad_manifests(work / "manifests"),
            "## Resume after kill -9", resume_after_kill(work, args.trials, args.subjects, args.records, args.repeat),
        ]
    text = "\n\n".join(sections) + "\n"
    (ROOT / "benchmarks" / "reliability.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
