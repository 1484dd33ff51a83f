"""MOMENT: loads the published PyTorchModelHubMixin folder strictly, embeds 10 s records, normalises with RevIN."""

import json

import numpy as np
import pytest
import safetensors.torch
import torch
from transformers import T5Config, T5EncoderModel

from pipeline.stage_one.backbones import build_backbone
from pipeline.stage_one.backbones.moment import MOMENTModel
from pipeline.errors import CheckpointError
from tests.conftest import FIXTURES, need_shared

T5 = {
    "architectures": ["T5ForConditionalGeneration"],
    "d_ff": 16,
    "d_kv": 8,
    "d_model": 512,  # moment-small's width; everything else shrunk
    "feed_forward_proj": "gated-gelu",
    "model_type": "t5",
    "num_decoder_layers": 1,
    "num_heads": 2,
    "num_layers": 1,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "vocab_size": 4,
}
# The published config.json layout (flat MOMENT config, d_model null at top level).
CONFIG = {
    "d_model": None,
    "device": "cpu",
    "model_kwargs": {},
    "model_name": "MOMENT",
    "patch_len": 8,
    "patch_stride_len": 8,
    "seq_len": 512,
    "t5_config": T5,
    "task_name": "reconstruction",
    "transformer_backbone": "google/flan-t5-small",
    "transformer_type": "encoder_only",
}


def published_state_dict() -> dict[str, torch.Tensor]:
    """Keys as MOMENTPipeline.save_pretrained writes them: transformers' T5 stack as encoder.*, the rest by hand."""
    torch.manual_seed(0)
    encoder = T5EncoderModel(T5Config.from_dict(T5)).encoder
    state = {f"encoder.{key}": value for key, value in encoder.state_dict().items()}
    state["patch_embedding.value_embedding.weight"] = torch.randn(512, 8)
    state["patch_embedding.mask_embedding"] = torch.randn(512)
    state["patch_embedding.position_embedding.pe"] = torch.randn(1, 5000, 512)
    state["head.linear.weight"] = torch.randn(8, 512)
    state["head.linear.bias"] = torch.randn(8)
    return {key: value.contiguous() for key, value in state.items()}


def write_checkpoint(folder, state, config=CONFIG):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    safetensors.torch.save_file(state, folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    folder = write_checkpoint(tmp_path_factory.mktemp("moment") / "MOMENT-1-small", published_state_dict())
    return build_backbone("moment-small", folder)


def embed(backbone, x: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return backbone(torch.from_numpy(backbone.preprocess(x.astype(np.float32))))["embedding"]


def test_embeds_records_as_the_mean_of_their_512_sample_windows(backbone):
    x = np.random.default_rng(0).standard_normal((2, 12, 1024))
    embedding = embed(backbone, x)
    assert embedding.shape == (2, 512) and torch.isfinite(embedding).all()
    torch.testing.assert_close(embedding, (embed(backbone, x[..., :512]) + embed(backbone, x[..., 512:])) / 2)


def test_revin_makes_the_embedding_blind_to_each_leads_offset_and_scale(backbone):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 12, 512))
    scaled = x * rng.uniform(0.2, 5, (2, 12, 1)) + rng.uniform(-3, 3, (2, 12, 1))
    torch.testing.assert_close(embed(backbone, scaled), embed(backbone, x), atol=1e-4, rtol=1e-4)


def test_a_short_records_padding_is_masked_out(backbone):
    x = torch.randn(2, 12, 300)
    padded = torch.cat([x, 100 * torch.randn(2, 12, 212)], dim=-1)  # garbage where windows() puts zeros
    observed = (torch.arange(512) < 300).expand(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)["embedding"], backbone.model(padded, observed))


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda state: state.pop("head.linear.bias"), "head.linear.bias"),
        (
            lambda state: state.update({"encoder.final_norm.weight": state.pop("encoder.final_layer_norm.weight")}),
            "encoder.final_norm.weight",
        ),
        (
            lambda state: state.update({"patch_embedding.value_embedding.weight": torch.zeros(512, 16)}),
            "value_embedding.weight",
        ),
    ],
    ids=["missing", "renamed", "reshaped"],
)
def test_refuses_a_checkpoint_whose_keys_do_not_match(tmp_path, change, key):
    state = published_state_dict()
    change(state)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        build_backbone("moment-small", write_checkpoint(tmp_path / "bad", state))


def test_refuses_another_size_or_an_unpublished_layout(tmp_path):
    state = published_state_dict()
    with pytest.raises(CheckpointError, match="d_model 512"):
        build_backbone("moment-large", write_checkpoint(tmp_path / "small", state))
    with pytest.raises(CheckpointError, match="revin_affine"):
        build_backbone("moment-small", write_checkpoint(tmp_path / "affine", state, {**CONFIG, "revin_affine": True}))


def test_full_published_config_builds_the_published_keys():
    fixture = need_shared(FIXTURES / "moment")
    full = json.loads((fixture / "config.json").read_text())["full"]["config_json"]
    published = json.loads((fixture / "keys_full.json").read_text())
    with torch.device("meta"):
        state = MOMENTModel(full).state_dict()
    assert {key: list(value.shape) for key, value in state.items()} == published["keys"]
    assert sum(value.numel() for value in state.values()) == published["n_elements"]
