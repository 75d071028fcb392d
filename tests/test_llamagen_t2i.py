"""LlamaGen text-to-image end to end: prompt -> flan-t5 features (LlamaGen's layout) -> GPT -> pixels.

A tiny T5 encoder (transformers) sits in the model folder's ``t5/`` sub-folder, as the README lays
out ``models/specar/LlamaGen-T2I-XL-512/``; the GPT is a tiny t2i GPT saved in the official layout.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_hf import build_tiny_llamagen_t2i

from specar import Conditioning, JacobiDrafts, SamplingSettings, generate
from specar.errors import CheckpointError
from specar.models.llamagen.adapter import LlamaGenModel
from specar.models.llamagen.text_encoder import clean_prompt, left_pad
from specar.models.registry import load_model

SLOTS = 12


@pytest.fixture(scope="module")
def t2i_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llamagen_t2i(tmp_path_factory.mktemp("t2i") / "LlamaGen-T2I-XL-512", slots=SLOTS)


@pytest.fixture(scope="module")
def t2i(t2i_dir: Path) -> LlamaGenModel:
    model = load_model(t2i_dir, device="cpu", dtype="fp32")
    assert isinstance(model, LlamaGenModel) and model.conditioning_kind == "prompt"
    return model


def test_caption_features_follow_llamagen_layout(t2i: LlamaGenModel) -> None:
    """Valid slots at the end, zeros before, and the features of the unpadded prompt (EOS included)."""
    encoder = t2i.text_encoder
    captions, mask = encoder.encode(["A Red  cat", "blue sky on the grass"])
    assert captions.shape == (2, SLOTS, 32) and mask.shape == (2, SLOTS)
    tokens = encoder.tokenizer(clean_prompt("A Red  cat"))["input_ids"]
    assert tokens[-1] == 1 and mask[0].tolist() == [False] * (SLOTS - len(tokens)) + [True] * len(tokens)
    direct = encoder.encoder(input_ids=torch.tensor([tokens])).last_hidden_state[0]
    assert torch.allclose(captions[0, -len(tokens) :], direct, atol=1e-5)
    assert captions[0, : SLOTS - len(tokens)].abs().max() == 0
    long = encoder.encode([" ".join(["cat"] * 40)])[1]
    assert bool(long.all())  # truncated to the slots


def test_left_pad_rotates_valid_slots_to_the_end() -> None:
    features = torch.arange(10.0).view(1, 5, 2)
    moved, mask = left_pad(features, torch.tensor([[1, 1, 0, 0, 0]]))
    assert mask.tolist() == [[False, False, False, True, True]]
    assert moved[0].tolist() == [[0, 0], [0, 0], [0, 0], [0, 1], [2, 3]]


def test_prompts_generate_losslessly_and_decode(t2i: LlamaGenModel) -> None:
    settings = SamplingSettings(cfg_scale=7.5, greedy=True)
    prompts = Conditioning(prompts=("a red cat", "blue sky on the grass"))
    ar = generate(t2i, prompts, settings)
    spec = generate(t2i, prompts, settings, draft=JacobiDrafts(window=8))
    assert torch.equal(ar.tokens, spec.tokens) and spec.target_forwards < ar.target_forwards
    captions, mask = t2i.text_encoder.encode(list(prompts.prompts))
    by_features = generate(t2i, Conditioning(caption_embeddings=captions, caption_mask=mask), settings)
    assert torch.equal(by_features.tokens, ar.tokens)  # prompts are exactly their caption features
    assert not torch.equal(ar.tokens[0], ar.tokens[1])
    assert t2i.decode(ar.tokens).shape == (2, 16, 16, 3)


def test_bad_text_encoder_folder(t2i_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "t2i-broken"
    broken.mkdir()
    for name in ("t2i_tiny.pt", "config.json", "vq_tiny.safetensors"):
        (broken / name).write_bytes((t2i_dir / name).read_bytes())
    (broken / "t5").mkdir()
    (broken / "t5" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="expected a T5"):
        load_model(broken, device="cpu", dtype="fp32")
