"""The KV cache: block forwards, rollback, ragged rows, tree masks and compaction match recomputation."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_model

from specar import Conditioning
from specar.kv_cache import RaggedKVCache
from specar.models.llamagen.gpt import rope_table_2d
from specar.verify import tree_attention

ATOL = 1e-4
COND = Conditioning.classes([2, 5])


def _teacher_forced(model, tokens: torch.Tensor, guided: bool) -> torch.Tensor:
    """Logits of every prefix of ``tokens`` from the cache-free training forward."""
    ids = torch.tensor(COND.class_ids)
    with torch.no_grad():
        logits = model.gpt(ids, tokens)
        if guided:
            logits = torch.cat([logits, model.gpt(torch.full_like(ids, model.cfg.num_classes), tokens)])
    return logits


def cached_images(model) -> list[int]:
    """Image tokens the cache holds per image (its rows past the class token)."""
    return (model.cache.lengths[: model.batch] - model.cfg.cls_token_num).tolist()


def _positions(start: int, k: int, rows: int = 2) -> torch.Tensor:
    return (start + torch.arange(k)).expand(rows, -1)


def test_block_forward_matches_training_forward() -> None:
    model = tiny_model(0)
    tokens = torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(0))
    reference = _teacher_forced(model, tokens, guided=True)
    first = model.prefill(COND, guided=True)
    block = model.forward(tokens[:, :20], _positions(0, 20))
    assert torch.allclose(first.logits[:, 0], reference[:, 0], atol=ATOL)
    assert torch.allclose(block.logits, reference[:, 1:21], atol=ATOL)


def test_rollback_then_new_tokens_equals_recomputation() -> None:
    model = tiny_model(0)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 64, (2, 64), generator=gen)
    wrong = torch.randint(0, 64, (2, 12), generator=gen)
    model.prefill(COND, guided=True)
    model.forward(tokens[:, :5], _positions(0, 5))
    model.forward(wrong, _positions(5, 12))  # a rejected block
    model.truncate(torch.tensor([5, 5]))
    assert cached_images(model) == [5, 5]
    out = model.forward(tokens[:, 5:16], _positions(5, 11))
    reference = _teacher_forced(model, tokens, guided=True)
    assert torch.allclose(out.logits, reference[:, 6:17], atol=ATOL)


def test_ragged_rows_match_each_row_alone() -> None:
    """Rows of one batch at different lengths (after different acceptance) stay independent."""
    model = tiny_model(0)
    tokens = torch.randint(0, 64, (2, 64), generator=torch.Generator().manual_seed(2))
    reference = _teacher_forced(model, tokens, guided=True)
    model.prefill(COND, guided=True)
    model.forward(tokens[:, :10], _positions(0, 10))
    model.truncate(torch.tensor([3, 8]))  # row 0 kept 3 tokens, row 1 kept 8
    positions = torch.stack([3 + torch.arange(4), 8 + torch.arange(4)])
    out = model.forward(tokens.gather(1, positions), positions)
    for row, start in enumerate([3, 8]):
        for half in range(2):  # conditional and unconditional halves share the row's length
            r = row + 2 * half
            assert torch.allclose(out.logits[r], reference[r, start + 1 : start + 5], atol=ATOL)


def test_tree_forward_equals_each_branch_and_compaction_keeps_the_path() -> None:
    model = tiny_model(0)
    gen = torch.Generator().manual_seed(3)
    prefix = torch.randint(0, 64, (2, 6), generator=gen)
    nodes = torch.randint(0, 64, (2, 5), generator=gen)
    parents = [-1, -1, 0, 0, 2]  # two roots; node 2 and 3 are children of node 0; node 4 of node 2
    depth = torch.tensor([0, 1, 1, 2, 2, 3])  # pending token, then the nodes
    model.prefill(COND, guided=True)
    model.forward(prefix[:, :5], _positions(0, 5))
    tree_inputs = torch.cat([prefix[:, 5:], nodes], 1)
    tree = model.forward(tree_inputs, (5 + depth).expand(2, -1), tree_attention(parents))
    for branch in ([0, 2, 4], [0, 3], [1]):
        chain = torch.cat([prefix, nodes[:, branch], torch.zeros(2, 1, dtype=torch.long)], 1)  # + a token to predict
        reference = _teacher_forced(model, chain, guided=True)
        rows = [0] + [1 + b for b in branch]
        assert torch.allclose(tree.logits[:, rows], reference[:, 6 : 6 + len(rows)], atol=ATOL)
    # keep the pending token and the path 0 -> 2 for both images, then continue decoding
    model.compact(torch.tensor([[0, 1, 3], [0, 1, 3]]), torch.tensor([3, 3]))
    assert cached_images(model) == [8, 8]
    follow = torch.randint(0, 64, (2, 3), generator=gen)
    out = model.forward(torch.cat([nodes[:, 4:5], follow], 1), _positions(8, 4))
    full = torch.cat([prefix, nodes[:, [0, 2, 4]], follow, torch.zeros(2, 1, dtype=torch.long)], 1)
    assert torch.allclose(out.logits, _teacher_forced(model, full, guided=True)[:, 9:13], atol=ATOL)


def test_rope_table_zeroes_condition_slots_and_splits_rows_and_columns() -> None:
    table = rope_table_2d(grid_size=4, head_dim=16, base=10000.0, cls_token_num=2)
    assert table.shape == (2 + 16, 8, 2)
    assert table[:2].abs().max() == 0  # condition q/k are zeroed, as in LlamaGen
    cell = 2 + 1 * 4 + 3  # image token at row 1, column 3
    freqs = 1.0 / (10000.0 ** (torch.arange(0, 8, 2).float() / 8))
    assert torch.allclose(table[cell, :4, 0], torch.cos(1 * freqs))
    assert torch.allclose(table[cell, 4:, 1], torch.sin(3 * freqs))


def test_a_causal_block_on_rows_of_one_length_gets_the_general_mask_in_short_form() -> None:
    """Rows of one length, every slot valid: one token reads everything (no mask), a block one causal
    mask shared by every row; both say what the general mask says. Padding turns the short form off."""
    cache = RaggedKVCache(1, 2, 1, 4, torch.float32, torch.device("cpu"), capacity=8)
    cache.plan(5)
    for k in (1, 3):
        short = cache.plan(k)
        cache.lengths = cache.lengths - k
        general = cache._mask(k, None, None, short.write_slots, cache.lengths, torch.arange(k), short.read_length)
        assert (short.mask is None) == (k == 1) and torch.equal(short.full_mask(), general)
        cache.lengths = cache.lengths + k
    padded = RaggedKVCache(1, 2, 1, 4, torch.float32, torch.device("cpu"), capacity=8)
    padded.plan(3, key_valid_new=torch.tensor([[True, False, True], [True, True, True]]))
    plan = padded.plan(1)
    assert plan.mask is not None and not bool(plan.mask[0, 0, 0, 1]) and bool(plan.mask[1, 0, 0, 1])


@pytest.mark.parametrize("fixed", [False, True])
def test_a_causal_block_on_rows_of_several_lengths_gets_the_general_mask_in_short_form(fixed: bool) -> None:
    """Rows of several lengths, every slot valid (a batch whose rows accepted different numbers of drafts):
    each new token reads every slot up to its own, as the general mask says, in a fixed cache too."""
    cache = RaggedKVCache(1, 3, 1, 4, torch.float32, torch.device("cpu"), capacity=16, fixed=fixed)
    cache.plan(6)
    cache.truncate(torch.tensor([6, 2, 4]))
    for k in (1, 3):
        short = cache.plan(k)
        cache.lengths = cache.lengths - k
        general = cache._mask(k, None, None, short.write_slots, cache.lengths, torch.arange(k), short.read_length)
        assert torch.equal(short.full_mask(), general)
        cache.lengths = cache.lengths + k
