"""How fast `prepare` reads records, against the floor of reading the same files with a plain np.fromfile.

Run from the project root (work files go to a temporary folder; ../shared must be there):

    python benchmarks/prepare.py [--rows 4000] [--compare-with REV]

The corpus is ../shared/data/ptbxl-500/records500: 500 PTB-XL records, 12 leads, 500 Hz, 10 s, WFDB format 16
(the form of PTB-XL and MIMIC-IV-ECG), listed over and over (distinct record ids, the same files) up to `--rows`
manifest rows. Measured in one run, each on the same rows:

- prepare: `prepare_corpus`, the library function of the `prepare` stage, builds corpus.zarr from that
  manifest with params.yaml's `prepare` settings (QC, chunk size, workers, scheduler): manifest checks,
  reading, QC, the canonical grid and the compressed Zarr writes, all of it;
- reading alone: `load_canonical` (what prepare runs per record: read, QC, canonical grid) on one thread, no
  dask and no store;
- store writes alone: the canonical signals of one chunk written into an array made by the stores'
  `create_records_array`, as prepare makes corpus.zarr's `signals`, once per chunk of the manifest;
- the floor: one plain `np.fromfile` of every row's signal file (best of 3).

The 60 MB of files sit in the page cache throughout (each is read first), so the figures are the CPU cost of
reading, not the disk's. `--compare-with REV` measures the code of that git revision (exported with `git
archive`) the same way in the same run, for a before/after table. MIMIC-IV-ECG's time (~800,000 records) is
projected from prepare's records/s; the compression ratio is corpus.zarr's `signals` raw bytes over the bytes
its chunks take in the store. The machine may be shared: the load average at the start and the end is
recorded beside the figures. Output: a table on stdout and benchmarks/prepare.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.shared_dir import DATA  # noqa: E402  ($ENECG_SHARED, else ../shared)

RECORDS = DATA / "ptbxl-500"
OUT = Path(__file__).with_name("prepare.md")
MIMIC_RECORDS = 800_000


def record_paths() -> list[Path]:
    folder = RECORDS / "records500" / "00000"
    paths = sorted(path.with_suffix("") for path in folder.glob("*_hr.hea"))
    if not paths:
        raise SystemExit(f"{folder} holds no PTB-XL 500 Hz records: this benchmark needs the shared data folder (set ENECG_SHARED)")
    return paths


def write_manifest(paths: list[Path], folder: Path) -> Path:
    """One manifest line per path, each with its own record id."""
    manifest = folder / "manifest.jsonl"
    with open(manifest, "w") as out:
        for row, path in enumerate(paths):
            out.write(json.dumps({"record_id": f"{path.name}-{row}", "subject_id": path.name, "path": str(path.relative_to(RECORDS))}) + "\n")
    return manifest


def timed(run) -> tuple[float, float]:
    """Wall and CPU seconds (every thread of this process) of `run()`."""
    cpu, start = time.process_time(), time.perf_counter()
    run()
    return time.perf_counter() - start, time.process_time() - cpu


def fromfile_seconds(rows: list[Path]) -> float:
    """The floor: one np.fromfile (int16) of each row's signal file, best of three passes."""
    files = [path.with_suffix(".dat") for path in rows]
    return min(timed(lambda: [np.fromfile(file, dtype="<i2") for file in files])[0] for _ in range(3))


def measure(code: Path, count: int) -> dict:
    """Everything in the module docstring, with the code (and params.yaml) under `code`."""
    sys.path.insert(0, str(code))
    from pipeline.params import load_params
    from pipeline.stage_one.corpus import prepare_corpus
    from pipeline.stage_one.signals import QCSettings, load_canonical
    from pipeline.stores import create_records_array

    import zarr

    assert Path(sys.modules["pipeline"].__file__).is_relative_to(code), "the code measured is not the code asked for"
    settings = load_params(code / "params.yaml", need_tasks=False)["prepare"]
    qc = QCSettings(int(settings["sampling_rate"]), float(settings["seconds"]), float(settings["min_seconds"]), float(settings["flat_threshold_mv"]))
    chunk, workers, scheduler = int(settings["chunk_records"]), int(settings["workers"]), str(settings["scheduler"])
    paths = record_paths()
    rows = [paths[row % len(paths)] for row in range(count)]
    with tempfile.TemporaryDirectory(prefix="enecg-prepare-") as work:
        floor = fromfile_seconds(rows)  # also brings every file into the page cache
        read_wall, read_cpu = timed(lambda: [load_canonical(path, qc) for path in rows])
        block = np.stack([load_canonical(path, qc) for path in rows[:chunk]])
        array = create_records_array(zarr.open_group(Path(work) / "writes.zarr", mode="w"), "signals", (count, *block.shape[1:]), chunk, "float32", 0.0)

        def write_chunks():
            for start in range(0, count, chunk):
                array[start : start + chunk] = block[: count - start]

        write_wall, write_cpu = timed(write_chunks)
        manifest = write_manifest(rows, Path(work))
        summary = {}
        wall, cpu = timed(lambda: summary.update(prepare_corpus(manifest, RECORDS, Path(work) / "corpus.zarr", qc, chunk_records=chunk,
                                                                 workers=workers, scheduler=scheduler)))
        signals = zarr.open_group(Path(work) / "corpus.zarr", mode="r")["signals"]
        ratio = signals.nbytes / signals.nbytes_stored()
    assert summary["kept"] == count, summary
    return {"rows": count, "files": len(paths), "wall_s": wall, "cpu_s": cpu, "fromfile_s": floor, "read_wall_s": read_wall,
            "read_cpu_s": read_cpu, "write_wall_s": write_wall, "write_cpu_s": write_cpu, "workers": workers, "scheduler": scheduler,
            "chunk_records": chunk, "compression_ratio": ratio}


def measure_in_subprocess(code: Path, rows: int) -> dict:
    """`measure` in a fresh interpreter, so that the code measured is the only one imported."""
    result = subprocess.run([sys.executable, __file__, "--rows", str(rows), "--code", str(code)],
                            check=True, capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    return json.loads(result.stdout.strip().splitlines()[-1])


def export(revision: str, folder: Path) -> Path:
    """The tree of `revision`, as `git archive` gives it."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def row(label: str, result: dict) -> str:
    rows = result["rows"]
    rate = rows / result["wall_s"]
    cells = [
        label,
        f"{rate:,.0f}",
        f"{result['wall_s']:.1f} ({result['cpu_s']:.1f} CPU)",
        f"{rows / result['read_wall_s']:,.0f} ({result['read_cpu_s'] / rows * 1e3:.2f} ms CPU each)",
        f"{rows / result['write_wall_s']:,.0f} ({result['write_cpu_s'] / rows * 1e3:.2f} ms CPU each)",
        f"{result['fromfile_s']:.3f}",
        f"{result['wall_s'] / result['fromfile_s']:,.0f}x",
        f"{result['read_wall_s'] / result['fromfile_s']:,.0f}x",
        f"{MIMIC_RECORDS / rate / 3600:,.1f} h",
        f"{result['compression_ratio']:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


def report(results: dict[str, dict], command: str, load: list[tuple]) -> str:
    first = next(iter(results.values()))
    head = ["| code | prepare records/s | prepare s | reading alone, records/s | store writes alone, records/s | np.fromfile s | "
            f"prepare / np.fromfile | reading / np.fromfile | MIMIC-IV-ECG ({MIMIC_RECORDS:,} records) at prepare's rate | "
            "corpus.zarr signals, raw / stored bytes |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    return "\n".join([
        "# prepare: records per second",
        "",
        f"Produced by `{command}` on {platform.machine()} with {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}. "
        f"Load average (1, 5, 15 min) {' / '.join(f'{x:.1f}' for x in load[0])} at the start and {' / '.join(f'{x:.1f}' for x in load[1])} "
        "at the end: the machine is shared with other work, so wall times are inflated (CPU seconds less so).",
        "",
        f"Manifest: {first['rows']:,} rows cycling through the {first['files']} PTB-XL 500 Hz records of ../shared/data/ptbxl-500 "
        f"(12 leads, 10 s, format 16): each record is listed {first['rows'] / first['files']:.0f} times, with distinct record ids. "
        f"prepare: `prepare_corpus` with params.yaml's `prepare` settings ({first['workers']} {first['scheduler']}, chunks of "
        f"{first['chunk_records']} records), everything included. Reading alone: `load_canonical` on every row, one thread. "
        "Store writes alone: one chunk's canonical signals written into a `create_records_array` array (corpus.zarr's "
        "compressor) once per chunk. np.fromfile: one plain read of every row's signal file. All in the same run, from the "
        "page cache. See the script's docstring.",
        "",
        *head,
        *[row(label, result) for label, result in results.items()],
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000, help="manifest rows (the 500 records listed over and over)")
    parser.add_argument("--compare-with", help="also measure this git revision's code (e.g. the commit before a change)")
    parser.add_argument("--code", type=Path, help=argparse.SUPPRESS)  # measure the code in this folder, print JSON
    args = parser.parse_args()
    if args.code:
        print(json.dumps(measure(args.code.resolve(), args.rows)))
        return
    load = [os.getloadavg()]
    results = {}
    if args.compare_with:
        with tempfile.TemporaryDirectory(prefix="enecg-rev-") as folder:
            results[f"`{args.compare_with}`"] = measure_in_subprocess(export(args.compare_with, Path(folder)), args.rows)
    results["this checkout"] = measure_in_subprocess(ROOT, args.rows)
    load.append(os.getloadavg())
    command = "python benchmarks/prepare.py" + (f" --rows {args.rows}" if args.rows != 4000 else "")
    command += f" --compare-with {args.compare_with}" if args.compare_with else ""
    text = report(results, command, load)
    print(text)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
