"""Lumina-mGPT and Anole on transformers' Chameleon: greedy equality with the models' own recipe.

The reference is written here from the recipe, independently of the adapter: transformers'
stock ``from_pretrained`` model, one DynamicCache per CFG branch (the unconditional one unbatched,
as Lumina runs it), CFG on the full vocabulary, then the constraint (newline at row ends, image
tokens elsewhere), one token at a time. The adapter instead loads the Lumina-format checkpoint
(q/k norms ``[1, head_dim]``, shards, extra config keys) and runs paired, left-padded, ragged.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_hf import build_tiny_chameleon

from specar import Conditioning, DrafterModelDrafts, JacobiDrafts, SamplingSettings, generate
from specar.errors import CheckpointError
from specar.models.chameleon import ChameleonImageModel, image_code
from specar.models.registry import load_model

SOURCES = {
    "ar": lambda drafter: None,
    "jacobi": lambda drafter: JacobiDrafts(window=8),
    "jacobi-row-above": lambda drafter: JacobiDrafts(window=10, init="row_above"),
    "drafter": lambda drafter: DrafterModelDrafts(drafter, gamma=4),
}
PROMPTS = ("a red cat on the grass", "blue sky")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chameleon")
    return {
        "stock": build_tiny_chameleon(root / "anole-tiny", lumina=False),
        "lumina": build_tiny_chameleon(root / "Lumina-mGPT-tiny-128", lumina=True),
        "drafter": build_tiny_chameleon(root / "Lumina-mGPT-drafter-128", lumina=True, perturb=0.03),
    }


@pytest.fixture(scope="module")
def reference_model(dirs: dict[str, Path]) -> torch.nn.Module:
    from transformers import ChameleonForConditionalGeneration

    return ChameleonForConditionalGeneration.from_pretrained(dirs["stock"]).eval()


def _reference_greedy(hf: torch.nn.Module, adapter: ChameleonImageModel, prompt: str, cfg: float) -> torch.Tensor:
    from transformers import DynamicCache

    vocab = hf.config.vocabulary_map
    bpe_to_code = {bpe: image_code(name) for name, bpe in vocab.items() if name.startswith("IMGIMG")}
    image_ids = torch.tensor(sorted(bpe_to_code))
    newline = vocab["<reserved08799>"] if adapter.syntax.newline_after_rows else None
    cond_ids, uncond_ids = adapter.prefix_rows(Conditioning(prompts=(prompt,)), guided=True)
    caches = (DynamicCache(config=hf.config), DynamicCache(config=hf.config))

    def logits(ids: list[int], cache: object) -> torch.Tensor:
        hidden = hf.model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True).last_hidden_state
        return hf.lm_head(hidden[0, -1]).float()

    c, u = logits(cond_ids, caches[0]), logits(uncond_ids, caches[1])
    codes: list[int] = []
    emitted, width = 0, adapter.grid[1]
    while len(codes) < adapter.num_image_tokens:
        guided = u + cfg * (c - u)
        if newline is not None and (emitted + 1) % (width + 1) == 0:
            token = newline
        else:
            token = int(image_ids[guided[image_ids].argmax()])
            codes.append(bpe_to_code[token])
        emitted += 1
        c, u = logits([token], caches[0]), logits([token], caches[1])
    return torch.tensor(codes)


@pytest.fixture(scope="module")
def lumina(dirs: dict[str, Path]) -> ChameleonImageModel:
    model = load_model(dirs["lumina"], device="cpu", dtype="fp32")
    assert isinstance(model, ChameleonImageModel) and model.syntax.family == "lumina-mgpt"
    return model


@pytest.mark.parametrize("source", list(SOURCES))
def test_lumina_greedy_equals_its_sequential_recipe(
    lumina: ChameleonImageModel, dirs: dict[str, Path], reference_model: torch.nn.Module, source: str
) -> None:
    drafter = load_model(dirs["drafter"], device="cpu", dtype="fp32")
    result = generate(
        lumina,
        Conditioning(prompts=PROMPTS),
        SamplingSettings(cfg_scale=4.0, greedy=True),
        draft=SOURCES[source](drafter),
    )
    assert lumina.grid == (8, 8)
    for row, prompt in enumerate(PROMPTS):
        assert torch.equal(result.tokens[row], _reference_greedy(reference_model, lumina, prompt, 4.0)), prompt
    assert len(set(result.tokens[0].tolist())) > 12
    if source != "ar":
        assert result.target_forwards < lumina.num_image_tokens


def test_lumina_prompt_and_structure(lumina: ChameleonImageModel) -> None:
    ids = lumina.prompt_ids("a red cat")
    vocab = lumina.chameleon.config.vocabulary_map
    assert ids[0] == lumina.bos_id
    # ... prompt, end of turn, <racm3:break>, then the size in 32-px units for height and width
    assert ids[-4:] == [
        vocab["<reserved08706>"],
        vocab["<racm3:break>"],
        vocab["<reserved08804>"],
        vocab["<reserved08804>"],
    ]
    words = lumina.tokenizer.decode(ids[1:-4]).split()
    assert words[:3] == ["Generate", "an", "image"] and words[-3:] == ["a", "red", "cat"]
    assert lumina.prefix_rows(Conditioning(prompts=("x",)), guided=True)[1] == ids[-3:]


@pytest.mark.parametrize("source", ["ar", "jacobi"])
def test_anole_greedy_equals_its_sequential_recipe(
    dirs: dict[str, Path], reference_model: torch.nn.Module, source: str
) -> None:
    anole = load_model(dirs["stock"], device="cpu", dtype="fp32", image_size=128)
    assert isinstance(anole, ChameleonImageModel) and anole.syntax.family == "anole" and anole.layout is None
    vocab = anole.chameleon.config.vocabulary_map
    cond_row, uncond_row = anole.prefix_rows(Conditioning(prompts=PROMPTS[:1]), guided=True)
    assert uncond_row == [anole.bos_id, vocab["<racm3:break>"]]  # GAIR's and LANTERN's unconditional context
    assert cond_row[-2:] == [vocab["<reserved08706>"], vocab["<racm3:break>"]] and cond_row[0] == anole.bos_id
    result = generate(
        anole,
        Conditioning(prompts=PROMPTS[:1]),
        SamplingSettings(cfg_scale=3.0, greedy=True),
        draft=SOURCES[source](None),
    )
    assert torch.equal(result.tokens[0], _reference_greedy(reference_model, anole, PROMPTS[0], 3.0))


def test_lumina_checkpoint_rules(
    dirs: dict[str, Path], lumina: ChameleonImageModel, reference_model: torch.nn.Module
) -> None:
    """q/k norms were stored [1, head_dim] and come back repeated over heads; the image head is
    the lm_head rows of the image tokens in code order."""
    q_norm = lumina.chameleon.model.layers[0].self_attn.q_norm.weight
    assert q_norm.shape == (4, 16)
    assert torch.equal(q_norm, reference_model.model.layers[0].self_attn.q_norm.weight)
    hidden = torch.randn(3, 64)
    full = reference_model.lm_head(hidden)
    assert torch.allclose(lumina.head(hidden), full[:, lumina.image_vocab.code_bpe], atol=1e-6)


def test_bad_chameleon_directories(dirs: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "Lumina-broken-128"
    broken.mkdir()
    (broken / "config.json").write_text((dirs["lumina"] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="no model weights"):
        load_model(broken, device="cpu", dtype="fp32")
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": torch.zeros(128, 64)}, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lack"):
        load_model(broken, device="cpu", dtype="fp32")
    lumina = load_model(dirs["lumina"], device="cpu", dtype="fp32")
    assert not lumina.can_decode
    with pytest.raises(Exception, match="vqgan"):
        lumina.decode(torch.zeros(1, 64, dtype=torch.long))
    with pytest.raises(Exception, match="multiple of 32"):
        load_model(dirs["lumina"], device="cpu", dtype="fp32", image_size=100)


def test_tree_block_across_a_row_end_equals_its_branches(lumina: ChameleonImageModel) -> None:
    """A tree whose two branches both cross the end of row 0 (newline inserted in each) gives each
    branch's chain logits; compaction keeps one branch and its newline, and decoding continues."""
    from specar.verify import tree_attention

    cond = Conditioning(prompts=("a red cat",))
    prefix = torch.tensor([[5, 9, 13, 17, 21, 25]])  # codes at positions 0..5

    def chain(tokens: list[int]) -> torch.Tensor:
        lumina.prefill(cond, guided=True)
        lumina.forward(prefix, torch.arange(6)[None])
        return lumina.forward(torch.tensor([tokens]), torch.arange(6, 6 + len(tokens))[None]).logits

    left, right = chain([30, 40, 50]), chain([30, 41, 51])
    lumina.prefill(cond, guided=True)
    lumina.forward(prefix, torch.arange(6)[None])
    parents = [-1, -1, 0, 1]  # pending 30 (position 6) -> {40, 41} (position 7, ends row 0) -> {50, 51}
    out = lumina.forward(torch.tensor([[30, 40, 41, 50, 51]]), torch.tensor([[6, 7, 7, 8, 8]]), tree_attention(parents))
    assert torch.allclose(out.logits[:, [0, 1, 3]], left, atol=1e-4)
    assert torch.allclose(out.logits[:, [0, 2, 4]], right, atol=1e-4)
    lumina.compact(torch.tensor([[0, 2, 4]]), torch.tensor([3]))  # keep 30, 41, 51 (and 41's newline)
    assert lumina.layout.image_lengths(lumina.cache.lengths[:1] - lumina.prefix_slots).tolist() == [9]
    after = lumina.forward(torch.tensor([[7]]), torch.tensor([[9]])).logits
    chain([30, 41, 51])  # the kept branch on a fresh cache, then the same next token
    assert torch.allclose(after, lumina.forward(torch.tensor([[7]]), torch.tensor([[9]])).logits, atol=1e-4)
    lumina.release()


def test_self_drafter_accepts_everything_across_row_ends(lumina: ChameleonImageModel, dirs: dict[str, Path]) -> None:
    """The drafter's own cache steps one token per forward across newlines and rolls back."""
    twin = load_model(dirs["lumina"], device="cpu", dtype="fp32")
    result = generate(
        lumina,
        Conditioning(prompts=PROMPTS),
        SamplingSettings(cfg_scale=4.0, greedy=True),
        draft=DrafterModelDrafts(twin, gamma=5),
    )
    assert result.acceptance_rate == 1.0
