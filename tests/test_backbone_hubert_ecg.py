"""HuBERT-ECG: loads the published HF folder strictly, embeds 10 s records, preprocesses as the reference does."""

import json

import numpy as np
import pytest
import safetensors.torch
import torch
from transformers import HubertConfig, HubertModel

from pipeline.stage_one.backbones import build_backbone
from pipeline.stage_one.backbones.hubert_ecg import hubert_ecg_model, load_model
from pipeline.errors import CheckpointError
from tests.conftest import FIXTURES, need_shared

# The published config.json layout (HuBERTECG.save_pretrained), shrunk except for hubert-ecg-small's hidden size.
CONFIG = {
    "architectures": ["HuBERTECG"],
    "auto_map": {"AutoConfig": "hubert_ecg.HuBERTECGConfig", "AutoModel": "hubert_ecg.HuBERTECG"},
    "model_type": "hubert_ecg",
    "transformers_version": "4.46.3",
    "hidden_size": 512,
    "num_hidden_layers": 1,
    "num_attention_heads": 8,
    "intermediate_size": 32,
    "conv_dim": [16, 16, 16, 16, 16],
    "conv_kernel": [10, 3, 3, 2, 2],
    "conv_stride": [4, 2, 2, 2, 2],
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 16,
    "classifier_proj_size": 8,
    "mask_time_prob": 0.33,
    "ensemble_length": 1,
    "vocab_sizes": [4],
}


def published_state_dict() -> dict[str, torch.Tensor]:
    """Keys as HuBERTECG writes them: transformers' HubertModel plus the pretraining heads, named by hand."""
    torch.manual_seed(0)
    state = dict(HubertModel(HubertConfig.from_dict(CONFIG)).state_dict())
    state["final_proj.0.weight"] = torch.randn(8, 512)
    state["final_proj.0.bias"] = torch.randn(8)
    state["label_embedding.0.weight"] = torch.randn(4, 8)
    return {key: value.contiguous() for key, value in state.items()}


def write_checkpoint(folder, state, weights_file="model.safetensors"):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    if weights_file == "model.safetensors":
        safetensors.torch.save_file(state, folder / weights_file)
    else:
        torch.save(state, folder / weights_file)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("hubert") / "hubert-ecg-small", published_state_dict())


def test_embeds_10s_records_as_the_mean_of_two_5s_windows(checkpoint):
    backbone = build_backbone("hubert-ecg-small", checkpoint)
    signals = np.random.default_rng(0).standard_normal((2, 12, 5000)).astype(np.float32)
    x = torch.from_numpy(backbone.preprocess(signals))
    with torch.no_grad():
        embedding = backbone(x)["embedding"]
        halves = [backbone(x[..., start : start + 2500])["embedding"] for start in (0, 2500)]
    assert embedding.shape == (2, 512) and torch.isfinite(embedding).all()
    torch.testing.assert_close(embedding, (halves[0] + halves[1]) / 2, atol=1e-5, rtol=1e-5)


def test_loads_pytorch_model_bin_too(tmp_path):
    state = published_state_dict()
    model = load_model(write_checkpoint(tmp_path / "bin", state, "pytorch_model.bin"))
    torch.testing.assert_close(model.state_dict()["label_embedding.0.weight"], state["label_embedding.0.weight"])


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda state: state.pop("final_proj.0.bias"), "final_proj.0.bias"),
        (
            lambda state: state.update({"encoder.layernorm.weight": state.pop("encoder.layer_norm.weight")}),
            "encoder.layernorm.weight",
        ),
        (lambda state: state.update({"label_embedding.0.weight": torch.zeros(5, 8)}), "label_embedding.0.weight"),
    ],
    ids=["missing", "renamed", "reshaped"],
)
def test_refuses_a_checkpoint_whose_keys_do_not_match(tmp_path, change, key):
    state = published_state_dict()
    change(state)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        build_backbone("hubert-ecg-small", write_checkpoint(tmp_path / "bad", state))


def test_refuses_a_folder_of_another_size_or_without_weights(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="hidden_size 512"):
        build_backbone("hubert-ecg-base", checkpoint)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        build_backbone("hubert-ecg-small", tmp_path)


def test_preprocess_removes_a_60hz_tone_and_scales_each_lead_to_minus1_1(checkpoint):
    backbone = build_backbone("hubert-ecg-small", checkpoint)
    t = np.arange(5000) / 500
    clean = np.tile(np.sin(2 * np.pi * 1.3 * t) * np.arange(1, 13)[:, None], (2, 1, 1)).astype(np.float32)
    noisy = clean + 0.3 * np.sin(2 * np.pi * 60 * t).astype(np.float32)
    out = backbone.preprocess(noisy)
    interior = slice(250, -250)  # the forward-backward filter's padded edges keep a short transient
    assert np.abs(out - backbone.preprocess(clean))[..., interior].max() < 1e-3
    np.testing.assert_allclose(out.min(axis=-1), -1, atol=1e-6)
    np.testing.assert_allclose(out.max(axis=-1), 1, atol=1e-6)


def test_full_published_configs_build_the_published_keys():
    fixture = need_shared(FIXTURES / "hubert-ecg")
    full = json.loads((fixture / "config.json").read_text())["full"]
    published = json.loads((fixture / "keys_full.json").read_text())
    for size, elements in (("small", "n_elements"), ("base", "n_elements_base"), ("large", "n_elements_large")):
        with torch.device("meta"):
            state = hubert_ecg_model(full[size]).state_dict()
        if size == "small":
            assert {key: list(value.shape) for key, value in state.items()} == published["keys"]
        assert sum(value.numel() for value in state.values()) == published[elements], size
