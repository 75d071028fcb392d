"""LANTERN's drafter heads, loaded by SpecAR, compute what LANTERN's own code computes.

Fixtures (``tests/fixtures/lantern/<variant>/``: ``config.json`` + ``model.safetensors`` in LANTERN's
layout, and ``reference.safetensors`` with the inputs and LANTERN's outputs) were made outside this
repository by instantiating LANTERN's own head classes, imported unchanged from jadohu/LANTERN at
commit 3a56e451dd5ebfa1903d044f754c68c420de27a9:

* ``llamagen_c2i`` / ``llamagen_t2i``: ``models/drafters/cnets_llamagen.py`` ``Model`` with
  ``models/configs/configs.py`` ``EConfig`` read from ``data/configs/llamagen_t2i_config.json``,
  ``input_type`` ``c2i`` (grid 24, no caption rows) or ``t2i`` (grid 16, 119 zero rotary rows);
* ``anole``: ``cnets_anole.py`` ``Model`` with ``EConfigAnole`` from ``data/configs/anole_config.json``;
* ``lumina_mgpt``: ``cnets_lumina_mgpt.py`` ``Model`` with ``EConfig`` from
  ``data/configs/lumina_mgpt_config.json`` and ``model_parallel_size`` 2 (q/k norms stored ``[2, head_dim]``).

Each config was shrunk to hidden 32, 4 heads, intermediate 48, vocabulary 24. Every parameter was drawn
from a seeded generator (norm weights 1 + 0.2 N(0,1), biases 0.1 N(0,1), ``embed_tokens`` N(0,1), other
weights N(0,1)/sqrt(fan_in)). Their ``forward(hidden_states, input_ids, ...)`` ran in float32 eval mode:
c2i on 2 rows x 20 random ids with N(0,1) features and its default positions; t2i on 1 row x 139 entries
(119 caption entries with id 0, as LANTERN's t2i training and inference feed them, then 20 image ids);
the Chameleon heads on 2 rows x 24 entries with row 1 left-padded by 3 (``attention_mask``, and
``position_ids = attention_mask.cumsum(-1) - 1`` as LANTERN's ``topK_genrate`` builds them, pads at 0).
Under transformers 5 the configs' ``rope_scaling: null`` and ``rope_theta`` were restored after loading
(transformers 5 rewrites them; LANTERN was written for 4.4x) and eager attention was selected.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from specar import Conditioning, SamplingSettings
from specar.drafts.base import DecodeState
from specar.drafts.tree_drafts import TreeHeadDrafts
from specar.drafts.tree_head import TreeHead, check_head_fits, load_tree_head
from specar.errors import IncompatibleDrafterError
from specar.sampling import DistributionProcessor

FIXTURES = Path(__file__).parent / "fixtures" / "lantern"
ATOL = 1e-4


def fixture(variant: str) -> tuple[TreeHead, dict[str, torch.Tensor], torch.Tensor]:
    """The loaded head, the reference tensors and the embedding table LANTERN's head used."""
    folder = FIXTURES / variant
    table = load_file(str(folder / "model.safetensors"))["embed_tokens.weight"]
    return load_tree_head(folder), load_file(str(folder / "reference.safetensors")), table


class EmbeddingTarget:
    """Just what :meth:`TreeHead.embed` and :func:`check_head_fits` read from a target."""

    def __init__(self, table: torch.Tensor, grid: int, vocab: int) -> None:
        self.table, self.grid, self.vocab_size = table, (grid, grid), vocab
        self.hidden_size, self.name = table.shape[1], "stand-in target"
        self.calls = 0

    def embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.table[codes]


class DraftingTarget(EmbeddingTarget):
    """What :meth:`TreeHeadDrafts.begin` and its catch-up read besides: device, dtype, image size, constraint,
    whether it compiles."""

    device, dtype, constraint, pads_blocks = torch.device("cpu"), torch.float32, None, False

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]


def causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """``[R, N, N]``: causal, pad keys hidden; pads see themselves so their (ignored) rows stay finite."""
    n = valid.shape[1]
    own = torch.eye(n, dtype=torch.bool)[None]
    return (torch.ones(n, n, dtype=torch.bool).tril()[None] & valid[:, None, :]) | own


@pytest.mark.parametrize("variant", ["llamagen_c2i", "llamagen_t2i"])
def test_llamagen_heads_match_lantern(variant: str) -> None:
    """One pass over LANTERN's whole sequence: positions are image-token indices, so the t2i caption
    entries sit at -119..-1 (the zero rotary rows); c2i has none, and ``forward`` is that pass."""
    head, ref, table = fixture(variant)
    assert head.cfg.layout == "llamagen"
    assert (head.cfg.grid_size, head.cfg.cls_token_num) == ((24, 0) if variant.endswith("c2i") else (16, 119))
    target = EmbeddingTarget(torch.zeros_like(table), head.cfg.grid_size, head.cfg.vocab_size)
    embeds = head.embed(ref["input_ids"], target)
    assert target.calls == 0, "a LANTERN LlamaGen head embeds with its stored table, not the target's"
    torch.testing.assert_close(embeds, table[ref["input_ids"]], rtol=0, atol=0)
    rows, n = ref["input_ids"].shape
    positions = (torch.arange(n) - head.cfg.cls_token_num).expand(rows, -1)
    mask = torch.ones(n, n, dtype=torch.bool).tril()[None].expand(rows, -1, -1)
    with torch.no_grad():
        out = head.step(embeds, ref["hidden_states"], positions, head.new_cache(rows, n), 0, mask)
        if head.cfg.cls_token_num == 0:
            torch.testing.assert_close(head(embeds, ref["hidden_states"]), ref["output"], rtol=0, atol=ATOL)
    torch.testing.assert_close(out, ref["output"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("variant", ["llamagen_c2i", "llamagen_t2i"])
def test_llamagen_heads_match_lantern_through_the_cache(variant: str) -> None:
    """The drafting path: entries fed in chunks through the cache, positions as image-token indices
    (the t2i caption entries at -119..-1) reproduce LANTERN's sequence pass."""
    head, ref, table = fixture(variant)
    embeds, features = table[ref["input_ids"]], ref["hidden_states"]
    rows, n = ref["input_ids"].shape
    positions = (torch.arange(n) - head.cfg.cls_token_num).expand(rows, -1)
    cache, outs = head.new_cache(rows, n), []
    with torch.no_grad():
        for start, stop in ((0, n - 12), (n - 12, n - 5), (n - 5, n)):
            mask = torch.ones(stop - start, n, dtype=torch.bool).tril(start)[None, :, :stop].expand(rows, -1, -1)
            outs.append(
                head.step(embeds[:, start:stop], features[:, start:stop], positions[:, start:stop], cache, start, mask)
            )
    torch.testing.assert_close(torch.cat(outs, 1), ref["output"], rtol=0, atol=ATOL)


def test_t2i_caption_entries_change_the_image_states() -> None:
    """LANTERN's t2i caption entries have zero rotary angles (their queries and keys vanish) but pass
    their values to every image entry: a head fed only the image entries drafts from other states."""
    head, ref, table = fixture("llamagen_t2i")
    image = slice(head.cfg.cls_token_num, None)
    embeds, features = table[ref["input_ids"][:, image]], ref["hidden_states"][:, image]
    n = embeds.shape[1]
    mask = torch.ones(n, n, dtype=torch.bool).tril()[None]
    with torch.no_grad():
        alone = head.step(embeds, features, torch.arange(n)[None], head.new_cache(1, n), 0, mask)
    gap = (alone - ref["output"][:, image]).abs().max()
    assert gap > 0.1, f"without the caption entries the image states moved by only {gap:.2e}"


def test_t2i_head_drafts_from_the_caption_entries_as_lantern(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drafting path: ``begin`` feeds the caption entries from the target's condition states, the
    catch-up then feeds the committed image entries; every state the head computes is LANTERN's."""
    head, ref, table = fixture("llamagen_t2i")
    captions, features = head.cfg.cls_token_num, ref["hidden_states"]
    image = ref["input_ids"][:, captions:]
    target = DraftingTarget(table, head.cfg.grid_size, head.cfg.vocab_size)
    tokens = torch.zeros(1, target.num_image_tokens + 1, dtype=torch.long)
    tokens[:, : image.shape[1]] = image
    state = DecodeState(
        target,
        Conditioning(caption_embeddings=torch.zeros(1, captions + 1, 8)),
        False,
        DistributionProcessor(SamplingSettings(greedy=True)),
        torch.Generator(),
        tokens,
        torch.tensor([image.shape[1]]),
        target.num_image_tokens - 2,
        features[:, captions:],  # after the last caption slot, then after each image token
        condition_hidden=features[:, :captions],
    )
    outs: list[torch.Tensor] = []
    step = head.step
    monkeypatch.setattr(head, "step", lambda *args: outs.append(step(*args)) or outs[-1])
    drafts = TreeHeadDrafts(head)
    with torch.no_grad():
        drafts.begin(state)
        root = drafts._catch_up(state)
    assert [out.shape[1] for out in outs] == [captions, image.shape[1]]
    torch.testing.assert_close(torch.cat(outs, 1), ref["output"], rtol=0, atol=ATOL)
    torch.testing.assert_close(root, ref["output"][:, -1], rtol=0, atol=ATOL)
    assert drafts.cache is not None and drafts.cache.capacity >= captions + target.num_image_tokens


@pytest.mark.parametrize("variant", ["anole", "lumina_mgpt"])
def test_chameleon_heads_match_lantern_forward(variant: str) -> None:
    head, ref, table = fixture(variant)
    assert head.cfg.layout == "chameleon" and head.embed_tokens is None
    target = EmbeddingTarget(table, 32, 8192)
    embeds = head.embed(ref["input_ids"], target)
    assert target.calls == 1, "a Chameleon head embeds through the target (LANTERN stores the target's own table)"
    valid = ref["attention_mask"].bool()
    rows, n = valid.shape
    with torch.no_grad():
        out = head.step(
            embeds, ref["hidden_states"], ref["position_ids"], head.new_cache(rows, n), 0, causal_mask(valid)
        )
    torch.testing.assert_close(out[valid], ref["output"][valid], rtol=0, atol=ATOL)
    if variant == "lumina_mgpt":  # its [shards, head_dim] q/k norms were spread over the heads
        assert head.layers[0].self_attn.q_norm.weight.shape == (head.cfg.n_head, head.cfg.head_dim)


@pytest.mark.parametrize("offset", [0, 1000])
def test_chameleon_heads_depend_only_on_position_differences(offset: int) -> None:
    """LANTERN places image entries at their text positions (after the prompt); 1D rotary angles make
    any common offset irrelevant, so image-token indices draft the same way."""
    head, ref, table = fixture("anole")
    row = ref["input_ids"][:1]
    n = row.shape[1]
    mask = torch.ones(n, n, dtype=torch.bool).tril()[None]
    with torch.no_grad():
        out = head.step(
            table[row], ref["hidden_states"][:1], ref["position_ids"][:1] + offset, head.new_cache(1, n), 0, mask
        )
    torch.testing.assert_close(out, ref["output"][:1], rtol=0, atol=1e-3)


def test_head_fit_checks_follow_the_layout() -> None:
    chameleon, _, table = fixture("anole")
    check_head_fits(chameleon.cfg, EmbeddingTarget(table, 32, 8192), "anole")  # no grid, text vocabulary
    llamagen, _, table = fixture("llamagen_t2i")
    check_head_fits(llamagen.cfg, EmbeddingTarget(table, 16, 24), "t2i")
    with pytest.raises(IncompatibleDrafterError, match="token grid"):
        check_head_fits(llamagen.cfg, EmbeddingTarget(table, 24, 24), "t2i")
