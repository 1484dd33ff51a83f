"""Stage `fit_heads`: one backbone's heads for every task (or one) -> heads/BACKBONE/TASK/ (k fold heads +
out-of-fold predictions), and their training curves logged with DVCLive -> dvclive/heads/BACKBONE/.

One process per backbone, not per task x backbone: each process pays torch's, peft's and scikit-learn's
start-up (~8 s on 2 cores, most of the demo's fit_heads time) once for all its tasks. Each task still reads
its own rows of the embedding store. A changed embedding reruns only its backbone's heads."""

from pipeline.layout import embeddings_path, head_dir
from pipeline.stage_two.dataset import load_task_data
from pipeline.stage_two.experts import fit_expert, save_expert
from pipeline.stage_two.training_log import log_heads
from pipeline.stores import open_embeddings, provenance


def run(params: dict, task: str, model: str) -> dict:
    data = load_task_data(params, task)
    store = open_embeddings(embeddings_path(model), model)
    fit = fit_expert(data, store["embedding"], params["heads"])
    meta = {"task": task, "backbone": model, "provenance": provenance(embeddings=store.attrs["provenance"], heads=params["heads"], split=params["split"])}
    save_expert(fit, data, head_dir(task, model), meta)
    histories = {f"fold{fold}": history for fold, history in enumerate(fit.histories)}
    log_heads(task, model, histories)
    return {"task": task, "backbone": model, "train": len(data.train), "test": len(data.test), "epochs": [len(h["train"]) for h in fit.histories]}
