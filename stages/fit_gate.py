"""Stage `fit_gate`: the MoE gate of one task (and its ablations), trained on the experts' predictions for rows
none of them trained on (out-of-fold, or the gate hold-out) -> gates/TASK/, and its training curves logged
with DVCLive -> dvclive/gates/ (every task's). The experts: every backbone's heads, then every post-trained network."""

from pipeline.layout import gate_dir
from pipeline.params import expert_names
from pipeline.stage_two.dataset import load_task_data
from pipeline.stage_two.moe import fit_task_gates, save_gates
from pipeline.stage_two.training_log import log_gates
from pipeline.stores import provenance


def run(params: dict, task: str) -> dict:
    data = load_task_data(params, task)
    backbones = expert_names(params)
    gates, config = fit_task_gates(data, backbones, params["gate"])
    save_gates(gates, config, gate_dir(task), {"provenance": provenance(gate=params["gate"], split=params["split"])})
    histories = {name: variant["history"] for name, variant in config["variants"].items()}
    log_gates(task, histories)
    return {"task": task, "experts": backbones, "gates": list(gates), "epochs": {name: len(v["history"]["train"]) for name, v in config["variants"].items()}}
