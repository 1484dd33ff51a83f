"""ECG-FM loads fairseq-signals checkpoints as they are written, refuses ones that do not fit, and embeds records.

The builders registered for "ecgfm" and "ecgfm-finetuned" are called directly (build_backbone only adds eval()
and requires_grad=False), so this file does not import every other backbone. The checkpoints are written by the
test in fairseq-signals' own container and key layout, spelled out below independently of the module, so that the
loader is tested against the format rather than against itself.
"""

import json

import numpy as np
import pytest
import torch

from pipeline.stage_one.backbones import load_state_dict_strict
from pipeline.stage_one.backbones.ecgfm import build_finetuned, build_from_cfg, build_pretrained, native_to_module_keys
from pipeline.errors import CheckpointError
from tests.conftest import FIXTURES, need_shared

TINY = {  # the fields fairseq-signals builds from, at toy size
    "extractor_mode": "default",
    "conv_feature_layers": "[(16, 2, 2)] * 4",
    "in_d": 12,
    "conv_bias": False,
    "encoder_layers": 2,
    "encoder_embed_dim": 24,
    "encoder_ffn_embed_dim": 32,
    "encoder_attention_heads": 4,
    "layer_norm_first": False,
    "conv_pos": 8,
    "conv_pos_groups": 4,
}
LABELS = 5


def native_state_dict(finetuned: bool, new_weight_norm: bool = False) -> dict[str, torch.Tensor]:
    """Random weights under fairseq-signals' key names for TINY (wav2vec2_cmsc, or the classifier's `encoder.`)."""
    g = torch.Generator().manual_seed(0)
    conv, dim, ffn = 16, TINY["encoder_embed_dim"], TINY["encoder_ffn_embed_dim"]
    shapes = {"feature_extractor.conv_layers.0.0.weight": (conv, 12, 2)}
    shapes |= {"feature_extractor.conv_layers.0.2.weight": (conv,), "feature_extractor.conv_layers.0.2.bias": (conv,)}
    shapes |= {f"feature_extractor.conv_layers.{i}.0.weight": (conv, conv, 2) for i in (1, 2, 3)}
    shapes |= {"layer_norm.weight": (conv,), "layer_norm.bias": (conv,)}
    shapes |= {"post_extract_proj.weight": (dim, conv), "post_extract_proj.bias": (dim,)}
    g_name, v_name = ("parametrizations.weight.original0", "parametrizations.weight.original1") if new_weight_norm else ("weight_g", "weight_v")
    shapes |= {"conv_pos.pos_conv.0.bias": (dim,), f"conv_pos.pos_conv.0.{g_name}": (1, 1, 8), f"conv_pos.pos_conv.0.{v_name}": (dim, dim // 4, 8)}
    for i in range(2):
        layer = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes |= {f"{layer}self_attn.{proj}.weight": (dim, dim), f"{layer}self_attn.{proj}.bias": (dim,)}
        shapes |= {f"{layer}fc1.weight": (ffn, dim), f"{layer}fc1.bias": (ffn,), f"{layer}fc2.weight": (dim, ffn), f"{layer}fc2.bias": (dim,)}
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes |= {f"{layer}{norm}.weight": (dim,), f"{layer}{norm}.bias": (dim,)}
    shapes |= {"encoder.layer_norm.weight": (dim,), "encoder.layer_norm.bias": (dim,)}
    if finetuned:
        shapes = {f"encoder.{key}": shape for key, shape in shapes.items()}
        shapes |= {"proj.weight": (LABELS, dim), "proj.bias": (LABELS,)}
    else:  # pretraining-only heads, which the embedding does not use
        shapes |= {"mask_emb": (dim,), "quantizer.vars": (1, 32, 8), "quantizer.weight_proj.weight": (32, conv)}
        shapes |= {"quantizer.weight_proj.bias": (32,), "project_q.weight": (12, 8), "project_q.bias": (12,)}
        shapes |= {"final_proj.weight": (12, dim), "final_proj.bias": (12,)}
    return {key: torch.randn(shape, generator=g) * 0.3 for key, shape in shapes.items()}


def write_checkpoint(path, state_dict, finetuned: bool):
    """fairseq-signals' Trainer.save_checkpoint container: cfg is a plain dict, `args` None."""
    model_cfg = {**TINY, "_name": "ecg_transformer_classifier" if finetuned else "wav2vec2_cmsc"}
    if finetuned:
        model_cfg |= {"num_labels": LABELS, "model_path": "/nowhere/pretrained.pt", "no_pretrained_weights": False}
    torch.save(
        {
            "args": None,
            "cfg": {"_name": None, "common": {"seed": 1}, "model": model_cfg, "task": {"_name": "ecg_classification"}},
            "model": state_dict,
            "criterion": None,
            "optimizer_history": [{"criterion_name": "BinaryCrossEntropyCriterion", "num_updates": 3}],
            "task_state": {},
            "extra_state": {"metrics": {}, "val_loss": 0.5, "train_iterator": {"epoch": 1}},
            "last_optimizer_state": {"state": {}, "param_groups": []},
        },
        path,
    )
    return path


def record(seconds: float, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 12, int(seconds * 500), generator=torch.Generator().manual_seed(1))


def test_pretrained_checkpoint_embeds_records_by_averaging_5s_windows(tmp_path):
    path = write_checkpoint(tmp_path / "mimic_iv_ecg_physionet_pretrained.pt", native_state_dict(False), False)
    model = build_pretrained(path).eval()
    x = record(10)
    with torch.no_grad():
        out = model(x)
        halves = [model(x[..., i * 2500 : (i + 1) * 2500])["embedding"] for i in range(2)]
    assert set(out) == {"embedding"}
    assert out["embedding"].shape == (2, TINY["encoder_embed_dim"]) and torch.isfinite(out["embedding"]).all()
    torch.testing.assert_close(out["embedding"], (halves[0] + halves[1]) / 2)
    assert not torch.allclose(halves[0], halves[1])  # the two windows really differ


def test_finetuned_checkpoint_gives_logits_and_accepts_both_weight_norm_namings(tmp_path):
    old = build_finetuned(write_checkpoint(tmp_path / "a.pt", native_state_dict(True), True)).eval()
    new = build_finetuned(write_checkpoint(tmp_path / "b.pt", native_state_dict(True, True), True)).eval()
    x = record(10)
    with torch.no_grad():
        out, out_new = old(x), new(x)
    assert out["logits"].shape == (2, LABELS) and torch.isfinite(out["logits"]).all()
    assert out["embedding"].shape == (2, TINY["encoder_embed_dim"]) and torch.isfinite(out["embedding"]).all()
    torch.testing.assert_close(out_new["logits"], out["logits"], rtol=0, atol=0)


@pytest.mark.parametrize("build, finetuned, hint", [(build_pretrained, True, "ecgfm-finetuned"), (build_finetuned, False, "'ecgfm'")])
def test_each_backbone_refuses_the_other_ones_checkpoint(tmp_path, build, finetuned, hint):
    path = write_checkpoint(tmp_path / "other.pt", native_state_dict(finetuned), finetuned)
    with pytest.raises(CheckpointError, match=hint):
        build(path)


def test_a_file_that_is_not_a_fairseq_checkpoint_is_refused(tmp_path):
    torch.save(native_state_dict(False), tmp_path / "weights.pt")  # a bare state dict: no cfg to size the model
    with pytest.raises(CheckpointError, match="not a fairseq-signals checkpoint"):
        build_pretrained(tmp_path / "weights.pt")


@pytest.mark.parametrize(
    "change, expected",
    [
        ("missing", "missing keys (1): encoder.encoder.layers.1.fc1.weight"),
        ("renamed", "unexpected keys (1): encoder.encoder.layers.1.ffn1.weight"),
        ("reshaped", "encoder.encoder.layers.1.fc1.weight: checkpoint (32, 23) vs model (32, 24)"),
        ("unknown head", "unexpected keys (1): encoder.target_glu.0.weight"),  # only the known heads are dropped
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_with_the_key(tmp_path, change, expected):
    state = native_state_dict(False)
    key = "encoder.layers.1.fc1.weight"
    weight = state.pop(key)
    state |= {
        "missing": {},
        "renamed": {"encoder.layers.1.ffn1.weight": weight},
        "reshaped": {key: weight[:, :-1]},
        "unknown head": {key: weight, "target_glu.0.weight": torch.zeros(3)},
    }[change]
    with pytest.raises(CheckpointError) as error:
        build_pretrained(write_checkpoint(tmp_path / "bad.pt", state, False))
    assert expected in str(error.value)


def test_preprocess_z_scores_each_lead_and_zeroes_constant_leads():
    t = np.arange(5000) / 500
    signals = np.stack([3.0 + 2.0 * np.sin(2 * np.pi * (1 + lead) * t) for lead in range(12)])[None].astype(np.float32)
    signals[0, 4] = 0.7  # a flat lead
    model = build_from_cfg({**TINY, "_name": "wav2vec2_cmsc"})
    out = model.preprocess(signals)
    assert out.dtype == np.float32 and out.shape == signals.shape
    live = np.delete(out[0], 4, axis=0)
    np.testing.assert_allclose(live.mean(axis=-1), 0, atol=1e-6)
    np.testing.assert_allclose(live.std(axis=-1), 1, atol=1e-5)
    assert np.all(out[0, 4] == 0)


@pytest.mark.parametrize("fixture, name", [("ecgfm-pretrained", "ecgfm"), ("ecgfm-finetuned", "ecgfm-finetuned")])
def test_full_published_key_list_matches_the_model_built_from_the_full_cfg(fixture, name):
    folder = need_shared(FIXTURES / fixture)
    full_cfg = json.loads((folder / "config.json").read_text())["full"]["model"]
    published = json.loads((folder / "keys_full.json").read_text())["keys"]
    with torch.device("meta"):
        model = build_from_cfg(full_cfg)
        state = {key: torch.empty(shape) for key, shape in published.items()}
    load_state_dict_strict(model, native_to_module_keys(state, name == "ecgfm-finetuned", "keys_full.json"), folder)
    assert type(model).config.name == name
    assert model.encoder.encoder.layer_norm.normalized_shape == (type(model).config.embedding_dim,)
