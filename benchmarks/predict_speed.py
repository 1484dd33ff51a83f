"""How fast `enecg predict` answers: the first record's wall time from the command's start, and records/s after it.

    python benchmarks/predict_speed.py [--project DIR] [--code DIR ...] [--records 100] [--repeats 3]

`--project DIR`: a project folder with a trained ensemble (heads/, gates/, checkpoints/, embeddings/, corpus.zarr)
and the demo's records (data/demo/records); without it the demo is built once in DIR (default
/tmp/enecg-predict-speed): this repository's committed files (`git archive HEAD`), `git init`, `dvc repro`, so
that reruns reuse it. `--code DIR` is the source tree whose `pipeline` runs (PYTHONPATH=DIR; default: this
repository's working tree); give several to compare them (e.g. a checkout of the commit before a change),
measured interleaved, so that they share the machine's load.

Per code tree and repeat, in a fresh process each (as a person runs it):
- first record: `enecg predict REC --json` on one demo record, wall seconds from the start to the exit (every
  import, loading the backbones, heads and gates, the record's prediction and its report);
- N records: `enecg predict REC1 .. RECN --json` (N = --records, distinct demo records); records/s after the
  first = (N - 1) / (wall(N) - wall(1)), the rate a long list is predicted at;
and the process's CPU seconds (user + sys: less sensitive to other work on the machine than the wall time),
the 1-minute load average at the start and the end. Bytecode is cached as in any installed program
(PYTHONPYCACHEPREFIX in PROJECT/.bench-pycache; one warm-up run first). Last, the import start-up: `import torch`
and `import torch, peft` (why predict reads the LoRA heads itself; see pipeline/predict.py).

With `--breakdown`, where the time goes, in one more process per code tree and record count (1 and N): the
import start-up by package (`python -X importtime`: the sum of each package's modules' own times; last tree)
and the prediction's phases (wall seconds; a phase that runs in parallel threads counts the time any of them
ran: loading the backbones, heads, gates and embedding references; reading the records; each backbone's
forward; the heads; the gate; the signal quality).

Prints a Markdown report (the median of the repeats), which benchmarks/predict_speed.md holds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's enecg and dvc


def build_demo(project: Path) -> None:
    """The demo pipeline, trained once in `project` from this repository's committed files."""
    if (project / "gates").is_dir() and (project / "heads").is_dir():
        return
    if project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(project)], input=archive, check=True)
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "demo"]):
        subprocess.run(command, cwd=project, check=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(project)}
    print(f"building the demo in {project} (dvc repro, some minutes)", file=sys.stderr)
    subprocess.run([str(BIN / "dvc"), "repro"], cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)


def demo_records(project: Path, count: int) -> list[str]:
    records = sorted(str(path.with_suffix("").relative_to(project)) for path in (project / "data" / "demo" / "records").rglob("*.hea"))
    if len(records) < count:
        raise SystemExit(f"{project}/data/demo/records holds {len(records)} records, fewer than --records {count}")
    return records[:count]


def environment(code: Path, cache: Path) -> dict:
    """`code`'s pipeline first on the path (PYTHONSAFEPATH: not the project folder's own copy, which `python -c`
    would put first), bytecode cached under `cache`."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(code), "PYTHONSAFEPATH": "1", "PYTHONPYCACHEPREFIX": str(cache / code.name)}


def timed(command: list[str], cwd: Path, env: dict) -> dict:
    """Wall and CPU seconds of one process, with the load average around it."""
    load, before = os.getloadavg()[0], resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} ... failed ({result.returncode}):\n{result.stderr[-3000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"wall": wall, "cpu": cpu, "load": (load + os.getloadavg()[0]) / 2}


# The phases of one `enecg predict` run, timed in its own process (run with -X importtime; prints JSON).
BREAKDOWN = r"""
import json, sys, time
from pathlib import Path
start = time.perf_counter()
import pipeline.cli  # what `enecg` imports before the command runs
import stages.predict as stage
from pipeline import predict as chain
from pipeline.params import load_params
from pipeline.stage_two import moe
params = load_params(Path("params.yaml"))
imports = time.perf_counter() - start
spans = {}  # phase -> [(start, end)]: a phase run in parallel threads counts the time any of them ran

def timed(owner, name, label):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spans.setdefault(label, []).append((begin, time.perf_counter()))
    setattr(owner, name, wrapper)

def covered(intervals):
    total, reach = 0.0, float("-inf")
    for begin, end in sorted(intervals):
        total += max(0.0, end - max(begin, reach))
        reach = max(reach, end)
    return total

timed(chain.Predictor, "__init__", "load backbones, heads, gates, references")
timed(stage, "load_records", "read records (WFDB, QC, resample)")
timed(chain.ExpertHeads, "predict_folds", "heads")
timed(moe, "moe_predict", "gate")
timed(chain, "signal_qualities", "signal quality")
build = chain.Predictor.__init__
def init(self, *args, **kwargs):
    build(self, *args, **kwargs)
    for name, model in self.backbones.items():
        timed(model, "forward", f"backbone {name}")
chain.Predictor.__init__ = init
records = sys.argv[1:]
sys.stdout = open("/dev/null", "w")
begin = time.perf_counter()
stage.run(params, [Path(r) for r in records], list(params["tasks"]), as_json=True)
run = time.perf_counter() - begin
phases = {"imports and params": imports} | {label: covered(intervals) for label, intervals in spans.items()}
phases["other (inputs to each backbone's spec, embedding distance, report)"] = run - sum(v for k, v in phases.items() if k != "imports and params")
sys.__stdout__.write(json.dumps({"records": len(records), "phases": phases, "pipeline": chain.__file__}))
"""


def import_seconds(stderr: str) -> dict[str, float]:
    """Seconds by top-level package from `python -X importtime` output: the sum of its modules' own times
    (each module's time without the modules it imported), so that the packages add up to the whole start-up."""
    found: dict[str, float] = {}
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            own, _, name = line.removeprefix("import time:").split("|")
            if own.strip().isdigit():
                package = name.strip().split(".")[0]
                found[package] = found.get(package, 0.0) + int(own) / 1e6
    return found


def breakdown(codes: list[Path], project: Path, records: list[str], cache: Path) -> None:
    """Print, per code tree, the phases of a prediction of 1 and of len(records) records (wall s) and the import
    start-up by package of the first."""
    for chosen in (records[:1], records):
        reports = {}
        for code in codes:
            command = [sys.executable, "-X", "importtime", "-c", BREAKDOWN, *chosen]
            result = subprocess.run(command, cwd=project, env=environment(code, cache), capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"breakdown failed:\n{result.stderr[-3000:]}")
            reports[code] = json.loads(result.stdout) | {"imports": import_seconds(result.stderr)}
            if not reports[code]["pipeline"].startswith(str(code)):
                raise SystemExit(f"breakdown ran {reports[code]['pipeline']}, not the code tree {code}")
        print(f"\nWhere the time of a prediction of {len(chosen)} record(s) goes (wall s; load average {os.getloadavg()[0]:.1f}):\n")
        print("| phase | " + " | ".join(f"`{code}`" for code in codes) + " |\n|---|" + "---|" * len(codes))
        for phase in dict.fromkeys(phase for report in reports.values() for phase in report["phases"]):
            print(f"| {phase} | " + " | ".join(f"{reports[code]['phases'].get(phase, 0.0):.2f}" for code in codes) + " |")
        if len(chosen) == 1:
            packages = sorted(reports[codes[-1]]["imports"].items(), key=lambda item: -item[1])
            total = sum(seconds for _, seconds in packages)
            print(f"\nIts import start-up by package (`{codes[-1]}`; wall s, the sum of the package's modules' own times in "
                  f"`-X importtime`, {total:.2f} s in all, which -X importtime itself slows; those over 0.1 s):\n")
            print("| package | s |\n|---|---|")
            for package, seconds in packages:
                if seconds >= 0.1:
                    print(f"| {package} | {seconds:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path(tempfile.gettempdir()) / "enecg-predict-speed")
    parser.add_argument("--code", type=Path, action="append", help="source tree(s) to time (default: this repository)")
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--breakdown", action="store_true", help="also: where the time goes (imports by package, phases)")
    args = parser.parse_args()
    project, codes = args.project.resolve(), [c.resolve() for c in (args.code or [REPO])]
    build_demo(project)
    records = demo_records(project, args.records)
    cache = project / ".bench-pycache"
    predict = [str(BIN / "enecg"), "predict"]
    for code in codes:  # warm-up: bytecode, the OS file cache
        timed([*predict, records[0], "--json"], project, environment(code, cache))
    runs: dict[Path, dict[str, list[dict]]] = {code: {"one": [], "many": []} for code in codes}
    for _ in range(args.repeats):
        for code in codes:
            env = environment(code, cache)
            runs[code]["one"].append(timed([*predict, records[0], "--json"], project, env))
            runs[code]["many"].append(timed([*predict, *records, "--json"], project, env))
    imports = {}
    for statement in ("import torch", "import torch, peft"):  # the first code tree's environment: no pipeline involved
        imports[statement] = [timed([sys.executable, "-c", statement], project, environment(codes[0], cache)) for _ in range(args.repeats)]

    median = lambda values, key: statistics.median(v[key] for v in values)  # noqa: E731
    print(f"Machine: {os.cpu_count()} cores; {args.repeats} repeats (medians); project {project}; N = {args.records} demo records.\n")
    print(f"| code | first record: wall s | CPU s | {args.records} records: wall s | CPU s | records/s after the first | load average (1 min) |")
    print("|---|---|---|---|---|---|---|")
    for code in codes:
        one, many = runs[code]["one"], runs[code]["many"]
        rate = (args.records - 1) / max(median(many, "wall") - median(one, "wall"), 1e-9)
        loads = [r["load"] for r in one + many]
        print(f"| `{code}` | {median(one, 'wall'):.2f} | {median(one, 'cpu'):.2f} | {median(many, 'wall'):.2f} | {median(many, 'cpu'):.2f} | "
              f"{rate:.1f} | {min(loads):.1f}-{max(loads):.1f} |")
    print("\n| start-up | wall s | CPU s |\n|---|---|---|")
    for statement, values in imports.items():
        print(f"| `python -c \"{statement}\"` | {median(values, 'wall'):.2f} | {median(values, 'cpu'):.2f} |")
    if args.breakdown:
        breakdown(codes, project, records, cache)


if __name__ == "__main__":
    main()
