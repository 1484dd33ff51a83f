"""params.yaml (DVC's params file): loading, validation, and the fixed artifact layout every stage agrees on.

Every field a stage will use is checked when the file is loaded, before any heavy work: a fold list that is
not a list of integers, an unknown task, backbone or lead, a class list with duplicates, a fraction outside
(0, 1) is an error naming `params.yaml`, the key and what was expected. A mistake found after hours of
extraction is a mistake found too late.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import yaml

from pipeline.errors import ManifestError

REQUIRED = ("data", "prepare", "backbones", "extract", "tasks", "task_definitions", "split", "heads", "gate", "evaluate")
SPLIT_METHODS = ("subject", "fold", "cv")
GATE_INPUTS = ("leads", "outputs")
GATE_ABLATIONS = ("constant", "outputs", "leads", "leads+outputs")
POST_TRAINABLE = ("ecgfounder", "ecgfounder-1lead")  # networks `enecg post-train` fine-tunes (Net1D)
POST_TRAIN_INITS = ("random", "checkpoint")

class _Checker:
    """Reads values out of the params mapping by dotted key, raising an error that names file, key and expectation."""

    def __init__(self, params: dict, source: Path):
        self.params, self.source = params, source

    def fail(self, key: str, expected: str, value) -> None:
        raise ManifestError(f"{self.source}: {key}: expected {expected}, got {value!r}")

    def get(self, key: str, default=...):
        node = self.params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if default is ...:
                    raise ManifestError(f"{self.source}: {key}: missing (see the project's params.yaml for an example)")
                return default
            node = node[part]
        return node

    def number(self, key: str, low: float | None = None, high: float | None = None, integer: bool = False, default=..., open_low: bool = False):
        value = self.get(key, default)
        kind = numbers.Integral if integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            self.fail(key, "an integer" if integer else "a number", value)
        if (low is not None and (value < low or (open_low and value == low))) or (high is not None and value > high):
            bounds = f"{'(' if open_low else '['}{'-inf' if low is None else low}, {'inf' if high is None else high}]"
            self.fail(key, f"{'an integer' if integer else 'a number'} in {bounds}", value)
        return value

    def choice(self, key: str, options, default=...):
        value = self.get(key, default)
        if value not in options:
            self.fail(key, f"one of {list(options)}", value)
        return value

    def names(self, key: str, allowed=None, nonempty: bool = True, default=...) -> list:
        value = self.get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or (nonempty and not value):
            self.fail(key, f"a {'non-empty ' if nonempty else ''}list of names, e.g. [a, b]", value)
        if len(set(value)) != len(value):
            self.fail(key, "names without duplicates", value)
        unknown = [v for v in value if allowed is not None and v not in allowed]
        if unknown:
            self.fail(key, f"names drawn from {sorted(allowed)}", unknown)
        return value

    def integers(self, key: str, default=...) -> list:
        value = self.get(key, default)
        if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            self.fail(key, "a non-empty list of integers, e.g. [1, 2, 3, 4, 5, 6, 7, 8]", value)
        return value

    def boolean(self, key: str, default=...) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            self.fail(key, "true or false", value)
        return value

    def text(self, key: str, default=...) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or not value:
            self.fail(key, "a non-empty string", value)
        return value


def _check_training(check: _Checker, section: str) -> None:
    """The minibatch-training settings heads and the gate share."""
    check.number(f"{section}.hidden", 1, integer=True)
    check.number(f"{section}.epochs", 0, integer=True)
    check.number(f"{section}.lr", 0, open_low=True)
    check.number(f"{section}.batch_size", 1, integer=True)
    check.number(f"{section}.weight_decay", 0)
    check.number(f"{section}.val_fraction", 0, 0.9)
    check.number(f"{section}.patience", 1, integer=True)
    check.number(f"{section}.seed", integer=True)


def has_gate_holdout(split: dict) -> bool:
    """Whether params `split` holds subjects out for the gate (split.gate_folds, or split.gate_fraction > 0)."""
    return bool(split.get("gate_folds")) if split.get("method") == "fold" else float(split.get("gate_fraction", 0.0)) > 0


def expert_names(params: dict) -> list[str]:
    """The ensemble's experts in order: each backbone's heads, then each post-trained network (`post_trained`)."""
    from pipeline.layout import post_trained_expert

    return list(params["backbones"]) + [post_trained_expert(model) for model in params.get("post_trained", [])]


def _check_post_training(check: _Checker, method: str) -> None:
    """`post_trained` (experts fine-tuned by `enecg post-train`) and their recipe, `post_train`. A post-trained
    expert's predictions on its own training rows are in-sample, so it needs a gate hold-out."""
    models = check.names("post_trained", set(POST_TRAINABLE), nonempty=False, default=[])
    if models and not has_gate_holdout(check.params["split"]):
        key = "split.gate_folds" if method == "fold" else "split.gate_fraction"
        check.fail(key, f"a gate hold-out for the post-trained experts {models} (their predictions on their own "
                        "training rows are in-sample; e.g. gate_folds: [9] for PTB-XL, gate_fraction: 0.2 otherwise)",
                   check.params["split"].get(key.split(".")[1]))
    if not models and "post_train" not in check.params:
        return
    init = check.choice("post_train.init", POST_TRAIN_INITS)
    size = check.text("post_train.size")
    sizes = check.get("post_train.sizes")
    if not isinstance(sizes, dict) or size not in sizes:
        check.fail("post_train.size", f"a name among post_train.sizes ({sorted(sizes) if isinstance(sizes, dict) else 'missing'})", size)
    for name in sizes:
        check.number(f"post_train.sizes.{name}.width", 0, 4, open_low=True)
        check.number(f"post_train.sizes.{name}.depth", 0, 4, open_low=True)
        # above 80 Hz: ECGFounder's 0.67-40 Hz band-pass needs its upper edge below the Nyquist frequency; only
        # the size that runs must fit in the corpus's rate (a 100 Hz corpus may keep the 500 Hz published size listed)
        highest = check.params["prepare"]["sampling_rate"] if name == size else None
        check.number(f"post_train.sizes.{name}.sampling_rate", 80, highest, open_low=True)
    if init == "checkpoint" and (sizes[size]["width"], sizes[size]["depth"], sizes[size]["sampling_rate"]) != (1, 1, 500):
        check.fail(f"post_train.sizes.{size}", "the published size with init: checkpoint (width 1, depth 1, "
                   "sampling_rate 500: the size and rate the released weights have)", sizes[size])
    check.number("post_train.stochastic_depth", 0, 0.9)
    if check.get("post_train.preview_probe") not in (True, False, "auto"):
        check.fail("post_train.preview_probe", "true, false or auto", check.get("post_train.preview_probe"))
    check.number("post_train.epochs", 0, integer=True)
    check.number("post_train.warmup_epochs", 0)
    check.number("post_train.lr", 0, open_low=True)
    check.number("post_train.batch_size", 1, integer=True)
    check.number("post_train.weight_decay", 0)
    check.number("post_train.val_fraction", 0, 0.9)
    check.number("post_train.patience", 1, integer=True)
    check.number("post_train.seed", integer=True)
    _check_device(check, "post_train.device")


def _check_device(check: _Checker, key: str) -> None:
    device = check.text(key, "auto")
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        check.fail(key, "auto, cpu, cuda or cuda:N", device)


def validate(params: dict, source: Path = Path("params.yaml")) -> dict:
    """Check every field the stages use; returns `params` unchanged (errors name the file and the key)."""
    from pipeline.ecg import LEADS_12
    from pipeline.stage_one.backbones import (
        list_backbones,  # the registry imports torch: only here
    )
    from pipeline.tasks import task_from_params

    check = _Checker(params, source)
    missing = [section for section in REQUIRED if section not in params]
    if missing:
        raise ManifestError(f"{source}: missing sections {missing}")
    check.text("data.manifest")
    check.text("data.root")
    check.text("data.tasks")
    if "corpus" in params["data"]:  # which public corpus the manifest is, e.g. ptb-xl: checkpoints that saw it are flagged
        check.text("data.corpus")
    check.number("prepare.sampling_rate", 0, integer=True, open_low=True)
    seconds = check.number("prepare.seconds", 0, open_low=True)
    check.number("prepare.min_seconds", 0, seconds, open_low=True)
    check.number("prepare.flat_threshold_mv", 0)
    check.number("prepare.chunk_records", 1, integer=True)
    check.number("prepare.workers", 1, integer=True)
    check.choice("prepare.scheduler", ("threads", "processes"))
    backbones = check.names("backbones", {config.name for config in list_backbones()})
    check.number("extract.batch_size", 1, integer=True)
    check.number("extract.chunk_records", 1, integer=True)
    _check_device(check, "extract.device")
    if "cluster" in params:
        scheduler = check.text("cluster.scheduler", "none")
        if scheduler not in ("none", "local") and not scheduler.startswith(("tcp://", "tls://", "inproc://")):
            check.fail("cluster.scheduler", "none, local, or a scheduler address such as tcp://host:8786", scheduler)
        check.number("cluster.workers", 1, integer=True, default=2)

    definitions = check.get("task_definitions")
    if not isinstance(definitions, dict):
        check.fail("task_definitions", "a mapping of task name -> {type, label, classes}", definitions)
    for name in definitions:
        task = task_from_params(name, definitions)  # type, and at least two classes where classes are needed
        check.text(f"task_definitions.{name}.label", name)
        if task.classes:
            check.names(f"task_definitions.{name}.classes")
    check.names("tasks", set(definitions))

    method = check.choice("split.method", SPLIT_METHODS)
    k = check.number("split.k", 2, integer=True)
    if method == "subject":
        check.number("split.test_fraction", 0, 1, open_low=True)
    elif method == "cv":
        check.number("split.test_fold", 0, k - 1, integer=True, default=0)
    else:
        train, test = check.integers("split.train_folds"), check.integers("split.test_folds")
        if set(train) & set(test):
            check.fail("split.test_folds", "folds that are not also train_folds", sorted(set(train) & set(test)))
        gate_folds = check.integers("split.gate_folds") if params["split"].get("gate_folds") not in (None, []) else []  # [] / absent: none
        if set(gate_folds) & (set(train) | set(test)):
            check.fail("split.gate_folds", "folds that are neither train_folds nor test_folds", sorted(set(gate_folds) & (set(train) | set(test))))
    if method != "fold":
        check.number("split.gate_fraction", 0, 0.9, default=0.0)
    check.number("split.seed", integer=True)
    _check_post_training(check, method)

    _check_training(check, "heads")
    check.boolean("heads.probe", True)
    check.number("heads.lora.r", 1, integer=True)
    check.number("heads.lora.alpha", 0, open_low=True)
    check.number("heads.lora.dropout", 0, 0.9)
    layers = check.integers("heads.lora.target_layers")
    if not set(layers) <= {0, 2, 4}:
        check.fail("heads.lora.target_layers", "indices of the FFN's Linear layers, drawn from [0, 2, 4]", layers)

    _check_training(check, "gate")
    check.names("gate.leads", set(LEADS_12))
    check.number("gate.sampling_rate", 0, params["prepare"]["sampling_rate"], open_low=True)
    check.names("gate.inputs", set(GATE_INPUTS), nonempty=False, default=list(GATE_INPUTS))
    check.names("gate.ablations", set(GATE_ABLATIONS), nonempty=False, default=[])
    check.number("gate.channels", 1, integer=True, default=16)

    check.number("evaluate.bootstrap", 0, integer=True)
    check.number("evaluate.confidence", 0, 1, open_low=True)
    check.number("evaluate.seed", integer=True)

    for name, settings in (params.get("pretrain") or {}).items():
        if name not in backbones:
            continue
        if not isinstance(settings, dict):
            check.fail(f"pretrain.{name}", "a mapping of settings", settings)
        check.number(f"pretrain.{name}.max_records", 1, integer=True, default=1)
        check.number(f"pretrain.{name}.seed", integer=True, default=0)
    return params


def _read_yaml_mapping(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ManifestError(f"{path} does not exist; {what}")
    try:
        value = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(value, dict):
        raise ManifestError(f"{path}: expected a mapping, got {type(value).__name__}")
    return value


def load_params(path: Path = Path("params.yaml"), need_tasks: bool = True) -> dict:
    """The params file as a dict, every field a stage uses validated (errors name the file and the key).

    Task definitions live in their own file, `data.tasks` (the `<manifest>.tasks.yaml` a manifest builder or
    the demo writes), which `dvc.yaml` tracks as a dependency of the heads: it is read into
    params["task_definitions"]. params.yaml stays short, so `dvc exp run -S` leaves it readable. Only
    `demo-data`, which writes the demo's tasks file, runs without it (`need_tasks=False`).
    """
    path = Path(path)
    params = _read_yaml_mapping(path, "run enecg from the project folder that holds params.yaml")
    if "task_definitions" in params:
        raise ManifestError(f"{path}: task_definitions: define tasks in the file that data.tasks names (e.g. the "
                            "<manifest>.tasks.yaml a builder writes), so that DVC tracks them")
    tasks_file = Path(_Checker(params, path).text("data.tasks"))
    if not need_tasks and not tasks_file.is_file():
        return params
    params["task_definitions"] = _read_yaml_mapping(tasks_file, f"it is named by data.tasks in {path}; `enecg manifest` writes one beside each manifest")
    return validate(params, path)
