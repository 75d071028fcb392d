"""LlamaGen in our own code: official checkpoint layouts load through the real loader and generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import TINY, save_official_pt, save_own_safetensors, tiny_gpt

from specar import Conditioning, JacobiDrafts, SamplingSettings, generate, load_model
from specar.errors import CheckpointError
from specar.models.llamagen.adapter import LlamaGenModel
from specar.models.llamagen.checkpoint import infer_gpt_config
from specar.models.llamagen.gpt import GPT, GPTConfig

GREEDY = SamplingSettings(cfg_scale=2.0, greedy=True)


def _tokens(model, classes=(1, 2)) -> torch.Tensor:
    return generate(model, Conditioning.classes(list(classes)), GREEDY).tokens


@pytest.mark.parametrize("wrapper", ["model", "module", "state_dict", None])
def test_official_pt_layouts_load_and_generate_the_same_tokens(tmp_path: Path, wrapper: str | None) -> None:
    gpt = tiny_gpt(3)
    (tmp_path / "config.json").write_text(json.dumps({"family": "llamagen", "n_head": 4, "grid_size": 8}))
    save_official_pt(gpt, tmp_path / "c2i_tiny.pt", wrapper)
    loaded = load_model(tmp_path, device="cpu")
    assert loaded.grid == (8, 8) and loaded.vocab_size == 64 and loaded.num_classes == 10
    assert torch.equal(_tokens(loaded), _tokens(LlamaGenModel(gpt, None)))


def test_own_safetensors_carries_its_config(tmp_path: Path) -> None:
    gpt = tiny_gpt(4)
    path = save_own_safetensors(gpt, tmp_path / "tiny.safetensors")
    loaded = load_model(path, device="cpu")
    assert torch.equal(_tokens(loaded), _tokens(LlamaGenModel(gpt, None)))


def test_config_is_inferred_from_shapes_presets_and_file_name() -> None:
    cfg = GPTConfig.preset("GPT-B", vocab_size=32, num_classes=7)
    with torch.device("meta"):
        state = GPT(cfg).state_dict()
    inferred = infer_gpt_config(state, {"image_size": 384}, "c2i_B_384.pt")
    assert (inferred.n_layer, inferred.n_head, inferred.dim, inferred.hidden_ffn) == (12, 12, 768, 2048)
    assert inferred.num_classes == 7 and inferred.grid_size == 24
    gqa = GPTConfig(vocab_size=32, dim=64, n_layer=1, n_head=4, n_kv_head=2)
    with torch.device("meta"):
        gqa_state = GPT(gqa).state_dict()
    assert infer_gpt_config(gqa_state, {"n_head": 4, "grid_size": 8}, "x").n_kv_head == 2
    with pytest.raises(CheckpointError, match="number of attention heads"):
        infer_gpt_config(gqa_state, {}, "odd.pt")


LLAMAGEN_MODEL_ARGS = {  # as LlamaGen's training scripts write them, for the tiny c2i GPT with an 8x8 grid
    "dim": 64,
    "n_layer": 2,
    "n_head": 4,
    "n_kv_head": None,
    "multiple_of": 256,
    "ffn_dim_multiplier": None,
    "rope_base": 10000,
    "norm_eps": 1e-05,
    "initializer_range": 0.02,
    "token_dropout_p": 0.1,
    "attn_dropout_p": 0.0,
    "resid_dropout_p": 0.1,
    "ffn_dropout_p": 0.1,
    "drop_path_rate": 0.0,
    "num_classes": 10,
    "caption_dim": 2048,
    "class_dropout_prob": 0.1,
    "model_type": "c2i",
    "vocab_size": 64,
    "cls_token_num": 1,
    "block_size": 64,
    "max_batch_size": 32,
    "max_seq_len": 2048,
}


@pytest.mark.parametrize(
    "config",
    [
        {"family": "llamagen", **LLAMAGEN_MODEL_ARGS},
        LLAMAGEN_MODEL_ARGS,  # no family: model_type c2i is LlamaGen's own field
        {"model_args": LLAMAGEN_MODEL_ARGS},
    ],
    ids=["with-family", "model-args-only", "nested"],
)
def test_llamagen_s_own_model_args_set_the_grid(tmp_path: Path, config: dict) -> None:
    gpt = tiny_gpt(3)
    assert (gpt.cfg.dim, gpt.cfg.n_layer, gpt.cfg.vocab_size, gpt.cfg.num_classes) == (64, 2, 64, 10)
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_official_pt(gpt, tmp_path / "c2i_tiny.pt")
    loaded = load_model(tmp_path, device="cpu")
    assert loaded.grid == (8, 8) and torch.equal(_tokens(loaded), _tokens(LlamaGenModel(gpt, None)))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"n_head": 4}, "cannot tell the token grid: put grid_size, block_size or image_size in a config.json"),
        (
            {**LLAMAGEN_MODEL_ARGS, "image_size": 256},
            "image_size 256 (16x16 at downsampling 16) disagrees with block_size 64 (8x8)",
        ),
        ({**LLAMAGEN_MODEL_ARGS, "grid_size": 16}, "block_size 64 (8x8) disagrees with grid_size 16"),
        ({**LLAMAGEN_MODEL_ARGS, "block_size": 60}, "block_size 60 is not a square grid"),
        ({**LLAMAGEN_MODEL_ARGS, "model_type": "t2i"}, "config says model_type='t2i' but the weights are 'c2i'"),
        ({**LLAMAGEN_MODEL_ARGS, "num_classes": 1000}, "config says num_classes=1000 but the weights are 10"),
    ],
    ids=["no-grid", "block-vs-image", "grid-vs-block", "not-square", "model-type", "classes"],
)
def test_a_grid_nothing_tells_or_sources_that_disagree_are_refused(tmp_path: Path, config: dict, message: str) -> None:
    folder = tmp_path / "tiny"  # a name without a size
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    save_official_pt(tiny_gpt(3), folder / "c2i_tiny.pt")
    with pytest.raises(CheckpointError) as refused:
        load_model(folder, device="cpu")
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_the_folder_name_tells_the_grid_when_the_config_does_not(tmp_path: Path) -> None:
    folder = tmp_path / "LlamaGen-tiny-128"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"n_head": 4, "downsample": 16}))
    save_official_pt(tiny_gpt(3), folder / "c2i_tiny.pt")
    with pytest.raises(CheckpointError, match="cannot tell the token grid"):  # 128 is not an official size
        load_model(folder, device="cpu")
    renamed = folder.rename(tmp_path / "LlamaGen-tiny-256")
    assert load_model(renamed, device="cpu").grid == (16, 16)


def test_presets_match_llamagen_sizes() -> None:
    sizes = {}
    for name in ("GPT-B", "GPT-L", "GPT-XL"):
        with torch.device("meta"):
            model = GPT(GPTConfig.preset(name))
        sizes[name] = sum(p.numel() for p in model.parameters()) / 1e6
    # LlamaGen reports 111M, 343M and 775M parameters for its class-conditional B, L and XL.
    assert sizes["GPT-B"] == pytest.approx(111, abs=1.5)
    assert sizes["GPT-L"] == pytest.approx(343, abs=2)
    assert sizes["GPT-XL"] == pytest.approx(775, abs=3)


def _tiny_t2i(seed: int = 0) -> LlamaGenModel:
    gpt = tiny_gpt(seed, model_type="t2i", caption_dim=16, cls_token_num=6)
    return LlamaGenModel(gpt, None, "tiny-t2i")


def test_t2i_caption_mask_hides_padding_and_uncond_uses_the_null_caption() -> None:
    model = _tiny_t2i()
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 6, 16, generator=gen)
    mask = torch.tensor([[False, False, True, True, True, True]] * 2)  # left-padded captions
    changed = emb.clone()
    changed[:, :2] = torch.randn(2, 2, 16, generator=gen)  # only the padded slots differ
    first = model.prefill(Conditioning(caption_embeddings=emb, caption_mask=mask), guided=True).logits
    second = model.prefill(Conditioning(caption_embeddings=changed, caption_mask=mask), guided=True).logits
    assert torch.allclose(first, second, atol=1e-5)
    # both unconditional rows see the stored null caption, whatever the prompt
    assert torch.allclose(first[2], first[3], atol=1e-5)
    assert not torch.allclose(first[0], first[2], atol=1e-3)


def test_t2i_generates_with_jacobi_losslessly() -> None:
    model = _tiny_t2i(1)
    emb = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(1))
    cond = Conditioning(caption_embeddings=emb, caption_mask=torch.ones(2, 6, dtype=torch.bool))
    ar = generate(model, cond, GREEDY)
    spec = generate(model, cond, GREEDY, draft=JacobiDrafts(window=8))
    assert torch.equal(ar.tokens, spec.tokens)
    assert len(set(ar.tokens[0].tolist())) > 8  # a random model that does not collapse


def test_tiny_init_does_not_collapse() -> None:
    tokens = _tokens(LlamaGenModel(tiny_gpt(0), None), classes=range(4))
    assert min(len(set(row.tolist())) for row in tokens) > 10
    assert TINY["grid_size"] ** 2 == tokens.shape[1]
