"""Janus-Pro through transformers: the engine's greedy output equals ``generate(generation_mode="image")``.

A tiny random Janus (init std 0.2) is saved like the real checkpoint and loaded through
``specar``'s loader; transformers' own image generation is the oracle.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_hf import build_tiny_janus

from specar import Conditioning, DrafterModelDrafts, JacobiDrafts, SamplingSettings, generate
from specar.errors import CheckpointError
from specar.lab.fidelity import ks_uniform, randomized_pit
from specar.models.janus import JanusImageModel
from specar.models.registry import load_model
from specar.sampling import DistributionProcessor

LOSSLESS_SOURCES = {
    "ar": lambda drafter: None,
    "jacobi": lambda drafter: JacobiDrafts(window=8),
    "jacobi-row-above": lambda drafter: JacobiDrafts(window=12, init="row_above"),
    "mc-sjd": lambda drafter: JacobiDrafts(window=6, coupling=True),
    "drafter": lambda drafter: DrafterModelDrafts(drafter, gamma=4),
}
PROMPTS = ("a red cat on the grass", "blue sky")


@pytest.fixture(scope="module")
def janus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_janus(tmp_path_factory.mktemp("janus") / "Janus-Pro-tiny")


@pytest.fixture(scope="module")
def janus(janus_dir: Path) -> JanusImageModel:
    model = load_model(janus_dir, device="cpu", dtype="fp32")
    assert isinstance(model, JanusImageModel)
    return model


@pytest.fixture(scope="module")
def janus_drafter(tmp_path_factory: pytest.TempPathFactory) -> JanusImageModel:
    path = build_tiny_janus(tmp_path_factory.mktemp("janus-drafter") / "drafter", perturb=0.03)
    return load_model(path, device="cpu", dtype="fp32")


def _reference(model: JanusImageModel, prompt: str, cfg: float) -> torch.Tensor:
    ids = torch.tensor([model.prompt_ids(prompt)])
    return model.janus.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), generation_mode="image", do_sample=False, guidance_scale=cfg
    )


@pytest.mark.parametrize("source", list(LOSSLESS_SOURCES))
def test_greedy_equals_transformers_generate(
    janus: JanusImageModel, janus_drafter: JanusImageModel, source: str
) -> None:
    """Prompts of different lengths share a batch (left padding); each row equals its own reference."""
    settings = SamplingSettings(cfg_scale=5.0, greedy=True)
    result = generate(janus, Conditioning(prompts=PROMPTS), settings, draft=LOSSLESS_SOURCES[source](janus_drafter))
    for row, prompt in enumerate(PROMPTS):
        assert torch.equal(result.tokens[row], _reference(janus, prompt, 5.0)[0]), prompt
    assert len(set(result.tokens[0].tolist())) > 20  # the oracle is not trivial
    if source != "ar":
        assert result.target_forwards < janus.num_image_tokens
        assert 0 < result.acceptance_rate < 1


def test_self_drafter_accepts_everything(janus: JanusImageModel, janus_dir: Path) -> None:
    twin = load_model(janus_dir, device="cpu", dtype="fp32")  # its own cache
    result = generate(
        janus,
        Conditioning(prompts=PROMPTS[:1]),
        SamplingSettings(cfg_scale=5.0, greedy=True),
        draft=DrafterModelDrafts(twin, gamma=5),
    )
    assert result.acceptance_rate == 1.0
    assert torch.equal(result.tokens[0], _reference(janus, PROMPTS[0], 5.0)[0])


def test_prompt_follows_deepseek_template(janus: JanusImageModel) -> None:
    ids = janus.prompt_ids("a red cat")
    assert ids[0] == 1 and ids[-1] == 3  # BOS ... <begin_of_image>
    assert janus.tokenizer.decode(ids[1:-1]).split() == ["<|User|>:", "a", "red", "cat", "<|Assistant|>:"]
    uncond = janus.prefix_rows(Conditioning(prompts=("a red cat",)), guided=True)[1]
    assert uncond == [1] + [2] * (len(ids) - 2) + [3]


def _teacher_forced_p(
    model: JanusImageModel, prompt: str, tokens: torch.Tensor, settings: SamplingSettings
) -> torch.Tensor:
    """Processed p at every position: one cache-free transformers forward per CFG half."""
    rows = model.prefix_rows(Conditioning(prompts=(prompt,)), guided=True)
    logits = []
    for row in rows:
        text = model.decoder.embed_tokens(torch.tensor([row]))
        images = model.janus.prepare_embeddings_for_image_generation(tokens[None, :-1])
        hidden = model.decoder(inputs_embeds=torch.cat([text, images], 1)).last_hidden_state[:, len(row) - 1 :]
        logits.append(model.janus.model.generation_head(hidden))
    N = tokens.shape[0]
    return DistributionProcessor(settings)(torch.cat(logits).float(), torch.arange(N)[None])[0]


def test_sampled_images_follow_the_target_distribution(janus: JanusImageModel, janus_drafter: JanusImageModel) -> None:
    """Per-position randomised PIT of every token of sampled images (drafter and Jacobi drafts)."""
    settings = SamplingSettings(cfg_scale=3.0, top_k=40, seed=7)
    prompts = ("a red cat",) * 12
    values = []
    with torch.no_grad():
        for draft in (DrafterModelDrafts(janus_drafter, gamma=4), JacobiDrafts(window=8)):
            result = generate(janus, Conditioning(prompts=prompts), settings, draft=draft)
            for row in range(len(prompts)):
                p = _teacher_forced_p(janus, prompts[row], result.tokens[row], settings)
                values.append(randomized_pit(p[None], result.tokens[row][None], seed=len(values)))
    assert ks_uniform(torch.cat([v.flatten() for v in values]))[1] > 0.001


def test_decode_and_latent(janus: JanusImageModel) -> None:
    codes = torch.randint(0, 256, (2, 64))
    images = janus.decode(codes)
    assert images.shape == (2, 16, 16, 3) and images.dtype == torch.uint8
    latent = janus.latent(codes)
    assert latent.shape == (2, 64, 8) and torch.allclose(latent.norm(dim=-1), torch.ones(2, 64), atol=1e-5)


def test_bad_janus_directories(janus_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((janus_dir / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot load the Janus weights"):
        load_model(broken, device="cpu", dtype="fp32")
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((janus_dir / name).read_bytes())
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_model(no_tokenizer, device="cpu", dtype="fp32")
    with pytest.raises(Exception, match="prompts"):
        generate(load_model(janus_dir, device="cpu", dtype="fp32"), Conditioning.classes([1]))
    assert json.loads((janus_dir / "config.json").read_text())["model_type"] == "janus"
