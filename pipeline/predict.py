"""`predict`: the trained chain (backbones -> fold heads -> gate) on new WFDB records, without the corpus.

Each record goes through the same QC and resampling as `prepare`; an excluded record is reported with its
reason instead of a prediction. A `Predictor` builds each backbone once (shared by every task that uses it) and
loads each task's heads and gate once; records are then embedded in batches. For each record and task it
gives the ensemble's prediction, the gate's weight of each expert and each expert's own prediction (the mean
of its fold heads, as `evaluate` scores `expert:B`), and flags a record that is unlike what the ensemble was
trained on (`Quality`, `embedding_distance`): the ensemble still predicts, but the flag says not to trust it.

Heads are read without peft (`load_expert`): each fold head's base weights and LoRA matrices are read with
safetensors and each adapted Linear layer's LoRA update is merged into its weight, W + (alpha / r) B A, which
is what peft's `merge_and_unload` computes; the k fold heads of an expert then run as one batched product.
Why not `pipeline.stage_two.heads.load_head` (peft): `import peft` imports transformers, which takes longer
than torch itself (benchmarks/predict_speed.md: `import torch, peft` against `import torch`), and on a 2-core
machine that alone was more than the 5 s a person should wait for the first record. tests/test_predict.py
checks that these heads give what `load_head` gives on every task type; peft still reads an adapter this
reader does not know (another PEFT method, DoRA, per-layer ranks, ...), merged by peft itself.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.ecg import LEADS_12
from pipeline.errors import RecordError, StoreError
from pipeline.layout import CORPUS, embeddings_path, gate_dir, head_dir
from pipeline.stage_one.signals import QCSettings, load_canonical
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

# Thresholds of `signal_quality`, measured on real and simulated ECGs and on Gaussian noise in valid 12-lead
# headers (white at 500 and 100 Hz, low-passed at 40 and 10 Hz; tests/test_predict.py checks both sides): real
# ECGs (PTB-XL's first 500 at 500 and at 100 Hz, 308 CODE-15% records) and the demo's 240 give a limb residual
# of at most 0.13 and a QRS-band kurtosis of at least 4.0 (PTB-XL 4.33, demo 8.15); noise gives a limb
# residual of 1.6-2.1 and a kurtosis of 2.9-3.3 (3 for a Gaussian, whatever its bandwidth).
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
      kurtosis (median over leads) is well above a Gaussian's 3; noise of any spectrum stays at 3.
    - Saturation (clipping at the amplifier's range) and flat stretches of a lead (a lead off mid-record).

    Zero padding (a record shorter than the canonical length) is left out.
    """
    return signal_qualities(signal[None], rate, flat_threshold_mv)[0]


def signal_qualities(signals: np.ndarray, rate: float, flat_threshold_mv: float = 0.01) -> list[Quality]:
    """`signal_quality` of every record of [N, 12, T], computed together for records of the same extent."""
    active = np.any(signals != 0, axis=1)  # [N, T]
    extents = [(int(a.argmax()), len(a) - int(a[::-1].argmax())) if a.any() else (0, len(a)) for a in active]
    qualities: list[Quality | None] = [None] * len(signals)
    for extent in dict.fromkeys(extents):
        rows = [i for i, e in enumerate(extents) if e == extent]
        for row, quality in zip(rows, _qualities(signals[rows, :, extent[0] : extent[1]], rate, flat_threshold_mv)):
            qualities[row] = quality
    return qualities


@functools.lru_cache(maxsize=8)
def _qrs_band(rate: float) -> np.ndarray:
    from scipy.signal import butter

    return butter(2, [5.0, min(25.0, 0.45 * rate)], btype="band", fs=rate, output="sos")


def _qualities(signals: np.ndarray, rate: float, flat_threshold_mv: float) -> list[Quality]:
    x = np.asarray(signals, dtype=np.float32)  # [N, 12, T]
    limb = x[:, :6]
    residuals = np.stack([limb[:, lead] - sum(w * limb[:, other] for other, w in terms.items()) for lead, terms in _LIMB_IDENTITIES], axis=1)
    limb_residual = _mad(residuals).max(axis=1) / np.maximum(np.median(_mad(limb), axis=1), 1e-9)
    kurtosis = np.zeros(len(x))
    if x.shape[-1] > 3 * rate and rate > 20:
        from scipy.signal import sosfiltfilt

        band = sosfiltfilt(_qrs_band(float(rate)), x, axis=-1).astype(np.float32)
        band -= band.mean(axis=-1, keepdims=True)
        np.square(band, out=band)
        power = band.mean(-1, dtype=np.float64)
        kurtosis = np.median(np.square(band, out=band).mean(-1, dtype=np.float64) / np.maximum(power**2, 1e-30), axis=1)
    low, high = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    margin = 1e-3 * (high - low)
    saturation = np.maximum((x <= low + margin).mean(-1), (x >= high - margin).mean(-1)).max(axis=1)
    second = max(int(rate), 1)
    seconds = x.shape[-1] // second
    flat = np.ptp(x[..., : seconds * second].reshape(*x.shape[:2], seconds, second), axis=-1) < flat_threshold_mv
    run, longest = np.zeros(x.shape[:2], int), np.zeros(x.shape[:2], int)
    for step in range(seconds):
        run = (run + 1) * flat[..., step]
        longest = np.maximum(longest, run)
    qualities = []
    for residual, peaks, clipped, flat_for in zip(limb_residual, kurtosis, saturation, longest.max(axis=1)):
        reasons = []
        if residual > LIMB_RESIDUAL_MAX:
            reasons.append(f"limb leads disagree with Einthoven's law (residual {residual:.2f} > {LIMB_RESIDUAL_MAX}): noise or mislabelled leads")
        if peaks < QRS_KURTOSIS_MIN:
            reasons.append(f"no QRS-like peaks (5-25 Hz kurtosis {peaks:.2f} < {QRS_KURTOSIS_MIN}; noise gives 3)")
        if clipped > SATURATION_MAX:
            reasons.append(f"a lead is clipped ({clipped:.0%} of its samples at its extremes)")
        if flat_for >= FLAT_SECONDS_MAX:
            reasons.append(f"a lead is flat for {flat_for} s")
        qualities.append(Quality(float(residual), float(peaks), float(clipped), int(flat_for), reasons))
    return qualities


# The embedding distance: how far a record's embedding is from the training records', in the heads'
# standardised space z = (x - x_mean) / x_std, as the RMS over features of z - z' to its K-th nearest training
# row; divided by the same distance's `DISTANCE_QUANTILE` over the training rows, each measured without its own
# subject's rows (so a training row is as new to the others as a new subject's record). A ratio above
# `DISTANCE_RATIO_MAX` flags the record. On the trained demo (180 training rows of 30 subjects): the 60 test
# records (new subjects) reach 1.00 (minirocket) and 0.92 (dlinear), Gaussian noise 1.53-2.68 (minirocket) and
# 1.06-1.36 (dlinear), and real PTB-XL records 0.95-2.5: a model trained on simulated ECGs has not seen them.
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
    z, rows = np.asarray(z, np.float32), np.asarray(rows, np.float32)
    norms = (z.astype(np.float64) ** 2).sum(1)[:, None] + (rows.astype(np.float64) ** 2).sum(1)[None, :]
    squared = np.maximum(norms - 2 * (z @ rows.T), 0.0) / z.shape[1]
    if exclude is not None:
        squared[exclude] = np.inf
    k = min(DISTANCE_K, squared.shape[1]) - 1
    return np.sqrt(np.partition(squared, k, axis=1)[:, k])


def embedding_reference(backbone: str, heads: ExpertHeads, train_rows: np.ndarray, embeddings, subjects: np.ndarray) -> EmbeddingReference | None:
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
    finite = np.isfinite(rows).all(axis=1)
    rows, subject = rows[finite], subject[finite]
    if len(set(subject.tolist())) <= DISTANCE_K:
        return None
    own = _knn_distance(rows, rows, exclude=subject[:, None] == subject[None, :])
    return EmbeddingReference(backbone, mean, std, rows.astype(np.float32), float(np.quantile(own, DISTANCE_QUANTILE)))


# ---------------------------------------------------------------------------------------------------------
# Heads without peft (see the module docstring)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ExpertHeads:
    """One expert's k fold heads as stacked arrays: output = probe(z) + ffn(z) + bias, z = (x - x_mean) / x_std,
    each FFN Linear layer's weight with its LoRA update merged in (as peft's merge_and_unload)."""

    task: Task
    x_mean: np.ndarray  # [k, D]
    x_std: np.ndarray  # [k, D]
    probe: tuple[np.ndarray, np.ndarray]  # [k, K, D], [k, K]
    ffn: list[tuple[np.ndarray, np.ndarray]]  # per Linear layer: weight [k, out, in] (LoRA merged), bias [k, out]
    bias: np.ndarray  # [k, K]
    y_mean: np.ndarray  # [k, K]
    y_std: np.ndarray  # [k, K]

    def predict_folds(self, embeddings: np.ndarray) -> np.ndarray:
        """[N, D] -> each fold head's prediction [k, N, K] in the ensemble's space (value, or probabilities)."""
        import torch

        from pipeline.stage_two.losses import to_prediction

        tensor = torch.from_numpy
        with torch.inference_mode():
            x = tensor(np.ascontiguousarray(embeddings, dtype=np.float32))
            z = (x[None] - tensor(self.x_mean)[:, None]) / tensor(self.x_std)[:, None]  # [k, N, D]
            weight, bias = self.probe
            out = torch.baddbmm(tensor(bias)[:, None], z, tensor(weight).transpose(1, 2))
            h = z
            for layer, (w, b) in enumerate(self.ffn):
                h = torch.baddbmm(tensor(b)[:, None], h, tensor(w).transpose(1, 2))
                if layer < len(self.ffn) - 1:
                    h = torch.relu(h)
            raw = out + h + tensor(self.bias)[:, None]
            if self.task.type == "regression":
                raw = raw * tensor(self.y_std)[:, None] + tensor(self.y_mean)[:, None]
            return to_prediction(self.task, raw).numpy()


class _OtherAdapter(Exception):
    """An adapter that is not plain LoRA on Linear layers: left to peft."""


def _fold_arrays(directory: Path) -> dict[str, np.ndarray]:
    """A fold head's state with its LoRA update merged into each adapted layer's weight, W + (alpha / r) B A
    (as peft's merge_and_unload), read with safetensors (no peft); _OtherAdapter for an adapter it does not know."""
    from safetensors.numpy import load_file

    adapter_dir = directory / "adapter"
    for needed in (directory / "base.safetensors", adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"):
        if not needed.is_file():
            raise StoreError(f"{needed} does not exist; the head is incomplete: rerun `enecg fit-heads`")
    arrays = load_file(str(directory / "base.safetensors"))
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    unsupported = [key for key in ("use_dora", "use_rslora", "lora_bias", "fan_in_fan_out") if config.get(key)]
    unsupported += [key for key in ("rank_pattern", "alpha_pattern") if config.get(key)]
    if config.get("peft_type") != "LORA" or unsupported:
        raise _OtherAdapter(f"{adapter_dir}: {config.get('peft_type')} {unsupported}")
    prefix, lora = "base_model.model.", {}
    for key, value in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        layer, _, kind = key.removeprefix(prefix).rpartition(".lora_")
        if not key.startswith(prefix) or kind not in ("A.weight", "B.weight") or f"{layer}.weight" not in arrays:
            raise _OtherAdapter(f"{adapter_dir}: adapter tensor {key}")
        lora.setdefault(layer, {})[kind[0]] = value.astype(np.float64)
    scaling = float(config["lora_alpha"]) / float(config["r"])
    for layer, pair in lora.items():
        if set(pair) != {"A", "B"}:
            raise _OtherAdapter(f"{adapter_dir}: layer {layer} has lora_{'A' if 'B' in pair else 'B'} only")
        weight = arrays[f"{layer}.weight"]
        arrays[f"{layer}.weight"] = (weight + scaling * (pair["B"] @ pair["A"])).astype(weight.dtype)
    return arrays


def load_expert(task: Task, directory: Path) -> ExpertHeads:
    """The expert's fold heads (heads/BACKBONE/TASK/fold*/), stacked, each with its LoRA update merged in."""
    folds = sorted(Path(directory).glob("fold*"))
    if not folds:
        raise StoreError(f"{directory} holds no trained heads; run `enecg fit-heads`")
    try:
        states = [_fold_arrays(fold) for fold in folds]
    except _OtherAdapter:  # an adapter of another kind: peft reads it and merges it
        from pipeline.stage_two.heads import load_head

        states = [{key: value.numpy() for key, value in load_head(fold).merge_and_unload().state_dict().items()} for fold in folds]
    stack = lambda key: np.stack([state[key] for state in states]).astype(np.float32, copy=False)  # noqa: E731
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
            flags.append(f"unlike the training records (embedding distance over the training records' {DISTANCE_QUANTILE:.0%} quantile: {', '.join(far)}; flagged above {DISTANCE_RATIO_MAX}x)")
        return flags

    @property
    def out_of_distribution(self) -> bool:
        return self.value is not None and bool(self.flags)


@contextlib.contextmanager
def one_thread_per_operation(device) -> Iterator[None]:
    """On a CPU, every torch operation on one thread for the duration (torch's thread count restored after).

    torch splits each operation over its intra-op threads (one per core). A prediction's operations are small
    (MiniRocket's are [8, 84, 1000] per dilation), so the threads spend much of their time handing work over
    and waiting (spinning) for each other, and a machine that other work shares makes that far worse: in
    `enecg predict` on the shared 2-core development machine, 100 records' MiniRocket took 17.7 s on torch's 2
    threads and 3.0 s in 2 record slices of one thread each at a load average of 2.5, and about as long
    either way (2.7 s, 2.2 s) when it was quiet (benchmarks/predict_speed.md). `Predictor.embed` gets the
    cores' work done by embedding slices of the records in parallel threads instead (torch's kernels release
    the GIL), each operation on one thread."""
    import torch

    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Predictor:
    """Every task's trained chain, loaded once: backbones (shared by tasks), fold heads and gates.

    Run from the project folder (heads/, gates/, checkpoints/; embeddings/ and corpus.zarr, when present, give
    the embedding distance its reference)."""

    def __init__(self, tasks: list[Task], settings: QCSettings, device: str = "auto", batch_size: int = 32, distance: bool = True):
        import torch

        from pipeline.stage_one.backbones import build_backbone
        from pipeline.stage_one.extract import resolve_device
        from pipeline.stage_two.moe import load_gates

        self.tasks, self.settings, self.batch_size = tasks, settings, batch_size
        self.device = resolve_device(device)
        self.workers = torch.get_num_threads() if self.device.type == "cpu" else 1  # threads embedding records (see `embed`)
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

        from pipeline.stores import strings

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
        """Each backbone's embeddings [N, D] of canonical signals [N, 12, T]; on a CPU, slices of the records in
        `self.workers` threads, each torch operation on one thread (see `one_thread_per_operation`)."""
        from concurrent.futures import ThreadPoolExecutor

        from pipeline.stage_one.extract import backbone_inputs, embed_batches

        leads, out = list(LEADS_12), {}
        with one_thread_per_operation(self.device), ThreadPoolExecutor(self.workers) as pool:
            for name, model in self.backbones.items():
                inputs = backbone_inputs(signals, self.settings.sampling_rate, leads, model)
                embed = lambda part: embed_batches(model, part, self.batch_size, self.device)["embedding"]  # noqa: E731
                out[name] = np.concatenate(list(pool.map(embed, np.array_split(inputs, max(1, min(self.workers, len(inputs)))))))
        return out

    def predict(self, names: list[str], signals: np.ndarray) -> list[Prediction]:
        """Predictions of every task for canonical signals [N, 12, T] named `names`, grouped by task."""
        if not len(names):
            return []
        with one_thread_per_operation(self.device):
            return self._predict(names, signals)

    def _predict(self, names: list[str], signals: np.ndarray) -> list[Prediction]:
        from pipeline.stage_two.gate import lead_signals
        from pipeline.stage_two.moe import moe_predict

        embeddings = self.embed(signals)
        qualities = signal_qualities(signals, self.settings.sampling_rate, self.settings.flat_threshold_mv)
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
    title = [name, "   |   ".join(lines)] + ["OUT OF DISTRIBUTION: " + flag for flag in flags]
    figure, axes = plt.subplots(6, 2, figsize=(14, 9 + 0.2 * len(title)), sharex=True, sharey=True)
    for index, lead in enumerate(LEADS_12):
        axis = axes[index % 6, index // 6]
        axis.plot(time, signal[index], color="black", linewidth=0.6)
        axis.set_ylabel(lead, rotation=0, labelpad=14)
        axis.grid(True, color="#f3b6b6", linewidth=0.5)
    for axis in axes[-1]:
        axis.set_xlabel("s")
    figure.suptitle("\n".join(title), fontsize=10, color="darkred" if flags else "black", y=0.995)
    figure.subplots_adjust(left=0.06, right=0.99, bottom=0.06, top=1 - (0.3 + 0.2 * len(title)) / figure.get_figheight(), hspace=0.15, wspace=0.1)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
