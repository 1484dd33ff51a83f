"""Stage `fit_gate`: the MoE gate of one task, trained on the experts' out-of-fold predictions -> gates/TASK/."""

from pipeline.dataset import load_task_data
from pipeline.ensemble import fit_task_gate, save_gate
from pipeline.params import gate_dir
from pipeline.stores import provenance


def run(params: dict, task: str) -> dict:
    data = load_task_data(params, task)
    backbones = list(params["backbones"])
    gate, history, scale = fit_task_gate(data, backbones, params["gate"])
    save_gate(gate, gate_dir(task), backbones, params["gate"], scale, {"train_losses": history, "provenance": provenance(gate=params["gate"], split=params["split"])})
    return {"task": task, "experts": backbones, "final_loss": history[-1]}
