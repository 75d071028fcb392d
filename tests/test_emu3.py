"""Emu3-Gen through transformers: greedy equality with ``generate`` under Emu3's own recipe.

The oracle is transformers' ``Emu3ForConditionalGeneration.generate`` driven as Emu3's sampler
drives it: the negative prompt as ``negative_prompt_ids`` (unbatched CFG) and end-of-line tokens
forced by ``prefix_allowed_tokens_fn``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_hf import build_tiny_emu3

from specar import Conditioning, DrafterModelDrafts, JacobiDrafts, SamplingSettings, generate
from specar.errors import CheckpointError, SettingsError
from specar.models.emu3 import Emu3ImageModel
from specar.models.registry import load_model

SOURCES = {
    "ar": lambda drafter: None,
    "jacobi": lambda drafter: JacobiDrafts(window=8),
    "mc-sjd": lambda drafter: JacobiDrafts(window=6, coupling=True),
    "drafter": lambda drafter: DrafterModelDrafts(drafter, gamma=4),
}
PROMPTS = ("a red cat on the grass", "blue sky")


@pytest.fixture(scope="module")
def emu3_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("emu3")
    return {
        "target": build_tiny_emu3(root / "Emu3-Gen-tiny"),
        "drafter": build_tiny_emu3(root / "drafter", perturb=0.03),
    }


@pytest.fixture(scope="module")
def emu3(emu3_dirs: dict[str, Path]) -> Emu3ImageModel:
    model = load_model(emu3_dirs["target"], device="cpu", dtype="fp32", image_size=16)
    assert isinstance(model, Emu3ImageModel) and model.grid == (8, 8)
    return model


def _reference(model: Emu3ImageModel, prompt: str, cfg: float) -> torch.Tensor:
    hf = model.emu3
    ids = torch.tensor([model.prompt_ids(prompt)])
    negative = torch.tensor([model.prompt_ids(model.negative_prompt)])
    h, w = model.grid
    eol = model.ids["<|extra_200|>"]
    visual = model.image_vocab.code_bpe.tolist()
    start = ids.shape[1]

    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return [eol] if (input_ids.shape[0] - start + 1) % (w + 1) == 0 else visual

    out = hf.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=h * (w + 1),
        do_sample=False,
        guidance_scale=cfg,
        negative_prompt_ids=negative,
        negative_prompt_attention_mask=torch.ones_like(negative),
        prefix_allowed_tokens_fn=allowed,
    )
    rows = out[0, start:].view(h, w + 1)
    assert (rows[:, -1] == eol).all()
    bpe_to_code = {bpe: code for code, bpe in enumerate(visual)}
    return torch.tensor([bpe_to_code[int(t)] for t in rows[:, :-1].flatten()])


@pytest.mark.parametrize("source", list(SOURCES))
def test_greedy_equals_transformers_generate(emu3: Emu3ImageModel, emu3_dirs: dict[str, Path], source: str) -> None:
    drafter = load_model(emu3_dirs["drafter"], device="cpu", dtype="fp32", image_size=16)
    result = generate(
        emu3,
        Conditioning(prompts=PROMPTS),
        SamplingSettings(cfg_scale=3.0, greedy=True),
        draft=SOURCES[source](drafter),
    )
    for row, prompt in enumerate(PROMPTS):
        assert torch.equal(result.tokens[row], _reference(emu3, prompt, 3.0)), prompt
    assert len(set(result.tokens[0].tolist())) > 12
    if source != "ar":
        assert result.target_forwards < emu3.num_image_tokens


def test_prompt_template_and_decode(emu3: Emu3ImageModel) -> None:
    ids = emu3.prompt_ids("a red cat")
    assert ids[0] == emu3.bos_id and ids[-1] == emu3.ids["<|image token|>"]
    assert emu3.tokenizer.convert_ids_to_tokens(ids[-3:]) == ["<|image start|>", "8*8", "<|image token|>"]
    images = emu3.decode(torch.randint(0, 64, (2, 64)))
    assert images.shape == (2, 16, 16, 3) and images.dtype == torch.uint8
    assert emu3.latent(torch.tensor([[0, 1]])).shape == (1, 2, 8)


def test_bad_emu3_settings(emu3_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="multiple of 2"):
        load_model(emu3_dirs["target"], device="cpu", dtype="fp32", image_size=15)
    broken = tmp_path / "emu3-broken"
    broken.mkdir()
    (broken / "config.json").write_text((emu3_dirs["target"] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="Emu3"):
        load_model(broken, device="cpu", dtype="fp32")


def test_command_line_with_a_relaxed_policy(emu3_dirs: dict[str, Path], tmp_path: Path) -> None:
    """``specar generate`` picks the family from config.json; LANTERN reads Emu3's codebook."""
    from specar import cli

    code = cli.main(
        [
            "generate",
            "--model",
            str(emu3_dirs["target"]),
            "--image-size",
            "16",
            "--prompt",
            "a red cat",
            "--draft",
            "jacobi",
            "--policy",
            "lantern",
            "--device",
            "cpu",
            "--batch",
            "2",
            "--out",
            str(tmp_path / "img.png"),
            "--stats",
            str(tmp_path / "stats.json"),
            "--quiet",
        ]
    )
    assert code == 0 and (tmp_path / "img.png").stat().st_size > 0
    assert '"finished": true' in (tmp_path / "stats.json").read_text()


def test_pixels_are_unnormalised_per_channel(emu3_dirs: dict[str, Path], tmp_path: Path) -> None:
    """With a processor config (CLIP statistics), decode undoes exactly that normalisation."""
    import json
    import shutil

    folder = tmp_path / "Emu3-clip"
    shutil.copytree(emu3_dirs["target"], folder)
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    model = load_model(folder, device="cpu", dtype="fp32", image_size=16)
    codes = torch.randint(0, 64, (1, 64), generator=torch.Generator().manual_seed(0))
    raw = model.emu3.model.vqmodel.decode(codes.view(1, 8, 8))
    expected = (
        (raw * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)).clamp(0, 1) * 255
    ).round()
    assert torch.allclose(model.decode(codes).permute(0, 3, 1, 2).float(), expected, atol=1.0)
