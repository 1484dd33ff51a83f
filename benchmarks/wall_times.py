"""Wall times of the README's commands and of the research loop, on a fresh clone, with a profile.

    python benchmarks/wall_times.py [--venv DIR] [--tests]     # writes benchmarks/wall_times.md

On a fresh `git clone` of this repository (committed files only) it times, after the set-up (`bash .ci/setup`,
not timed; `--venv DIR` reuses an installed virtual environment instead, to save the install):

1. the README's first command's pipeline, `dvc repro` of the demo, with the wall time of every stage it ran;
2. a no-op `dvc repro`;
3. a gate experiment, `dvc exp run -S gate.hidden=32` (only fit_gate and evaluate may run), in seconds and
   as a ratio to the no-op repro, and a head experiment, `dvc exp run -S heads.lr=0.003`;
4. where a stage's time goes: the import start-up of each stage module (the part no data size changes);
5. with `--tests`, the README's second command (`python -m pytest -q`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE_MODULES = ["demo_data", "prepare", "pretrain", "extract", "fit_heads", "fit_gate", "evaluate"]


def timed(command: list[str], cwd: Path, env: dict) -> tuple[float, list[tuple[str, float]], str]:
    """(seconds, [(stage, seconds)] from DVC's 'Running stage' lines as they arrive, output)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stages, output, current, since = [], [], None, start
    for line in process.stdout:
        output.append(line)
        match = re.search(r"Running stage '([^']+)'", line)
        if match:
            now = time.perf_counter()
            if current:
                stages.append((current, now - since))
            current, since = match.group(1), now
    if process.wait() != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{''.join(output)[-3000:]}")
    end = time.perf_counter()
    if current:
        stages.append((current, end - since))
    return end - start, stages, "".join(output)


def import_seconds(python: Path, module: str, cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([str(python), "-c", f"import stages.{module}"], cwd=cwd, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, help="reuse this installed virtual environment instead of `bash .ci/setup`")
    parser.add_argument("--tests", action="store_true", help="also time the README's test command")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="enecg-wall-"))
    clone = work / "enecg"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    if args.venv:
        os.symlink(args.venv.resolve(), clone / ".venv")
    else:
        subprocess.run(["bash", ".ci/setup"], cwd=clone, check=True)
    bin_dir = clone / ".venv" / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ENECG_SHARED": str(REPO.parent / "shared"),
           "PYTHONPATH": str(clone)}  # a reused venv's editable install points at its own checkout: use the clone's code
    env.setdefault("GIT_AUTHOR_NAME", "bench"), env.setdefault("GIT_AUTHOR_EMAIL", "bench@localhost")
    env.setdefault("GIT_COMMITTER_NAME", "bench"), env.setdefault("GIT_COMMITTER_EMAIL", "bench@localhost")
    dvc = str(bin_dir / "dvc")

    repro_s, repro_stages, _ = timed([dvc, "repro"], clone, env)
    noop_s, _, _ = timed([dvc, "repro"], clone, env)
    subprocess.run(["git", "add", "-A"], cwd=clone, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "demo run"], cwd=clone, env=env, check=True)
    gate_s, gate_stages, _ = timed([dvc, "exp", "run", "-S", "gate.hidden=32"], clone, env)
    heads_s, heads_stages, _ = timed([dvc, "exp", "run", "-S", "gate.hidden=64", "-S", "heads.lr=0.003"], clone, env)
    imports = {module: import_seconds(bin_dir / "python", module, clone, env) for module in STAGE_MODULES}
    tests = None
    if args.tests:
        tests_s, _, output = timed([str(bin_dir / "python"), "-m", "pytest", "-q"], clone, env)
        tests = (tests_s, output.strip().splitlines()[-1])

    load = " ".join(open("/proc/loadavg").read().split()[:3])
    import torch  # noqa: PLC0415  (only for the version line)

    rows = lambda stages: "\n".join(f"| {name} | {seconds:.1f} |" for name, seconds in stages)  # noqa: E731
    text = f"""# Wall times of the README's commands and of the research loop

Command: `python benchmarks/wall_times.py{' --tests' if args.tests else ''}{' --venv DIR' if args.venv else ''}` (a fresh clone of the
committed repository; the set-up, `bash .ci/setup`, is not timed{'; an installed venv was reused' if args.venv else ''}).
Machine: {os.cpu_count()} cores, torch {torch.__version__}, no GPU; load average at the end: {load}.

| what | seconds |
|---|---|
| `dvc repro` of the demo (the README's first command, after set-up) | {repro_s:.1f} |
| `dvc repro` again (nothing changed) | {noop_s:.1f} |
| `dvc exp run -S gate.hidden=32` (ran: {', '.join(name for name, _ in gate_stages)}) | {gate_s:.1f} ({gate_s / noop_s:.1f}x the no-op) |
| `dvc exp run -S heads.lr=0.003` (ran: {', '.join(name for name, _ in heads_stages)}) | {heads_s:.1f} |
{f'| `python -m pytest -q` ({tests[1]}) | {tests[0]:.0f} |' if tests else ''}

## Where `dvc repro` of the demo spends its time

| stage | seconds |
|---|---|
{rows(repro_stages)}

## The gate experiment, stage by stage

| stage | seconds |
|---|---|
{rows(gate_stages)}

## Start-up: importing each stage's module in a new process (paid by every stage that DVC runs)

| stage module | seconds |
|---|---|
{chr(10).join(f'| stages.{module} | {seconds:.1f} |' for module, seconds in imports.items())}
"""
    out = REPO / "benchmarks" / "wall_times.md"
    out.write_text(text)
    print(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
