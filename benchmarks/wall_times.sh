#!/usr/bin/env bash
# Wall time of the README's two commands on a fresh clone, excluding the pip install (`bash .ci/setup`).
#   bash benchmarks/wall_times.sh            # writes benchmarks/wall_times.md
# Also times a `dvc repro` after changing one gate parameter (only fit_gate + evaluate rerun).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
git clone -q "$repo" "$work/enecg"
export ENECG_SHARED="${ENECG_SHARED:-$repo/../shared}"   # tests that use the shared folder find it as in the repo
cd "$work/enecg"
bash .ci/setup
. .venv/bin/activate

seconds() { local start=$SECONDS; "$@" > "$work/$1.log" 2>&1; echo $((SECONDS - start)); }
repro=$(seconds dvc repro)
noop=$(seconds dvc repro)
sed -i 's/^  lr: 0.001$/  lr: 0.0015/' params.yaml           # the gate's learning rate (heads use 0.002)
gate=$(seconds dvc repro)
reran=$(grep -o "Running stage '[^']*'" "$work/dvc.log" | tr '\n' ' ')
git checkout -q params.yaml
tests=$(seconds python -m pytest -q)
summary=$(tail -n 1 "$work/python.log")

cat > "$repo/benchmarks/wall_times.md" <<MD
# Wall times of the README's commands

Command: \`bash benchmarks/wall_times.sh\` (fresh clone, after \`bash .ci/setup\`, which is not timed).
Machine: $(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB, $(python -c 'import torch; print("torch", torch.__version__)'), no GPU; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg).

| command | seconds |
|---|---|
| \`dvc repro\` (demo corpus: simulate, prepare, pretrain, extract, heads, gate, evaluate) | $repro |
| \`dvc repro\` again (nothing changed) | $noop |
| \`dvc repro\` after changing \`gate.lr\` | $gate |
| \`python -m pytest -q\` | $tests |

After the gate change, dvc ran: $reran

Test summary: $summary
MD
cat "$repo/benchmarks/wall_times.md"
rm -rf "$work"
