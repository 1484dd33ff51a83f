"""Stage `post_train`: one task x one post-trainable network -> heads/MODEL-post/TASK/, an expert like the heads.

Builds Net1D (ECGFounder's network; from checkpoints/MODEL/ with `init: checkpoint`, else randomly initialised
at `post_train.size`), feeds it the corpus records at the size's rate with ECGFounder's own preprocessing, and
runs the recipe (pipeline.stage_two.post_train). Writes the fine-tuned network in ECGFounder's checkpoint
container under the released file name (`enecg extract` and the reference code read it), predictions.npz
and meta.json, as the heads do, and the training curve with DVCLive -> dvclive/heads/MODEL-post/TASK/.
The network trains on whole records as `enecg prepare` made them (`prepare.seconds`; 10 s by default, the
released network's window).
"""

import json
from dataclasses import asdict

import numpy as np

from pipeline.errors import CheckpointError
from pipeline.layout import head_dir, post_trained_expert
from pipeline.progress import progress_bar
from pipeline.seeding import seeded
from pipeline.stage_one.backbones import InputSpec, checkpoint_sha256, default_checkpoint, get_config
from pipeline.stage_one.backbones.ecgfounder import input_spec, post_training_net, preprocess, write_checkpoint
from pipeline.stage_one.extract import resolve_device, to_spec
from pipeline.stage_two.dataset import load_task_data
from pipeline.stage_two.post_train import post_train
from pipeline.stage_two.predictions import write_predictions
from pipeline.stage_two.training_log import log_heads
from pipeline.stores import atomic_path, provenance


def network_inputs(corpus, rows: np.ndarray, spec: InputSpec, block: int = 256) -> np.ndarray:
    """[len(rows), leads, T] float32: the corpus rows at the spec's leads and rate (as `extract` feeds a backbone),
    through ECGFounder's preprocessing, `block` rows at a time."""
    rate, leads = float(corpus.attrs["sampling_rate"]), list(corpus.attrs["leads"])
    blocks = []
    with progress_bar("post-train: inputs", len(rows)) as advance:
        for start in range(0, len(rows), block):
            chunk = rows[start : start + block]
            blocks.append(preprocess(to_spec(corpus["signals"].oindex[chunk], rate, leads, spec), spec.sampling_rate))
            advance(len(chunk))
    return np.concatenate(blocks)


def run(params: dict, task: str, model: str) -> dict:
    settings = params["post_train"]
    size = settings["sizes"][settings["size"]]
    data = load_task_data(params, task)
    config = get_config(model)
    checkpoint = default_checkpoint(model) if settings["init"] == "checkpoint" else None
    if checkpoint is not None and not checkpoint.exists():
        raise CheckpointError(f"params.yaml post_train.init is 'checkpoint' but {checkpoint} does not exist; "
                              f"download it ({config.source}) or set post_train.init: random")
    with seeded(int(settings["seed"])):  # the random initialisation (or the fresh classifier) is part of the recipe
        net = post_training_net(len(config.spec.leads), data.task.out_dim, float(settings["stochastic_depth"]),
                                float(size["width"]), float(size["depth"]), checkpoint)
    spec = input_spec(config.spec.leads, float(size["sampling_rate"]))
    rows = np.union1d(np.union1d(data.train, data.gate), data.test)
    result = post_train(data, net, network_inputs(data.corpus, rows, spec), rows, settings, resolve_device(str(settings["device"])), model)

    expert = post_trained_expert(model)
    initial = {"init": settings["init"], "checkpoint_sha256": checkpoint_sha256(checkpoint) if checkpoint else None}
    trained_for = {
        "task": task, "type": data.task.type, "classes": list(data.task.classes), "sampling_rate": spec.sampling_rate,
        "leads": list(spec.leads), "target_mean": result.target_scaling[0], "target_std": result.target_scaling[1], **initial,
    }
    meta = {
        "task": task, "expert": expert, "model": model, "shape": asdict(net.shape),
        "spec": spec.as_dict(), "timings": result.timings, "histories": [result.history],
        "provenance": provenance(corpus=data.corpus.attrs["provenance"], post_train=settings, split=params["split"], **initial),
    }
    with atomic_path(head_dir(task, expert)) as tmp:
        tmp.mkdir(parents=True)
        write_checkpoint(tmp / config.checkpoint_file, result.net, epoch=len(result.history["train"]), step=result.timings["steps"], enecg=trained_for)
        write_predictions(tmp, data, result.predictions, trained_rows=result.trained_rows)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    log_heads(task, expert, {"fold0": result.history})
    return {"task": task, "expert": expert, "train": len(data.train), "gate": len(data.gate), "test": len(data.test),
            "epochs": len(result.history["train"]), "step_s": round(result.timings["step_s"], 4)}
