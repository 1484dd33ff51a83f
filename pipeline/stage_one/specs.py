"""Per-backbone spec files for DVC: what a backbone is fed, and a hash of the code that computes it.

`dvc.yaml`'s extract stage for backbone M depends on specs/M.json, not on the whole backbones package, so
editing or adding one backbone module re-extracts only the backbones defined in that module.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from pathlib import Path

from pipeline.stage_one.backbones import _REGISTRY, list_backbones
from pipeline.stores import write_json


def backbone_spec(name: str) -> dict:
    config, build = _REGISTRY[name]
    source = Path(inspect.getfile(sys.modules[build.__module__])).read_bytes()
    return {
        "name": name,
        "spec": config.spec.as_dict(),
        "embedding_dim": config.embedding_dim,
        "checkpoint_file": config.checkpoint_file,
        "module": build.__module__,
        "module_sha256": hashlib.sha256(source).hexdigest(),
    }


def write_specs(out: Path) -> list[Path]:
    """One JSON per registered backbone; unchanged backbones get byte-identical files."""
    paths = []
    for config in list_backbones():
        path = Path(out) / f"{config.name}.json"
        write_json(path, backbone_spec(config.name))
        paths.append(path)
    return paths
