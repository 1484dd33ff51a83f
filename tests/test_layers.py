"""The library's layers import only downwards: base modules know neither stage, stage one and stage two do not
know each other, and only the top (the CLI, `predict`, params validation, the stage modules) joins them."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP = {"pipeline/cli.py", "pipeline/predict.py", "pipeline/params.py"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("pipeline")}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("stage_one", "stage_two") else "base"


def test_no_import_runs_up_or_across_a_layer():
    allowed = {"base": {"base"}, "stage_one": {"base", "stage_one"}, "stage_two": {"base", "stage_two"}}
    wrong = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        if relative in TOP:
            continue
        own = layer(relative.removesuffix(".py").replace("/", "."))
        for module in imported_modules(path):
            if layer(module) not in allowed[own]:
                wrong.append(f"{relative} ({own}) imports {module}")
    assert not wrong, "\n".join(wrong)

