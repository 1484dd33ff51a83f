"""`predict`: the trained chain (backbones -> fold heads -> gate) on new WFDB records, without the corpus.

Each record goes through the same QC and resampling as `prepare`; an excluded record is reported with its
reason instead of a prediction. A `Predictor` builds each backbone once (shared by every task that uses it) and
loads each task's heads and gate once; records are then embedded in batches. For each record and task it
gives the ensemble's prediction, the gate's weight of each expert and each expert's own prediction (the mean
of its fold heads, as `evaluate` scores `expert:B`), and flags a record that is unlike what the ensemble was
trained on (`Quality`, `embedding_distance`): the ensemble still predicts, but the flag says not to trust it.

Heads are read without peft: each fold head's LoRA adapter is merged into its frozen FFN (W + alpha/r B A, the
function peft computes in eval mode), and the k fold heads of an expert run as one batched product. Importing
peft (and transformers under it) was most of `enecg predict`'s start-up; `load_head` (peft) is used only for an
adapter this reader does not know.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.ecg import LEADS_12
from pipeline.errors import RecordError, StoreError
from pipeline.layout import CORPUS, embeddings_path, gate_dir, head_dir
from pipeline.stage_one.signals import QCSettings, load_canonical
from pipeline.stores import strings
from pipeline.tasks import Task

RECORD_SUFFIXES = (".hea", ".dat", ".mat")  # what a user may name a WFDB record by (header, signal files)


def record_path(path: Path | str) -> Path:
    """The WFDB record a path names: `rec`, `rec.hea`, `rec.dat` and `rec.mat` all name record `rec`.

    A path whose own header exists is taken as it is (a record may have a dot in its name)."""
    path = Path(path)
    if path.with_name(path.name + ".hea").is_file() or path.suffix.lower() not in RECORD_SUFFIXES:
        return path
    return path.with_suffix("")


def load_records(paths: list[Path], settings: QCSettings) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read, check and resample every record (each named once): canonical signals by record, and the reason
    each excluded record could not be used (it does not stop the others)."""
    loaded, excluded = {}, {}
    for path in dict.fromkeys(record_path(p) for p in paths):
        try:
            loaded[str(path)] = load_canonical(path, settings)
        except RecordError as error:
            excluded[str(path)] = str(error)
    return loaded, excluded


# ---------------------------------------------------------------------------------------------------------
# Is the record an ECG like the training records? Signal quality (model-free) and embedding distance.
# ---------------------------------------------------------------------------------------------------------

# Thresholds of `signal_quality`, measured on real and simulated ECGs and on Gaussian noise with valid headers
# (benchmarks in tests/test_predict.py and the lead's report): real ECGs (PTB-XL 500 records at 100 and 500 Hz,
# 308 CODE-15% records) and the demo's 240 give limb residual <= 0.13 and QRS-band kurtosis >= 4.0; noise
# gives a limb residual of 1.6-2.1 and a kurtosis of 2.9-3.3 (3 for a Gaussian, at any bandwidth).
LIMB_RESIDUAL_MAX = 0.5
QRS_KURTOSIS_MIN = 3.6
SATURATION_MAX = 0.05  # fraction of a lead's samples at its extreme values (real ECGs <= 0.013)
FLAT_SECONDS_MAX = 2  # consecutive whole seconds of a lead within the flat threshold
# The limb leads' identities (Einthoven, Goldberger): lead = sum of weight * other lead, in LEADS_12 indices.
_LIMB_IDENTITIES = (
    (2, {1: 1.0, 0: -1.0}),  # III = II - I
    (3, {0: -0.5, 1: -0.5}),  # aVR = -(I + II) / 2
    (4, {0: 1.0, 1: -0.5}),  # aVL = I - II / 2
    (5, {1: 1.0, 0: -0.5}),  # aVF = II - I / 2
)


@dataclass
class Quality:
    """How ECG-like one record's canonical signal is (`signal_quality`), and why it is not, if it is not."""

    limb_residual: float  # worst limb-lead identity's residual, relative to the limb leads' spread
    qrs_kurtosis: float  # median over leads of the kurtosis of the 5-25 Hz band (QRS complexes are peaks)
    saturation: float  # largest fraction of a lead's samples at its minimum or maximum
    flat_seconds: int  # longest run of whole seconds in which a lead stays within the flat threshold
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "ok": not self.reasons, "reasons": list(self.reasons), "limb_residual": round(self.limb_residual, 4),
            "qrs_kurtosis": round(self.qrs_kurtosis, 3), "saturation": round(self.saturation, 4), "flat_seconds": self.flat_seconds,
        }


def _mad(x: np.ndarray) -> np.ndarray:
    return np.median(np.abs(x - np.median(x, axis=-1, keepdims=True)), axis=-1)


def signal_quality(signal: np.ndarray, rate: float, flat_threshold_mv: float = 0.01) -> Quality:
    """Signal-quality index of a canonical [12, T] record in millivolts, LEADS_12 order.

    - Limb-lead consistency: I, II, III, aVR, aVL and aVF come from three electrodes, so III = II - I,
      aVR = -(I + II)/2, aVL = I - II/2 and aVF = II - I/2 hold in any real recording (also with reversed
      electrodes). Residual = worst identity's median absolute deviation over the limb leads' median one:
      about 0.01 on real ECGs, sqrt(3) for leads that are independent noise (or leads that are mislabelled).
    - QRS peaks: an ECG's 5-25 Hz band is dominated by QRS complexes, a few sharp peaks a second, so its
      kurtosis is well above a Gaussian's 3; noise of any spectrum stays at 3.
    - Saturation (clipping at the amplifier's range) and flat stretches of a lead (a lead off mid-record).

    Zero padding (a record shorter than the canonical length) is left out.
    """
    from scipy.signal import butter, sosfiltfilt

    active = np.flatnonzero(np.any(signal != 0, axis=0))
    x = signal[:, active[0] : active[-1] + 1].astype(np.float64) if len(active) else signal.astype(np.float64)
    limb = x[:6]
    residuals = np.stack([limb[lead] - sum(w * limb[other] for other, w in terms.items()) for lead, terms in _LIMB_IDENTITIES])
    limb_residual = float(_mad(residuals).max() / max(float(np.median(_mad(limb))), 1e-9))
    kurtosis = 0.0
    if x.shape[1] > 3 * rate and rate > 20:
        band = sosfiltfilt(butter(2, [5.0, min(25.0, 0.45 * rate)], btype="band", fs=rate, output="sos"), x, axis=-1)
        band -= band.mean(axis=-1, keepdims=True)
        kurtosis = float(np.median((band**4).mean(-1) / np.maximum((band**2).mean(-1) ** 2, 1e-30)))
    low, high = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    margin = 1e-3 * (high - low)
    saturation = float(np.maximum((x <= low + margin).mean(-1), (x >= high - margin).mean(-1)).max())
    second = max(int(rate), 1)
    seconds = x.shape[1] // second
    flat = np.ptp(x[:, : seconds * second].reshape(len(x), seconds, second), axis=-1) < flat_threshold_mv
    flat_seconds = 0
    for lead in flat:
        run = 0
        for is_flat in lead:
            run = run + 1 if is_flat else 0
            flat_seconds = max(flat_seconds, run)
    reasons = []
    if limb_residual > LIMB_RESIDUAL_MAX:
        reasons.append(f"limb leads disagree with Einthoven's law (residual {limb_residual:.2f} > {LIMB_RESIDUAL_MAX}): noise or mislabelled leads")
    if kurtosis < QRS_KURTOSIS_MIN:
        reasons.append(f"no QRS-like peaks (5-25 Hz kurtosis {kurtosis:.2f} < {QRS_KURTOSIS_MIN}; noise gives 3)")
    if saturation > SATURATION_MAX:
        reasons.append(f"a lead is clipped ({saturation:.0%} of its samples at its extremes)")
    if flat_seconds >= FLAT_SECONDS_MAX:
        reasons.append(f"a lead is flat for {flat_seconds} s")
    return Quality(limb_residual, kurtosis, saturation, flat_seconds, reasons)


# The embedding distance: how far a record's embedding is from the training records', in the heads'
# standardised space z = (x - x_mean) / x_std, as the RMS over features of z - z' to its K-th nearest training
# row; divided by the same distance's `DISTANCE_QUANTILE` over the training rows, each measured without its own
# subject's rows (so a training row is as new to the others as a new subject's record). A ratio above
# `DISTANCE_RATIO_MAX` flags the record.
DISTANCE_K = 5
DISTANCE_QUANTILE = 0.99
DISTANCE_RATIO_MAX = 1.25
REFERENCE_ROWS = 500  # training rows kept as the reference (evenly spaced), which bounds the cost


@dataclass
class EmbeddingReference:
    backbone: str
    mean: np.ndarray  # [D] the heads' x_mean / x_std (averaged over folds)
    std: np.ndarray
    rows: np.ndarray  # [R, D] standardised training embeddings
    scale: float  # the DISTANCE_QUANTILE of the training rows' leave-one-subject-out distance

    def ratio(self, embeddings: np.ndarray) -> np.ndarray:
        """[N, D] embeddings -> [N] distance to the training rows over the training rows' own (1 = typical edge)."""
        return _knn_distance((embeddings - self.mean) / self.std, self.rows) / self.scale


def _knn_distance(z: np.ndarray, rows: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """RMS distance of each z to its K-th nearest row; `exclude` [len(z), len(rows)] masks rows out."""
    z, rows = z.astype(np.float64), rows.astype(np.float64)
    squared = (z**2).sum(1)[:, None] + (rows**2).sum(1)[None, :] - 2 * z @ rows.T
    squared = np.maximum(squared, 0.0) / z.shape[1]
    if exclude is not None:
        squared[exclude] = np.inf
    k = min(DISTANCE_K, squared.shape[1]) - 1
    return np.sqrt(np.partition(squared, k, axis=1)[:, k])


def embedding_reference(backbone: str, heads: "ExpertHeads", train_rows: np.ndarray, embeddings, subjects: np.ndarray) -> EmbeddingReference | None:
    """The reference of `backbone`'s embedding distance from its training rows (an array-like [N, D] store and
    the corpus's subject ids); None when too few subjects to calibrate it."""
    if len(train_rows) > REFERENCE_ROWS:
        train_rows = train_rows[np.linspace(0, len(train_rows) - 1, REFERENCE_ROWS).round().astype(int)]
    train_rows = np.sort(train_rows)
    subject = subjects[train_rows]
    if len(set(subject.tolist())) <= DISTANCE_K:
        return None
    mean, std = heads.x_mean.mean(0), heads.x_std.mean(0)
    rows = (np.asarray(embeddings.oindex[train_rows] if hasattr(embeddings, "oindex") else embeddings[train_rows], np.float32) - mean) / std
    if not np.isfinite(rows).all():
        return None
    own = _knn_distance(rows, rows, exclude=subject[:, None] == subject[None, :])
    return EmbeddingReference(backbone, mean, std, rows.astype(np.float32), float(np.quantile(own, DISTANCE_QUANTILE)))


# ---------------------------------------------------------------------------------------------------------
# Heads without peft
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ExpertHeads:
    """One expert's k fold heads as stacked arrays (LoRA merged): output = probe(z) + ffn(z) + bias."""

    task: Task
    x_mean: np.ndarray  # [k, D]
    x_std: np.ndarray  # [k, D]
    probe: tuple[np.ndarray, np.ndarray]  # [k, K, D], [k, K]
    ffn: list[tuple[np.ndarray, np.ndarray]]  # per Linear layer: [k, out, in], [k, out]
    bias: np.ndarray  # [k, K]
    y_mean: np.ndarray  # [k, K]
    y_std: np.ndarray  # [k, K]

    def predict_folds(self, embeddings: np.ndarray) -> np.ndarray:
        """[N, D] -> each fold head's prediction [k, N, K] in the ensemble's space (value, or probabilities)."""
        import torch

        from pipeline.stage_two.losses import to_prediction

        with torch.inference_mode():
            t = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in (("mean", self.x_mean), ("std", self.x_std), ("bias", self.bias))}
            x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
            z = (x[None] - t["mean"][:, None]) / t["std"][:, None]  # [k, N, D]
            weight, bias = (torch.from_numpy(a) for a in self.probe)
            out = torch.baddbmm(bias[:, None], z, weight.transpose(1, 2))
            h = z
            for layer, (w, b) in enumerate(self.ffn):
                h = torch.baddbmm(torch.from_numpy(b)[:, None], h, torch.from_numpy(w).transpose(1, 2))
                if layer < len(self.ffn) - 1:
                    h = torch.relu(h)
            raw = out + h + t["bias"][:, None]
            if self.task.type == "regression":
                raw = raw * torch.from_numpy(self.y_std)[:, None] + torch.from_numpy(self.y_mean)[:, None]
            return to_prediction(self.task, raw).numpy()


class _OtherAdapter(Exception):
    """An adapter that is not plain LoRA on Linear layers: left to peft."""


def _merged_fold(directory: Path) -> dict[str, np.ndarray]:
    """A fold head's weights with its LoRA adapter merged in, read with safetensors (no peft)."""
    from safetensors.numpy import load_file

    adapter_dir = directory / "adapter"
    for needed in (directory / "base.safetensors", adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"):
        if not needed.is_file():
            raise StoreError(f"{needed} does not exist; the head is incomplete: rerun `enecg fit-heads`")
    base = load_file(str(directory / "base.safetensors"))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    unsupported = [key for key in ("use_dora", "use_rslora", "lora_bias", "fan_in_fan_out") if config.get(key)]
    unsupported += [key for key in ("rank_pattern", "alpha_pattern") if config.get(key)]
    if config.get("peft_type") != "LORA" or unsupported:
        raise _OtherAdapter(f"{adapter_dir}: {config.get('peft_type')} {unsupported}")
    scaling = float(config["lora_alpha"]) / float(config["r"])
    adapter = load_file(str(adapter_dir / "adapter_model.safetensors"))
    prefix = "base_model.model."
    for key in adapter:
        if not key.startswith(prefix) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise _OtherAdapter(f"{adapter_dir}: adapter tensor {key}")
        if key.endswith(".lora_A.weight"):
            layer = key[len(prefix) : -len(".lora_A.weight")]
            a, b = adapter[key], adapter[f"{prefix}{layer}.lora_B.weight"]
            base[f"{layer}.weight"] = base[f"{layer}.weight"] + scaling * (b @ a)
    return base


def load_expert(task: Task, directory: Path) -> ExpertHeads:
    """The expert's fold heads (heads/TASK/BACKBONE/fold*/), merged and stacked."""
    folds = sorted(Path(directory).glob("fold*"))
    if not folds:
        raise StoreError(f"{directory} holds no trained heads; run `enecg fit-heads`")
    try:
        states = [_merged_fold(fold) for fold in folds]
    except _OtherAdapter:  # an adapter of another kind: peft reads it and merges it
        from pipeline.stage_two.heads import load_head

        states = [{key: value.numpy() for key, value in load_head(fold).merge_and_unload().state_dict().items()} for fold in folds]
    stack = lambda key: np.stack([state[key] for state in states]).astype(np.float32)  # noqa: E731
    layers = sorted({int(key.split(".")[1]) for key in states[0] if key.startswith("ffn.") and key.endswith(".weight")})
    return ExpertHeads(
        task, stack("x_mean"), stack("x_std"), (stack("probe.weight"), stack("probe.bias")),
        [(stack(f"ffn.{i}.weight"), stack(f"ffn.{i}.bias")) for i in layers], stack("bias"), stack("y_mean"), stack("y_std"),
    )


# ---------------------------------------------------------------------------------------------------------
# The chain
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    record: str
    task: str
    value: np.ndarray | None  # the ensemble's prediction (value, or probabilities), None when excluded
    reason: str = ""  # why the record was excluded
    experts: dict[str, np.ndarray] = field(default_factory=dict)  # backbone -> its own prediction (mean over folds)
    weights: dict[str, float] = field(default_factory=dict)  # backbone -> the gate's weight (mean over folds)
    quality: Quality | None = None
    distance: dict[str, float] = field(default_factory=dict)  # backbone -> embedding distance ratio (1 = training edge)

    @property
    def flags(self) -> list[str]:
        """Why this prediction should not be trusted (empty: the record looks like the training records)."""
        flags = list(self.quality.reasons) if self.quality else []
        far = [f"{name} {ratio:.2f}x" for name, ratio in self.distance.items() if ratio > DISTANCE_RATIO_MAX]
        if far:
            flags.append(f"unlike the training records (embedding distance {', '.join(far)} the training rows' {DISTANCE_QUANTILE:.0%} quantile)")
        return flags

    @property
    def out_of_distribution(self) -> bool:
        return self.value is not None and bool(self.flags)


class Predictor:
    """Every task's trained chain, loaded once: backbones (shared by tasks), fold heads and gates.

    Run from the project folder (heads/, gates/, checkpoints/; embeddings/ and corpus.zarr, when present, give
    the embedding distance its reference)."""

    def __init__(self, tasks: list[Task], settings: QCSettings, device: str = "auto", batch_size: int = 32, distance: bool = True):
        from pipeline.stage_one.backbones import build_backbone
        from pipeline.stage_one.extract import resolve_device
        from pipeline.stage_two.moe import load_gates

        self.tasks, self.settings, self.batch_size = tasks, settings, batch_size
        self.device = resolve_device(device)
        self.gates, self.heads, self.backbones = {}, {}, {}
        for task in tasks:
            gates, config = load_gates(gate_dir(task.name))
            self.gates[task.name] = (gates["moe"], config)
            for backbone in config["experts"]:
                self.heads[task.name, backbone] = load_expert(task, head_dir(task.name, backbone))
                if backbone not in self.backbones:
                    self.backbones[backbone] = build_backbone(backbone).to(self.device)
        self.references = self._references() if distance else {}

    def _references(self) -> dict[str, EmbeddingReference]:
        """Each backbone's embedding reference from embeddings/B.zarr and corpus.zarr; a backbone without them
        (a project that kept only heads and gates) has no distance."""
        if not CORPUS.exists():
            return {}
        import zarr

        try:
            subjects = strings(zarr.open_group(str(CORPUS), mode="r")["subject_id"])
        except (KeyError, FileNotFoundError, ValueError):
            return {}
        references = {}
        for (task, backbone), heads in self.heads.items():
            store, saved = embeddings_path(backbone), head_dir(task, backbone) / "predictions.npz"
            if backbone in references or not store.exists() or not saved.exists():
                continue
            try:
                embeddings = zarr.open_group(str(store), mode="r")["embedding"]
                reference = embedding_reference(backbone, heads, np.load(saved)["train_rows"], embeddings, subjects)
            except (KeyError, FileNotFoundError, ValueError, IndexError):
                continue
            if reference is not None and reference.rows.shape[1] == heads.x_mean.shape[1]:
                references[backbone] = reference
        return references

    def embed(self, signals: np.ndarray) -> dict[str, np.ndarray]:
        from pipeline.stage_one.extract import backbone_inputs, embed_batches

        leads = list(LEADS_12)
        return {
            name: embed_batches(model, backbone_inputs(signals, self.settings.sampling_rate, leads, model), self.batch_size, self.device)["embedding"]
            for name, model in self.backbones.items()
        }

    def predict(self, names: list[str], signals: np.ndarray) -> list[Prediction]:
        """Predictions of every task for canonical signals [N, 12, T] named `names`, grouped by task."""
        from pipeline.stage_two.gate import lead_signals
        from pipeline.stage_two.moe import moe_predict

        if not len(names):
            return []
        embeddings = self.embed(signals)
        qualities = [signal_quality(signal, self.settings.sampling_rate, self.settings.flat_threshold_mv) for signal in signals]
        distances = {name: reference.ratio(embeddings[name]) for name, reference in self.references.items()}
        results = []
        for task in self.tasks:
            gate, config = self.gates[task.name]
            experts = list(config["experts"])
            folds = np.stack([self.heads[task.name, b].predict_folds(embeddings[b]) for b in experts], axis=2)  # [k, N, E, K]
            gate_leads = lead_signals(signals, list(LEADS_12), list(config["settings"]["leads"]), self.settings.sampling_rate, float(config["settings"]["sampling_rate"]))
            weights, moe = moe_predict(task, gate, config, gate_leads, folds)
            own = folds.mean(axis=0)  # [N, E, K]
            for i, name in enumerate(names):
                results.append(Prediction(
                    name, task.name, moe[i],
                    experts={b: own[i, e] for e, b in enumerate(experts)},
                    weights={b: float(weights[i, e]) for e, b in enumerate(experts)},
                    quality=qualities[i],
                    distance={b: float(distances[b][i]) for b in experts if b in distances},
                ))
        return results


def predict_records(paths: list[Path], tasks: list[Task], settings: QCSettings, device: str = "auto", batch_size: int = 32) -> list[Prediction]:
    """The ensemble's prediction of every task for every readable record; `device` as params `extract.device`.
    Excluded records come last, one Prediction per task with value None and the reason."""
    loaded, excluded = load_records(paths, settings)
    results = []
    if loaded:
        results = Predictor(tasks, settings, device, batch_size).predict(list(loaded), np.stack(list(loaded.values())))
    return results + [Prediction(name, task.name, None, reason) for name, reason in excluded.items() for task in tasks]


def plot_record(folder: Path, name: str, signal: np.ndarray, rate: float, lines: list[str], flags: list[str], taken: list[Path] = ()) -> Path:
    """Draw a canonical [12, T] record's 12 leads (two columns of six, 10 s each, mV) with its predictions
    (`lines`) and any out-of-distribution flags in the title; write FOLDER/<record>.png and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    stem, path = Path(name).name, folder / f"{Path(name).name}.png"
    count = 1
    while path in taken:  # records of the same name in different folders
        count += 1
        path = folder / f"{stem}-{count}.png"
    time = np.arange(signal.shape[1]) / rate
    figure, axes = plt.subplots(6, 2, figsize=(14, 9), sharex=True, sharey=True, layout="constrained")
    for index, lead in enumerate(LEADS_12):
        axis = axes[index % 6, index // 6]
        axis.plot(time, signal[index], color="black", linewidth=0.6)
        axis.set_ylabel(lead, rotation=0, labelpad=14)
        axis.grid(True, color="#f3b6b6", linewidth=0.5)
    for axis in axes[-1]:
        axis.set_xlabel("s")
    title = [name, "   |   ".join(lines)]
    if flags:
        title += ["OUT OF DISTRIBUTION: " + flag for flag in flags]
    figure.suptitle("\n".join(title), fontsize=10, color="darkred" if flags else "black")
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
