"""Stage `pretrain`: make a pretrainable backbone's checkpoint from the corpus (self-supervised, no labels)."""


import numpy as np

from pipeline.splits import corpus_split
from pipeline.stage_one.backbones import default_checkpoint, get_config, get_pretrainer
from pipeline.stage_one.extract import to_spec
from pipeline.stores import write_json


def run(params: dict, model: str) -> dict:
    """Pretrain on up to `max_records` records of the training split (a seeded subsample): labels are never
    read, and no test record is ever seen, so a test record's embedding is as new to the backbone as a user's."""
    settings = dict(params.get("pretrain", {}).get(model) or {})
    seed = int(settings.pop("seed", 0))
    pretrain = get_pretrainer(model)
    corpus, _, split = corpus_split(params)
    rows = np.sort(split.train)
    limit = int(settings.pop("max_records", len(rows)))
    if len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    signals = to_spec(corpus["signals"].oindex[rows], float(corpus.attrs["sampling_rate"]), list(corpus.attrs["leads"]), get_config(model).spec)
    out = default_checkpoint(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = pretrain(signals, out, settings, seed)
    write_json(out.parent / "pretrain.json", {"records": len(rows), "split": "train", "settings": settings, "seed": seed, "summary": summary})
    return summary
